#!/usr/bin/env bash
# Build and run the unit tests (t/unit/): the route codec, the framer's
# limits, the stream id generator, feature building, the JID checks and
# the output chains, tested through the module's own functions, without
# a running nginx.
#   scripts/unit.sh            all tests
#   scripts/unit.sh escape     only the tests whose name contains "escape"
# The binary links the module's objects and nginx's core objects from a
# plain gcc build (t/fuzz/build-nginx.sh unit -> build/unit/, about a
# minute the first time, incremental after that), and the fuzz targets'
# helpers (t/fuzz/fuzz_common.c).  Installs what is missing with apt-get.
# The output ends with "N passed, M failed"; the exit status is non-zero
# when a test failed.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

bash t/fuzz/build-nginx.sh unit >/dev/null

out="$top/build/unit"
ngx="$out/nginx"
libs=$(sed -n 's/^\t\(-l[^\\]*\)\\$/\1/p' "$ngx/objs/Makefile" | head -1)
[ -n "$libs" ] || libs="-lpthread -lexpat -lssl -lcrypto -lz"

srcs=(t/unit/unit.c t/unit/test_route.c t/unit/test_xml.c
      t/unit/test_stream_id.c t/unit/test_features.c t/unit/test_jid.c
      t/unit/test_output.c t/unit/test_sm.c)

inc=(-I "$ngx/src/core" -I "$ngx/src/event" -I "$ngx/src/event/modules"
     -I "$ngx/src/os/unix" -I "$ngx/objs" -I "$ngx/src/stream" -I src
     -I t/fuzz -I t/unit)
# the fuzz targets' helpers, with the flags they are built with there
gcc -g -O1 -Wall -Wno-unused-parameter -Werror "${inc[@]}" \
    -c -o "$out/fuzz_common.o" t/fuzz/fuzz_common.c
# shellcheck disable=SC2086
gcc -g -O1 -Wall -Wextra -Werror -Wno-unused-parameter "${inc[@]}" \
    -o "$out/unit" "${srcs[@]}" "$out/fuzz_common.o" "$out/libngx.a" \
    $libs -lcrypt -lm

exec "$out/unit" "$@"
