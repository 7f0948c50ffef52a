#!/usr/bin/env bash
# Demo of ngx_stream_xmpp_cm on one machine (Debian 12, as root or with sudo):
# the bundled Openfire stand-in on 127.0.0.1:5262 and nginx with the module
# on 0.0.0.0:5222 (STARTTLS optional) and 0.0.0.0:5223 (direct TLS), users
# alice/alicepw and bob/bobpw @localhost.  On the first run it makes a
# self-signed certificate for localhost ($DEMO_DIR/localhost.crt).
#
#   scripts/demo.sh           install what is missing, build, (re)start both,
#                             print how to connect
#   scripts/demo.sh stop      stop both
#   scripts/demo.sh status    show whether they run
#
# Runtime files (config, logs, pids, a copy of the module, a small client)
# go to $DEMO_DIR,
# default <repo>/demo-run.  DEMO_PORT changes the client port (5222),
# DEMO_TLS_PORT the direct TLS port (5223).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
dir=${DEMO_DIR:-$top/demo-run}
port=${DEMO_PORT:-5222}
tls_port=${DEMO_TLS_PORT:-5223}
py=/usr/bin/python3
nginx=/usr/sbin/nginx
stream_so=/usr/lib/nginx/modules/ngx_stream_module.so
built_so=$top/build/ngx_stream_xmpp_cm_module.so
module_so=$dir/ngx_stream_xmpp_cm_module.so

of_port=5262
of_cport=5263
domain=localhost
secret=cmsecret
users=alice:alicepw,bob:bobpw

