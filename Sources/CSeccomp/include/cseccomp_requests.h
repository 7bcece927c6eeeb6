// ioctl request numbers the role policies allow, re-exported from the kernel headers (Swift cannot
// import the _IOWR() macros). A seccomp rule compares them with ioctl's argument 1 masked to 32 bits.
// Defined in cseccomp_requests.c so this header pulls in no kernel structs (CKVM and CUffd import
// the same headers for their own purposes).
#pragma once

// userfaultfd (the pager).
extern const unsigned long CSECCOMP_UFFDIO_API;
extern const unsigned long CSECCOMP_UFFDIO_COPY;
extern const unsigned long CSECCOMP_UFFDIO_ZEROPAGE;
extern const unsigned long CSECCOMP_UFFDIO_WAKE;
extern const unsigned long CSECCOMP_UFFDIO_CONTINUE;
extern const unsigned long CSECCOMP_UFFDIO_WRITEPROTECT;
extern const unsigned long CSECCOMP_UFFDIO_MOVE;

// KVM system and VM requests a running VMM still issues.
extern const unsigned long CSECCOMP_KVM_CHECK_EXTENSION;
extern const unsigned long CSECCOMP_KVM_GET_MSR_INDEX_LIST;
extern const unsigned long CSECCOMP_KVM_GET_SUPPORTED_CPUID;
extern const unsigned long CSECCOMP_KVM_SET_USER_MEMORY_REGION;
extern const unsigned long CSECCOMP_KVM_GET_IRQCHIP;
extern const unsigned long CSECCOMP_KVM_SET_IRQCHIP;
extern const unsigned long CSECCOMP_KVM_GET_PIT2;
extern const unsigned long CSECCOMP_KVM_SET_PIT2;
extern const unsigned long CSECCOMP_KVM_GET_CLOCK;
extern const unsigned long CSECCOMP_KVM_SET_CLOCK;

// KVM vCPU requests: running, and reading/writing the state a snapshot saves and a restore applies.
extern const unsigned long CSECCOMP_KVM_RUN;
extern const unsigned long CSECCOMP_KVM_GET_REGS;
extern const unsigned long CSECCOMP_KVM_SET_REGS;
extern const unsigned long CSECCOMP_KVM_GET_SREGS;
extern const unsigned long CSECCOMP_KVM_SET_SREGS;
extern const unsigned long CSECCOMP_KVM_GET_FPU;
extern const unsigned long CSECCOMP_KVM_SET_FPU;
extern const unsigned long CSECCOMP_KVM_GET_XSAVE;
extern const unsigned long CSECCOMP_KVM_SET_XSAVE;
extern const unsigned long CSECCOMP_KVM_GET_XCRS;
extern const unsigned long CSECCOMP_KVM_SET_XCRS;
extern const unsigned long CSECCOMP_KVM_GET_MSRS;
extern const unsigned long CSECCOMP_KVM_SET_MSRS;
extern const unsigned long CSECCOMP_KVM_GET_VCPU_EVENTS;
extern const unsigned long CSECCOMP_KVM_SET_VCPU_EVENTS;
extern const unsigned long CSECCOMP_KVM_GET_MP_STATE;
extern const unsigned long CSECCOMP_KVM_SET_MP_STATE;
extern const unsigned long CSECCOMP_KVM_GET_DEBUGREGS;
extern const unsigned long CSECCOMP_KVM_SET_DEBUGREGS;
extern const unsigned long CSECCOMP_KVM_GET_LAPIC;
extern const unsigned long CSECCOMP_KVM_SET_LAPIC;
extern const unsigned long CSECCOMP_KVM_GET_CPUID2;
extern const unsigned long CSECCOMP_KVM_SET_CPUID2;
