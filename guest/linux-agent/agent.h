/* forkd Linux guest agent: shared declarations (docs/test-guest.md "Agent protocol"). */
#ifndef FORKD_AGENT_H
#define FORKD_AGENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define FRAME_MAGIC 0x41444b46u /* "FKDA" in memory order */
#define FRAME_VERSION 1
#define FRAME_HDR_LEN 16
#define FRAME_PAYLOAD_MAX (1u << 20)
#define TYPE_REPLY 0x80
#define TYPE_ERROR 0xff

#define AGENT_KIND 2 /* Linux agent */
#define AGENT_VERSION 1

enum {
  T_PING = 1,
  T_ECHO = 2,
  T_FILL = 3,
  T_CHECKSUM = 4,
  T_COUNTER = 5,
  T_KV_SET = 6,
  T_KV_GET = 7,
  T_EXIT = 8,
  T_EXEC = 9,
  T_CONSOLE = 10,
  T_FILE_WRITE = 12,
  T_FILE_READ = 13,
  T_FILE_LIST = 14,
  T_FILE_DELETE = 15,
  T_EVAL = 0x20,
};

enum {
  E_BAD_FRAME = 1,
  E_UNKNOWN_TYPE = 2,
  E_BAD_ARGUMENT = 3,
  E_UNSUPPORTED = 4,
  E_TOO_LARGE = 5,
  E_NOT_FOUND = 6,
  E_BUSY = 7,
};

/* A growable byte buffer. Allocation failure is fatal (the agent is the guest's workload). */
struct buf {
  uint8_t *data;
  size_t len, cap;
};
void buf_reserve(struct buf *b, size_t extra);
void buf_put(struct buf *b, const void *p, size_t n);
void buf_u8(struct buf *b, uint8_t v);
void buf_u32(struct buf *b, uint32_t v);
void buf_u64(struct buf *b, uint64_t v);
void buf_consume(struct buf *b, size_t n);
void buf_free(struct buf *b);

static inline uint16_t ld16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t ld32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t ld64(const uint8_t *p) { return ld32(p) | (uint64_t)ld32(p + 4) << 32; }

/* One host connection. Frames are answered in order; while an exec runs, the connection's
 * further frames wait (other connections are served meanwhile). */
struct conn {
  int fd;
  struct buf in, out;
  uint64_t skip;           /* payload bytes of an oversized frame still to discard */
  int closing;             /* close once `out` is flushed (after a bad frame header) */
  int eof;                 /* the host half-closed: close once everything is answered */
  int exit_pending;        /* power off (or exit) once `out` is flushed */
  uint32_t exit_code;
  struct job *job;         /* the exec in flight, if any */
  int eval_pending;        /* an eval of this connection runs in the interpreter */
};

/* An exec in flight. */
struct job {
  struct conn *conn;       /* NULL once the connection died: the result is discarded */
  uint32_t request_id;
  pid_t pid;               /* also the process group id */
  int out_fd, err_fd;      /* -1 once at EOF */
  struct buf out, err;
  uint64_t out_dropped, err_dropped;
  int exited, status, timed_out;
  int64_t deadline_ms;     /* monotonic */
  int64_t exited_ms;       /* when the child was reaped (grace for pipes held by descendants) */
};

/* Agent-wide state (counters are shared by all connections, like the test guest's). */
struct agent {
  uint64_t served;
  uint64_t counter;
  const char *console_path; /* where `console` lines go */
  int power_off;            /* exit: power the machine off (vsock mode) instead of exiting */
};
extern struct agent agent;

/* frames.c: parse complete frames from c->in and answer them into c->out. Stops at a partial
 * frame, when the connection must close, or when an exec was started. */
void frames_process(struct conn *c);
void reply_error(struct conn *c, uint32_t request_id, uint32_t code, const char *msg);
void reply_frame(struct conn *c, uint8_t type, uint32_t request_id, const uint8_t *payload, size_t n);
/* reply_error with a printf-style message (at most 511 bytes). */
void fail(struct conn *c, uint32_t id, uint32_t code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Answers an error and returns from the calling command. */
#define FAIL(...)                                                                              \
  do {                                                                                         \
    fail(__VA_ARGS__);                                                                         \
    return;                                                                                    \
  } while (0)

/* files.c: file write/read/list/delete on the guest's own file system. */
void files_handle(struct conn *c, uint8_t type, uint32_t id, const uint8_t *p, uint32_t plen);

/* exec.c */
#define MAX_JOBS 64
extern struct job *jobs[MAX_JOBS];
extern int njobs;
/* What an exec may set besides its arguments (the optional tail of the exec payload). */
struct exec_opts {
  char **env;              /* NULL-terminated "NAME=value" overrides of the agent's environment, or NULL */
  char *cwd;               /* working directory, or NULL for the agent's */
  const uint8_t *stdin_data; /* the program's whole stdin (else /dev/null) */
  uint32_t stdin_len;
};
/* Starts argv (NULL-terminated) for connection c and sets c->job; if it cannot even start,
 * answers with an error itself. Takes ownership of argv, opts->env, opts->cwd and their strings;
 * stdin_data is copied before it returns. */
void exec_start(struct conn *c, uint32_t request_id, uint32_t timeout_s, char **argv, struct exec_opts *opts);
/* Reads what is available on one of a job's pipes (fd is job->out_fd or job->err_fd). */
void job_read(struct job *j, int fd);
/* Reaps exited children (after SIGCHLD). */
void jobs_reap(void);
/* Kills timed-out jobs and answers finished ones. */
void jobs_tick(void);
/* Milliseconds until the next job deadline or grace period ends, -1 if none. */
int jobs_wakeup_ms(void);
/* The connection went away: its job is killed and its result discarded. */
void job_orphan(struct job *j);
/* Largest bytes of stdout or stderr an exec response carries (each); the rest is dropped. */
#define EXEC_OUTPUT_MAX (512u * 1024u - 64u)
#define EXEC_DEFAULT_TIMEOUT_S 60

/* eval.c: the long-lived Python interpreter (one eval at a time, agent-wide). */
#define EVAL_DEFAULT_TIMEOUT_S 30
/* Sends the code of an eval request to the interpreter (started on first use) and sets
 * c->eval_pending; answers errors itself. */
void eval_start(struct conn *c, uint32_t request_id, const uint8_t *p, uint32_t plen);
/* The interpreter's answer pipe while an eval runs, else -1. */
int eval_fd(void);
/* Reads the interpreter's answer; answers the eval once it is complete. */
void eval_read(void);
/* Kills an interpreter whose eval ran past its timeout and answers it. */
void eval_tick(void);
/* Milliseconds until the running eval's deadline, -1 if none. */
int eval_wakeup_ms(void);
/* The connection went away: its eval's answer is discarded. */
void eval_orphan(struct conn *c);

int64_t now_ms(void);
void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
