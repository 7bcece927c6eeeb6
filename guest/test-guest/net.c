/*
 * virtio-net driver and a minimal IPv4 stack: ARP replies, ICMP echo, a UDP echo port and a
 * TCP port that sends a fixed banner. Polled, like everything in this guest.
 *
 * Every reply is the request turned around in a tx buffer: swapping source and destination
 * (MACs, addresses, ports) leaves the IPv4 and UDP checksums valid, so only ICMP (one word
 * changes) and TCP (new header) touch a checksum. The TCP port is stateless: the reply to each
 * segment follows from that segment alone (docs/networking.md).
 */
#include "virtio.h"

#define VIRTIO_ID_NET 1
#define F_MAC (1u << 5) /* VIRTIO_NET_F_MAC: the config space holds the MAC */
#define NET_HDR_LEN 12 /* virtio_net_hdr with num_buffers (VERSION_1) */
#define NET_BUF_LEN 2048
#define ETH_HLEN 14
#define GUEST_IP 0xac100002u /* 172.16.0.2, the same in every clone */
#define UDP_ECHO_PORT 7
#define TCP_BANNER_PORT 13
#define TCP_ISN 0x464b4430u /* our initial sequence number: the port is stateless */

static const char banner[] = "forkd-test-guest net 1\n";

static struct vq rxq, txq;
static u8 rx_buf[VQ_SIZE][NET_BUF_LEN] NOINIT __attribute__((aligned(4096)));
static u8 tx_buf[VQ_SIZE][NET_BUF_LEN] NOINIT __attribute__((aligned(4096)));
static u8 tx_busy[VQ_SIZE];
static u8 net_up;
static u8 mac[6];
static u64 net_base;

static inline u16 be16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static inline u32 be32(const u8 *p) { return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3]; }
static inline void put16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static inline void put32(u8 *p, u32 v) { p[0] = (u8)(v >> 24); p[1] = (u8)(v >> 16); p[2] = (u8)(v >> 8); p[3] = (u8)v; }

static inline void swap(u8 *a, u8 *b, u32 n) {
  u8 t[6];
  memcpy(t, a, n);
  memcpy(a, b, n);
  memcpy(b, t, n);
}

/* One's-complement sum of big-endian 16-bit words, folded (RFC 1071). */
static u16 csum(const u8 *p, u32 len, u32 sum) {
  for (; len > 1; p += 2, len -= 2) sum += (u32)(p[0] << 8 | p[1]);
  if (len) sum += (u32)p[0] << 8;
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return (u16)~sum;
}

const char *net_init(u64 base) {
  const char *err = virtio_begin_features(base, VIRTIO_ID_NET, F_MAC);
  if (err) return err;
  net_base = base;
  for (u32 i = 0; i < 6; i++) mac[i] = *(volatile u8 *)(base + VIRTIO_MMIO_CONFIG + i);
  if ((err = vq_setup(&rxq, base, 0))) return err;
  if ((err = vq_setup(&txq, base, 1))) return err;
  for (u16 i = 0; i < VQ_SIZE; i++) {
    rxq.r.desc[i].addr = (u64)rx_buf[i];
    rxq.r.desc[i].len = NET_BUF_LEN;
    rxq.r.desc[i].flags = VRING_DESC_F_WRITE;
    vq_add(&rxq, i);
    txq.r.desc[i].addr = (u64)tx_buf[i];
    txq.r.desc[i].flags = 0;
  }
  virtio_driver_ok(base);
  vq_kick(&rxq);
  net_up = 1;
  return 0;
}

/* A free tx buffer, or -1 when the device holds all of them (the reply is then dropped, as a
 * busy wire would; the peer retries). */
static int tx_get(void) {
  u32 len;
  int id;
  while ((id = vq_get(&txq, &len)) >= 0)
    if (id < VQ_SIZE) tx_busy[id] = 0;
  for (int i = 0; i < VQ_SIZE; i++)
    if (!tx_busy[i]) return i;
  return -1;
}

