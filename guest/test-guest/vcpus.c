/*
 * Every vCPU runs (docs/test-guest.md "vCPUs"). The first vCPU to reach _start serves the
 * agent; each other one takes an index in start.S and loops: count a run, copy the mailbox to
 * its ack slot, hlt. There are no interrupts on PVM, so vCPU 0 wakes them through port 0x606
 * (the VMM resumes every vCPU parked in hlt) and waits, bounded, for each to answer.
 */
#include "guest.h"

/* The AP loop's data is in .data (start.S): _start's .bss zeroing must not race an AP. */
extern volatile u64 vcpu_runs[MAX_VCPUS];
extern volatile u64 vcpu_ack[MAX_VCPUS];
extern volatile u64 vcpu_mailbox;

u32 vcpu_count;

/* About 1 s of spinning on PVM (~25 µs a turn): an AP that has not answered by then is reported
 * as not running. A running AP answers within a host thread wake-up. */
#define SPIN_LIMIT 40000u
#define REKICK_EVERY 1024u

static int all_acked(u64 seq) {
  for (u32 i = 1; i < vcpu_count; i++)
    if (vcpu_ack[i] != seq) return 0;
  return 1;
}

u32 vcpu_status(u8 *out) {
  u64 seq = vcpu_mailbox + 1;
  vcpu_mailbox = seq;
  mb();
  for (u32 spin = 0; spin < SPIN_LIMIT && !all_acked(seq); spin++) {
    if (spin % REKICK_EVERY == 0) outb(PORT_VCPU_WAKE, 1);
    __asm__ volatile("pause" ::: "memory");
  }
  vcpu_runs[0]++;
  st32(out, vcpu_count);
  for (u32 i = 0; i < vcpu_count; i++) {
    out[4 + i * 9] = i == 0 || vcpu_ack[i] == seq;
    st64(out + 5 + i * 9, vcpu_runs[i]);
  }
  return 4 + vcpu_count * 9;
}
