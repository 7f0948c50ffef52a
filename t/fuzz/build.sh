#!/usr/bin/env bash
# Build the libFuzzer targets (ASan+UBSan) into build/fuzz/bin/:
#   fuzz_client fuzz_upstream fuzz_route
# They link the module's objects and nginx's core objects from an
# instrumented nginx build (t/fuzz/build-nginx.sh fuzz); nothing is shimmed.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
here="$top/t/fuzz"
bash "$here/build-nginx.sh" fuzz >/dev/null

ngx="$top/build/fuzz/nginx"
bin="$top/build/fuzz/bin"
mkdir -p "$bin"

# every object of the nginx build, main() renamed so libFuzzer's is used
lib="$top/build/fuzz/libngx.a"

cflags="-g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -Wall -Wno-unused-parameter
        -Wno-unused-function -Werror
        -I $ngx/src/core -I $ngx/src/event -I $ngx/src/event/modules
        -I $ngx/src/os/unix -I $ngx/objs -I $ngx/src/stream -I $top/src
        -I $here"
libs="$(sed -n 's/^\t-fsanitize.*-fsanitize=fuzzer-no-link //p' "$ngx/objs/Makefile" \
        | sed 's/\\$//' | head -1)"
[ -n "$libs" ] || libs="-lpthread -lexpat -lssl -lcrypto -lz -lcrypt -lpcre2-8"

for t in fuzz_client fuzz_upstream fuzz_route; do
    [ -f "$here/$t.c" ] || continue
    # shellcheck disable=SC2086
    clang-14 $cflags -o "$bin/$t" "$here/$t.c" "$here/fuzz_common.c" \
        "$lib" $libs -lm
done
echo "built fuzz targets in $bin"
