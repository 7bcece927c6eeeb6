/*
 * forkd-agent: the Linux guest agent. Listens on vsock port 1024 (or a Unix socket for host
 * tests), serves the agent protocol of docs/test-guest.md on every connection, one poll loop
 * for connections, exec pipes and SIGCHLD.
 *
 *   forkd-agent [--listen vsock:PORT|unix:PATH] [--console PATH] [--power-off|--no-power-off]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#define MAX_CONNS 64
/* Stop reading a connection while this much output waits for the host to read it. */
#define OUT_HIGH_WATER (4u << 20)

struct agent agent = {.console_path = "/dev/console"};

static struct conn *conns[MAX_CONNS];
static int nconns;

void logmsg(const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
  line[n++] = '\n';
  dprintf(2, "forkd-agent: %.*s", n, line);
}

int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void buf_reserve(struct buf *b, size_t extra) {
  if (b->cap - b->len >= extra) return;
  size_t cap = b->cap ? b->cap : 256;
  while (cap - b->len < extra) cap *= 2;
  uint8_t *d = realloc(b->data, cap);
  if (!d) {
    logmsg("out of memory (buffer of %zu bytes)", cap);
    abort();
  }
  b->data = d;
  b->cap = cap;
}
void buf_put(struct buf *b, const void *p, size_t n) {
  if (!n) return;
  buf_reserve(b, n);
  memcpy(b->data + b->len, p, n);
  b->len += n;
}
void buf_u8(struct buf *b, uint8_t v) { buf_put(b, &v, 1); }
void buf_u32(struct buf *b, uint32_t v) {
  uint8_t le[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
  buf_put(b, le, 4);
}
void buf_u64(struct buf *b, uint64_t v) {
  buf_u32(b, (uint32_t)v);
  buf_u32(b, (uint32_t)(v >> 32));
}
void buf_consume(struct buf *b, size_t n) {
  if (n >= b->len) {
    b->len = 0;
    return;
  }
  memmove(b->data, b->data + n, b->len - n);
  b->len -= n;
}
void buf_free(struct buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

static void usage(void) {
  fprintf(stderr, "usage: forkd-agent [--listen vsock:PORT|unix:PATH] [--console PATH] "
                  "[--power-off|--no-power-off]\n");
  exit(2);
}

static int listen_vsock(unsigned port) {
  /* The vsock modules may still be registering when init starts us: retry for up to 10 s. */
  for (int attempt = 0;; attempt++) {
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd >= 0) {
      struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
      if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(fd, 64) == 0) return fd;
      logmsg("cannot listen on vsock port %u: %s", port, strerror(errno));
      exit(1);
    }
    if (attempt == 100) {
      logmsg("cannot create a vsock socket: %s (are vsock and its virtio transport loaded?)", strerror(errno));
      exit(1);
    }
    usleep(100000);
  }
}

static int listen_unix(const char *path) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof a.sun_path) {
    logmsg("unix socket path %s is longer than %zu bytes", path, sizeof a.sun_path - 1);
    exit(2);
  }
  strcpy(a.sun_path, path);
  unlink(path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 64) != 0) {
    logmsg("cannot listen on %s: %s", path, strerror(errno));
    exit(1);
  }
  return fd;
}

static void conn_drop(int i) {
  struct conn *c = conns[i];
  if (c->job) job_orphan(c->job);
  if (c->eval_pending) eval_orphan(c);
  close(c->fd);
  buf_free(&c->in);
  buf_free(&c->out);
  free(c);
  conns[i] = conns[--nconns];
}

/* The exit command: answered and flushed; now power off (guest) or end (host tests). */
static void agent_exit(uint32_t code) {
  logmsg("exit %u requested", code);
  if (!agent.power_off) exit((int)(code & 0xff));
  /* A Linux guest powers off through ACPI (forkd-vmm then exits 0): the code is not forwarded.
   * (Writing it to the test guest's port 0x605 with ioperm+outb died of SIGSEGV in the lane.) */
  sync();
  reboot(RB_POWER_OFF);
  logmsg("power off failed: %s", strerror(errno));
  exit((int)(code & 0xff));
}

