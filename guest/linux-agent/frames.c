/* Agent frames and the commands other than exec (docs/test-guest.md "Agent protocol"). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include "agent.h"

#define KV_ENTRIES 16
#define KV_KEY_MAX 32
#define KV_VALUE_MAX 256
#define CONSOLE_MAX 256
#define EXEC_ARGC_MAX 4096

#define PAGE 4096u
#define FILL_K1 0x9E3779B97F4A7C15ull
#define FILL_K2 0xBF58476D1CE4E5B9ull
#define DATA_MAX_BYTES (1ull << 30)

static struct {
  int used;
  uint8_t klen;
  uint16_t vlen;
  uint8_t key[KV_KEY_MAX];
  uint8_t val[KV_VALUE_MAX];
} kv[KV_ENTRIES];

/* fill/checksum work on an anonymous mapping reserved on first use: at most half the RAM,
 * at most 1 GiB. Pages never filled read as zero. */
static uint8_t *data_area;
static uint64_t data_pages;

static int data_reserve(void) {
  if (data_area) return 0;
  struct sysinfo si;
  uint64_t bytes = DATA_MAX_BYTES;
  if (sysinfo(&si) == 0) {
    uint64_t half = (uint64_t)si.totalram * si.mem_unit / 2;
    if (half < bytes) bytes = half;
  }
  bytes &= ~(uint64_t)(PAGE - 1);
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return -1;
  data_area = p;
  data_pages = bytes / PAGE;
  return 0;
}

void reply_frame(struct conn *c, uint8_t type, uint32_t request_id, const uint8_t *payload, size_t n) {
  buf_reserve(&c->out, FRAME_HDR_LEN + n);
  buf_u32(&c->out, FRAME_MAGIC);
  buf_u8(&c->out, FRAME_VERSION);
  buf_u8(&c->out, type);
  buf_u8(&c->out, 0);
  buf_u8(&c->out, 0);
  buf_u32(&c->out, request_id);
  buf_u32(&c->out, (uint32_t)n);
  buf_put(&c->out, payload, n);
}

void reply_error(struct conn *c, uint32_t request_id, uint32_t code, const char *msg) {
  struct buf p = {0};
  size_t mlen = strlen(msg);
  buf_u32(&p, code);
  buf_u32(&p, (uint32_t)mlen);
  buf_put(&p, msg, mlen);
  reply_frame(c, TYPE_ERROR, request_id, p.data, p.len);
  buf_free(&p);
}

void fail(struct conn *c, uint32_t id, uint32_t code, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  reply_error(c, id, code, msg);
}


static int kv_find(const uint8_t *key, uint32_t klen) {
  for (int i = 0; i < KV_ENTRIES; i++)
    if (kv[i].used && kv[i].klen == klen && !memcmp(kv[i].key, key, klen)) return i;
  return -1;
}

static void do_fill(struct conn *c, uint32_t id, const uint8_t *p, uint32_t plen) {
  if (plen != 16) FAIL(c, id, E_BAD_ARGUMENT, "fill: payload is u64 pages, u64 seed (16 bytes), got %u", plen);
  uint64_t pages = ld64(p), seed = ld64(p + 8);
  if (data_reserve() != 0) FAIL(c, id, E_UNSUPPORTED, "fill: cannot reserve the data area: %s", strerror(errno));
  if (pages > data_pages)
    FAIL(c, id, E_BAD_ARGUMENT, "fill: %llu pages beyond the data area of %llu pages",
                (unsigned long long)pages, (unsigned long long)data_pages);
  uint64_t v = seed * FILL_K1 + FILL_K2;
  for (uint64_t pg = 0; pg < pages; pg++, v += FILL_K2) {
    uint64_t *w = (uint64_t *)(data_area + pg * PAGE);
    for (unsigned i = 0; i < PAGE / 8; i++) w[i] = v;
  }
  uint8_t out[8];
  memcpy(out, &pages, 8); /* x86-64: little endian */
  reply_frame(c, T_FILL | TYPE_REPLY, id, out, 8);
}

