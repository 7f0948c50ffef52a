#!/usr/bin/env bash
# The benchmark, one command:  bench/run.sh [--quick] [options]
#   --quick                 a few seconds: 20 and 200 sessions, CM and relay
#   --sessions 100,1000,... session counts of the scale rows
#   --rate R                fixed offered msg/s of the scale rows (10000)
#   --ramp R1,R2,...        offered rates used to find the peak
#   --targets cm,relay,jabberd2
#   --jabberd2-max N        largest session count run on jabberd2 (5000)
#   (bench/bench.py --help lists the rest)
# Builds the module (scripts/build.sh) and the bench tools, installs
# gnuplot-nox and jabberd2 from Debian when missing (not in --quick), runs
# everything on 127.0.0.1, prints a table, and writes
# bench/results/<timestamp>.json and .png.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
quick=0
for a in "$@"; do [ "$a" = "--quick" ] && quick=1; done

if [ "${BENCH_SKIP_BUILD:-}" = "" ] || [ ! -f "$top/build/ngx_stream_xmpp_cm_module.so" ]; then
    bash "$top/scripts/build.sh" >&2
fi
make -s -C "$here" >&2

if [ "$quick" = 0 ] && [ "$(id -u)" = 0 ]; then
    missing=()
    command -v gnuplot >/dev/null || missing+=(gnuplot-nox)
    [ -x /usr/sbin/jabberd2-c2s ] || missing+=(jabberd2)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "run.sh: installing ${missing[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y \
            --no-install-recommends "${missing[@]}" >&2 || \
            echo "run.sh: apt-get install ${missing[*]} failed; going on" >&2
    fi
fi
ulimit -n 20000 2>/dev/null || true
exec /usr/bin/python3 "$here/bench.py" "$@"
