#!/usr/bin/env bash
# Build ngx_stream_xmpp_cm_module.so against Debian's nginx-dev sources.
#   scripts/build.sh            dynamic module -> build/ngx_stream_xmpp_cm_module.so
#   scripts/build.sh --static   also check that a static nginx builds with it
# Environment: CFLAGS_EXTRA adds compiler flags (e.g. sanitizers).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
src=/usr/share/nginx/src
out="$top/build"
if [ ! -f "$src/conf_flags" ]; then
    echo "build.sh: $src/conf_flags missing: apt-get install nginx-dev" >&2
    exit 1
fi
# shellcheck disable=SC1091
. "$src/conf_flags"
mkdir -p "$out"
cc_opt="-g -O2 -Wall -Wextra -Werror -Wno-unused-parameter ${CFLAGS_EXTRA:-}"

stamp="$out/.configured"
want="dyn $cc_opt $(cat "$top/config" | md5sum)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    rm -rf "$out/nginx"
    cp -a "$src" "$out/nginx"
    (cd "$out/nginx" && ./configure "${NGX_CONF_FLAGS[@]}" \
        --with-stream=dynamic --with-stream_ssl_module \
        --with-cc-opt="$cc_opt" \
        --add-dynamic-module="$top" > "$out/configure.log" 2>&1) || {
        tail -30 "$out/configure.log" >&2; exit 1; }
    echo "$want" > "$stamp"
fi
(cd "$out/nginx" && make -f objs/Makefile objs/ngx_stream_xmpp_cm_module.so \
    > "$out/make.log" 2>&1) || { grep -E 'error:|warning:|undefined' -A3 \
    "$out/make.log" | head -60 >&2; exit 1; }
# a new inode, never an in-place overwrite: running nginx processes have
# the old file mapped
cp "$out/nginx/objs/ngx_stream_xmpp_cm_module.so" "$out/.module.so.tmp"
mv -f "$out/.module.so.tmp" "$out/ngx_stream_xmpp_cm_module.so"
echo "built $out/ngx_stream_xmpp_cm_module.so"

if [ "${1:-}" = "--static" ]; then
    rm -rf "$out/nginx-static"
    cp -a "$src" "$out/nginx-static"
    (cd "$out/nginx-static" && ./configure --with-stream \
        --with-stream_ssl_module --with-cc-opt="$cc_opt" \
        --add-module="$top" > "$out/configure-static.log" 2>&1 \
        && make -j2 > "$out/make-static.log" 2>&1) || {
        tail -30 "$out/make-static.log" "$out/configure-static.log" >&2
        exit 1; }
    echo "built static $out/nginx-static/objs/nginx"
fi
