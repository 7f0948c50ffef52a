#!/usr/bin/env bash
# Run the end-to-end suite against nginx built with ASan+UBSan, the module
# compiled in (static: no dlclose, full stacks).
#   scripts/sanitize.sh                  whole suite
#   scripts/sanitize.sh -k chat -x       pytest arguments as for test.sh
#   XMPP_CM_VALGRIND=1 scripts/sanitize.sh ...
#                                        Debian's nginx and the dynamic
#                                        module under valgrind memcheck
#                                        instead (slow: pick tests with -k)
# Every nginx the tests start writes its ASan/UBSan/LSan reports to files;
# the nginx fixture's teardown fails the test on any report (LSan: only
# leaks not listed in t/fuzz/lsan.supp, which may name nginx-core-only
# stacks; UBSan: sites in t/fuzz/ubsan.supp are known and reported).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
py=/usr/bin/python3

# what the suite needs (TLS clients, promtool, ...), as for scripts/test.sh
bash scripts/deps.sh
need=()
if [ "${XMPP_CM_VALGRIND:-}" = 1 ]; then
    command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
fi
if [ ${#need[@]} -gt 0 ]; then
    sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q "${need[@]}" >/dev/null
fi

if [ "${XMPP_CM_VALGRIND:-}" = 1 ]; then
    # valgrind: the normal build (test.sh installs and builds it)
    bash scripts/build.sh >/dev/null
    unset XMPP_CM_NGINX XMPP_CM_STATIC
    echo "sanitize.sh: Debian nginx + module under valgrind memcheck" >&2
else
    bash t/fuzz/build-nginx.sh asan
    export XMPP_CM_NGINX="$top/build/asan/nginx/objs/nginx"
    export XMPP_CM_STATIC=1
    # memory figures mean nothing under ASan (shadow memory, quarantine)
    export XMPP_CM_SANITIZED=1
    # the module_path fixture still wants the .so to exist
    bash scripts/build.sh >/dev/null
    echo "sanitize.sh: $XMPP_CM_NGINX (ASan+UBSan, module compiled in)" >&2
fi

rc=0
PYTHONDONTWRITEBYTECODE=1 XMPP_CM_SKIP_BUILD=1 "$py" -m pytest -v \
    -p no:cacheprovider t/ "$@" || rc=$?
exit $rc