/* Sends what is queued; returns -1 if the connection is gone. */
static int conn_flush(struct conn *c) {
  while (c->out.len) {
    ssize_t n = send(c->fd, c->out.data, c->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      buf_consume(&c->out, (size_t)n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return 0;
    return -1;
  }
  if (c->exit_pending) agent_exit(c->exit_code);
  return c->closing ? -1 : 0;
}

/* Reads what is available: 0, 1 at end of stream, -1 on error (e.g. ECONNRESET after a
 * restore reset the vsock transport). */
static int conn_read(struct conn *c) {
  for (int rounds = 0; rounds < 16; rounds++) {
    buf_reserve(&c->in, 65536);
    ssize_t n = recv(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len, MSG_DONTWAIT);
    if (n > 0) {
      c->in.len += (size_t)n;
      if (c->in.len > FRAME_HDR_LEN + FRAME_PAYLOAD_MAX + 65536u) break; /* parse before more */
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return 0;
    return n == 0 ? 1 : -1;
  }
  return 0;
}

enum { TAG_LISTEN, TAG_SIGNAL, TAG_CONN, TAG_JOB, TAG_EVAL };

int main(int argc, char **argv) {
  const char *listen_spec = "vsock:1024";
  int power_off = -1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--listen") && i + 1 < argc)
      listen_spec = argv[++i];
    else if (!strcmp(argv[i], "--console") && i + 1 < argc)
      agent.console_path = argv[++i];
    else if (!strcmp(argv[i], "--power-off"))
      power_off = 1;
    else if (!strcmp(argv[i], "--no-power-off"))
      power_off = 0;
    else
      usage();
  }

  int lfd;
  if (!strncmp(listen_spec, "vsock:", 6)) {
    char *end;
    unsigned long port = strtoul(listen_spec + 6, &end, 10);
    if (!listen_spec[6] || *end || port > 0xffffffffu) usage();
    lfd = listen_vsock((unsigned)port);
    agent.power_off = power_off != 0;
  } else if (!strncmp(listen_spec, "unix:", 5) && listen_spec[5]) {
    lfd = listen_unix(listen_spec + 5);
    agent.power_off = power_off == 1;
  } else {
    usage();
  }

  signal(SIGPIPE, SIG_IGN);
  /* Programs that exec started and that outlive their parent are reparented to the agent,
   * which reaps them (no zombies piling up under a shell init). */
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, NULL);
  int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) {
    logmsg("signalfd: %s", strerror(errno));
    return 1;
  }
  logmsg("%d.%d ready on %s (pid %d)", AGENT_KIND, AGENT_VERSION, listen_spec, (int)getpid());

  struct pollfd pfd[3 + MAX_CONNS + 2 * MAX_JOBS];
  struct {
    int tag;
    void *ptr;
  } what[3 + MAX_CONNS + 2 * MAX_JOBS];
  for (;;) {
    int n = 0;
    pfd[n] = (struct pollfd){.fd = lfd, .events = POLLIN};
    what[n++].tag = TAG_LISTEN;
    pfd[n] = (struct pollfd){.fd = sfd, .events = POLLIN};
    what[n++].tag = TAG_SIGNAL;
    for (int i = 0; i < nconns; i++) {
      struct conn *c = conns[i];
      short ev = 0;
      if (!c->job && !c->eval_pending && !c->closing && !c->exit_pending && !c->eof && c->out.len < OUT_HIGH_WATER)
        ev |= POLLIN;
      if (c->out.len) ev |= POLLOUT;
      pfd[n] = (struct pollfd){.fd = c->fd, .events = ev};
      what[n].tag = TAG_CONN;
      what[n++].ptr = c;
    }
    for (int i = 0; i < njobs; i++) {
      int fds[2] = {jobs[i]->out_fd, jobs[i]->err_fd};
      for (int k = 0; k < 2; k++) {
        if (fds[k] < 0) continue;
        pfd[n] = (struct pollfd){.fd = fds[k], .events = POLLIN};
        what[n].tag = TAG_JOB;
        what[n++].ptr = jobs[i];
      }
    }
    if (eval_fd() >= 0) {
      pfd[n] = (struct pollfd){.fd = eval_fd(), .events = POLLIN};
      what[n++].tag = TAG_EVAL;
    }
    int wait_ms = jobs_wakeup_ms(), eval_ms = eval_wakeup_ms();
    if (eval_ms >= 0 && (wait_ms < 0 || eval_ms < wait_ms)) wait_ms = eval_ms;
    int r = poll(pfd, (nfds_t)n, wait_ms);
    if (r < 0 && errno != EINTR) {
      logmsg("poll: %s", strerror(errno));
      return 1;
    }
    for (int k = 0; r > 0 && k < n; k++) {
      if (!pfd[k].revents) continue;
      switch (what[k].tag) {
      case TAG_LISTEN:
        for (;;) {
          int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
          if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) logmsg("accept: %s", strerror(errno));
            if (errno == EINTR || errno == ECONNABORTED) continue;
            break;
          }
          struct conn *c = nconns < MAX_CONNS ? calloc(1, sizeof *c) : NULL;
          if (!c) {
            logmsg("refusing a connection: %d open", nconns);
            close(fd);
            continue;
          }
          c->fd = fd;
          conns[nconns++] = c;
        }
        break;
      case TAG_SIGNAL: {
        struct signalfd_siginfo si;
        while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
        }
        jobs_reap();
        break;
      }
      case TAG_JOB: {
        struct job *j = what[k].ptr;
        job_read(j, pfd[k].fd);
        break;
      }
      case TAG_EVAL:
        eval_read();
        break;
      case TAG_CONN:
        break; /* below, after jobs and accepts: conns[] may have been reordered */
      }
    }
    /* Connections: read and parse, then flush. Ready flags are looked up by pointer. */
    for (int k = 0; k < n; k++) {
      if (what[k].tag != TAG_CONN || !pfd[k].revents) continue;
      struct conn *c = what[k].ptr;
      int i;
      for (i = 0; i < nconns && conns[i] != c; i++) {
      }
      if (i == nconns) continue;
      int dead = 0;
      if (pfd[k].revents & POLLIN) {
        int rc = conn_read(c);
        if (rc < 0) dead = 1;
        if (rc > 0) c->eof = 1; /* half-closed: answer what arrived, then close */
        frames_process(c);
      } else if (pfd[k].revents & (POLLHUP | POLLERR)) {
        dead = 1; /* gone in both directions (or reset): nobody can read answers */
      }
      if (dead || conn_flush(c) != 0 || (c->eof && !c->job && !c->eval_pending && !c->out.len)) conn_drop(i);
    }
    jobs_tick();
    eval_tick();
    /* Answers produced by finished jobs go out now rather than at the next wakeup. */
    for (int i = 0; i < nconns;) {
      struct conn *c = conns[i];
      if ((c->out.len && conn_flush(c) != 0) || (c->eof && !c->job && !c->eval_pending && !c->out.len)) {
        conn_drop(i);
        continue;
      }
      i++;
    }
  }
}
