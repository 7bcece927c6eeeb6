/*
 * virtio-vsock device driver and the guest's stream connections (agent port 1024 only).
 *
 * The host always connects; the guest listens. Every host packet updates the connection's
 * view of the host's receive window (buf_alloc/fwd_cnt), and a reply that does not fit that
 * window is parked until a CREDIT_UPDATE arrives. Input is parsed straight out of the rx
 * buffer when possible and only a partial frame is copied into the connection's buffer.
 */
#include "virtio.h"

#define VIRTIO_ID_VSOCK 19
#define AGENT_PORT 1024
#define BUF_ALLOC 65536
#define TYPE_STREAM 1
#define EVENT_TRANSPORT_RESET 0
#define EV_BUFS 4

enum {
  OP_REQUEST = 1,
  OP_RESPONSE = 2,
  OP_RST = 3,
  OP_SHUTDOWN = 4,
  OP_RW = 5,
  OP_CREDIT_UPDATE = 6,
  OP_CREDIT_REQUEST = 7,
};

struct vsock_hdr {
  u64 src_cid;
  u64 dst_cid;
  u32 src_port;
  u32 dst_port;
  u32 len;
  u16 type;
  u16 op;
  u32 flags;
  u32 buf_alloc;
  u32 fwd_cnt;
} PACKED;
_Static_assert(sizeof(struct vsock_hdr) == VSOCK_HDR_LEN, "vsock header is 44 bytes");

static struct vq rxq, txq, evq;
static u32 ev_buf[EV_BUFS];
static u8 rx_buf[VQ_SIZE][VSOCK_BUF_LEN] NOINIT __attribute__((aligned(4096)));
static u8 tx_buf[VQ_SIZE][VSOCK_BUF_LEN] NOINIT __attribute__((aligned(4096)));

/* tx buffer i is always descriptor i. Free ones are on a stack; tx_busy marks those the
 * device holds, so a bogus used-ring id cannot free a buffer twice. */
static u8 tx_free[VQ_SIZE];
static u32 tx_nfree;
static u8 tx_busy[VQ_SIZE];
static u32 tx_inflight;

static u64 mmio_base;
static u64 guest_cid;
static struct conn conns[MAX_CONNS];
static u8 conn_in[MAX_CONNS][CONN_IN_CAP] NOINIT;

/* ---- tx buffers ---- */

static void tx_reclaim(void) {
  u32 len;
  int id;
  while ((id = vq_get(&txq, &len)) >= 0) {
    if ((u32)id >= VQ_SIZE || !tx_busy[id]) continue;
    tx_busy[id] = 0;
    tx_inflight--;
    tx_free[tx_nfree++] = (u8)id;
  }
}

static __attribute__((noinline)) u32 tx_alloc_slow(void) {
  for (;;) {
    if (tx_nfree) return tx_free[--tx_nfree];
    /* All buffers are with the device: make sure it has been told, then wait for it. At most
     * MAX_CONNS buffers are parked, so some are in flight. */
    vq_kick(&rxq);
    vq_kick(&txq);
    tx_reclaim();
    if (!tx_nfree) hlt();
  }
}

static inline u32 tx_alloc(void) {
  if (tx_nfree) return tx_free[--tx_nfree];
  return tx_alloc_slow();
}

static void tx_submit(u32 id, u32 len) {
  txq.r.desc[id].len = len;
  tx_busy[id] = 1;
  tx_inflight++;
  vq_add(&txq, (u16)id);
}

/* Hand every queued packet to the device and wait until it has consumed them all. */
void vsock_flush_tx(void) {
  vq_kick(&txq);
  for (;;) {
    tx_reclaim();
    if (!tx_inflight) return;
    hlt();
  }
}

static void put_hdr(u8 *b, u64 dst_cid, u32 dst_port, u16 op, u32 len, u32 fwd_cnt) {
  struct vsock_hdr *h = (struct vsock_hdr *)b;
  h->src_cid = guest_cid;
  h->dst_cid = dst_cid;
  h->src_port = AGENT_PORT;
  h->dst_port = dst_port;
  h->len = len;
  h->type = TYPE_STREAM;
  h->op = op;
  h->flags = 0;
  h->buf_alloc = BUF_ALLOC;
  h->fwd_cnt = fwd_cnt;
}

/* RST for a packet that belongs to no connection. */
static void send_rst_to(const struct vsock_hdr *in) {
  u32 id = tx_alloc();
  put_hdr(tx_buf[id], in->src_cid, in->src_port, OP_RST, 0, 0);
  /* The packet may have been addressed to another port: answer from that port. */
  ((struct vsock_hdr *)tx_buf[id])->src_port = in->dst_port;
  tx_submit(id, VSOCK_HDR_LEN);
}