static void do_checksum(struct conn *c, uint32_t id, const uint8_t *p, uint32_t plen) {
  if (plen != 8) FAIL(c, id, E_BAD_ARGUMENT, "checksum: payload is u64 pages (8 bytes), got %u", plen);
  uint64_t pages = ld64(p);
  if (data_reserve() != 0)
    FAIL(c, id, E_UNSUPPORTED, "checksum: cannot reserve the data area: %s", strerror(errno));
  if (pages > data_pages)
    FAIL(c, id, E_BAD_ARGUMENT, "checksum: %llu pages beyond the data area of %llu pages",
                (unsigned long long)pages, (unsigned long long)data_pages);
  uint64_t sum = 0;
  const uint64_t *w = (const uint64_t *)data_area, *end = w + pages * (PAGE / 8);
  for (; w < end; w += 8) {
    sum = (sum << 7 | sum >> 57);
    for (int i = 0; i < 8; i++) sum += w[i];
  }
  uint8_t out[8];
  memcpy(out, &sum, 8);
  reply_frame(c, T_CHECKSUM | TYPE_REPLY, id, out, 8);
}

static void do_kv_set(struct conn *c, uint32_t id, const uint8_t *p, uint32_t plen) {
  if (plen < 2) FAIL(c, id, E_BAD_ARGUMENT, "kv set: payload of %u bytes has no u16 key length", plen);
  uint32_t klen = ld16(p);
  if (klen > plen - 2) FAIL(c, id, E_BAD_ARGUMENT, "kv set: key length %u beyond the payload", klen);
  if (klen > KV_KEY_MAX) FAIL(c, id, E_TOO_LARGE, "kv set: key of %u bytes, at most %u", klen, KV_KEY_MAX);
  uint32_t vlen = plen - 2 - klen;
  if (vlen > KV_VALUE_MAX)
    FAIL(c, id, E_TOO_LARGE, "kv set: value of %u bytes, at most %u", vlen, KV_VALUE_MAX);
  int i = kv_find(p + 2, klen);
  if (i < 0) {
    for (i = 0; i < KV_ENTRIES && kv[i].used; i++) {
    }
    if (i == KV_ENTRIES) FAIL(c, id, E_TOO_LARGE, "kv set: store full (%d entries)", KV_ENTRIES);
    kv[i].used = 1;
    kv[i].klen = (uint8_t)klen;
    memcpy(kv[i].key, p + 2, klen);
  }
  kv[i].vlen = (uint16_t)vlen;
  memcpy(kv[i].val, p + 2 + klen, vlen);
  reply_frame(c, T_KV_SET | TYPE_REPLY, id, NULL, 0);
}

static void do_kv_get(struct conn *c, uint32_t id, const uint8_t *p, uint32_t plen) {
  int i = plen <= KV_KEY_MAX ? kv_find(p, plen) : -1;
  uint8_t out[1 + KV_VALUE_MAX];
  out[0] = i >= 0;
  size_t n = 1;
  if (i >= 0) {
    memcpy(out + 1, kv[i].val, kv[i].vlen);
    n += kv[i].vlen;
  }
  reply_frame(c, T_KV_GET | TYPE_REPLY, id, out, n);
}

static void do_console(struct conn *c, uint32_t id, const uint8_t *p, uint32_t plen) {
  if (plen > CONSOLE_MAX) FAIL(c, id, E_TOO_LARGE, "console: %u bytes, at most %u", plen, CONSOLE_MAX);
  char line[CONSOLE_MAX + 1];
  for (uint32_t i = 0; i < plen; i++) line[i] = p[i] == '\n' ? ' ' : (char)p[i];
  line[plen] = '\n';
  int fd = open(agent.console_path, O_WRONLY | O_NOCTTY | O_APPEND | O_CLOEXEC);
  if (fd < 0) FAIL(c, id, E_UNSUPPORTED, "console: cannot open %s: %s", agent.console_path, strerror(errno));
  ssize_t w = write(fd, line, plen + 1);
  int err = errno;
  close(fd);
  if (w != (ssize_t)plen + 1)
    FAIL(c, id, E_UNSUPPORTED, "console: write to %s failed: %s", agent.console_path,
                w < 0 ? strerror(err) : "short write");
  reply_frame(c, T_CONSOLE | TYPE_REPLY, id, NULL, 0);
}

