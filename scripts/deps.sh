#!/usr/bin/env bash
# Install from Debian what is missing.  Default: what the end-to-end suite
# needs (scripts/test.sh and scripts/sanitize.sh call it; CI runs on
# machines that may have nothing).  --run: only what building and running
# the CM in front of the stand-in needs (scripts/demo.sh).  The suite also
# gets the npm packages of t/web (npm ci) for the browser test.
set -euo pipefail
suite=1
[ "${1:-}" = --run ] && suite=0
py=/usr/bin/python3
missing=()
[ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -f /usr/share/nginx/src/conf_flags ] || missing+=(nginx-dev)
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
[ -f /usr/include/expat.h ] || missing+=(libexpat1-dev)
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
[ -f /usr/include/pcre2.h ] || missing+=(libpcre2-dev)
[ -f /usr/include/zlib.h ] || missing+=(zlib1g-dev)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ -x "$py" ]; then
    "$py" -c 'import slixmpp' 2>/dev/null || missing+=(python3-slixmpp)
    "$py" -c 'import pytest' 2>/dev/null || missing+=(python3-pytest)
else
    missing+=(python3 python3-slixmpp python3-pytest)
fi
packages=(nginx nginx-dev libnginx-mod-stream libexpat1-dev libssl-dev
          libpcre2-dev zlib1g-dev python3-slixmpp python3-pytest gcc make
          openssl)
if [ $suite = 1 ]; then
    # TLS tests: a libstrophe client; t/test_metrics.py: promtool
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    [ -f /usr/include/strophe.h ] || missing+=(libstrophe-dev)
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    packages+=(pkg-config libstrophe-dev prometheus)
    # t/test_browser.py: Converse.js in headless Chromium, driven from node
    # (the npm packages of t/web, installed below); Prosody for the
    # harness's self-check.  nodejs and npm only when missing: a node
    # from elsewhere brings its own npm, which Debian's would conflict with
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    [ -x /usr/bin/prosody ] || missing+=(prosody)
    packages+=(chromium prosody)
    if ! command -v node >/dev/null 2>&1; then
        missing+=(nodejs)
        packages+=(nodejs)
    fi
    if ! command -v npm >/dev/null 2>&1; then
        missing+=(npm)
        packages+=(npm)
    fi
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps.sh: installing from Debian: ${missing[*]}" >&2
    sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update
    $sudo apt-get install -y "${packages[@]}"
fi
if [ $suite = 1 ]; then
    # t/web/package-lock.json pins Converse.js and playwright-core; npm ci
    # again when the lock is newer than what is installed
    web="$(cd "$(dirname "$0")/.." && pwd)/t/web"
    if [ ! -f "$web/node_modules/.package-lock.json" ] ||
            [ "$web/package-lock.json" -nt \
              "$web/node_modules/.package-lock.json" ]; then
        echo "deps.sh: npm ci in $web" >&2
        (cd "$web" && npm ci --ignore-scripts --no-audit --no-fund)
    fi
fi
