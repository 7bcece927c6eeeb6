#include "cseccomp_requests.h"

#include <linux/kvm.h>
#include <linux/types.h>
#include <linux/userfaultfd.h>

// UFFDIO_MOVE (Linux 6.8) is newer than Debian 12's kernel headers: same layout as the kernel's.
#ifndef UFFDIO_MOVE
struct cseccomp_uffdio_move {
  __u64 dst, src, len, mode;
  __s64 move;
};
#define UFFDIO_MOVE _IOWR(UFFDIO, 0x05, struct cseccomp_uffdio_move)
#endif

const unsigned long CSECCOMP_UFFDIO_API = UFFDIO_API;
const unsigned long CSECCOMP_UFFDIO_COPY = UFFDIO_COPY;
const unsigned long CSECCOMP_UFFDIO_ZEROPAGE = UFFDIO_ZEROPAGE;
const unsigned long CSECCOMP_UFFDIO_WAKE = UFFDIO_WAKE;
const unsigned long CSECCOMP_UFFDIO_CONTINUE = UFFDIO_CONTINUE;
const unsigned long CSECCOMP_UFFDIO_WRITEPROTECT = UFFDIO_WRITEPROTECT;
const unsigned long CSECCOMP_UFFDIO_MOVE = UFFDIO_MOVE;
const unsigned long CSECCOMP_KVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
const unsigned long CSECCOMP_KVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;
const unsigned long CSECCOMP_KVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
const unsigned long CSECCOMP_KVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
const unsigned long CSECCOMP_KVM_GET_IRQCHIP = KVM_GET_IRQCHIP;
const unsigned long CSECCOMP_KVM_SET_IRQCHIP = KVM_SET_IRQCHIP;
const unsigned long CSECCOMP_KVM_GET_PIT2 = KVM_GET_PIT2;
const unsigned long CSECCOMP_KVM_SET_PIT2 = KVM_SET_PIT2;
const unsigned long CSECCOMP_KVM_GET_CLOCK = KVM_GET_CLOCK;
const unsigned long CSECCOMP_KVM_SET_CLOCK = KVM_SET_CLOCK;
const unsigned long CSECCOMP_KVM_RUN = KVM_RUN;
const unsigned long CSECCOMP_KVM_GET_REGS = KVM_GET_REGS;
const unsigned long CSECCOMP_KVM_SET_REGS = KVM_SET_REGS;
const unsigned long CSECCOMP_KVM_GET_SREGS = KVM_GET_SREGS;
const unsigned long CSECCOMP_KVM_SET_SREGS = KVM_SET_SREGS;
const unsigned long CSECCOMP_KVM_GET_FPU = KVM_GET_FPU;
const unsigned long CSECCOMP_KVM_SET_FPU = KVM_SET_FPU;
const unsigned long CSECCOMP_KVM_GET_XSAVE = KVM_GET_XSAVE;
const unsigned long CSECCOMP_KVM_SET_XSAVE = KVM_SET_XSAVE;
const unsigned long CSECCOMP_KVM_GET_XCRS = KVM_GET_XCRS;
const unsigned long CSECCOMP_KVM_SET_XCRS = KVM_SET_XCRS;
const unsigned long CSECCOMP_KVM_GET_MSRS = KVM_GET_MSRS;
const unsigned long CSECCOMP_KVM_SET_MSRS = KVM_SET_MSRS;
const unsigned long CSECCOMP_KVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
const unsigned long CSECCOMP_KVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
const unsigned long CSECCOMP_KVM_GET_MP_STATE = KVM_GET_MP_STATE;
const unsigned long CSECCOMP_KVM_SET_MP_STATE = KVM_SET_MP_STATE;
const unsigned long CSECCOMP_KVM_GET_DEBUGREGS = KVM_GET_DEBUGREGS;
const unsigned long CSECCOMP_KVM_SET_DEBUGREGS = KVM_SET_DEBUGREGS;
const unsigned long CSECCOMP_KVM_GET_LAPIC = KVM_GET_LAPIC;
const unsigned long CSECCOMP_KVM_SET_LAPIC = KVM_SET_LAPIC;
const unsigned long CSECCOMP_KVM_GET_CPUID2 = KVM_GET_CPUID2;
const unsigned long CSECCOMP_KVM_SET_CPUID2 = KVM_SET_CPUID2;
