// Thin, non-variadic wrappers over libsystemd (see include/CSystemd.h).

// The real sd_journal_sendv(), not the macro that adds this file's location to every entry.
#define SD_JOURNAL_SUPPRESS_LOCATION 1

#include "CSystemd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>

int csystemd_listen_fds_start(void) { return SD_LISTEN_FDS_START; }

int csystemd_listen_fds(int unset_environment) { return sd_listen_fds(unset_environment); }

int csystemd_listen_fds_with_names(int unset_environment, char ***names) {
  return sd_listen_fds_with_names(unset_environment, names);
}

void csystemd_free_names(char **names) {
  if (names == NULL) return;
  for (char **p = names; *p != NULL; p++) free(*p);
  free(names);
}

int csystemd_is_socket(int fd, int family, int type, int listening) {
  return sd_is_socket(fd, family, type, listening);
}

int csystemd_is_socket_unix(int fd, int type, int listening, const char *path, size_t length) {
  return sd_is_socket_unix(fd, type, listening, path, length);
}

int csystemd_is_socket_inet(int fd, int family, int type, int listening, uint16_t port) {
  return sd_is_socket_inet(fd, family, type, listening, port);
}

int csystemd_unix_socket_path(int fd, char *buffer, size_t size) {
  if (buffer == NULL || size == 0) return -EINVAL;
  struct sockaddr_un address;
  socklen_t length = sizeof(address);
  memset(&address, 0, sizeof(address));
  if (getsockname(fd, (struct sockaddr *)&address, &length) != 0) return -errno;
  if (address.sun_family != AF_UNIX) return -EAFNOSUPPORT;
  size_t pathLength = length > offsetof(struct sockaddr_un, sun_path) ? length - offsetof(struct sockaddr_un, sun_path) : 0;
  size_t written = 0;
  if (pathLength > 0 && address.sun_path[0] == '\0') {
    // Abstract namespace: "@" and the name (which may itself contain NUL bytes; stop at the first).
    buffer[written++] = '@';
    for (size_t i = 1; i < pathLength && written + 1 < size && address.sun_path[i] != '\0'; i++)
      buffer[written++] = address.sun_path[i];
  } else {
    for (size_t i = 0; i < pathLength && written + 1 < size && address.sun_path[i] != '\0'; i++)
      buffer[written++] = address.sun_path[i];
  }
  buffer[written] = '\0';
  return (int)written;
}

int csystemd_inet_socket_address(int fd, char *buffer, size_t size, uint16_t *port, int *family) {
  if (buffer == NULL || size == 0 || port == NULL || family == NULL) return -EINVAL;
  struct sockaddr_storage address;
  socklen_t length = sizeof(address);
  memset(&address, 0, sizeof(address));
  if (getsockname(fd, (struct sockaddr *)&address, &length) != 0) return -errno;
  const void *raw;
  if (address.ss_family == AF_INET) {
    const struct sockaddr_in *in4 = (const struct sockaddr_in *)&address;
    raw = &in4->sin_addr;
    *port = ntohs(in4->sin_port);
  } else if (address.ss_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&address;
    raw = &in6->sin6_addr;
    *port = ntohs(in6->sin6_port);
  } else {
    return -EAFNOSUPPORT;
  }
  *family = address.ss_family;
  if (inet_ntop(address.ss_family, raw, buffer, (socklen_t)size) == NULL) return -errno;
  return 0;
}

int csystemd_notify(int unset_environment, const char *state) { return sd_notify(unset_environment, state); }

int csystemd_watchdog_enabled(int unset_environment, uint64_t *usec) {
  return sd_watchdog_enabled(unset_environment, usec);
}

int csystemd_booted(void) { return sd_booted(); }

int csystemd_journal_sendv(const struct iovec *iov, int n) { return sd_journal_sendv(iov, n); }

int csystemd_journal_stream_fd(const char *identifier, int priority, int level_prefix) {
  return sd_journal_stream_fd(identifier, priority, level_prefix);
}
