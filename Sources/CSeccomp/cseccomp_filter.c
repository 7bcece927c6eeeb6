#include "cseccomp_filter.h"

#include <errno.h>
#include <seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>

struct cseccomp_filter;  // never defined: a cseccomp_filter * is a scmp_filter_ctx.

static scmp_filter_ctx ctx_of(cseccomp_filter *filter) { return (scmp_filter_ctx)filter; }

cseccomp_filter *cseccomp_filter_new(int action, int errno_value, int *error) {
  uint32_t scmp_action;
  switch (action) {
  case CSECCOMP_ACTION_KILL_PROCESS: scmp_action = SCMP_ACT_KILL_PROCESS; break;
  case CSECCOMP_ACTION_ERRNO: scmp_action = SCMP_ACT_ERRNO((uint32_t)errno_value); break;
  case CSECCOMP_ACTION_LOG: scmp_action = SCMP_ACT_LOG; break;
  default: *error = -EINVAL; return NULL;
  }
  errno = 0;
  scmp_filter_ctx ctx = seccomp_init(scmp_action);
  if (ctx == NULL) {
    *error = errno != 0 ? -errno : -ENOMEM;
    return NULL;
  }
  int rc = 0;
  // Another architecture's ABI (int 0x80 on x86_64) gets the default action, not libseccomp's
  // kill-thread, which would leave the process half alive.
  if (rc == 0) rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, scmp_action);
  if (rc == 0) rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
  // Report the kernel's errno from seccomp_load instead of libseccomp's generic -ECANCELED.
  if (rc == 0) rc = seccomp_attr_set(ctx, SCMP_FLTATR_API_SYSRAWRC, 1);
  if (rc != 0) {
    seccomp_release(ctx);
    *error = rc;
    return NULL;
  }
  *error = 0;
  return (cseccomp_filter *)ctx;
}

void cseccomp_filter_free(cseccomp_filter *filter) {
  if (filter != NULL) seccomp_release(ctx_of(filter));
}

int cseccomp_syscall_number(const char *name) {
  int nr = seccomp_syscall_resolve_name(name);
  return nr == __NR_SCMP_ERROR ? -1 : nr;
}

int cseccomp_allow(cseccomp_filter *filter, int nr) {
  return seccomp_rule_add_array(ctx_of(filter), SCMP_ACT_ALLOW, nr, 0, NULL);
}

int cseccomp_allow_if(cseccomp_filter *filter, int nr, unsigned arg, int op, uint64_t mask, uint64_t value) {
  struct scmp_arg_cmp cmp = {.arg = arg};
  switch (op) {
  case CSECCOMP_CMP_EQ:
    cmp.op = SCMP_CMP_EQ;
    cmp.datum_a = value;
    break;
  case CSECCOMP_CMP_MASKED_EQ:
    cmp.op = SCMP_CMP_MASKED_EQ;
    cmp.datum_a = mask;
    cmp.datum_b = value;
    break;
  default: return -EINVAL;
  }
  if (arg > 5) return -EINVAL;
  return seccomp_rule_add_array(ctx_of(filter), SCMP_ACT_ALLOW, nr, 1, &cmp);
}

int cseccomp_filter_load(cseccomp_filter *filter) {
  int rc = seccomp_load(ctx_of(filter));
  // With TSYNC the kernel answers a positive thread id when that thread could not be synchronised.
  return rc > 0 ? -ESRCH : rc;
}

int cseccomp_set_no_new_privs(void) { return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 ? 0 : -errno; }

int cseccomp_library_version(void) {
  const struct scmp_version *v = seccomp_version();
  return v == NULL ? 0 : (int)(v->major * 10000 + v->minor * 100 + v->micro);
}

int cseccomp_filter_export_bpf(cseccomp_filter *filter, int fd) { return seccomp_export_bpf(ctx_of(filter), fd); }
