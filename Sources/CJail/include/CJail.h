// The jail of a per-child process (forkd-vmm, forkd-pager): a private mount namespace whose root
// is the process's current directory (its run directory), and an unprivileged uid/gid with no
// capabilities. One concern per file: cjail_cell.h (the filesystem view), cjail_credentials.h
// (who the process is).
#pragma once
#include "cjail_cell.h"
#include "cjail_credentials.h"
