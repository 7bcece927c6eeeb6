/* exec: run a program with fork/exec, collect stdout/stderr and the exit status, kill it on
 * timeout. Each program runs in its own process group so a timeout kills what it started. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"

/* After the program exited, wait this long for descendants that still hold its pipes. */
#define PIPE_GRACE_MS 200

struct job *jobs[MAX_JOBS];
int njobs;

static void free_argv(char **argv) {
  if (!argv) return;
  for (char **a = argv; *a; a++) free(*a);
  free(argv);
}

/* The program's stdin as a memfd holding all of it: no pipe to feed from the poll loop, and a
 * program that never reads it cannot block the agent. */
static int stdin_memfd(const uint8_t *data, uint32_t len) {
  int fd = memfd_create("exec-stdin", MFD_CLOEXEC);
  if (fd < 0) return -1;
  for (uint32_t done = 0; done < len;) {
    ssize_t w = write(fd, data + done, len - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      close(fd);
      return -1;
    }
    done += (uint32_t)w;
  }
  if (lseek(fd, 0, SEEK_SET) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

void exec_start(struct conn *c, uint32_t request_id, uint32_t timeout_s, char **argv, struct exec_opts *opts) {
  int out[2] = {-1, -1}, err[2] = {-1, -1}, in = -1;
  char msg[160];
  if (opts->stdin_len && (in = stdin_memfd(opts->stdin_data, opts->stdin_len)) < 0) {
    snprintf(msg, sizeof msg, "exec: cannot hold %u bytes of stdin: %s", opts->stdin_len, strerror(errno));
    goto fail;
  }
  if (njobs == MAX_JOBS) {
    snprintf(msg, sizeof msg, "exec: %d programs already running", MAX_JOBS);
    goto fail;
  }
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
    snprintf(msg, sizeof msg, "exec: pipe: %s", strerror(errno));
    goto fail;
  }
  pid_t pid = fork();
  if (pid < 0) {
    snprintf(msg, sizeof msg, "exec: fork: %s", strerror(errno));
    goto fail;
  }
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    setpgid(0, 0);
    int input = in >= 0 ? in : open("/dev/null", O_RDONLY);
    if (input >= 0) dup2(input, 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    for (char **e = opts->env; e && *e; e++) putenv(*e);
    if (opts->cwd && chdir(opts->cwd) != 0) {
      dprintf(2, "forkd-agent: cannot change to directory %s: %s\n", opts->cwd, strerror(errno));
      _exit(126);
    }
    execvp(argv[0], argv);
    int e = errno;
    dprintf(2, "forkd-agent: cannot run %s: %s\n", argv[0], strerror(e));
    _exit(e == ENOENT ? 127 : 126);
  }
  setpgid(pid, pid); /* also in the parent: no window where a kill of the group misses it */
  close(out[1]);
  close(err[1]);
  fcntl(out[0], F_SETFL, O_NONBLOCK);
  fcntl(err[0], F_SETFL, O_NONBLOCK);
  if (in >= 0) close(in);
  free_argv(argv);
  free_argv(opts->env);
  free(opts->cwd);

  struct job *j = calloc(1, sizeof *j);
  if (!j) {
    logmsg("out of memory for an exec job");
    abort();
  }
  j->conn = c;
  j->request_id = request_id;
  j->pid = pid;
  j->out_fd = out[0];
  j->err_fd = err[0];
  j->deadline_ms = now_ms() + 1000 * (int64_t)(timeout_s ? timeout_s : EXEC_DEFAULT_TIMEOUT_S);
  jobs[njobs++] = j;
  c->job = j;
  return;

fail:
  for (int i = 0; i < 2; i++) {
    if (out[i] >= 0) close(out[i]);
    if (err[i] >= 0) close(err[i]);
  }
  if (in >= 0) close(in);
  free_argv(argv);
  free_argv(opts->env);
  free(opts->cwd);
  reply_error(c, request_id, E_UNSUPPORTED, msg);
}

void job_read(struct job *j, int fd) {
  int is_out = fd == j->out_fd;
  struct buf *b = is_out ? &j->out : &j->err;
  uint64_t *dropped = is_out ? &j->out_dropped : &j->err_dropped;
  uint8_t chunk[65536];
  for (;;) {
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n > 0) {
      size_t room = b->len < EXEC_OUTPUT_MAX ? EXEC_OUTPUT_MAX - b->len : 0;
      size_t keep = (size_t)n < room ? (size_t)n : room;
      buf_put(b, chunk, keep);
      *dropped += (size_t)n - keep;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    close(fd); /* EOF or error */
    if (is_out)
      j->out_fd = -1;
    else
      j->err_fd = -1;
    return;
  }
}

void jobs_reap(void) {
  for (;;) {
    int status;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;
    for (int i = 0; i < njobs; i++) {
      if (jobs[i]->pid == pid && !jobs[i]->exited) {
        jobs[i]->exited = 1;
        jobs[i]->status = status;
        jobs[i]->exited_ms = now_ms();
      }
    }
  }
}

static void job_kill(struct job *j) {
  kill(-j->pid, SIGKILL);
  kill(j->pid, SIGKILL);
}

void job_orphan(struct job *j) {
  j->conn = NULL;
  if (!j->exited) job_kill(j);
}

static void note_dropped(struct buf *err, const char *stream, uint64_t dropped) {
  if (!dropped) return;
  char note[96];
  int n = snprintf(note, sizeof note, "\n[forkd-agent: %llu bytes of %s dropped]\n", (unsigned long long)dropped,
                   stream);
  buf_put(err, note, (size_t)n); /* EXEC_OUTPUT_MAX leaves room for two notes */
}

static void job_answer(struct job *j) {
  struct conn *c = j->conn;
  if (!c) return;
  int32_t code;
  if (WIFEXITED(j->status))
    code = WEXITSTATUS(j->status);
  else if (WIFSIGNALED(j->status))
    code = -WTERMSIG(j->status);
  else
    code = -1;
  note_dropped(&j->err, "stdout", j->out_dropped);
  note_dropped(&j->err, "stderr", j->err_dropped);
  struct buf p = {0};
  buf_u32(&p, (uint32_t)code);
  buf_u8(&p, j->timed_out ? 1 : 0);
  buf_u32(&p, (uint32_t)j->out.len);
  buf_put(&p, j->out.data, j->out.len);
  buf_u32(&p, (uint32_t)j->err.len);
  buf_put(&p, j->err.data, j->err.len);
  reply_frame(c, T_EXEC | TYPE_REPLY, j->request_id, p.data, p.len);
  buf_free(&p);
  c->job = NULL;
}

void jobs_tick(void) {
  int64_t now = now_ms();
  for (int i = 0; i < njobs;) {
    struct job *j = jobs[i];
    if (!j->exited && !j->timed_out && now >= j->deadline_ms) {
      j->timed_out = 1;
      job_kill(j);
    }
    int pipes_open = j->out_fd >= 0 || j->err_fd >= 0;
    if (j->exited && pipes_open && now >= j->exited_ms + PIPE_GRACE_MS) {
      /* A descendant outside the group keeps a pipe: take what is there and stop waiting. */
      if (j->out_fd >= 0) job_read(j, j->out_fd);
      if (j->err_fd >= 0) job_read(j, j->err_fd);
      if (j->out_fd >= 0) close(j->out_fd);
      if (j->err_fd >= 0) close(j->err_fd);
      j->out_fd = j->err_fd = -1;
      pipes_open = 0;
    }
    if (!j->exited || pipes_open) {
      i++;
      continue;
    }
    struct conn *c = j->conn;
    job_answer(j);
    buf_free(&j->out);
    buf_free(&j->err);
    free(j);
    jobs[i] = jobs[--njobs];
    if (c) frames_process(c); /* frames that waited behind the exec */
  }
}

int jobs_wakeup_ms(void) {
  int64_t now = now_ms(), best = -1;
  for (int i = 0; i < njobs; i++) {
    struct job *j = jobs[i];
    int64_t at;
    if (!j->exited && !j->timed_out)
      at = j->deadline_ms;
    else if (j->exited)
      at = j->exited_ms + PIPE_GRACE_MS;
    else
      continue; /* killed, waiting for SIGCHLD */
    int64_t wait = at > now ? at - now : 0;
    if (best < 0 || wait < best) best = wait;
  }
  return best > 60000 ? 60000 : (int)best;
}