say() { printf 'demo: %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# pid from a file, only if that process is still the one we started
alive() {  # pidfile pattern
    local pid
    [ -f "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$2" || return 1
    echo "$pid"
}

wait_gone() {  # pid seconds
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}

stop() {
    local pid
    if pid=$(alive "$dir/nginx.pid" nginx); then
        say "stopping nginx (master $pid)"
        # fast shutdown: clients get <system-shutdown/>, sessions are
        # closed on the Openfire side first
        kill -TERM "$pid"
        wait_gone "$pid" 10 || { say "nginx $pid still running, KILL";
                                 kill -KILL "$pid" 2>/dev/null || true; }
    fi
    rm -f "$dir/nginx.pid"
    if pid=$(alive "$dir/standin.pid" openfire_standin); then
        say "stopping the Openfire stand-in ($pid)"
        kill -TERM "$pid"
        wait_gone "$pid" 10 || { say "stand-in $pid still running, KILL";
                                 kill -KILL "$pid" 2>/dev/null || true; }
    fi
    rm -f "$dir/standin.pid"
}

status() {
    local pid rc=0
    if pid=$(alive "$dir/standin.pid" openfire_standin); then
        say "Openfire stand-in running (pid $pid) on 127.0.0.1:$of_port"
    else
        say "Openfire stand-in not running"; rc=1
    fi
    if pid=$(alive "$dir/nginx.pid" nginx); then
        say "nginx running (master $pid) on 0.0.0.0:$port (STARTTLS)" \
            "and 0.0.0.0:$tls_port (direct TLS)"
    else
        say "nginx not running"; rc=1
    fi
    return $rc
}

install() {
    bash "$top/scripts/deps.sh" --run
}

# a self-signed certificate for the demo domain, made once and kept
make_cert() {
    [ -s "$dir/$domain.crt" ] && [ -s "$dir/$domain.key" ] && return 0
    say "creating a self-signed certificate for $domain in $dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -nodes -days 3650 -subj "/CN=$domain" \
        -addext "subjectAltName=DNS:$domain" \
        -keyout "$dir/$domain.key.tmp" -out "$dir/$domain.crt.tmp" \
        2>/dev/null || die "openssl could not create the certificate"
    chmod 600 "$dir/$domain.key.tmp"
    mv -f "$dir/$domain.key.tmp" "$dir/$domain.key"
    mv -f "$dir/$domain.crt.tmp" "$dir/$domain.crt"
}

write_conf() {
    cat > "$dir/nginx.conf" <<EOF
# written by scripts/demo.sh
load_module $stream_so;
load_module $module_so;

worker_processes 2;
error_log $dir/error.log info;
pid $dir/nginx.pid;

events { worker_connections 1024; }

stream {
    log_format xmpp '\$remote_addr [\$time_local] \$status '
                    'sent=\$bytes_sent received=\$bytes_received '
                    'time=\$session_time';
    access_log $dir/access.log xmpp;

    upstream openfire {
        server 127.0.0.1:$of_port;
    }

    # one certificate for both servers (self-signed, see $dir/$domain.crt)
    ssl_certificate     $dir/$domain.crt;
    ssl_certificate_key $dir/$domain.key;
    ssl_protocols       TLSv1.2 TLSv1.3;   # nginx 1.22 leaves 1.3 out by default
    ssl_session_cache   shared:xmpp_tls:1m;

    # STARTTLS, optional: plaintext clients can still log in
    server {
        listen 0.0.0.0:$port;

        xmpp_cm_pass     openfire;
        xmpp_cm_domain   $domain;
        xmpp_cm_name     demo-cm;
        xmpp_cm_secret   $secret;
        xmpp_cm_starttls optional;
    }

    # direct TLS (XEP-0368)
    server {
        listen 0.0.0.0:$tls_port ssl;
        ssl_alpn xmpp-client;

        xmpp_cm_pass   openfire;
        xmpp_cm_domain $domain;
        xmpp_cm_name   demo-cm;
        xmpp_cm_secret $secret;
    }
}
EOF
}

write_client() {
    cat > "$dir/xmpp_client.py" <<'EOF'
#!/usr/bin/python3
"""A tiny XMPP client for the demo (slixmpp).

  xmpp_client.py listen JID PASSWORD [SECONDS]   print incoming messages
  xmpp_client.py send JID PASSWORD TO TEXT       send one chat message

XMPP_HOST / XMPP_PORT select the server (default 127.0.0.1:5222).
XMPP_TLS: starttls (default; the login fails if the session is not
encrypted), direct (direct TLS; set XMPP_PORT=5223 too) or off (plaintext).
The server certificate is checked against XMPP_CA, by default the demo's
self-signed certificate next to this script (localhost.crt)."""
import asyncio
import os
import sys
from pathlib import Path

import slixmpp


async def main(argv):
    if len(argv) < 3 or argv[0] not in ("listen", "send") \
            or (argv[0] == "send" and len(argv) != 5):
        print(__doc__, file=sys.stderr)
        return 2
    mode, jid, password = argv[:3]
    addr = (os.environ.get("XMPP_HOST", "127.0.0.1"),
            int(os.environ.get("XMPP_PORT", "5222")))
    tls = os.environ.get("XMPP_TLS", "starttls")
    if tls not in ("starttls", "direct", "off"):
        print("XMPP_TLS must be starttls, direct or off", file=sys.stderr)
        return 2
    x = slixmpp.ClientXMPP(jid, password)
    x.auto_reconnect = False
    # trust the demo's self-signed certificate (the name checked is the
    # JID's domain)
    x.ca_certs = Path(os.environ.get("XMPP_CA") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "localhost.crt"))
    loop = asyncio.get_running_loop()
    started, ended = loop.create_future(), loop.create_future()

    def done(fut, val):
        if not fut.done():
            fut.set_result(val)

    x.add_event_handler("session_start", lambda ev: done(started, True))
    x.add_event_handler("failed_auth", lambda ev: done(started, False))
    x.add_event_handler("disconnected", lambda ev: done(ended, True))
    x.add_event_handler("stream_error", lambda err: print(
        "stream error: %s" % err["condition"], flush=True))

    def on_message(msg):
        if msg["type"] in ("chat", "normal") and msg["body"]:
            print("%s <- %s: %s" % (jid, msg["from"], msg["body"]),
                  flush=True)

    x.add_event_handler("message", on_message)
    x.connect(address=addr, use_ssl=(tls == "direct"),
              force_starttls=(tls == "starttls"),
              disable_starttls=(tls != "starttls"))
    first, _ = await asyncio.wait([started, ended], timeout=20,
                                  return_when=asyncio.FIRST_COMPLETED)
    if not started.done() or not started.result():
        print("login as %s at %s:%d failed" % (jid, *addr), file=sys.stderr)
        return 1
    ssl_object = x.transport.get_extra_info("ssl_object") \
        if x.transport is not None else None
    if tls != "off" and ssl_object is None:
        print("the session is not encrypted", file=sys.stderr)
        x.disconnect()
        return 1
    print("logged in as %s (%s)" % (
        x.boundjid, ssl_object.version() if ssl_object else "plaintext"),
        flush=True)
    await x.get_roster()
    x.send_presence()
    if mode == "send":
        x.send_message(mto=argv[3], mbody=argv[4], mtype="chat")
        print("sent to %s: %s" % (argv[3], argv[4]), flush=True)
        await asyncio.sleep(1)
    else:
        seconds = float(argv[3]) if len(argv) > 3 else None
        await asyncio.wait([ended], timeout=seconds)
    x.disconnect()
    await asyncio.wait([ended], timeout=5)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(sys.argv[1:])))
    except KeyboardInterrupt:
        sys.exit(130)
