/* Agent protocol (docs/test-guest.md): binary frames over the vsock stream, one reply each. */
#include "guest.h"

#define FRAME_MAGIC 0x41444b46u /* "FKDA" */
#define FRAME_VERSION 1
#define FRAME_HDR_LEN 16
#define FRAME_PAYLOAD_MAX 2048
#define TYPE_REPLY 0x80
#define TYPE_ERROR 0xff

enum {
  T_PING = 1,
  T_ECHO = 2,
  T_FILL = 3,
  T_CHECKSUM = 4,
  T_COUNTER = 5,
  T_KV_SET = 6,
  T_KV_GET = 7,
  T_EXIT = 8,
  T_EXEC = 9,
  T_CONSOLE = 10,
  T_ATTACK = 11, /* hostile mode: the guest attacks its own devices (Tests: HostileGuestTests) */
  /* T_FILE_WRITE ... T_VCPU_STATUS: guest.h (files.c, vcpus.c) */
};

#define AGENT_KIND 1 /* test guest */
#define AGENT_VERSION 1

#define FILL_K1 0x9E3779B97F4A7C15ull
#define FILL_K2 0xBF58476D1CE4E5B9ull

#define KV_ENTRIES 16
#define KV_KEY_MAX 32
#define KV_VALUE_MAX 256

u8 agent_lying;
static u64 served; /* request frames answered (errors too), the current one included */
static u64 counter;

static u8 kv_used[KV_ENTRIES];
static u8 kv_klen[KV_ENTRIES];
static u16 kv_vlen[KV_ENTRIES];
static u8 kv_key[KV_ENTRIES][KV_KEY_MAX] NOINIT;
static u8 kv_val[KV_ENTRIES][KV_VALUE_MAX] NOINIT;

/* Header as two qword stores: magic, version, type, flags = 0; request id, length. */
static void put_frame(u8 *r, u8 type, u32 request_id, u32 len) {
  st64(r, FRAME_MAGIC | (u64)FRAME_VERSION << 32 | (u64)type << 40);
  st64(r + 8, request_id | (u64)len << 32);
}

static void reply_error(struct conn *c, u32 request_id, u32 code, const char *msg, u32 mlen) {
  u32 id;
  u8 *r = reply_begin(&id);
  served++;
  st32(r + FRAME_HDR_LEN, code);
  st32(r + FRAME_HDR_LEN + 4, mlen);
  memcpy(r + FRAME_HDR_LEN + 8, msg, mlen);
  put_frame(r, TYPE_ERROR, request_id, 8 + mlen);
  reply_end(c, id, FRAME_HDR_LEN + 8 + mlen);
}
#define REPLY_ERROR(c, rid, code, msg) reply_error(c, rid, code, msg, sizeof(msg) - 1)

/* v(p) = seed*K1 + (p+1)*K2 over each 512-word page; rep stosq is one emulated op per word. */
static void fill(u64 pages, u64 seed) {
  u64 *d = (u64 *)DATA_BASE;
  u64 v = seed * FILL_K1 + FILL_K2;
  for (u64 p = 0; p < pages; p++, v += FILL_K2) {
    u64 n = PAGE_SIZE / 8;
    __asm__ volatile("rep stosq" : "+D"(d), "+c"(n) : "a"(v) : "memory");
  }
}

/*
 * c = rotl(c,7) + q0 + ... + q7 for each 64-byte block. General pages: 9 instructions a block
 * (rol, then eight adds from memory), 8 blocks a turn. A page of one repeated word (what fill
 * writes) is detected with `repe scasq`, about half the cost per word of an add from memory
 * here, and then needs only rol/add on registers: same result, ~40% less time.
 */
#define CK_BLOCK(o)                                                                            \
  "rolq $7, %0\n\t"                                                                            \
  "addq " #o "+0(%1), %0\n\t"                                                                  \
  "addq " #o "+8(%1), %0\n\t"                                                                  \
  "addq " #o "+16(%1), %0\n\t"                                                                 \
  "addq " #o "+24(%1), %0\n\t"                                                                 \
  "addq " #o "+32(%1), %0\n\t"                                                                 \
  "addq " #o "+40(%1), %0\n\t"                                                                 \
  "addq " #o "+48(%1), %0\n\t"                                                                 \
  "addq " #o "+56(%1), %0\n\t"

