#!/usr/bin/env bash
# Installs forkd from a build directory: the binaries, the systemd units, tmpfiles.d and
# sysusers.d entries, and docs/systemd.md.
#
#   packaging/install.sh [--build-dir DIR] [--prefix PREFIX] [--destdir DESTDIR] [--no-activate]
#
#   --build-dir  where the binaries are (default: .build/release next to this script's repository)
#   --prefix     install prefix (default /usr/local): PREFIX/bin, PREFIX/share/doc/forkd; the units'
#                ExecStart= and Documentation= are rewritten to match
#   --destdir    stage everything under DESTDIR (packaging, tests); implies --no-activate
#   --no-activate  do not run systemd-sysusers, systemd-tmpfiles or systemctl daemon-reload
#
# Layout (under DESTDIR):
#   PREFIX/bin/{forkd-supervisor,forkd-vmm,forkd-pager}   required
#   PREFIX/bin/{forkd,forkd-systemd-probe}                 when built
#   /etc/systemd/system/forkd.{socket,service}
#   /etc/tmpfiles.d/forkd.conf, /etc/sysusers.d/forkd.conf
#   PREFIX/share/doc/forkd/systemd.md
# Then: systemctl enable --now forkd.socket
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
build_dir="$repo/.build/release"
prefix="/usr/local"
destdir=""
activate=1

usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build_dir="${2:?--build-dir needs a value}"; shift 2 ;;
    --build-dir=*) build_dir="${1#*=}"; shift ;;
    --prefix) prefix="${2:?--prefix needs a value}"; shift 2 ;;
    --prefix=*) prefix="${1#*=}"; shift ;;
    --destdir) destdir="${2:?--destdir needs a value}"; shift 2 ;;
    --destdir=*) destdir="${1#*=}"; shift ;;
    --no-activate) activate=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

case "$prefix" in
  /*) ;;
  *) echo "install.sh: --prefix must be absolute: $prefix" >&2; exit 2 ;;
esac
prefix="${prefix%/}"
[ -n "$destdir" ] && activate=0

required=(forkd-supervisor forkd-vmm forkd-pager)
optional=(forkd forkd-systemd-probe)
for binary in "${required[@]}"; do
  if [ ! -x "$build_dir/$binary" ]; then
    echo "install.sh: $build_dir/$binary is missing (swift build -c release first)" >&2
    exit 1
  fi
done

bin_dir="$destdir$prefix/bin"
doc_dir="$destdir$prefix/share/doc/forkd"
unit_dir="$destdir/etc/systemd/system"
tmpfiles_dir="$destdir/etc/tmpfiles.d"
sysusers_dir="$destdir/etc/sysusers.d"

install -d -m 0755 "$bin_dir" "$doc_dir" "$unit_dir" "$tmpfiles_dir" "$sysusers_dir"
for binary in "${required[@]}" "${optional[@]}"; do
  if [ -x "$build_dir/$binary" ]; then
    install -m 0755 "$build_dir/$binary" "$bin_dir/$binary"
    echo "installed $bin_dir/$binary"
  fi
done

# The units name /usr/local; follow --prefix.
sed -e "s|/usr/local/bin/|$prefix/bin/|g" -e "s|/usr/local/share/doc/forkd/|$prefix/share/doc/forkd/|g" \
  "$here/forkd.service" > "$unit_dir/forkd.service.tmp"
mv "$unit_dir/forkd.service.tmp" "$unit_dir/forkd.service"
chmod 0644 "$unit_dir/forkd.service"
install -m 0644 "$here/forkd.socket" "$unit_dir/forkd.socket"
install -m 0644 "$here/forkd-tmpfiles.conf" "$tmpfiles_dir/forkd.conf"
install -m 0644 "$here/forkd-sysusers.conf" "$sysusers_dir/forkd.conf"
if [ -f "$repo/docs/systemd.md" ]; then install -m 0644 "$repo/docs/systemd.md" "$doc_dir/systemd.md"; fi
echo "installed $unit_dir/forkd.socket $unit_dir/forkd.service"
echo "installed $tmpfiles_dir/forkd.conf $sysusers_dir/forkd.conf"

if [ "$activate" -eq 1 ]; then
  if [ -d /run/systemd/system ]; then
    systemd-sysusers /etc/sysusers.d/forkd.conf
    systemd-tmpfiles --create /etc/tmpfiles.d/forkd.conf
    systemctl daemon-reload
    echo "next: systemctl enable --now forkd.socket"
  else
    echo "install.sh: systemd is not running here; skipped sysusers, tmpfiles and daemon-reload" >&2
  fi
fi
