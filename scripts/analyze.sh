#!/usr/bin/env bash
# Static analysis of the module's C sources; exits non-zero on any finding
# not suppressed in scripts/analyze.supp (each suppression with its reason).
#   scripts/analyze.sh
# Runs, on src/*.c and ngx_stream_xmpp_cm_module.c:
#   cppcheck (warning, style, performance, portability; nginx's headers of
#            the configured build in build/nginx, so its macros are real)
#   scan-build (clang's static analyzer) over the same compile commands
#   scripts/analyze.py's own rules: no fixed-size local buffer and no size
#            counted by hand unless listed with the bound that makes it safe
#            (the kind of issue 9, items 15-16, which the analysers miss)
# Installs what is missing (cppcheck, clang-tools-14, clang-14, nginx-dev,
# ...) with apt-get.  Reports in build/analyze/.  About a minute.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
py=/usr/bin/python3

need=()
command -v cppcheck >/dev/null 2>&1 || need+=(cppcheck)
command -v scan-build-14 >/dev/null 2>&1 || need+=(clang-tools-14)
command -v clang-14 >/dev/null 2>&1 || need+=(clang-14)
[ -f /usr/share/nginx/src/conf_flags ] || need+=(nginx-dev)
[ -f /usr/include/expat.h ] || need+=(libexpat1-dev)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
[ -f /usr/include/zlib.h ] || need+=(zlib1g-dev)
[ -f /usr/include/pcre2.h ] || need+=(libpcre2-dev)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v make >/dev/null 2>&1 || need+=(make)
[ -x "$py" ] || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    echo "analyze.sh: installing ${need[*]}" >&2
    sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q "${need[@]}" >/dev/null
fi

# a configured nginx tree (objs/ngx_auto_config.h): what build.sh makes
bash scripts/build.sh >/dev/null
ngx="$top/build/nginx"
out="$top/build/analyze"
rm -rf "$out"
mkdir -p "$out"

srcs=("$top"/src/*.c "$top/ngx_stream_xmpp_cm_module.c")
incs=(-I src/core -I src/event -I src/event/modules -I src/os/unix -I objs
      -I src/stream -I src/http -I src/http/modules
      -I src/http/v2 -I "$top/src")

# cppcheck: the one configuration nginx's headers define (objs/), style
# ids that contradict nginx's style are suppressed in analyze.supp
(cd "$ngx" && cppcheck -q --max-configs=1 --std=c99 \
    --enable=warning,style,performance,portability \
    --suppress=missingIncludeSystem "${incs[@]}" \
    --xml --xml-version=2 "${srcs[@]}" 2> "$out/cppcheck.xml")

# scan-build: the clang static analyzer over each source's compile command
(cd "$ngx" && INCS="${incs[*]}" scan-build-14 -plist -o "$out/scan-build" \
    --keep-empty --use-cc=clang-14 sh -c \
    'for f; do "$CC" -c -g -O0 $INCS -o /dev/null "$f" || exit 1; done' \
    sh "${srcs[@]}" > "$out/scan-build.log" 2>&1) || {
        tail -n 30 "$out/scan-build.log" >&2; exit 1; }

"$py" scripts/analyze.py scripts/analyze.supp "$out/cppcheck.xml" \
    "$out/scan-build" "${srcs[@]}" | tee "$out/findings.txt"
exit "${PIPESTATUS[0]}"
