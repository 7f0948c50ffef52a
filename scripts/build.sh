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
        tail -n 30 "$out/configure.log" >&2; exit 1; }
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
    # nginx-dev ships headers only; a static build needs the full source.
    # Use $NGINX_SRC if given, else nginx's upstream tarball for the same
    # version, fetched from Debian's source archive with a private apt
    # state (the system's apt configuration is not touched).
    ver=$(/usr/sbin/nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
    full=${NGINX_SRC:-}
    if [ -z "$full" ]; then
        full="$out/nginx-$ver-full"
        if [ ! -f "$full/src/core/nginx.c" ]; then
            apt="$out/apt"
            mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" \
                     "$apt/sources"
            cat > "$apt/sources/debian-src.sources" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
            aptopt=(-o Dir::Etc::SourceList=/dev/null
                    -o Dir::Etc::SourceParts="$apt/sources"
                    -o Dir::State::Lists="$apt/lists"
                    -o Dir::Cache="$apt/cache" -q)
            apt-get "${aptopt[@]}" update > "$out/apt.log" 2>&1
            (cd "$apt" && apt-get "${aptopt[@]}" source --download-only \
                nginx >> "$out/apt.log" 2>&1) || true
            tarball=$(ls "$apt"/nginx_"$ver".orig.tar.gz 2>/dev/null || true)
            if [ -z "$tarball" ]; then
                echo "build.sh: could not get nginx $ver sources" \
                     "(see $out/apt.log); set NGINX_SRC" >&2
                exit 1
            fi
            rm -rf "$full" && mkdir -p "$full"
            tar -xzf "$tarball" -C "$full" --strip-components=1
        fi
    fi
    rm -rf "$out/nginx-static"
    cp -a "$full" "$out/nginx-static"
    (cd "$out/nginx-static" && ./configure --with-stream \
        --with-stream_ssl_module --with-cc-opt="$cc_opt" \
        --add-module="$top" > "$out/configure-static.log" 2>&1 \
        && make -f objs/Makefile -j2 > "$out/make-static.log" 2>&1) || {
        tail -n 30 "$out/make-static.log" "$out/configure-static.log" >&2
        exit 1; }
    # the static binary must know the directives (the metrics one too)
    t="$out/static-check"
    mkdir -p "$t/logs"
    cat > "$t/nginx.conf" <<CONF
error_log $t/logs/error.log;
pid $t/logs/nginx.pid;
events {}
stream {
    server {
        listen 127.0.0.1:1;
        xmpp_cm_pass 127.0.0.1:5262;
        xmpp_cm_domain localhost;
        xmpp_cm_secret check;
    }
}
http {
    server {
        listen 127.0.0.1:2;
        location = /metrics { xmpp_cm_metrics; }
    }
}
CONF
    "$out/nginx-static/objs/nginx" -t -p "$t" -c "$t/nginx.conf" \
        > "$t/check.log" 2>&1 || {
        cat "$t/check.log" >&2
        echo "build.sh: the static nginx does not accept the directives" >&2
        exit 1; }
    echo "built static $out/nginx-static/objs/nginx"
fi
