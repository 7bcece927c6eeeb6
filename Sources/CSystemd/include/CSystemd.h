// CSystemd: the libsystemd calls forkd-supervisor uses, behind non-variadic functions.
// Build hosts need libsystemd-dev (headers, libsystemd.so); run hosts need libsystemd0.
//
// Every function returns what the libsystemd call returns: >= 0 on success, -errno on failure.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

// ---- socket activation (sd-daemon.h) ----

/// SD_LISTEN_FDS_START: the first passed descriptor (3).
int csystemd_listen_fds_start(void);

/// sd_listen_fds(unset_environment): how many descriptors were passed (LISTEN_FDS, when
/// LISTEN_PID is this process). Sets FD_CLOEXEC on each of them.
int csystemd_listen_fds(int unset_environment);

/// sd_listen_fds_with_names(): as csystemd_listen_fds, and *names gets a NULL-terminated array
/// (one name per fd, from LISTEN_FDNAMES or "unknown"); free it with csystemd_free_names.
int csystemd_listen_fds_with_names(int unset_environment, char ***names);
void csystemd_free_names(char **names);

/// sd_is_socket(fd, family, type, listening): 1 if fd is such a socket (0/-1 = any).
int csystemd_is_socket(int fd, int family, int type, int listening);

/// sd_is_socket_unix(fd, type, listening, path, length): 1 if fd is an AF_UNIX socket (path
/// NULL = any path).
int csystemd_is_socket_unix(int fd, int type, int listening, const char *path, size_t length);

/// sd_is_socket_inet(fd, family, type, listening, port): 1 if fd is an AF_INET/AF_INET6 socket
/// (family 0 = either, port 0 = any).
int csystemd_is_socket_inet(int fd, int family, int type, int listening, uint16_t port);

/// getsockname() of an AF_UNIX socket as text: the path, "@name" for an abstract socket, "" if
/// unnamed. Returns the length written (NUL-terminated) or -errno.
int csystemd_unix_socket_path(int fd, char *buffer, size_t size);

/// getsockname() of an AF_INET/AF_INET6 socket: the address as text (inet_ntop), the port in host
/// byte order and the family. Returns 0 or -errno.
int csystemd_inet_socket_address(int fd, char *buffer, size_t size, uint16_t *port, int *family);

// ---- service manager notifications ----

/// sd_notify(unset_environment, state): 0 when NOTIFY_SOCKET is not set, > 0 when sent.
int csystemd_notify(int unset_environment, const char *state);

/// sd_watchdog_enabled(unset_environment, &usec): > 0 and *usec set when the service manager
/// expects WATCHDOG=1 pings (WATCHDOG_USEC set and WATCHDOG_PID, if set, is this process).
int csystemd_watchdog_enabled(int unset_environment, uint64_t *usec);

/// sd_booted(): > 0 if the system was booted with systemd.
int csystemd_booted(void);

// ---- journal (sd-journal.h) ----

/// sd_journal_sendv(iov, n): one journal entry, one "FIELD=value" per iovec. The real function,
/// not the macro that would record this file as CODE_FILE: callers pass their own CODE_* fields.
int csystemd_journal_sendv(const struct iovec *iov, int n);

/// sd_journal_stream_fd(identifier, priority, level_prefix): a connected stream socket to
/// journald's stdout transport (close-on-exec, write-only). Every line written becomes an entry
/// with SYSLOG_IDENTIFIER=identifier and PRIORITY=priority (or the line's "<N>" prefix when
/// level_prefix is set).
int csystemd_journal_stream_fd(const char *identifier, int priority, int level_prefix);
