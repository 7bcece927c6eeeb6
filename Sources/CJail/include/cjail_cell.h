// The filesystem view of a jailed process. Every call returns 0 or -1 with errno set.
#pragma once

// unshare(CLONE_NEWNS), then makes every mount of the new namespace private so nothing mounted
// later on the host propagates in (and nothing from here propagates out). The process must be
// single-threaded: a new mount namespace applies to the calling thread only.
int cjail_private_mount_namespace(void);

// Bind-mounts `source` (a host directory) onto `target` (a directory relative to the current
// directory), read-write, without following a symlink at `target`.
int cjail_bind(const char *source, const char *target);

// Makes the current directory the process's root: chroot(".") then chdir("/").
int cjail_root_here(void);

// unshare(CLONE_NEWUSER): what a jailed process must never manage (a chrooted process gets
// EPERM). For the jail's probes.
int cjail_try_user_namespace(void);
