/*
 * Files in guest RAM (agent types 0x0c–0x0f, docs/test-guest.md "Files"): a fixed table of 16
 * files of up to 64 KiB. It lives in the image's memory, so it is part of every snapshot: a
 * child sees its parent's files, and its own writes stay in its private copy of the page.
 * Directories are implicit: "/a" is a directory while some file's path starts with "/a/".
 * Paths arrive normalised by the host (absolute, no "." / ".." / empty components).
 */
#include "guest.h"

#define FILE_SLOTS 16
#define FILE_PATH_MAX 64
#define FILE_DATA_MAX 65536
#define FILE_REPLY_DATA_MAX 2036 /* a reply frame's payload stays within 2048 bytes */
#define KIND_FILE 1
#define KIND_DIR 2

static u8 f_used[FILE_SLOTS];
static u8 f_plen[FILE_SLOTS];
static u32 f_size[FILE_SLOTS];
static u32 f_mode[FILE_SLOTS];
static u8 f_path[FILE_SLOTS][FILE_PATH_MAX] NOINIT;
static u8 f_data[FILE_SLOTS][FILE_DATA_MAX] NOINIT;

#define FAIL(code_, msg_)                                                                      \
  do {                                                                                         \
    e->code = (code_);                                                                         \
    e->msg = (msg_);                                                                           \
    e->mlen = sizeof(msg_) - 1;                                                                \
    return -1;                                                                                 \
  } while (0)

/* path lies strictly below the directory dir. */
static int under(const u8 *dir, u32 dlen, const u8 *path, u32 plen) {
  if (dlen == 1) return plen > 1;
  return plen > dlen && path[dlen] == '/' && !memcmp(path, dir, dlen);
}

static int find(const u8 *path, u32 plen) {
  for (int i = 0; i < FILE_SLOTS; i++)
    if (f_used[i] && f_plen[i] == plen && !memcmp(f_path[i], path, plen)) return i;
  return -1;
}

static int is_dir(const u8 *path, u32 plen) {
  for (int i = 0; i < FILE_SLOTS; i++)
    if (f_used[i] && under(path, plen, f_path[i], f_plen[i])) return 1;
  return 0;
}

/* Length of the first path component of the file i below dir (the name a listing shows). */
static u32 child_name(int i, u32 dlen, u32 *start) {
  u32 s = dlen == 1 ? 1 : dlen + 1, k = s;
  while (k < f_plen[i] && f_path[i][k] != '/') k++;
  *start = s;
  return k - s;
}

static int check_path(const u8 *path, u32 plen, struct agent_fail *e) {
  if (!plen || path[0] != '/') FAIL(E_BAD_ARGUMENT, "file: path must be absolute");
  if (plen > FILE_PATH_MAX) FAIL(E_TOO_LARGE, "file: path longer than 64 bytes");
  return 0;
}

static int file_write(const u8 *p, u32 plen, u8 *out, u32 *n, struct agent_fail *e) {
  if (plen < 15) FAIL(E_BAD_ARGUMENT, "file write: payload too short");
  u64 offset = ld64(p);
  u32 mode = ld32(p + 8), truncate = p[12], pathlen = ld16(p + 13);
  if (pathlen > plen - 15) FAIL(E_BAD_ARGUMENT, "file write: path length beyond payload");
  const u8 *path = p + 15;
  const u8 *data = path + pathlen;
  u32 dlen = plen - 15 - pathlen;
  if (check_path(path, pathlen, e)) return -1;
  if (pathlen == 1) FAIL(E_BAD_ARGUMENT, "file write: / is a directory");
  if (mode > 07777) FAIL(E_BAD_ARGUMENT, "file write: mode beyond 07777");
  int i = find(path, pathlen);
  if (i < 0) {
    if (is_dir(path, pathlen)) FAIL(E_BAD_ARGUMENT, "file write: path is a directory");
    for (int j = 0; j < FILE_SLOTS; j++)
      if (f_used[j] && under(f_path[j], f_plen[j], path, pathlen))
        FAIL(E_BAD_ARGUMENT, "file write: a parent of the path is a file");
    i = 0;
    while (i < FILE_SLOTS && f_used[i]) i++;
    if (i == FILE_SLOTS) FAIL(E_TOO_LARGE, "file write: file table full (16 files)");
    if (offset) FAIL(E_BAD_ARGUMENT, "file write: offset beyond the end of the file");
    f_used[i] = 1;
    f_plen[i] = (u8)pathlen;
    memcpy(f_path[i], path, pathlen);
    f_size[i] = 0;
    f_mode[i] = mode;
  } else if (truncate) {
    f_size[i] = 0;
    f_mode[i] = mode;
  }
  if (offset > f_size[i]) FAIL(E_BAD_ARGUMENT, "file write: offset beyond the end of the file");
  if (offset + dlen > FILE_DATA_MAX) FAIL(E_TOO_LARGE, "file write: files hold at most 65536 bytes");
  memcpy(f_data[i] + offset, data, dlen);
  if (offset + dlen > f_size[i]) f_size[i] = (u32)(offset + dlen);
  st64(out, f_size[i]);
  *n = 8;
  return 0;
}