static void tx_send(int id, u32 frame_len) {
  txq.r.desc[id].len = NET_HDR_LEN + frame_len;
  tx_busy[id] = 1;
  vq_add(&txq, (u16)id);
}

/* The reply frame starts as a copy of the request with the Ethernet addresses swapped. */
static u8 *reply_frame(int id, const u8 *f, u32 len) {
  u8 *out = tx_buf[id] + NET_HDR_LEN;
  memset(tx_buf[id], 0, NET_HDR_LEN);
  memcpy(out, f, len);
  memcpy(out, f + 6, 6);
  memcpy(out + 6, mac, 6);
  return out;
}

static void arp(const u8 *f, u32 len) {
  const u8 *a = f + ETH_HLEN;
  /* Ethernet/IPv4 request for our address. */
  if (len < ETH_HLEN + 28 || be16(a) != 1 || be16(a + 2) != 0x0800 || a[4] != 6 || a[5] != 4 ||
      be16(a + 6) != 1 || be32(a + 24) != GUEST_IP)
    return;
  int id = tx_get();
  if (id < 0) return;
  u8 *o = reply_frame(id, f, ETH_HLEN + 28) + ETH_HLEN;
  put16(o + 6, 2);
  memcpy(o + 18, a + 8, 10); /* target = the asker's MAC and IP */
  memcpy(o + 8, mac, 6);
  put32(o + 14, GUEST_IP);
  tx_send(id, ETH_HLEN + 28);
}

/* TCP reply to `f`: flags, our seq/ack, optional payload; the IPv4 header is rebuilt. */
static void tcp_reply(const u8 *f, u32 ihl, u8 flags, u32 seq, u32 ack, const char *data, u32 dlen) {
  int id = tx_get();
  if (id < 0) return;
  u8 *o = reply_frame(id, f, ETH_HLEN + ihl + 20);
  u8 *ip = o + ETH_HLEN, *t = ip + ihl;
  u32 total = ihl + 20 + dlen;
  swap(ip + 12, ip + 16, 4);
  put16(ip + 2, (u16)total);
  ip[8] = 64;
  put16(ip + 10, 0);
  put16(ip + 10, csum(ip, ihl, 0));
  swap(t, t + 2, 2);
  put32(t + 4, seq);
  put32(t + 8, ack);
  t[12] = 5 << 4; /* no options */
  t[13] = flags;
  put16(t + 14, 8192);
  put16(t + 16, 0);
  put16(t + 18, 0);
  memcpy(t + 20, data, dlen);
  /* Pseudo-header: addresses, protocol, TCP length. */
  u32 sum = 6 + 20 + dlen;
  for (u32 i = 12; i < 20; i += 2) sum += be16(ip + i);
  put16(t + 16, csum(t, 20 + dlen, sum));
  tx_send(id, ETH_HLEN + total);
}

enum { FIN = 1, SYN = 2, RST = 4, PSH = 8, ACK = 16 };

static void tcp(const u8 *f, u32 ihl, u32 ip_len) {
  const u8 *t = f + ETH_HLEN + ihl;
  if (ip_len < ihl + 20) return;
  u32 doff = (u32)(t[12] >> 4) * 4;
  if (doff < 20 || ip_len < ihl + doff) return;
  u32 payload = ip_len - ihl - doff;
  u8 flags = t[13];
  u32 seq = be32(t + 4), ack = be32(t + 8);
  if (flags & RST) return;
  if (be16(t + 2) != TCP_BANNER_PORT) {
    /* Closed port: RST (RFC 793 §3.4). */
    if (flags & ACK) tcp_reply(f, ihl, RST, ack, 0, 0, 0);
    else tcp_reply(f, ihl, RST | ACK, 0, seq + payload + (flags & SYN ? 1 : 0), 0, 0);
    return;
  }
  if (flags & SYN) {
    tcp_reply(f, ihl, SYN | ACK, TCP_ISN, seq + 1, 0, 0);
  } else if (ack == TCP_ISN + 1 && !payload && !(flags & FIN)) {
    /* The handshake's last ACK: the banner and our FIN in one segment. */
    tcp_reply(f, ihl, PSH | ACK | FIN, TCP_ISN + 1, seq, banner, sizeof banner - 1);
  } else if (payload || (flags & FIN)) {
    /* Data or the peer's FIN: acknowledge it (our FIN went with the banner). */
    tcp_reply(f, ihl, ACK, ack, seq + payload + (flags & FIN ? 1 : 0), 0, 0);
  }
}

