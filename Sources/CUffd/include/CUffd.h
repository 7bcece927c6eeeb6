// CUffd: userfaultfd and the Linux calls around it (descriptor passing, pidfds, eventfd, memfd).
#pragma once
#include "cuffd_beneath.h"
#include "cuffd_linux.h"
#include "cuffd_net.h"
#include "cuffd_scm.h"
#include "cuffd_thread.h"
#include "cuffd_uffd.h"
