#!/usr/bin/env bash
# Builds forkd-agent, the Linux guest agent, as one static x86-64 executable.
#
#   guest/linux-agent/build.sh [OUT]      (default: .cache/linux-guest/forkd-agent)
#
# Compiler: $CC, else the toolchain's clang, else cc. Needs the glibc static libraries
# (libc6-dev). Skips the build when OUT is newer than every source and this script; the
# result is moved into place atomically, so concurrent callers are safe.
set -euo pipefail

src=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$src/../.." && pwd)
out=${1:-$root/.cache/linux-guest/forkd-agent}
cc=${CC:-$(command -v clang || command -v cc || true)}
[ -n "$cc" ] || { echo "build.sh: no C compiler (set CC, or install clang or gcc)" >&2; exit 1; }

up_to_date=1
[ -x "$out" ] || up_to_date=0
if [ "$up_to_date" = 1 ]; then
  for f in "$src"/*.c "$src"/*.h "$src/build.sh"; do
    [ "$f" -nt "$out" ] && { up_to_date=0; break; }
  done
fi
[ "$up_to_date" = 1 ] && exit 0

mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
"$cc" -std=c11 -Os -Wall -Wextra -Werror -fno-asynchronous-unwind-tables \
  -static -s -o "$tmp" "$src"/main.c "$src"/frames.c "$src"/exec.c "$src"/eval.c "$src"/files.c
mv -f "$tmp" "$out"
trap - EXIT