static void send_ctrl(struct conn *c, u16 op) {
  u32 id = tx_alloc();
  put_hdr(tx_buf[id], c->peer_cid, c->peer_port, op, 0, c->fwd_cnt);
  c->fwd_sent = c->fwd_cnt;
  tx_submit(id, VSOCK_HDR_LEN);
}

/* ---- connections ---- */

static void conn_forget(struct conn *c) {
  if (c->has_pending) tx_free[tx_nfree++] = c->pending_id;
  c->has_pending = 0;
  c->active = 0;
}

void conn_abort(struct conn *c) {
  send_ctrl(c, OP_RST);
  conn_forget(c);
}

static void conn_open(struct conn *c, const struct vsock_hdr *h) {
  conn_forget(c);
  *c = (struct conn){
      .peer_cid = h->src_cid,
      .peer_port = h->src_port,
      .active = 1,
      .peer_buf_alloc = h->buf_alloc,
      .peer_fwd_cnt = h->fwd_cnt,
      .in = conn_in[c - conns],
  };
}

static struct conn *conn_find(const struct vsock_hdr *h) {
  if (h->dst_port != AGENT_PORT) return 0;
  for (struct conn *c = conns; c < conns + MAX_CONNS; c++)
    if (c->active && c->peer_port == h->src_port && c->peer_cid == h->src_cid) return c;
  return 0;
}

static struct conn *conn_slot(void) {
  for (struct conn *c = conns; c < conns + MAX_CONNS; c++)
    if (!c->active) return c;
  return 0;
}

static int credit_ok(const struct conn *c, u32 len) {
  u32 unread = c->tx_cnt - c->peer_fwd_cnt;
  return unread <= c->peer_buf_alloc && len <= c->peer_buf_alloc - unread;
}

static void send_rw(struct conn *c, u32 id, u32 len) {
  put_hdr(tx_buf[id], c->peer_cid, c->peer_port, OP_RW, len, c->fwd_cnt);
  c->fwd_sent = c->fwd_cnt;
  c->tx_cnt += len;
  tx_submit(id, VSOCK_HDR_LEN + len);
  if (c->exit_pending) {
    vsock_flush_tx();
    power_off(c->exit_code);
  }
  if (c->attack_pending) {
    u32 kind = c->attack_pending;
    c->attack_pending = 0;
    vsock_flush_tx();
    vsock_attack(kind);
  }
}

/* Agent replies: the caller writes at most VSOCK_BUF_LEN - VSOCK_HDR_LEN bytes of payload. */
u8 *reply_begin(u32 *id) {
  *id = tx_alloc();
  return tx_buf[*id] + VSOCK_HDR_LEN;
}

void reply_end(struct conn *c, u32 id, u32 len) {
  if (credit_ok(c, len)) {
    send_rw(c, id, len);
    return;
  }
  /* agent_parse stops at a parked reply, so there is never more than one. */
  c->has_pending = 1;
  c->pending_id = (u8)id;
  c->pending_len = len;
  if (!c->credit_req_sent) {
    c->credit_req_sent = 1;
    send_ctrl(c, OP_CREDIT_REQUEST);
  }
}

/*
 * New stream bytes (possibly none) for c. A parked reply goes out first if the host's window
 * now allows it. Frames are parsed in place from the rx buffer when nothing is buffered;
 * otherwise the bytes are appended to the connection's buffer and parsed from there. This is
 * the only caller of agent_parse, so LTO inlines the whole request path into the main loop.
 */
static void conn_input(struct conn *c, const u8 *data, u32 len) {
  u8 *in = c->in;
  if (c->has_pending) {
    if (!credit_ok(c, c->pending_len)) goto keep;
    c->has_pending = 0;
    c->credit_req_sent = 0;
    send_rw(c, c->pending_id, c->pending_len);
  }
  int buffered = c->in_len != 0;
  if (buffered) {
    if (len > CONN_IN_CAP - c->in_len) goto overrun;
    memcpy(in + c->in_len, data, len);
    c->in_len += len;
    data = in;
    len = c->in_len;
  }
  u32 used = agent_parse(c, data, len);
  if (!c->active) return;
  if (buffered) {
    c->in_len -= used;
    if (used && c->in_len) memmove(in, in + used, c->in_len);
    return;
  }
  data += used;
  len -= used;
keep:
  if (!len) return;
  if (len > CONN_IN_CAP - c->in_len) goto overrun;
  memcpy(in + c->in_len, data, len);
  c->in_len += len;
  return;
overrun:
  conn_abort(c); /* the host ignored our buf_alloc */
}

