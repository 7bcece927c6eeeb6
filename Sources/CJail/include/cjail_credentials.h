// Who a jailed process is. Every call returns 0 or -1 with errno set.
#pragma once
#include <sys/types.h>

// Empties the ambient set. The bounding set is left as it is: it only limits what execve can
// grant, and with no_new_privs (and execve forbidden by seccomp) execve grants nothing; dropping
// it costs one credential commit per capability (~50 us per process, docs/jail.md).
int cjail_clear_ambient_capabilities(void);

// setgroups(0), setresgid(gid x3), setresuid(uid x3): with no SECBIT_KEEP_CAPS, a uid change
// from 0 clears the permitted and effective sets too.
int cjail_become(uid_t uid, gid_t gid);

// 1 if any capability is left in the effective, permitted or inheritable set, 0 if none, -1 on error.
int cjail_has_capabilities(void);

// PR_SET_NO_NEW_PRIVS: execve can never grant privileges again (setuid bits, file capabilities).
int cjail_no_new_privs(void);
