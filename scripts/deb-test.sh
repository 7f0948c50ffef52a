#!/usr/bin/env bash
# CI check of the Debian package: build it (scripts/deb.sh), install it
# with apt-get, check that Debian's own nginx loads it from the package's
# layout, run part of the suite against the installed module, and purge
# the package again, also when something fails.
#   scripts/deb-test.sh             the default subset
#   scripts/deb-test.sh t/test_x.py other tests instead (pytest arguments)
# It needs root (apt-get, dpkg). Installing the package triggers a reload
# of the system's nginx if that one is running, as any module package does.
# It refuses to run when the package is already on the machine, so that
# it never removes an installation it did not make.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
pkg=libnginx-mod-stream-xmpp-cm
so=/usr/lib/nginx/modules/ngx_stream_xmpp_cm_module.so
enabled=/etc/nginx/modules-enabled
py=/usr/bin/python3

sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive

status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
if [ -n "$status" ] && [ "$status" != not-installed ]; then
    echo "deb-test.sh: $pkg is already on this machine ($status);" \
         "remove it first: dpkg --purge $pkg" >&2
    exit 1
fi

# what the tests need besides the build dependencies (scripts/test.sh)
missing=()
[ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
"$py" -c 'import slixmpp' 2>/dev/null || missing+=(python3-slixmpp)
"$py" -c 'import pytest' 2>/dev/null || missing+=(python3-pytest)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
    echo "deb-test.sh: installing ${missing[*]}" >&2
    $sudo apt-get update
    $sudo apt-get install -y "${missing[@]}"
fi

deb=$(bash scripts/deb.sh | sed -n 's/^built //p')
[ -f "$deb" ] || { echo "deb-test.sh: no package built" >&2; exit 1; }
if command -v lintian >/dev/null 2>&1; then     # when installed
    lrc=0
    lint=$(lintian --fail-on error "$deb" 2>&1) || lrc=$?
    printf '%s\n' "$lint" | grep -v -e 'root privileges' -e '^$' || true
    [ $lrc -eq 0 ] || { echo "deb-test.sh: lintian: errors" >&2; exit 1; }
    echo "deb-test.sh: lintian passes $deb"
fi

before=$(ls -l "$enabled" 2>/dev/null || true)
tmp=$(mktemp -d)
cleanup() {
    rc=$?
    set +e
    $sudo dpkg --purge "$pkg" > "$tmp/purge.log" 2>&1 || {
        cat "$tmp/purge.log" >&2; rc=1; }
    if [ -e "$so" ] || [ "$(ls -l "$enabled" 2>/dev/null)" != "$before" ]
    then
        echo "deb-test.sh: the machine is not as before after the purge:" >&2
        ls -l "$so" "$enabled" >&2
        rc=1
    else
        echo "deb-test.sh: $pkg purged again"
    fi
    rm -rf "$tmp"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

$sudo apt-get install -y "$deb" > "$tmp/install.log" 2>&1 || {
    cat "$tmp/install.log" >&2; exit 1; }
echo "deb-test.sh: installed $(dpkg-query -W -f='${Package} ${Version}' "$pkg")"

# the package's layout: the module where Debian's modules are, its
# snippet enabled after the stream module's (50-mod-stream.conf)
[ -f "$so" ] || { echo "deb-test.sh: $so missing" >&2; exit 1; }
link="$enabled/70-mod-stream-xmpp-cm.conf"
[ "$(readlink "$link")" = \
  /usr/share/nginx/modules-available/mod-stream-xmpp-cm.conf ] || {
    echo "deb-test.sh: $link is not the package's snippet" >&2
    ls -l "$enabled" >&2; exit 1; }
order=$(cd "$enabled" && printf '%s ' ./*.conf)
case "$order" in
    *./50-mod-stream.conf*./70-mod-stream-xmpp-cm.conf*) ;;
    *) echo "deb-test.sh: load order wrong: $order" >&2; exit 1 ;;
esac

# Debian's default configuration still passes: the package only loads
# the module
/usr/sbin/nginx -t -q || {
    echo "deb-test.sh: nginx -t fails on /etc/nginx/nginx.conf" >&2; exit 1; }

# with Debian's prefix (relative module paths as the snippets have them),
# the snippets make the module's directives known
cat > "$tmp/xmpp.conf" <<CONF
include $enabled/*.conf;
error_log $tmp/error.log;
pid $tmp/nginx.pid;
events {}
stream {
    server {
        listen 127.0.0.1:5222;
        xmpp_cm_pass 127.0.0.1:5262;
        xmpp_cm_domain localhost;
        xmpp_cm_secret check;
    }
}
http {
    access_log off;
    server {
        listen 127.0.0.1:9145;
        location = /metrics { xmpp_cm_metrics; }
    }
}
CONF
/usr/sbin/nginx -t -q -c "$tmp/xmpp.conf" || {
    echo "deb-test.sh: nginx -t fails with the xmpp_cm directives" >&2
    exit 1; }
echo "deb-test.sh: nginx -t passes with /etc/nginx/nginx.conf and with" \
     "xmpp_cm_* directives (stream and http), modules loaded from $enabled"

# part of the suite, Debian's nginx loading the installed module through
# the package's snippet
if [ $# -eq 0 ]; then
    set -- t/test_chat.py t/test_client_stream.py \
        t/test_tls.py::test_slixmpp_starttls_login_and_chat \
        t/test_tls.py::test_slixmpp_direct_tls_login_and_chat \
        t/test_tls.py::test_direct_tls_alpn_xmpp_client \
        t/test_tls.py::test_sni_two_domains_two_certificates \
        t/test_tls.py::test_nginx_t_starttls_valid \
        t/test_compression.py::test_compressed_session_chats_both_ways \
        t/test_metrics.py::test_bound_streams_over_two_workers \
        t/test_metrics.py::test_promtool_accepts_output
fi
PYTHONDONTWRITEBYTECODE=1 XMPP_CM_MODULE="$so" \
    XMPP_CM_MODULES_ENABLED="$enabled" \
    "$py" -m pytest -q -p no:cacheprovider "$@"
