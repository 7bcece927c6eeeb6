/*
 * eval: one long-lived Python interpreter that the agent owns (the "bridge"). It is started by
 * the first eval — in a parent that is during warm-up, before the snapshot — so every child
 * restored from the snapshot finds it running with everything it imported, and its globals
 * persist from one eval to the next within that child. Children never share it: each is its
 * own VM.
 *
 * Agent -> bridge (its fd 0): u32 length, the code (UTF-8).
 * Bridge -> agent (its fd 3): i32 exit_code, then result, error, stdout, each u32 length + bytes:
 * exactly the payload of the eval response frame, so the agent checks the lengths and forwards.
 * One eval runs at a time; an eval from another connection meanwhile gets E_BUSY. A timeout
 * kills the interpreter (its state is lost, and the answer says so); the next eval starts anew.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"

/* The bridge, run as `python3 -I -c BRIDGE`. Output of print() is captured per eval; the value
 * of a last expression statement is the result (its repr; nothing for None), like a REPL. */
static const char BRIDGE[] =
    "import ast, contextlib, io, os, struct, sys, traceback\n"
    "req = os.fdopen(0, 'rb', buffering=0)\n"
    "resp = os.fdopen(3, 'wb', buffering=0)\n"
    "LIMIT = 256 * 1024\n"
    "g = {'__name__': '__main__', '__builtins__': __builtins__}\n"
    "def read_exact(n):\n"
    "    b = bytearray()\n"
    "    while len(b) < n:\n"
    "        chunk = req.read(n - len(b))\n"
    "        if not chunk:\n"
    "            sys.exit(0)\n"
    "        b += chunk\n"
    "    return bytes(b)\n"
    "def blob(s):\n"
    "    b = s.encode('utf-8', 'replace')\n"
    "    if len(b) > LIMIT:\n"
    "        b = b[:LIMIT] + b'\\n[truncated]'\n"
    "    return struct.pack('<I', len(b)) + b\n"
    "while True:\n"
    "    (n,) = struct.unpack('<I', read_exact(4))\n"
    "    code = read_exact(n).decode('utf-8', 'replace')\n"
    "    out, err = io.StringIO(), io.StringIO()\n"
    "    result, error, status = '', '', 0\n"
    "    try:\n"
    "        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
    "            tree = ast.parse(code, '<eval>', 'exec')\n"
    "            last = None\n"
    "            if tree.body and isinstance(tree.body[-1], ast.Expr):\n"
    "                last = ast.Expression(tree.body.pop().value)\n"
    "            exec(compile(tree, '<eval>', 'exec'), g)\n"
    "            if last is not None:\n"
    "                value = eval(compile(last, '<eval>', 'eval'), g)\n"
    "                if value is not None:\n"
    "                    result = repr(value)\n"
    "    except SystemExit as e:\n"
    "        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)\n"
    "        if e.code is not None and not isinstance(e.code, int):\n"
    "            error = str(e.code)\n"
    "    except BaseException as e:\n"
    "        status = 1\n"
    "        tb = e.__traceback__\n"
    "        while tb is not None and tb.tb_frame.f_code.co_filename != '<eval>':\n"
    "            tb = tb.tb_next\n"
    "        error = ''.join(traceback.format_exception(type(e), e, tb))\n"
    "    status = max(-2**31, min(2**31 - 1, status))\n"
    "    resp.write(struct.pack('<i', status) + blob(result) + blob(err.getvalue() + error) + blob(out.getvalue()))\n";

static struct {
  pid_t pid;           /* 0: no interpreter */
  int to_fd, from_fd;  /* -1 when closed */
  int busy;
  struct conn *conn;   /* the connection waiting for the answer; NULL once it went away */
  uint32_t request_id;
  int64_t deadline_ms;
  uint32_t timeout_s;
  struct buf in;
} br = {.to_fd = -1, .from_fd = -1};

static void close_pipes(void) {
  if (br.to_fd >= 0) close(br.to_fd);
  if (br.from_fd >= 0) close(br.from_fd);
  br.to_fd = br.from_fd = -1;
  br.in.len = 0;
}

/* Ends the interpreter (it is reaped by jobs_reap like every child). */
static void bridge_kill(void) {
  if (br.pid > 0) kill(-br.pid, SIGKILL);
  br.pid = 0;
  close_pipes();
}

static const char *python_path(void) {
  const char *p = getenv("FORKD_AGENT_PYTHON");
  return p && *p ? p : "python3";
}

static int bridge_start(void) {
  int req[2], resp[2];
  if (pipe2(req, O_CLOEXEC) != 0) return -1;
  if (pipe2(resp, O_CLOEXEC) != 0) {
    close(req[0]);
    close(req[1]);
    return -1;
  }
  pid_t pid = fork();
  if (pid < 0) {
    close(req[0]);
    close(req[1]);
    close(resp[0]);
    close(resp[1]);
    return -1;
  }
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    setpgid(0, 0);
    int null = open("/dev/null", O_RDWR);
    if (dup2(req[0], 0) < 0 || dup2(resp[1], 3) < 0 || null < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0) _exit(126);
    const char *python = python_path();
    execlp(python, python, "-I", "-c", BRIDGE, (char *)NULL);
    _exit(127);
  }
  close(req[0]);
  close(resp[1]);
  fcntl(resp[0], F_SETFL, fcntl(resp[0], F_GETFL) | O_NONBLOCK);
  br.pid = pid;
  br.to_fd = req[1];
  br.from_fd = resp[0];
  br.in.len = 0;
  logmsg("eval: started %s (pid %d)", python_path(), (int)pid);
  return 0;
}