static u64 checksum(u64 pages) {
  u64 c = 0;
  const u8 *page = (const u8 *)DATA_BASE;
  for (u64 p = 0; p < pages; p++, page += PAGE_SIZE) {
    u64 w = *(const u64 *)page, n = PAGE_SIZE / 8;
    const u8 *scan = page;
    _Bool same;
    __asm__("repe scasq" : "+D"(scan), "+c"(n), "=@ccz"(same) : "a"(w) : "memory");
    if (same) {
      u64 sum = w << 3; /* each block adds 8 * w */
      __asm__(".rept 64\n\trolq $7, %0\n\taddq %1, %0\n\t.endr" : "+r"(c) : "r"(sum) : "cc");
      continue;
    }
    const u8 *q = page, *end = page + PAGE_SIZE;
    __asm__("1:\n\t" CK_BLOCK(0) CK_BLOCK(64) CK_BLOCK(128) CK_BLOCK(192) CK_BLOCK(256)
                CK_BLOCK(320) CK_BLOCK(384) CK_BLOCK(448)
            "addq $512, %1\n\t"
            "cmpq %2, %1\n\t"
            "jb 1b"
            : "+r"(c), "+r"(q)
            : "r"(end)
            : "cc", "memory");
  }
  return c;
}

static int kv_find(const u8 *key, u32 klen) {
  for (int i = 0; i < KV_ENTRIES; i++)
    if (kv_used[i] && kv_klen[i] == klen && !memcmp(kv_key[i], key, klen)) return i;
  return -1;
}

/* Handle one complete frame; f is the 16-byte header followed by plen payload bytes. */
static void handle(struct conn *c, const u8 *f, u32 plen) {
  const u8 *p = f + FRAME_HDR_LEN;
  u8 type = f[5];
  u32 id, n = 0;
  u8 *r = reply_begin(&id);
  u8 *out = r + FRAME_HDR_LEN;
  u32 code;
  const char *msg;
  u32 mlen;
#define FAIL(code_, msg_)                                                                      \
  do {                                                                                         \
    code = (code_);                                                                            \
    msg = (msg_);                                                                              \
    mlen = sizeof(msg_) - 1;                                                                   \
    goto fail;                                                                                 \
  } while (0)

  served++;
  switch (type) {
  case T_PING:
    if (agent_lying) { /* u32/u64 maxima, and a counter past i64 */
      st32(out, AGENT_KIND);
      st32(out + 4, 0xffffffffu);
      st64(out + 8, ~0ull);
      st64(out + 16, 0x8000000000000000ull);
      n = 24;
      break;
    }
    st32(out, AGENT_KIND);
    st32(out + 4, AGENT_VERSION);
    st64(out + 8, served);
    st64(out + 16, counter);
    n = 24;
    break;
  case T_ECHO:
    memcpy(out, p, plen);
    n = plen;
    break;
  case T_FILL: {
    if (plen != 16) FAIL(E_BAD_ARGUMENT, "fill: payload is u64 pages, u64 seed");
    u64 pages = ld64(p);
    if (pages > data_pages) FAIL(E_BAD_ARGUMENT, "fill: pages beyond guest memory");
    fill(pages, ld64(p + 8));
    st64(out, pages);
    n = 8;
    break;
  }
  case T_CHECKSUM: {
    if (plen != 8) FAIL(E_BAD_ARGUMENT, "checksum: payload is u64 pages");
    u64 pages = ld64(p);
    if (pages > data_pages) FAIL(E_BAD_ARGUMENT, "checksum: pages beyond guest memory");
    st64(out, checksum(pages));
    n = 8;
    break;
  }
  case T_COUNTER:
    if (plen != 8) FAIL(E_BAD_ARGUMENT, "counter: payload is i64 delta");
    counter += ld64(p);
    st64(out, counter);
    n = 8;
    break;
  case T_KV_SET: {
    if (plen < 2) FAIL(E_BAD_ARGUMENT, "kv set: payload too short");
    u32 klen = ld16(p);
    if (klen > plen - 2) FAIL(E_BAD_ARGUMENT, "kv set: key length beyond payload");
    if (klen > KV_KEY_MAX) FAIL(E_TOO_LARGE, "kv set: key longer than 32 bytes");
    u32 vlen = plen - 2 - klen;
    if (vlen > KV_VALUE_MAX) FAIL(E_TOO_LARGE, "kv set: value longer than 256 bytes");
    int i = kv_find(p + 2, klen);
    if (i < 0) {
      i = 0;
      while (i < KV_ENTRIES && kv_used[i]) i++;
      if (i == KV_ENTRIES) FAIL(E_TOO_LARGE, "kv set: store full (16 entries)");
      kv_used[i] = 1;
      kv_klen[i] = (u8)klen;
      memcpy(kv_key[i], p + 2, klen);
    }
    kv_vlen[i] = (u16)vlen;
    memcpy(kv_val[i], p + 2 + klen, vlen);
    break;
  }
  case T_KV_GET: {
    int i = plen <= KV_KEY_MAX ? kv_find(p, plen) : -1; /* longer keys cannot be stored */
    out[0] = i >= 0;
    n = 1;
    if (i >= 0) {
      memcpy(out + 1, kv_val[i], kv_vlen[i]);
      n += kv_vlen[i];
    }
    break;
  }
  case T_EXIT:
    if (plen != 4) FAIL(E_BAD_ARGUMENT, "exit: payload is u32 code");
    c->exit_code = p[0]; /* port 0x605 takes the low byte */
    c->exit_pending = 1;
    break;
  case T_EXEC:
    if (agent_lying) { /* exit code INT32_MIN, then a stdout length of 4 GiB with 4 bytes behind it */
      st32(out, 0x80000000u);
      out[4] = 0;
      st32(out + 5, 0xffffffffu);
      st32(out + 9, 0x41414141u);
      n = 13;
      break;
    }
    FAIL(E_UNSUPPORTED, "exec: not supported by the test guest");
  case T_CONSOLE: /* one line on COM1: lets a host put a mark in the guest's console log */
    if (plen > 256) FAIL(E_TOO_LARGE, "console: at most 256 bytes");
    for (u32 i = 0; i < plen; i++) outb(PORT_COM1, p[i] == '\n' ? ' ' : p[i]);
    outb(PORT_COM1, '\n');
    break;
  case T_ATTACK:
    if (plen != 4 || ld32(p) == 0 || ld32(p) > 255) FAIL(E_BAD_ARGUMENT, "attack: payload is u32 kind 1...255");
    c->attack_pending = (u8)ld32(p);
    break;
  case T_FILE_WRITE:
  case T_FILE_READ:
  case T_FILE_LIST:
  case T_FILE_DELETE: {
    struct agent_fail e;
    if (file_request(type, p, plen, out, &n, &e)) {
      code = e.code;
      msg = e.msg;
      mlen = e.mlen;
      goto fail;
    }
    break;
  }
  case T_VCPU_STATUS:
    n = vcpu_status(out);
    break;
  default:
    FAIL(E_UNKNOWN_TYPE, "unknown request type");
  }
  type |= TYPE_REPLY;
  goto send;

fail:
  st32(out, code);
  st32(out + 4, mlen);
  memcpy(out + 8, msg, mlen);
  n = 8 + mlen;
  type = TYPE_ERROR;
send:
  put_frame(r, type, ld32(f + 8), n);
  reply_end(c, id, FRAME_HDR_LEN + n);
#undef FAIL
}

