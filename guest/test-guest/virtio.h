/* Minimal virtio 1.x MMIO transport with split virtqueues, polled (no interrupts). */
#ifndef FORKD_VIRTIO_H
#define FORKD_VIRTIO_H

#include "guest.h"

#define VIRTIO_MMIO_CONFIG 0x100 /* device-specific configuration space */
#define VQ_SIZE 16 /* entries per queue; a power of two, so ring slots are idx & (VQ_SIZE-1) */

#define VRING_DESC_F_WRITE 2
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY 1

struct vring_desc {
  u64 addr;
  u32 len;
  u16 flags;
  u16 next;
};

struct vring_avail {
  u16 flags;
  u16 idx;
  u16 ring[VQ_SIZE];
  u16 used_event;
};

struct vring_used_elem {
  u32 id;
  u32 len;
};

struct vring_used {
  u16 flags;
  u16 idx;
  struct vring_used_elem ring[VQ_SIZE];
  u16 avail_event;
};

/* One queue's three areas, laid out with the alignments virtio 1.x requires (16/2/4). */
struct vring {
  struct vring_desc desc[VQ_SIZE];
  struct vring_avail avail;
  struct vring_used used __attribute__((aligned(4)));
} __attribute__((aligned(16)));

/* The ring lives inside the (static) vq, so its address is a link-time constant. */
struct vq {
  struct vring r;
  u64 notify; /* address of QueueNotify */
  u16 index;
  u16 last_used; /* next used entry to consume */
  u16 avail_idx; /* driver's avail idx, published by vq_kick */
};

/* Device setup; each returns an error message or 0. */
const char *virtio_begin(u64 base, u32 device_id);
/* The same, also accepting device feature bits 0..31 `features_lo` (all must be offered). */
const char *virtio_begin_features(u64 base, u32 device_id, u32 features_lo);
const char *vq_setup(struct vq *q, u64 base, u16 index);
void virtio_driver_ok(u64 base);

/* Make descriptor `id` available (published on the next vq_kick). */
static inline void vq_add(struct vq *q, u16 id) {
  q->r.avail.ring[q->avail_idx & (VQ_SIZE - 1)] = id;
  q->avail_idx++;
}

/* Next used descriptor id, or -1 when the ring is empty. The device writes the used ring
 * behind our back; an id it made up comes back as VQ_SIZE, which callers skip. */
static inline int vq_get(struct vq *q, u32 *len) {
  volatile struct vring_used *u = &q->r.used;
  if (u->idx == q->last_used) return -1;
  barrier(); /* x86 keeps loads ordered; keep the compiler from hoisting the element load */
  volatile struct vring_used_elem *e = &u->ring[q->last_used & (VQ_SIZE - 1)];
  q->last_used++;
  *len = e->len;
  u32 id = e->id;
  return id < VQ_SIZE ? (int)id : VQ_SIZE;
}

/* Publish new avail entries and notify unless the device asked not to be. */
static inline void vq_kick(struct vq *q) {
  volatile struct vring_avail *a = &q->r.avail;
  if (a->idx == q->avail_idx) return;
  barrier(); /* ring entries before idx (x86 keeps stores ordered) */
  a->idx = q->avail_idx;
  mb(); /* idx store before the flags load, or a device that just cleared NO_NOTIFY is missed */
  if (!(((volatile struct vring_used *)&q->r.used)->flags & VRING_USED_F_NO_NOTIFY))
    mmio_write(q->notify, q->index);
}

#endif