static void rx_packet(const u8 *buf, u32 len) {
  const struct vsock_hdr *h = (const struct vsock_hdr *)buf;
  if (len < VSOCK_HDR_LEN || len > VSOCK_BUF_LEN) return;
  u32 plen = h->len;
  if (plen > len - VSOCK_HDR_LEN) return; /* truncated: drop */
  u16 op = h->op;
  if (h->type != TYPE_STREAM) {
    if (op != OP_RST) send_rst_to(h);
    return;
  }
  struct conn *c = conn_find(h);
  if (op == OP_REQUEST && h->dst_port == AGENT_PORT) {
    /* A REQUEST for a live connection restarts it: the host side is new (e.g. restored). */
    if (!c) c = conn_slot();
    if (c) {
      conn_open(c, h);
      send_ctrl(c, OP_RESPONSE);
      return;
    }
  }
  if (!c) {
    if (op != OP_RST) send_rst_to(h);
    return;
  }
  c->peer_buf_alloc = h->buf_alloc;
  c->peer_fwd_cnt = h->fwd_cnt;
  switch (op) {
  case OP_RW:
    break;
  case OP_CREDIT_REQUEST:
    send_ctrl(c, OP_CREDIT_UPDATE);
    plen = 0;
    break;
  case OP_CREDIT_UPDATE:
    plen = 0; /* new credit may release a parked reply */
    break;
  case OP_RST:
    conn_forget(c);
    return;
  default: /* SHUTDOWN (either direction ends the agent session), RESPONSE, unknown */
    conn_abort(c);
    return;
  }
  conn_input(c, buf + VSOCK_HDR_LEN, plen);
  /* Long one-way input (an oversized frame being skipped) would exhaust the host's view of
   * our window without replies carrying fwd_cnt back. */
  if (c->active && c->fwd_cnt - c->fwd_sent >= BUF_ALLOC / 2) send_ctrl(c, OP_CREDIT_UPDATE);
}

static void transport_reset(void) {
  for (struct conn *c = conns; c < conns + MAX_CONNS; c++) conn_forget(c);
  /* The VMM may have moved us to a new CID (e.g. after a restore); 0-2 are reserved. */
  u64 cid = mmio_read(mmio_base + VIRTIO_MMIO_CONFIG) |
            (u64)mmio_read(mmio_base + VIRTIO_MMIO_CONFIG + 4) << 32;
  if (cid > 2) guest_cid = cid;
}

/* ---- device ---- */

void vsock_init(u64 base, u32 cid) {
  const char *err;
  mmio_base = base;
  guest_cid = cid;
  if ((err = virtio_begin(base, VIRTIO_ID_VSOCK))) fatal(err);
  if ((err = vq_setup(&rxq, base, 0))) fatal(err);
  if ((err = vq_setup(&txq, base, 1))) fatal(err);
  if ((err = vq_setup(&evq, base, 2))) fatal(err);
  for (u32 i = 0; i < VQ_SIZE; i++) {
    rxq.r.desc[i] = (struct vring_desc){(u64)rx_buf[i], VSOCK_BUF_LEN, VRING_DESC_F_WRITE, 0};
    vq_add(&rxq, (u16)i);
    txq.r.desc[i].addr = (u64)tx_buf[i];
    tx_free[i] = (u8)i;
  }
  tx_nfree = VQ_SIZE;
  for (u32 i = 0; i < EV_BUFS; i++) {
    evq.r.desc[i] = (struct vring_desc){(u64)&ev_buf[i], sizeof ev_buf[i], VRING_DESC_F_WRITE, 0};
    vq_add(&evq, (u16)i);
  }
  virtio_driver_ok(base);
  vq_kick(&rxq);
  vq_kick(&evq);
}

/* Handle everything the device has delivered; returns when both rings are drained, so the
 * caller can hlt without missing a packet that arrived while we were busy. */
void vsock_poll(void) {
  for (;;) {
    int work = 0, id;
    u32 len;
    while ((id = vq_get(&rxq, &len)) >= 0) {
      work = 1;
      if ((u32)id >= VQ_SIZE) continue; /* not ours: nothing to re-post */
      rx_packet(rx_buf[id], len);
      vq_add(&rxq, (u16)id);
    }
    while ((id = vq_get(&evq, &len)) >= 0) {
      work = 1;
      if ((u32)id >= EV_BUFS) continue;
      if (len >= sizeof ev_buf[id] && ev_buf[id] == EVENT_TRANSPORT_RESET) transport_reset();
      vq_add(&evq, (u16)id);
    }
    if (!work) return;
    /* rx buffers first, so a device that delivers on the tx notify finds them. */
    vq_kick(&rxq);
    vq_kick(&evq);
    vq_kick(&txq);
  }
}

/* ---- hostile mode ---- */