/* exec payload: u32 timeout_s, u32 argc, argc × (u32 length, bytes). */
static void do_exec(struct conn *c, uint32_t id, const uint8_t *p, uint32_t plen) {
  struct exec_opts opts = {0};
  if (plen < 8) FAIL(c, id, E_BAD_ARGUMENT, "exec: payload of %u bytes has no u32 timeout and u32 argc", plen);
  uint32_t timeout = ld32(p), argc = ld32(p + 4);
  if (argc == 0) FAIL(c, id, E_BAD_ARGUMENT, "exec: argc is 0, nothing to run");
  if (argc > EXEC_ARGC_MAX) FAIL(c, id, E_TOO_LARGE, "exec: argc %u, at most %u", argc, EXEC_ARGC_MAX);
  if ((uint64_t)argc * 4 > plen - 8)
    FAIL(c, id, E_BAD_ARGUMENT, "exec: argc %u does not fit a payload of %u bytes", argc, plen);
  char **argv = calloc((size_t)argc + 1, sizeof *argv);
  if (!argv) FAIL(c, id, E_TOO_LARGE, "exec: out of memory");
  uint32_t pos = 8;
  for (uint32_t i = 0; i < argc; i++) {
    uint32_t len = plen - pos >= 4 ? ld32(p + pos) : UINT32_MAX;
    if (len == UINT32_MAX || len > plen - pos - 4) {
      fail(c, id, E_BAD_ARGUMENT, "exec: argument %u at offset %u runs past the payload", i, pos);
      goto bad;
    }
    pos += 4;
    if (memchr(p + pos, 0, len)) {
      fail(c, id, E_BAD_ARGUMENT, "exec: argument %u contains a NUL byte", i);
      goto bad;
    }
    argv[i] = strndup((const char *)p + pos, len);
    if (!argv[i]) {
      fail(c, id, E_TOO_LARGE, "exec: out of memory");
      goto bad;
    }
    pos += len;
  }
  /* The optional tail: u32 envc and "NAME=value" strings, u32 length + cwd (0: the agent's),
   * u32 length + stdin. Absent (pos == plen): none of them, as older hosts send. */
  if (pos != plen) {
    uint32_t envc = plen - pos >= 4 ? ld32(p + pos) : UINT32_MAX;
    if (envc == UINT32_MAX || envc > EXEC_ARGC_MAX || (uint64_t)envc * 4 > plen - pos - 4) {
      fail(c, id, E_BAD_ARGUMENT, "exec: bad environment count at offset %u", pos);
      goto bad;
    }
    pos += 4;
    opts.env = calloc((size_t)envc + 1, sizeof *opts.env);
    if (!opts.env) {
      fail(c, id, E_TOO_LARGE, "exec: out of memory");
      goto bad;
    }
    for (uint32_t i = 0; i < envc; i++) {
      uint32_t len = plen - pos >= 4 ? ld32(p + pos) : UINT32_MAX;
      if (len == UINT32_MAX || len > plen - pos - 4) {
        fail(c, id, E_BAD_ARGUMENT, "exec: environment entry %u runs past the payload", i);
        goto bad;
      }
      pos += 4;
      const char *eq = memchr(p + pos, '=', len);
      if (memchr(p + pos, 0, len) || !eq || eq == (const char *)p + pos) {
        fail(c, id, E_BAD_ARGUMENT, "exec: environment entry %u is not NAME=value", i);
        goto bad;
      }
      if (!(opts.env[i] = strndup((const char *)p + pos, len))) {
        fail(c, id, E_TOO_LARGE, "exec: out of memory");
        goto bad;
      }
      pos += len;
    }
    uint32_t cwd_len = plen - pos >= 4 ? ld32(p + pos) : UINT32_MAX;
    if (cwd_len == UINT32_MAX || cwd_len > plen - pos - 4) {
      fail(c, id, E_BAD_ARGUMENT, "exec: the working directory runs past the payload");
      goto bad;
    }
    pos += 4;
    if (cwd_len) {
      if (memchr(p + pos, 0, cwd_len) || p[pos] != '/') {
        fail(c, id, E_BAD_ARGUMENT, "exec: the working directory must be an absolute path without NUL");
        goto bad;
      }
      if (!(opts.cwd = strndup((const char *)p + pos, cwd_len))) {
        fail(c, id, E_TOO_LARGE, "exec: out of memory");
        goto bad;
      }
      pos += cwd_len;
    }
    uint32_t stdin_len = plen - pos >= 4 ? ld32(p + pos) : UINT32_MAX;
    if (stdin_len == UINT32_MAX || stdin_len != plen - pos - 4) {
      fail(c, id, E_BAD_ARGUMENT, "exec: stdin length does not match the rest of the payload");
      goto bad;
    }
    opts.stdin_data = p + pos + 4;
    opts.stdin_len = stdin_len;
  }
  if (argv[0][0] == 0) {
    fail(c, id, E_BAD_ARGUMENT, "exec: the program name is empty");
    goto bad;
  }
  exec_start(c, id, timeout, argv, &opts);
  return;
bad:
  for (uint32_t i = 0; i < argc; i++) free(argv[i]);
  free(argv);
  if (opts.env)
    for (char **e = opts.env; *e; e++) free(*e);
  free(opts.env);
  free(opts.cwd);
}

