/* Files (agent types 0x0c–0x0f, docs/test-guest.md "Files"): real files of the guest. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

#define READ_REPLY_HEADER 12 /* u64 size, u32 mode */
#define ENTRY_HEADER 15      /* u8 type, u32 mode, u64 size, u16 name length */


/* The error code an errno maps to: a missing path is 6, a full disk 5, the rest 3. */
static uint32_t code_of(int err) {
  switch (err) {
  case ENOENT: return E_NOT_FOUND;
  case ENOSPC:
  case EFBIG:
  case EDQUOT: return E_TOO_LARGE;
  default: return E_BAD_ARGUMENT;
  }
}

/* A NUL-terminated copy of an absolute path from the payload, or NULL after answering. */
static char *take_path(struct conn *c, uint32_t id, const char *op, const uint8_t *p, uint32_t n) {
  if (!n || p[0] != '/') {
    fail(c, id, E_BAD_ARGUMENT, "%s: path must be absolute", op);
    return NULL;
  }
  if (memchr(p, 0, n)) {
    fail(c, id, E_BAD_ARGUMENT, "%s: path contains a NUL byte", op);
    return NULL;
  }
  if (n > 4096) {
    fail(c, id, E_TOO_LARGE, "%s: path longer than 4096 bytes", op);
    return NULL;
  }
  char *s = malloc(n + 1);
  if (!s) abort();
  memcpy(s, p, n);
  s[n] = 0;
  return s;
}

/* mkdir -p of path's parent directories (0755); errors surface at the open that follows. */
static void make_parents(char *path) {
  for (char *slash = strchr(path + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
    *slash = 0;
    mkdir(path, 0755);
    *slash = '/';
  }
}

static int write_all_at(int fd, const uint8_t *p, size_t n, off_t at) {
  while (n) {
    ssize_t k = pwrite(fd, p, n, at);
    if (k < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += k;
    n -= (size_t)k;
    at += k;
  }
  return 0;
}

/* u64 offset, u32 mode, u8 truncate, u16 path length, path, data → u64 size. */
static void do_write(struct conn *c, uint32_t id, const uint8_t *p, uint32_t plen) {
  if (plen < 15) FAIL(c, id, E_BAD_ARGUMENT, "file write: payload of %u bytes is shorter than 15", plen);
  uint64_t offset = ld64(p);
  uint32_t mode = ld32(p + 8), truncate = p[12], pathlen = ld16(p + 13);
  if (pathlen > plen - 15) FAIL(c, id, E_BAD_ARGUMENT, "file write: path length %u beyond the payload", pathlen);
  if (mode > 07777) FAIL(c, id, E_BAD_ARGUMENT, "file write: mode %o beyond 07777", mode);
  char *path = take_path(c, id, "file write", p + 15, pathlen);
  if (!path) return;
  const uint8_t *data = p + 15 + pathlen;
  size_t dlen = plen - 15 - pathlen;
  make_parents(path);
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (truncate ? O_TRUNC : 0), mode);
  struct stat st;
  if (fd < 0) {
    int err = errno;
    fail(c, id, code_of(err), "file write: %s: %s", path, strerror(err));
  } else if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    fail(c, id, E_BAD_ARGUMENT, "file write: %s is not a regular file", path);
  } else if (truncate && fchmod(fd, mode) != 0) { /* the umask must not change what was asked */
    int err = errno;
    fail(c, id, code_of(err), "file write: chmod %s: %s", path, strerror(err));
  } else if (offset > (uint64_t)st.st_size) {
    fail(c, id, E_BAD_ARGUMENT, "file write: offset %llu beyond the end of %s (%lld bytes)",
         (unsigned long long)offset, path, (long long)st.st_size);
  } else if (write_all_at(fd, data, dlen, (off_t)offset) != 0 || fstat(fd, &st) != 0) {
    int err = errno;
    fail(c, id, code_of(err), "file write: %s: %s", path, strerror(err));
  } else {
    uint64_t size = (uint64_t)st.st_size;
    reply_frame(c, T_FILE_WRITE | TYPE_REPLY, id, (const uint8_t *)&size, 8);
  }
  if (fd >= 0) close(fd);
  free(path);
}

