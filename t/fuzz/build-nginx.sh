#!/usr/bin/env bash
# Build nginx (full source) with the module compiled in, with clang-14 and
# sanitizers (or plain gcc for the unit tests): stream only, but for the
# test-suite binary also http, where the metrics handler lives.  Used by
# scripts/sanitize.sh, scripts/fuzz.sh and scripts/unit.sh.
#
#   t/fuzz/build-nginx.sh asan   -> build/asan/nginx/objs/nginx
#                                   (ASan+UBSan, the test-suite binary)
#   t/fuzz/build-nginx.sh fuzz   -> build/fuzz/nginx/objs/*.o
#                                   (ASan+UBSan+libFuzzer coverage; the
#                                   objects the fuzz targets link with)
#   t/fuzz/build-nginx.sh unit   -> build/unit/nginx/objs/*.o
#                                   (gcc -O1, no sanitizers: the objects
#                                   the unit tests link with)
#
# Besides objs/nginx, every object but main() goes into $out/libngx.a
# (nginx.o with main renamed to ngx_nginx_main) for those targets.
#
# Installs what is missing from Debian (apt-get), and gets nginx's full
# source with `scripts/build.sh --static` when it is not there yet
# (nginx-dev ships headers only).  $NGINX_SRC overrides the source tree.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
mode=${1:?usage: build-nginx.sh asan|fuzz|unit}
out="$top/build/$mode"

# --------------------------------------------------------------- packages
need=()
if [ "$mode" != unit ]; then
    command -v clang-14 >/dev/null 2>&1 || need+=(clang-14)
    ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a \
        >/dev/null 2>&1 || need+=(libclang-rt-14-dev libfuzzer-14-dev)
    command -v llvm-profdata-14 >/dev/null 2>&1 || need+=(llvm-14)
fi
command -v make >/dev/null 2>&1 || need+=(make)
[ -x /usr/sbin/nginx ] || need+=(nginx)
[ -f /usr/share/nginx/src/conf_flags ] || need+=(nginx-dev)
[ -f /usr/include/expat.h ] || need+=(libexpat1-dev)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
[ -f /usr/include/pcre2.h ] || need+=(libpcre2-dev)
[ -f /usr/include/zlib.h ] || need+=(zlib1g-dev)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
if [ ${#need[@]} -gt 0 ]; then
    echo "build-nginx.sh: installing ${need[*]}" >&2
    sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q "${need[@]}" >/dev/null
fi

# --------------------------------------------------------------- source
ver=$(/usr/sbin/nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
full=${NGINX_SRC:-$top/build/nginx-$ver-full}
if [ ! -f "$full/src/core/nginx.c" ]; then
    echo "build-nginx.sh: fetching nginx $ver source (scripts/build.sh --static)" >&2
    bash "$top/scripts/build.sh" --static >/dev/null
fi

# --------------------------------------------------------------- configure
# UBSan stays recoverable: the fuzz targets halt on the first report
# (UBSAN_OPTIONS=halt_on_error=1), the test suite logs every report and
# fails at teardown; t/fuzz/ubsan.supp lists known, reported sites.
san="-fsanitize=address,undefined"
cc=clang-14
http=--without-http
case "$mode" in
asan) ccopt="$san -fno-omit-frame-pointer -g -O1"; ldopt="$san"
      # the http modules the web transports' tests use, as Debian has them
      http="--with-http_ssl_module --with-http_realip_module"
      http="$http --with-http_v2_module" ;;
fuzz) ccopt="$san -fsanitize=fuzzer-no-link -fno-omit-frame-pointer -g -O1"
      ldopt="$san -fsanitize=fuzzer-no-link" ;;
unit) cc=gcc; ccopt="-g -O1"; ldopt= ;;
*) echo "build-nginx.sh: mode is asan, fuzz or unit" >&2; exit 2 ;;
esac
ccopt="$ccopt ${CFLAGS_EXTRA:-}"

mkdir -p "$out"
stamp="$out/.configured"
want="$mode $ccopt $ver ${http:-http} $(md5sum < "$top/config")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] \
   || [ ! -f "$out/nginx/objs/Makefile" ]; then
    rm -rf "$out/nginx"
    cp -a "$full" "$out/nginx"
    rm -rf "$out/nginx/objs"
    (cd "$out/nginx" && ./configure --prefix="$out/prefix" \
        --error-log-path=stderr --with-debug --with-threads \
        $http --with-stream --with-stream_ssl_module \
        --with-stream_realip_module --with-stream_ssl_preread_module \
        --with-cc="$cc" --with-cc-opt="$ccopt" --with-ld-opt="$ldopt" \
        --add-module="$top" > "$out/configure.log" 2>&1) || {
        tail -n 30 "$out/configure.log" >&2; exit 1; }
    echo "$want" > "$stamp"
fi

# --------------------------------------------------------------- make
jobs=${JOBS:-2}
(cd "$out/nginx" && make -f objs/Makefile -j"$jobs" > "$out/make.log" 2>&1) || {
    grep -E 'error:|undefined reference' -A3 "$out/make.log" | head -60 >&2
    exit 1; }

objs=$(cd "$out/nginx" && find objs -name '*.o' ! -path objs/src/core/nginx.o \
       | sort)
objcopy --redefine-sym main=ngx_nginx_main "$out/nginx/objs/src/core/nginx.o" \
    "$out/nginx_nomain.o"
rm -f "$out/libngx.a"
# shellcheck disable=SC2086
(cd "$out/nginx" && ar rcs "$out/libngx.a" $objs "$out/nginx_nomain.o")
echo "built $mode nginx: $out/nginx/objs/nginx"
