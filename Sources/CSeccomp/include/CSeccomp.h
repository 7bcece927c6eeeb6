// CSeccomp: the seccomp surface of forkd's Sandbox module.
#pragma once
#include "cseccomp_filter.h"
#include "cseccomp_requests.h"
