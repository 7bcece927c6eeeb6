// openat2(2) confined to a directory (glibc on Debian 12 has no wrapper): the image roots of the
// supervisor resolve request paths with it so no symlink or ".." leads out of a root.
#pragma once

// Opens `path` (relative) under the directory `dirfd` read-only with RESOLVE_BENEATH and
// RESOLVE_NO_MAGICLINKS; -1 with errno set (EXDEV when the path leads out of the directory).
int cuffd_open_beneath(int dirfd, const char *path);
