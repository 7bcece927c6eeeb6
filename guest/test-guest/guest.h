/*
 * forkd test guest: shared definitions.
 *
 * Freestanding x86-64, no SSE, no interrupts, no exceptions (any fault is a triple fault on
 * PVM). Every instruction costs close to a microsecond on this project's KVM, so hot paths
 * are written for a low instruction count. The boot contract and protocols are described in
 * docs/test-guest.md.
 */
#ifndef FORKD_GUEST_H
#define FORKD_GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;
typedef unsigned long usize;

#define NOINIT __attribute__((section(".noinit")))
#define PACKED __attribute__((packed))

/* ---- boot contract ---- */

#define BOOT_MAGIC 0x31544f4f42444b46ull /* "FKDBOOT1" */
#define BOOT_INFO_ADDR 0x7000ul
#define DATA_BASE 0x400000ul /* fill/checksum area */
#define PAGE_SIZE 4096ul
#define MAPPED_LIMIT 0x100000000ull /* the VMM identity-maps 4 GiB */

struct boot_info {
  u64 magic;
  u32 version;
  u32 vcpu_count;
  u64 mem_size;
  u64 virtio_mmio_base;
  u32 virtio_mmio_count;
  u32 guest_cid;
};

#define PORT_COM1 0x3f8
#define PORT_EXIT_CODE 0x605
#define PORT_PM1A_CNT 0x604
#define PM1A_SLP_EN 0x2000

/* ---- primitives ---- */

#define barrier() __asm__ volatile("" ::: "memory")

/* Store->load fence (publish avail idx, then read the device's flags), the one reordering
 * x86 allows. mfence runs fine on PVM (unlike SSE arithmetic) and costs about half of a
 * locked add to the stack there. */
static inline void mb(void) { __asm__ volatile("mfence" ::: "memory"); }

static inline void hlt(void) { __asm__ volatile("hlt" ::: "memory"); }

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0,%1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0,%1" ::"a"(v), "Nd"(port)); }

static inline u32 mmio_read(u64 addr) { return *(volatile u32 *)addr; }
static inline void mmio_write(u64 addr, u32 v) { *(volatile u32 *)addr = v; }

/* Unaligned little-endian access: x86 allows it, the builtins become single movs. */
static inline u16 ld16(const void *p) { u16 v; __builtin_memcpy(&v, p, 2); return v; }
static inline u32 ld32(const void *p) { u32 v; __builtin_memcpy(&v, p, 4); return v; }
static inline u64 ld64(const void *p) { u64 v; __builtin_memcpy(&v, p, 8); return v; }
static inline void st32(void *p, u32 v) { __builtin_memcpy(p, &v, 4); }
static inline void st64(void *p, u64 v) { __builtin_memcpy(p, &v, 8); }

/* string.c: string instructions, since each loop iteration would cost as much as a qword. */
void *memcpy(void *dst, const void *src, usize n);
void *memmove(void *dst, const void *src, usize n);
void *memset(void *dst, int c, usize n);
int memcmp(const void *a, const void *b, usize n);

/* ---- main.c ---- */

extern u64 data_pages; /* pages available to fill/checksum */
void console_write(const char *s);
__attribute__((noreturn)) void fatal(const char *msg);
__attribute__((noreturn)) void power_off(u8 code);

/* ---- vsock.c ---- */

#define MAX_CONNS 8
#define CONN_IN_CAP 65536 /* == advertised buf_alloc: the host may send that much unread */
#define VSOCK_HDR_LEN 44
#define VSOCK_BUF_LEN 4096

struct conn {
  u64 peer_cid;
  u32 peer_port;
  u8 active;
  u8 has_pending;     /* a reply is parked in pending_id until the host grants credit */
  u8 credit_req_sent; /* one CREDIT_REQUEST per stall */
  u8 exit_pending;    /* power off once the parked/outgoing reply has left */
  u8 exit_code;
  u8 attack_pending;  /* hostile mode: attack a device once the reply has left (kind) */
  u8 pending_id;
  u32 pending_len;
  u32 peer_buf_alloc; /* host's receive window, from every packet it sends */
  u32 peer_fwd_cnt;
  u32 tx_cnt;   /* payload bytes sent to the host */
  u32 fwd_cnt;  /* payload bytes consumed (parsed or skipped) */
  u32 fwd_sent; /* fwd_cnt last reported to the host */
  u32 in_len;   /* buffered, not yet consumed input */
  u32 skip;     /* payload bytes of an oversized frame still to discard */
  u8 *in;       /* CONN_IN_CAP bytes of input buffer */
};

void vsock_init(u64 mmio_base, u32 cid);
void vsock_poll(void);
u8 *reply_begin(u32 *id);
void reply_end(struct conn *c, u32 id, u32 len);
void conn_abort(struct conn *c);
void vsock_flush_tx(void);
void vsock_attack(u32 kind);
/* Hostile mode (attack 11): the agent answers with extreme values from then on. */
extern u8 agent_lying;

/* ---- net.c ---- */

const char *net_init(u64 mmio_base);
void net_poll(void);
void net_attack(u32 kind);

/* ---- agent.c ---- */

u32 agent_parse(struct conn *c, const u8 *data, u32 len);

/* Agent error codes (docs/test-guest.md). */
enum {
  E_BAD_FRAME = 1,
  E_UNKNOWN_TYPE = 2,
  E_BAD_ARGUMENT = 3,
  E_UNSUPPORTED = 4,
  E_TOO_LARGE = 5,
  E_NOT_FOUND = 6,
};

struct agent_fail {
  u32 code;
  const char *msg;
  u32 mlen;
};

/* ---- files.c ---- */

enum { T_FILE_WRITE = 12, T_FILE_READ = 13, T_FILE_LIST = 14, T_FILE_DELETE = 15 };
/* Handles one file request; 0 with *n reply bytes at out, or -1 with e filled in. */
int file_request(u8 type, const u8 *p, u32 plen, u8 *out, u32 *n, struct agent_fail *e);

/* ---- vcpus.c ---- */

#define T_VCPU_STATUS 16
#define MAX_VCPUS 8
#define PORT_VCPU_WAKE 0x606 /* any write resumes every vCPU parked in hlt */
extern u32 vcpu_count;
/* Asks every other vCPU to answer; writes the vcpu-status reply, returns its length. */
u32 vcpu_status(u8 *out);

#endif