EOF
    chmod +x "$dir/xmpp_client.py"
}

start() {
    local pid i line

    install
    bash "$top/scripts/build.sh"

    mkdir -p "$dir"
    stop
    make_cert

    # the Openfire stand-in (plays Openfire's CM port 5262)
    : > "$dir/standin.log"
    nohup "$py" "$top/t/standin/openfire_standin.py" \
        --listen "127.0.0.1:$of_port" --control "127.0.0.1:$of_cport" \
        --domain "$domain" --secret "$secret" --users "$users" \
        > "$dir/standin.log" 2>&1 < /dev/null &
    pid=$!
    echo "$pid" > "$dir/standin.pid"
    for ((i = 0; ; i++)); do
        line=$(grep -m1 '^READY ' "$dir/standin.log" 2>/dev/null || true)
        [ -n "$line" ] && break
        # kill -0, not alive(): until the exec its cmdline is this shell's
        if ! kill -0 "$pid" 2>/dev/null || [ "$i" -ge 150 ]; then
            tail -20 "$dir/standin.log" >&2
            stop
            die "the Openfire stand-in did not start (log above)"
        fi
        sleep 0.1
    done
    say "Openfire stand-in up: $line"

    # nginx loads a private copy: build.sh overwrites build/*.so in place,
    # which would crash a running nginx that has it mapped
    cp "$built_so" "$module_so.tmp" && mv -f "$module_so.tmp" "$module_so"

    write_conf
    write_client
    : > "$dir/error.log"
    "$nginx" -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
        || { stop; die "nginx -t failed"; }
    "$nginx" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
        || { tail -20 "$dir/error.log" >&2; stop; die "nginx did not start"; }

    for ((i = 0; ; i++)); do
        grep -q 'xmpp_cm: connected to Openfire' "$dir/error.log" && break
        if [ "$i" -ge 200 ]; then
            tail -20 "$dir/error.log" >&2
            stop
            die "nginx did not connect to the Openfire stand-in (log above)"
        fi
        sleep 0.1
    done
    # every worker has its own CM name; give the others a moment too
    sleep 0.5

    rel=$dir
    case $dir in "$PWD"/*) rel=${dir#"$PWD"/} ;; esac

    cat <<EOF

ngx_stream_xmpp_cm demo is running.
  XMPP clients -> nginx 0.0.0.0:$port (STARTTLS optional)
                  nginx 0.0.0.0:$tls_port (direct TLS, ALPN xmpp-client)
               -> Openfire stand-in 127.0.0.1:$of_port (plain TCP)
$(grep -o 'xmpp_cm: worker CM name "[^"]*"' "$dir/error.log" \
  | sed 's/^xmpp_cm: /  /')

Connect any XMPP client with:
  JID alice@$domain  password alicepw    (or bob@$domain / bobpw)
  server 127.0.0.1 (or this machine's address), port $port with STARTTLS,
  or port $tls_port with direct TLS ("SSL/TLS" in most clients).
  The certificate is self-signed for "$domain": let the client trust
  $rel/$domain.crt (or accept it when asked).

Or from this shell, with the bundled slixmpp client (STARTTLS, trusting
$rel/$domain.crt; XMPP_TLS=direct XMPP_PORT=$tls_port for direct TLS):
  $py $rel/xmpp_client.py listen bob@$domain bobpw &
  $py $rel/xmpp_client.py send alice@$domain alicepw bob@$domain 'hello bob'
  XMPP_TLS=direct XMPP_PORT=$tls_port \\
    $py $rel/xmpp_client.py send bob@$domain bobpw alice@$domain 'hi'

Logs:  $rel/error.log  $rel/access.log  $rel/standin.log
Stop:  scripts/demo.sh stop
EOF
}

case "${1:-start}" in
    start) start ;;
    stop) stop; say "stopped" ;;
    status) status ;;
    *) die "usage: $0 [start|stop|status]" ;;
esac