static void ipv4(const u8 *f, u32 len) {
  const u8 *ip = f + ETH_HLEN;
  if (len < ETH_HLEN + 20 || (ip[0] >> 4) != 4) return;
  u32 ihl = (u32)(ip[0] & 15) * 4, ip_len = be16(ip + 2);
  if (ihl < 20 || ip_len < ihl || ETH_HLEN + ip_len > len || be32(ip + 16) != GUEST_IP) return;
  if (be16(ip + 6) & 0x3fff) return; /* fragments are not reassembled */
  u8 proto = ip[9];
  if (proto == 6) {
    tcp(f, ihl, ip_len);
    return;
  }
  const u8 *l4 = ip + ihl;
  u32 l4_len = ip_len - ihl;
  if (proto == 1) {
    if (l4_len < 8 || l4[0] != 8 || l4[1] != 0) return; /* echo request */
  } else if (proto == 17) {
    if (l4_len < 8 || be16(l4 + 2) != UDP_ECHO_PORT) return;
  } else {
    return;
  }
  int id = tx_get();
  if (id < 0) return;
  u8 *o = reply_frame(id, f, ETH_HLEN + ip_len);
  u8 *rip = o + ETH_HLEN, *r4 = rip + ihl;
  swap(rip + 12, rip + 16, 4);
  if (proto == 1) {
    /* Type 8 → 0: add the removed word back into the checksum (RFC 1624). */
    r4[0] = 0;
    u32 c = (u32)be16(r4 + 2) + 0x0800;
    put16(r4 + 2, (u16)(c + (c >> 16)));
  } else {
    swap(r4, r4 + 2, 2);
  }
  tx_send(id, ETH_HLEN + ip_len);
}

void net_poll(void) {
  if (!net_up) return;
  u32 len;
  int id;
  while ((id = vq_get(&rxq, &len)) >= 0) {
    if (id >= VQ_SIZE) continue;
    if (len > NET_HDR_LEN + ETH_HLEN && len <= NET_BUF_LEN) {
      const u8 *f = rx_buf[id] + NET_HDR_LEN;
      u32 flen = len - NET_HDR_LEN;
      u16 type = be16(f + 12);
      if (type == 0x0800) ipv4(f, flen);
      else if (type == 0x0806) arp(f, flen);
    }
    vq_add(&rxq, (u16)id);
  }
  vq_kick(&rxq);
  vq_kick(&txq);
}

/* ---- hostile mode: the NIC's queues (kinds 12...15, see vsock.c for the rest) ---- */

void net_attack(u32 kind) {
  if (!net_up) return;
  int id = tx_get();
  if (id < 0) return;
  switch (kind) {
  case 12: /* a tx descriptor far outside guest RAM */
    txq.r.desc[id].addr = 0x00007ff000000000ull;
    txq.r.desc[id].len = 1024;
    vq_add(&txq, (u16)id);
    break;
  case 13: /* rx avail.idx moved behind what the device consumed: ~65535 "new" buffers across the
            * u16 wrap (the device has consumed at most the VQ_SIZE buffers posted at start) */
    rxq.avail_idx -= VQ_SIZE + 1;
    vq_kick(&rxq);
    return;
  case 14: /* a tx descriptor chained to itself */
    txq.r.desc[id].len = 64;
    txq.r.desc[id].flags = 1; /* NEXT */
    txq.r.desc[id].next = (u16)id;
    vq_add(&txq, (u16)id);
    break;
  case 15: /* a tx chain too short for the virtio-net header and an Ethernet header */
    txq.r.desc[id].len = 5;
    vq_add(&txq, (u16)id);
    break;
  default:
    return;
  }
  vq_kick(&txq);
}