/*
 * Consume complete frames from data[0..len). Stops at a partial frame, when a reply had to be
 * parked for credit, or when the connection was dropped. Returns the bytes consumed, which
 * are also added to fwd_cnt before the reply goes out so that reply reports them. Inlined
 * (with LTO) into its single caller, which lives in the main loop: no per-request
 * prologue/epilogue saves.
 */
__attribute__((always_inline)) u32 agent_parse(struct conn *c, const u8 *data, u32 len) {
  u32 pos = 0;
  while (c->active && !c->has_pending) {
    u32 left = len - pos;
    if (c->skip) { /* discarding an oversized frame's payload */
      u32 k = c->skip < left ? c->skip : left;
      if (!k) break;
      c->skip -= k;
      c->fwd_cnt += k;
      pos += k;
      continue;
    }
    if (left < FRAME_HDR_LEN) break;
    const u8 *f = data + pos;
    u32 plen = ld32(f + 12);
    if (ld32(f) != FRAME_MAGIC || f[4] != FRAME_VERSION) {
      /* No way to find the next frame boundary: report, then drop the stream. */
      c->fwd_cnt += left;
      REPLY_ERROR(c, ld32(f + 8), E_BAD_FRAME, "bad frame header");
      conn_abort(c);
      return len;
    }
    if (plen > FRAME_PAYLOAD_MAX) {
      pos += FRAME_HDR_LEN;
      c->fwd_cnt += FRAME_HDR_LEN;
      c->skip = plen;
      REPLY_ERROR(c, ld32(f + 8), E_TOO_LARGE, "frame payload larger than 2048 bytes");
      continue;
    }
    if (left - FRAME_HDR_LEN < plen) break;
    pos += FRAME_HDR_LEN + plen;
    c->fwd_cnt += FRAME_HDR_LEN + plen;
    handle(c, f, plen);
  }
  return pos;
}
