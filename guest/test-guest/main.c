/* forkd test guest: boot, console, power-off and the idle loop. */
#include "guest.h"

#define GUEST_VERSION "1"

extern u8 __image_end[];

u64 data_pages;

void console_write(const char *s) {
  while (*s) outb(PORT_COM1, (u8)*s++);
}

static void console_u64(u64 v) {
  char buf[21];
  char *p = buf + sizeof buf - 1;
  *p = 0;
  do *--p = (char)('0' + v % 10); /* constant divisor: compiled to a multiply, never #DE */
  while (v /= 10);
  console_write(p);
}

void power_off(u8 code) {
  outb(PORT_EXIT_CODE, code);
  for (;;) {
    outw(PORT_PM1A_CNT, PM1A_SLP_EN);
    hlt();
  }
}

void fatal(const char *msg) {
  console_write("forkd-test-guest: ");
  console_write(msg);
  console_write("\n");
  power_off(0xff);
}

/* Trust RDI only if reading it cannot fault (identity map covers 4 GiB). */
static const struct boot_info *boot_info_at(u64 rdi) {
  if (rdi && !(rdi & 7) && rdi < MAPPED_LIMIT - sizeof(struct boot_info))
    return (const struct boot_info *)rdi;
  return (const struct boot_info *)BOOT_INFO_ADDR;
}

__attribute__((noreturn)) void guest_main(u64 rdi) {
  const struct boot_info *bi = boot_info_at(rdi);
  if (bi->magic != BOOT_MAGIC) fatal("bad boot info magic");
  if (bi->version != 1) fatal("unsupported boot info version");
  if (bi->mem_size < (u64)__image_end) fatal("guest memory smaller than the image");
  u64 mmio = bi->virtio_mmio_base;
  if (!bi->virtio_mmio_count || (mmio & 0xfff) || mmio >= MAPPED_LIMIT - 0x1000)
    fatal("no usable virtio-mmio device");

  /* The data area ends at the end of RAM, the MMIO window or the identity map. */
  u64 end = bi->mem_size;
  if (end > mmio) end = mmio;
  data_pages = end > DATA_BASE ? (end - DATA_BASE) / PAGE_SIZE : 0;
  vcpu_count = bi->vcpu_count < MAX_VCPUS ? bi->vcpu_count : MAX_VCPUS;

  vsock_init(mmio, bi->guest_cid);
  /* A NIC, when the VMM gave one, is in the third window (docs/networking.md). */
  if (bi->virtio_mmio_count >= 3 && mmio_read(mmio + 0x2008) == 1) {
    const char *err = net_init(mmio + 0x2000);
    if (err) fatal(err);
  }
  /* "ready": the rx queue is live, a host may connect now. */
  console_write("forkd-test-guest " GUEST_VERSION " ready cid=");
  console_u64(bi->guest_cid);
  console_write("\n");

  for (;;) {
    vsock_poll();
    net_poll();
    hlt(); /* the VMM resumes us when a device has work */
  }
}
