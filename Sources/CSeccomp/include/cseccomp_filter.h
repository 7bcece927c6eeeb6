// Building and loading a seccomp allow-list with libseccomp, through non-variadic calls with plain C
// types (Swift cannot call the variadic seccomp_rule_add or prctl, and never sees libseccomp's
// headers). Every function returning int returns 0 on success or a negative errno.
#pragma once
#include <stdint.h>

/// What the filter does with a system call no rule allows.
enum {
  CSECCOMP_ACTION_KILL_PROCESS = 0,  // SCMP_ACT_KILL_PROCESS: the whole process dies from SIGSYS
  CSECCOMP_ACTION_ERRNO = 1,         // SCMP_ACT_ERRNO(errno_value): the call fails
  CSECCOMP_ACTION_LOG = 2,           // SCMP_ACT_LOG: the call runs and the kernel logs it
};

/// How cseccomp_allow_if compares one system-call argument.
enum {
  CSECCOMP_CMP_EQ = 0,         // arg == value
  CSECCOMP_CMP_MASKED_EQ = 1,  // (arg & mask) == value
};

/// A filter under construction (libseccomp's scmp_filter_ctx).
typedef struct cseccomp_filter cseccomp_filter;

/// A new filter for the native architecture with `action` for every call no rule allows (and for
/// calls made through another architecture's ABI). Loading it synchronises every thread (TSYNC).
/// Returns NULL with *error set to a negative errno on failure.
cseccomp_filter *cseccomp_filter_new(int action, int errno_value, int *error);

/// Frees the filter (a loaded filter stays in force).
void cseccomp_filter_free(cseccomp_filter *filter);

/// The native architecture's number of system call `name`, or -1 when it has none.
int cseccomp_syscall_number(const char *name);

/// Allows system call `nr` unconditionally.
int cseccomp_allow(cseccomp_filter *filter, int nr);

/// Allows system call `nr` when argument `arg` (0...5) compares as `op` says. Several rules for the
/// same call are alternatives (any of them allows it). `mask` is ignored by CSECCOMP_CMP_EQ.
int cseccomp_allow_if(cseccomp_filter *filter, int nr, unsigned arg, int op, uint64_t mask, uint64_t value);

/// Loads the filter into the kernel for the calling thread and, with TSYNC, every other thread.
/// Returns -ESRCH if a thread could not be synchronised.
int cseccomp_filter_load(cseccomp_filter *filter);

/// prctl(PR_SET_NO_NEW_PRIVS, 1): required to load a filter without CAP_SYS_ADMIN; irreversible.
int cseccomp_set_no_new_privs(void);

/// The libseccomp version loaded at run time, as major * 10000 + minor * 100 + micro.
int cseccomp_library_version(void);

/// Writes the filter's BPF program (struct sock_filter instructions, native byte order) to `fd`.
int cseccomp_filter_export_bpf(cseccomp_filter *filter, int fd);