static int write_all(int fd, const uint8_t *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* The eval is over: the waiting connection goes on with the frames queued behind it. */
static void finish(void) {
  struct conn *c = br.conn;
  br.busy = 0;
  br.conn = NULL;
  if (c) {
    c->eval_pending = 0;
    frames_process(c);
  }
}

/* Answers the waiting eval with an exit code and an error text of the agent's own. */
static void answer(int32_t status, const char *error) {
  if (br.conn) {
    struct buf p = {0};
    buf_u32(&p, (uint32_t)status);
    buf_u32(&p, 0);
    buf_u32(&p, (uint32_t)strlen(error));
    buf_put(&p, error, strlen(error));
    buf_u32(&p, 0);
    reply_frame(br.conn, T_EVAL | TYPE_REPLY, br.request_id, p.data, p.len);
    buf_free(&p);
  }
  finish();
}

void eval_start(struct conn *c, uint32_t request_id, const uint8_t *p, uint32_t plen) {
  if (plen < 8 || ld32(p + 4) != plen - 8) {
    reply_error(c, request_id, E_BAD_ARGUMENT, "eval payload: u32 timeout_s, u32 length, code of that length");
    return;
  }
  if (br.busy) {
    reply_error(c, request_id, E_BUSY, "the interpreter is running another eval; retry when it has answered");
    return;
  }
  uint32_t timeout = ld32(p);
  uint32_t n = ld32(p + 4);
  uint8_t header[4] = {(uint8_t)n, (uint8_t)(n >> 8), (uint8_t)(n >> 16), (uint8_t)(n >> 24)};
  /* A bridge that died while idle shows as EPIPE here: start a new one and send again, once. */
  for (int attempt = 0;; attempt++) {
    if (!br.pid && bridge_start() != 0) {
      reply_error(c, request_id, E_UNSUPPORTED, "cannot start the interpreter");
      return;
    }
    if (write_all(br.to_fd, header, 4) == 0 && write_all(br.to_fd, p + 8, n) == 0) break;
    bridge_kill();
    if (attempt == 1) {
      reply_error(c, request_id, E_UNSUPPORTED, "the interpreter does not read its requests");
      return;
    }
  }
  br.busy = 1;
  br.conn = c;
  br.request_id = request_id;
  br.timeout_s = timeout ? timeout : EVAL_DEFAULT_TIMEOUT_S;
  br.deadline_ms = now_ms() + (int64_t)br.timeout_s * 1000;
  c->eval_pending = 1;
}

int eval_fd(void) { return br.busy ? br.from_fd : -1; }

/* Length of a complete answer at the start of `in`, 0 if more must come, -1 if malformed. */
static long complete_answer(const struct buf *in) {
  size_t at = 4;
  for (int field = 0; field < 3; field++) {
    if (in->len < at + 4) return 0;
    uint32_t n = ld32(in->data + at);
    if (n > FRAME_PAYLOAD_MAX) return -1;
    at += 4 + (size_t)n;
    if (at > FRAME_PAYLOAD_MAX) return -1;
  }
  return in->len < at ? 0 : (long)at;
}

void eval_read(void) {
  uint8_t chunk[65536];
  for (;;) {
    ssize_t r = read(br.from_fd, chunk, sizeof chunk);
    if (r > 0) {
      buf_put(&br.in, chunk, (size_t)r);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno == EAGAIN) break;
    /* EOF or an error: the interpreter is gone (a crash, os._exit, a missing python3). */
    bridge_kill();
    answer(-1, "the interpreter ended during eval (or could not start: is python3 installed?); the next eval starts a new one");
    return;
  }
  long n = complete_answer(&br.in);
  if (n < 0) {
    bridge_kill();
    answer(-1, "the interpreter sent a malformed answer and was restarted; its state is gone");
    return;
  }
  if (n == 0) return;
  if (br.conn) reply_frame(br.conn, T_EVAL | TYPE_REPLY, br.request_id, br.in.data, (size_t)n);
  buf_consume(&br.in, (size_t)n);
  finish();
}

void eval_tick(void) {
  if (!br.busy || now_ms() < br.deadline_ms) return;
  char message[160];
  snprintf(message, sizeof message,
           "eval timed out after %u s; the interpreter was killed and its state is gone", br.timeout_s);
  bridge_kill();
  answer(124, message);
}

int eval_wakeup_ms(void) {
  if (!br.busy) return -1;
  int64_t left = br.deadline_ms - now_ms();
  return left < 0 ? 0 : (int)(left > 60000 ? 60000 : left);
}

void eval_orphan(struct conn *c) {
  if (br.conn == c) br.conn = NULL; /* the answer is read and discarded when it comes */
}
