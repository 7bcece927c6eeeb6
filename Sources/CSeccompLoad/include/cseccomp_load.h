// Loading a precompiled seccomp BPF program (no libseccomp at run time): the per-child processes
// load the filters forkd-seccomp-compile produced at build time, in microseconds.
#pragma once
#include <stddef.h>

/// Sets PR_SET_NO_NEW_PRIVS and installs `count` BPF instructions (struct sock_filter, 8 bytes
/// each) with SECCOMP_FILTER_FLAG_TSYNC. Returns 0, a negative errno, or -ESRCH when a thread
/// could not be synchronised.
int cseccomp_load_program(const void *instructions, size_t count);

/// 1 when this code was compiled with AddressSanitizer or ThreadSanitizer (scripts/sanitize),
/// whose runtimes make system calls the shipped role filters do not allow.
int cseccomp_sanitizer_runtime(void);