static void handle(struct conn *c, uint8_t type, uint32_t id, const uint8_t *p, uint32_t plen) {
  agent.served++;
  switch (type) {
  case T_PING: { /* payload ignored, like the test guest */
    uint8_t out[24];
    uint32_t kind = AGENT_KIND, version = AGENT_VERSION;
    memcpy(out, &kind, 4);
    memcpy(out + 4, &version, 4);
    memcpy(out + 8, &agent.served, 8);
    memcpy(out + 16, &agent.counter, 8);
    reply_frame(c, T_PING | TYPE_REPLY, id, out, sizeof out);
    return;
  }
  case T_ECHO:
    reply_frame(c, T_ECHO | TYPE_REPLY, id, p, plen);
    return;
  case T_FILL:
    do_fill(c, id, p, plen);
    return;
  case T_CHECKSUM:
    do_checksum(c, id, p, plen);
    return;
  case T_COUNTER: {
    if (plen != 8) FAIL(c, id, E_BAD_ARGUMENT, "counter: payload is i64 delta (8 bytes), got %u", plen);
    agent.counter += ld64(p);
    reply_frame(c, T_COUNTER | TYPE_REPLY, id, (const uint8_t *)&agent.counter, 8);
    return;
  }
  case T_KV_SET:
    do_kv_set(c, id, p, plen);
    return;
  case T_KV_GET:
    do_kv_get(c, id, p, plen);
    return;
  case T_EXIT:
    if (plen != 4) FAIL(c, id, E_BAD_ARGUMENT, "exit: payload is u32 code (4 bytes), got %u", plen);
    c->exit_code = ld32(p);
    c->exit_pending = 1;
    reply_frame(c, T_EXIT | TYPE_REPLY, id, NULL, 0);
    return;
  case T_EXEC:
    do_exec(c, id, p, plen);
    return;
  case T_CONSOLE:
    do_console(c, id, p, plen);
    return;
  case T_EVAL:
    eval_start(c, id, p, plen);
    return;
  case T_FILE_WRITE:
  case T_FILE_READ:
  case T_FILE_LIST:
  case T_FILE_DELETE:
    files_handle(c, type, id, p, plen);
    return;
  default:
    FAIL(c, id, E_UNKNOWN_TYPE, "unknown request type 0x%02x", type);
  }
}

void frames_process(struct conn *c) {
  while (!c->closing && !c->job && !c->eval_pending && !c->exit_pending) {
    struct buf *in = &c->in;
    if (c->skip) { /* discarding an oversized frame's payload */
      size_t k = c->skip < in->len ? (size_t)c->skip : in->len;
      if (!k) break;
      buf_consume(in, k);
      c->skip -= k;
      continue;
    }
    /* Reject another protocol as soon as its first bytes are in: no resync is possible. */
    if ((in->len >= 4 && ld32(in->data) != FRAME_MAGIC) || (in->len >= 5 && in->data[4] != FRAME_VERSION)) {
      agent.served++;
      uint32_t id = in->len >= 12 ? ld32(in->data + 8) : 0;
      fail(c, id, E_BAD_FRAME, in->len >= 4 && ld32(in->data) != FRAME_MAGIC ? "bad frame magic 0x%08x"
                                                                             : "unsupported frame version %u",
           ld32(in->data) != FRAME_MAGIC ? ld32(in->data) : in->data[4]);
      in->len = 0;
      c->closing = 1;
      break;
    }
    if (in->len < FRAME_HDR_LEN) break;
    uint32_t id = ld32(in->data + 8), plen = ld32(in->data + 12);
    uint8_t type = in->data[5];
    if (plen > FRAME_PAYLOAD_MAX) {
      agent.served++;
      fail(c, id, E_TOO_LARGE, "frame payload of %u bytes, at most %u", plen, FRAME_PAYLOAD_MAX);
      buf_consume(in, FRAME_HDR_LEN);
      c->skip = plen;
      continue;
    }
    if (in->len - FRAME_HDR_LEN < plen) break;
    handle(c, type, id, in->data + FRAME_HDR_LEN, plen);
    buf_consume(in, FRAME_HDR_LEN + (size_t)plen);
  }
}
