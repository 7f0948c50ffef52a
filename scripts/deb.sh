#!/usr/bin/env bash
# Build the Debian package libnginx-mod-stream-xmpp-cm (debian/) with
# Debian's own tooling: dpkg-buildpackage, dh with dh_nginx and the
# nginx_mod build system from nginx-dev.
#   scripts/deb.sh      -> build/deb/libnginx-mod-stream-xmpp-cm_VERSION_ARCH.deb
# It installs the build dependencies with apt-get when some are missing,
# builds from a copy of the tree under build/deb/ (dpkg-buildpackage
# writes its results next to the source directory, so they stay in the
# git-ignored build/deb/ and the tree itself gets no debian/ build debris),
# and prints the path of the .deb on its last line.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out="$top/build/deb"
pkg=libnginx-mod-stream-xmpp-cm
stage="$out/$pkg"

sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive

# a fresh copy of the sources: what git tracks plus new files it does not
# ignore (uncommitted edits included), or everything but build/ outside git
rm -rf "$stage"
mkdir -p "$stage"
rm -f "$out"/*.deb "$out"/*.changes "$out"/*.buildinfo
if git -C "$top" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$top" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do
            [ -e "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -C "$stage" -xf -
else
    tar -C "$top" --exclude=./build --exclude=./demo-run -cf - . \
        | tar -C "$stage" -xf -
fi

# build dependencies (debian/control), with apt-get when some are missing
if ! command -v dpkg-checkbuilddeps >/dev/null 2>&1 \
        || ! command -v gcc >/dev/null 2>&1 \
        || ! command -v make >/dev/null 2>&1 \
        || ! (cd "$stage" && dpkg-checkbuilddeps >/dev/null 2>&1); then
    echo "deb.sh: installing build dependencies" >&2
    $sudo apt-get update
    $sudo apt-get install -y dpkg-dev build-essential
    $sudo apt-get build-dep -y "$stage"
fi

log="$out/build.log"
(cd "$stage" && dpkg-buildpackage -us -uc -b) > "$log" 2>&1 || {
    tail -n 40 "$log" >&2
    echo "deb.sh: dpkg-buildpackage failed (whole log: $log)" >&2
    exit 1; }
rm -rf "$stage"

deb=$(ls "$out"/"$pkg"_*.deb)
echo "built $deb"