/*
 * The guest is untrusted: these attacks let tests prove the VMM survives a guest that lies to
 * its devices. Each is done once, after the reply that announced it has left. The device may
 * stop working afterwards (that is allowed); the VMM must not crash, hang or touch memory
 * outside the guest, and other VMs must not notice.
 */
enum {
  ATTACK_DESC_OUTSIDE_RAM = 1, /* a tx descriptor pointing far beyond guest memory */
  ATTACK_DESC_LOOP = 2,        /* a descriptor chained to itself */
  ATTACK_HUGE_LENGTH = 3,      /* a 4 GiB descriptor length */
  ATTACK_BAD_AVAIL_ENTRY = 4,  /* an avail ring entry naming a descriptor beyond the queue */
  ATTACK_AVAIL_IDX_JUMP = 5,   /* avail.idx moved 1000 entries ahead of the ring */
  ATTACK_BOGUS_PACKET = 6,     /* a vsock header with unknown type/op, a lying length and credit */
  ATTACK_MMIO_SWEEP = 7,       /* every register of the device window written with all ones */
  ATTACK_PIO_SWEEP = 8,        /* every I/O port but COM1 and the power ports written */
  ATTACK_AVAIL_IDX_BACK = 9,   /* avail.idx one entry back: 65535 "new" entries across the wrap */
  ATTACK_WRAPPING_ADDR = 10,   /* a descriptor whose addr + len wraps around 2^64 into RAM */
  ATTACK_LYING_REPLIES = 11,   /* the agent's later replies carry extreme values (agent.c) */
};

void vsock_attack(u32 kind) {
  u32 id;
  switch (kind) {
  case ATTACK_DESC_OUTSIDE_RAM:
    id = tx_alloc();
    txq.r.desc[id].addr = 0x00007ff000000000ull;
    txq.r.desc[id].len = 4096;
    txq.r.desc[id].flags = 0;
    vq_add(&txq, (u16)id);
    vq_kick(&txq);
    break;
  case ATTACK_DESC_LOOP:
    id = tx_alloc();
    txq.r.desc[id].len = VSOCK_HDR_LEN;
    txq.r.desc[id].flags = 1; /* NEXT */
    txq.r.desc[id].next = (u16)id;
    vq_add(&txq, (u16)id);
    vq_kick(&txq);
    break;
  case ATTACK_HUGE_LENGTH:
    id = tx_alloc();
    txq.r.desc[id].len = 0xfffffff0u;
    vq_add(&txq, (u16)id);
    vq_kick(&txq);
    break;
  case ATTACK_BAD_AVAIL_ENTRY:
    vq_add(&txq, 0xfff0);
    vq_kick(&txq);
    break;
  case ATTACK_AVAIL_IDX_JUMP:
    txq.avail_idx += 1000;
    vq_kick(&txq);
    break;
  case ATTACK_AVAIL_IDX_BACK:
    txq.avail_idx -= 1;
    vq_kick(&txq);
    break;
  case ATTACK_WRAPPING_ADDR:
    id = tx_alloc();
    txq.r.desc[id].addr = 0xfffffffffffff000ull;
    txq.r.desc[id].len = 0x2000; /* ends at 0x1000 if the sum is not checked */
    txq.r.desc[id].flags = 0;
    vq_add(&txq, (u16)id);
    vq_kick(&txq);
    break;
  case ATTACK_BOGUS_PACKET: {
    id = tx_alloc();
    struct vsock_hdr *h = (struct vsock_hdr *)tx_buf[id];
    put_hdr(tx_buf[id], 2, 1234, 0xee, 0xffffff00u, 0);
    h->type = 0x55;
    h->buf_alloc = 0xffffffffu;
    h->fwd_cnt = 0xffffffffu;
    h->src_cid = 0xffffffffffffffffull;
    tx_submit(id, VSOCK_HDR_LEN + 64);
    vq_kick(&txq);
    break;
  }
  case ATTACK_MMIO_SWEEP:
    for (u32 off = 0; off < 0x200; off += 4) {
      (void)mmio_read(mmio_base + off);
      mmio_write(mmio_base + off, 0xffffffffu);
    }
    /* and the next (unused) device slot */
    for (u32 off = 0; off < 0x200; off += 4) mmio_write(mmio_base + 0x1000 + off, 0xffffffffu);
    break;
  case ATTACK_LYING_REPLIES:
    agent_lying = 1;
    break;
  case ATTACK_PIO_SWEEP:
    for (u32 port = 0; port < 0x10000; port++) {
      if ((port >= PORT_COM1 && port < PORT_COM1 + 8) || (port >= 0x600 && port < 0x610) || port == 0x64 ||
          port == 0xcf9)
        continue;
      outb((u16)port, 0xff);
    }
    break;
  default:
    net_attack(kind); /* 12...15: the NIC's queues */
    break;
  }
  console_write("hostile: attack done\n");
}