/* u64 offset, u32 max bytes, path → u64 size, u32 mode, data. */
static void do_read(struct conn *c, uint32_t id, const uint8_t *p, uint32_t plen) {
  if (plen < 12) FAIL(c, id, E_BAD_ARGUMENT, "file read: payload of %u bytes is shorter than 12", plen);
  uint64_t offset = ld64(p);
  uint32_t max = ld32(p + 8);
  char *path = take_path(c, id, "file read", p + 12, plen - 12);
  if (!path) return;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  struct buf out = {0};
  if (fd < 0) {
    int err = errno;
    fail(c, id, code_of(err), "file read: %s: %s", path, strerror(err));
  } else if (fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
    fail(c, id, E_BAD_ARGUMENT, "file read: %s is a directory", path);
  } else if (offset > (uint64_t)st.st_size) {
    fail(c, id, E_BAD_ARGUMENT, "file read: offset %llu beyond the end of %s (%lld bytes)",
         (unsigned long long)offset, path, (long long)st.st_size);
  } else {
    uint64_t want = (uint64_t)st.st_size - offset;
    if (want > max) want = max;
    if (want > FRAME_PAYLOAD_MAX - READ_REPLY_HEADER) want = FRAME_PAYLOAD_MAX - READ_REPLY_HEADER;
    buf_u64(&out, (uint64_t)st.st_size);
    buf_u32(&out, st.st_mode & 07777);
    buf_reserve(&out, want);
    size_t got = 0;
    while (got < want) {
      ssize_t k = pread(fd, out.data + out.len + got, want - got, (off_t)(offset + got));
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) break; /* shrank under us: send what there is */
      got += (size_t)k;
    }
    out.len += got;
    reply_frame(c, T_FILE_READ | TYPE_REPLY, id, out.data, out.len);
  }
  if (fd >= 0) close(fd);
  buf_free(&out);
  free(path);
}

/* path → u32 count, entries (u8 type, u32 mode, u64 size, u16 name length, name). */
static void do_list(struct conn *c, uint32_t id, const uint8_t *p, uint32_t plen) {
  char *path = take_path(c, id, "file list", p, plen);
  if (!path) return;
  DIR *dir = opendir(path);
  if (!dir) {
    int err = errno;
    if (err == ENOTDIR) fail(c, id, E_BAD_ARGUMENT, "file list: %s is not a directory", path);
    else fail(c, id, code_of(err), "file list: %s: %s", path, strerror(err));
    free(path);
    return;
  }
  struct buf out = {0};
  buf_u32(&out, 0);
  uint32_t count = 0;
  int too_many = 0;
  struct dirent *e;
  while ((e = readdir(dir))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    size_t nlen = strlen(e->d_name);
    if (out.len + ENTRY_HEADER + nlen > FRAME_PAYLOAD_MAX) {
      too_many = 1;
      break;
    }
    struct stat st;
    if (fstatat(dirfd(dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue; /* gone meanwhile */
    uint8_t type = S_ISREG(st.st_mode) ? 1 : S_ISDIR(st.st_mode) ? 2 : S_ISLNK(st.st_mode) ? 3 : 4;
    buf_u8(&out, type);
    buf_u32(&out, st.st_mode & 07777);
    buf_u64(&out, (uint64_t)st.st_size);
    buf_u8(&out, (uint8_t)(nlen & 0xff));
    buf_u8(&out, (uint8_t)(nlen >> 8));
    buf_put(&out, e->d_name, nlen);
    count++;
  }
  closedir(dir);
  if (too_many) {
    fail(c, id, E_TOO_LARGE, "file list: %s has more entries than one 1 MiB reply holds", path);
  } else {
    memcpy(out.data, &count, 4);
    reply_frame(c, T_FILE_LIST | TYPE_REPLY, id, out.data, out.len);
  }
  buf_free(&out);
  free(path);
}

static void do_delete(struct conn *c, uint32_t id, const uint8_t *p, uint32_t plen) {
  char *path = take_path(c, id, "file delete", p, plen);
  if (!path) return;
  if (unlink(path) != 0) {
    int err = errno;
    if (err == EISDIR || err == EPERM) fail(c, id, E_BAD_ARGUMENT, "file delete: %s is a directory", path);
    else fail(c, id, code_of(err), "file delete: %s: %s", path, strerror(err));
  } else {
    reply_frame(c, T_FILE_DELETE | TYPE_REPLY, id, NULL, 0);
  }
  free(path);
}

void files_handle(struct conn *c, uint8_t type, uint32_t id, const uint8_t *p, uint32_t plen) {
  switch (type) {
  case T_FILE_WRITE: do_write(c, id, p, plen); break;
  case T_FILE_READ: do_read(c, id, p, plen); break;
  case T_FILE_LIST: do_list(c, id, p, plen); break;
  default: do_delete(c, id, p, plen); break;
  }
}