static int file_read(const u8 *p, u32 plen, u8 *out, u32 *n, struct agent_fail *e) {
  if (plen < 12) FAIL(E_BAD_ARGUMENT, "file read: payload too short");
  u64 offset = ld64(p);
  u32 max = ld32(p + 8);
  const u8 *path = p + 12;
  u32 pathlen = plen - 12;
  if (check_path(path, pathlen, e)) return -1;
  int i = find(path, pathlen);
  if (i < 0) {
    if (pathlen == 1 || is_dir(path, pathlen)) FAIL(E_BAD_ARGUMENT, "file read: path is a directory");
    FAIL(E_NOT_FOUND, "file read: no such file");
  }
  if (offset > f_size[i]) FAIL(E_BAD_ARGUMENT, "file read: offset beyond the end of the file");
  u32 k = f_size[i] - (u32)offset;
  if (k > max) k = max;
  if (k > FILE_REPLY_DATA_MAX) k = FILE_REPLY_DATA_MAX;
  st64(out, f_size[i]);
  st32(out + 8, f_mode[i]);
  memcpy(out + 12, f_data[i] + offset, k);
  *n = 12 + k;
  return 0;
}

/* Entries: u8 type, u32 mode, u64 size, u16 name length, name. 16 × 79 bytes fit a reply. */
static int file_list(const u8 *path, u32 pathlen, u8 *out, u32 *n, struct agent_fail *e) {
  if (check_path(path, pathlen, e)) return -1;
  if (find(path, pathlen) >= 0) FAIL(E_BAD_ARGUMENT, "file list: path is a file, not a directory");
  u32 count = 0, pos = 4;
  for (int i = 0; i < FILE_SLOTS; i++) {
    if (!f_used[i] || !under(path, pathlen, f_path[i], f_plen[i])) continue;
    u32 s, len = child_name(i, pathlen, &s);
    int dir = s + len < f_plen[i];
    int seen = 0; /* a directory shared by several files is listed once */
    for (int j = 0; j < i && dir && !seen; j++) {
      if (!f_used[j] || !under(path, pathlen, f_path[j], f_plen[j])) continue;
      u32 sj, lj = child_name(j, pathlen, &sj);
      seen = lj == len && !memcmp(f_path[j] + sj, f_path[i] + s, len);
    }
    if (seen) continue;
    out[pos] = dir ? KIND_DIR : KIND_FILE;
    st32(out + pos + 1, dir ? 0755 : f_mode[i]);
    st64(out + pos + 5, dir ? 0 : f_size[i]);
    out[pos + 13] = (u8)len;
    out[pos + 14] = 0;
    memcpy(out + pos + 15, f_path[i] + s, len);
    pos += 15 + len;
    count++;
  }
  if (!count && pathlen > 1) FAIL(E_NOT_FOUND, "file list: no such directory");
  st32(out, count);
  *n = pos;
  return 0;
}

static int file_delete(const u8 *path, u32 pathlen, struct agent_fail *e) {
  if (check_path(path, pathlen, e)) return -1;
  int i = find(path, pathlen);
  if (i < 0) {
    if (pathlen == 1 || is_dir(path, pathlen)) FAIL(E_BAD_ARGUMENT, "file delete: path is a directory");
    FAIL(E_NOT_FOUND, "file delete: no such file");
  }
  f_used[i] = 0;
  return 0;
}

int file_request(u8 type, const u8 *p, u32 plen, u8 *out, u32 *n, struct agent_fail *e) {
  switch (type) {
  case T_FILE_WRITE: return file_write(p, plen, out, n, e);
  case T_FILE_READ: return file_read(p, plen, out, n, e);
  case T_FILE_LIST: return file_list(p, plen, out, n, e);
  default: return file_delete(p, plen, e);
  }
}
#undef FAIL
