/* virtio-mmio (version 2, "modern") device initialisation, virtio 1.x §3.1 and §4.2. */
#include "virtio.h"

enum {
  REG_MAGIC = 0x000,
  REG_VERSION = 0x004,
  REG_DEVICE_ID = 0x008,
  REG_DEVICE_FEATURES = 0x010,
  REG_DEVICE_FEATURES_SEL = 0x014,
  REG_DRIVER_FEATURES = 0x020,
  REG_DRIVER_FEATURES_SEL = 0x024,
  REG_QUEUE_SEL = 0x030,
  REG_QUEUE_NUM_MAX = 0x034,
  REG_QUEUE_NUM = 0x038,
  REG_QUEUE_READY = 0x044,
  REG_QUEUE_NOTIFY = 0x050,
  REG_STATUS = 0x070,
  REG_QUEUE_DESC_LOW = 0x080,
  REG_QUEUE_DESC_HIGH = 0x084,
  REG_QUEUE_DRIVER_LOW = 0x090,
  REG_QUEUE_DRIVER_HIGH = 0x094,
  REG_QUEUE_DEVICE_LOW = 0x0a0,
  REG_QUEUE_DEVICE_HIGH = 0x0a4,
};

enum {
  STATUS_ACKNOWLEDGE = 1,
  STATUS_DRIVER = 2,
  STATUS_DRIVER_OK = 4,
  STATUS_FEATURES_OK = 8,
};

#define MMIO_MAGIC 0x74726976 /* "virt" */
#define F_VERSION_1_HI 1u     /* feature bit 32: bit 0 of feature word 1 */

const char *virtio_begin(u64 base, u32 device_id) { return virtio_begin_features(base, device_id, 0); }

const char *virtio_begin_features(u64 base, u32 device_id, u32 features_lo) {
  if (mmio_read(base + REG_MAGIC) != MMIO_MAGIC) return "virtio-mmio: bad magic";
  if (mmio_read(base + REG_VERSION) != 2) return "virtio-mmio: not version 2";
  if (mmio_read(base + REG_DEVICE_ID) != device_id) return "virtio-mmio: not the expected device id";
  mmio_write(base + REG_STATUS, 0); /* reset */
  mmio_write(base + REG_STATUS, STATUS_ACKNOWLEDGE);
  mmio_write(base + REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  mmio_write(base + REG_DEVICE_FEATURES_SEL, 1);
  if (!(mmio_read(base + REG_DEVICE_FEATURES) & F_VERSION_1_HI))
    return "virtio-mmio: VERSION_1 not offered";
  mmio_write(base + REG_DEVICE_FEATURES_SEL, 0);
  if ((mmio_read(base + REG_DEVICE_FEATURES) & features_lo) != features_lo)
    return "virtio-mmio: a needed feature is not offered";
  mmio_write(base + REG_DRIVER_FEATURES_SEL, 0);
  mmio_write(base + REG_DRIVER_FEATURES, features_lo);
  mmio_write(base + REG_DRIVER_FEATURES_SEL, 1);
  mmio_write(base + REG_DRIVER_FEATURES, F_VERSION_1_HI);
  mmio_write(base + REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
  if (!(mmio_read(base + REG_STATUS) & STATUS_FEATURES_OK))
    return "virtio-mmio: features not accepted";
  return 0;
}

const char *vq_setup(struct vq *q, u64 base, u16 index) {
  struct vring *r = &q->r;
  mmio_write(base + REG_QUEUE_SEL, index);
  if (mmio_read(base + REG_QUEUE_READY)) return "virtio-mmio: queue already in use";
  if (mmio_read(base + REG_QUEUE_NUM_MAX) < VQ_SIZE) return "virtio-mmio: queue too small";
  mmio_write(base + REG_QUEUE_NUM, VQ_SIZE);
  u64 desc = (u64)r->desc, avail = (u64)&r->avail, used = (u64)&r->used;
  mmio_write(base + REG_QUEUE_DESC_LOW, (u32)desc);
  mmio_write(base + REG_QUEUE_DESC_HIGH, (u32)(desc >> 32));
  mmio_write(base + REG_QUEUE_DRIVER_LOW, (u32)avail);
  mmio_write(base + REG_QUEUE_DRIVER_HIGH, (u32)(avail >> 32));
  mmio_write(base + REG_QUEUE_DEVICE_LOW, (u32)used);
  mmio_write(base + REG_QUEUE_DEVICE_HIGH, (u32)(used >> 32));
  /* We poll; tell the device not to bother with interrupts. */
  r->avail.flags = VRING_AVAIL_F_NO_INTERRUPT;
  mmio_write(base + REG_QUEUE_READY, 1);
  q->notify = base + REG_QUEUE_NOTIFY;
  q->index = index;
  q->last_used = 0;
  q->avail_idx = 0;
  return 0;
}

void virtio_driver_ok(u64 base) {
  mmio_write(base + REG_STATUS,
             STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
}
