#!/usr/bin/python3
"""BOSH against TCP in the same run: idle memory per session and the nginx
worker's CPU per message (issue 13 item 5).

    bench/bosh_bench.py [--sessions N] [--messages M] [--json FILE]

Builds nothing: run scripts/build.sh first.  Starts the Openfire stand-in
(t/standin) and one nginx worker (error_log at "error": debug logging would
be most of the CPU) with a stream server and `location = /http-bind {
xmpp_cm_bosh cm1; }`.  All on 127.0.0.1; only the worker is measured:
VmRSS from /proc/PID/status, on-CPU time from /proc/PID/schedstat (ns).

Memory: N TCP clients log in (SASL PLAIN, bind) and stay idle; then N BOSH
sessions log in, first with no request held (the session alone, its HTTP
keepalive connections idle), then each with one long-poll held as a
browser keeps one (hold=1).  Per session = RSS delta / N.

CPU: M messages TCP -> TCP (one pair), M messages BOSH -> TCP (one message
per request, the previous request released by the next as with hold=1),
M messages TCP -> BOSH (collected by long-polls, several per response when
they queue).  Per message = worker on-CPU delta / M.  The Python clients
and the stand-in are the bottleneck for rate; their CPU is not counted."""
import argparse
import base64
import http.client
import json
import os
import re
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "t"))
sys.path.insert(0, os.path.join(ROOT, "t", "standin"))

import control                                  # noqa: E402
from lib import nginx as nginx_lib              # noqa: E402
from lib.bosh import Bosh                       # noqa: E402
from lib.raw import RawClient                   # noqa: E402
from lib.util import free_port, wait_until      # noqa: E402


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def cpu_ns(pid):
    with open("/proc/%d/schedstat" % pid) as f:
        return int(f.read().split()[0])


def settle(pid):
    time.sleep(0.5)
    return rss_kib(pid)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--json")
    a = ap.parse_args()

    module = os.path.join(ROOT, "build", "ngx_stream_xmpp_cm_module.so")
    work = tempfile.mkdtemp(prefix="bosh-bench-")
    proc, sport, cport = control.start_standin()
    port, hport = free_port(), free_port()
    body = """
    server {
        listen 127.0.0.1:%d;
        xmpp_cm_pass 127.0.0.1:%d;
        xmpp_cm_domain localhost;
        xmpp_cm_name cm1;
        xmpp_cm_secret cmsecret;
        xmpp_cm_connections 2;
    }
""" % (port, sport)
    http = """
http {
    access_log off;
    client_body_temp_path http_body;
    proxy_temp_path http_proxy;
    fastcgi_temp_path http_fastcgi;
    uwsgi_temp_path http_uwsgi;
    scgi_temp_path http_scgi;
    server {
        listen 127.0.0.1:%d;
        location = /http-bind { xmpp_cm_bosh cm1; }
    }
}
""" % hport
    n = nginx_lib.Nginx(os.path.join(work, "nginx"), module, body,
                        workers=1, log_level="error", main_extra=http)
    n.start()
    n.wait_port(port)
    n.wait_port(hport)
    time.sleep(1.0)
    pid = n.worker_pids()[0]
    out = {"sessions": a.sessions, "messages": a.messages}
    keep = []
    try:
        # ---------------------------------------------------- memory
        base = settle(pid)
        for i in range(a.sessions):
            c = RawClient(port)
            c.login("alice", "alicepw", resource="t%d" % i)
            keep.append(c)
        tcp = settle(pid)
        boshes = []
        for i in range(a.sessions):
            b = Bosh(hport, timeout=120)
            b.login("bob", "bobpw", resource="b%d" % i)
            boshes.append(b)
        bosh_alone = settle(pid)
        polls = [b.post("", conn=1) for b in boshes]
        bosh_held = settle(pid)
        out["rss_kib"] = {"base": base, "tcp": tcp, "bosh": bosh_alone,
                          "bosh_held": bosh_held}
        out["bytes_per_session"] = {
            "tcp": (tcp - base) * 1024 / a.sessions,
            "bosh_idle": (bosh_alone - tcp) * 1024 / a.sessions,
            "bosh_idle_with_held_request":
                (bosh_held - tcp) * 1024 / a.sessions,
        }
        # end the idle BOSH sessions (their polls are answered terminate)
        for b, p in zip(boshes, polls):
            b.request("", type="terminate")
            p.wait()
            b.close()
        for c in keep[2:]:
            c.close()
        keep = keep[:2]

        # ---------------------------------------------------- CPU
        M = a.messages
        x, y = keep[0], keep[1]        # alice/t0, alice/t1

        def tcp_to_tcp():
            t0 = cpu_ns(pid)
            for i in range(M):
                x.send('<message to="alice@localhost/t1" type="chat" '
                       'id="c%d"><body>m%d</body></message>' % (i, i))
            y.wait_for(lambda: ('id="c%d"' % (M - 1)) in y.text, 120,
                       what="last TCP message")
            return (cpu_ns(pid) - t0) / M

        web = Bosh(hport, timeout=120)
        web.login("bob", "bobpw", resource="web")
        prev = web.post("", conn=0)
        pc = [0]                       # the connection prev is on

        def post(children):
            # the other connection: the held request is on this one
            pc[0] = 1 - pc[0]
            return web.post(children, conn=pc[0])

        def bosh_to_tcp():
            nonlocal prev
            t0 = cpu_ns(pid)
            for i in range(M):
                p = post('<message xmlns="jabber:client" '
                         'to="alice@localhost/t1" type="chat" '
                         'id="w%d"><body>m%d</body></message>' % (i, i))
                prev.wait()
                prev = p
            y.wait_for(lambda: ('id="w%d"' % (M - 1)) in y.text, 120,
                       what="last BOSH message")
            return (cpu_ns(pid) - t0) / M

        def tcp_to_bosh():
            nonlocal prev
            t0 = cpu_ns(pid)
            for i in range(M):
                x.send('<message to="bob@localhost/web" type="chat" '
                       'id="b%d"><body>m%d</body></message>' % (i, i))
            got = 0
            k = 0
            while got < M:
                p = post("")
                r = prev.wait()
                prev = p
                k += 1
                got += len(re.findall(rb"<message\b", r.raw))
            return (cpu_ns(pid) - t0) / M, k

        out["cpu_ns_per_message"] = {"tcp_to_tcp": tcp_to_tcp(),
                                     "bosh_to_tcp": bosh_to_tcp()}
        per, reqs = tcp_to_bosh()
        out["cpu_ns_per_message"]["tcp_to_bosh"] = per
        out["tcp_to_bosh_requests"] = reqs
        pc[0] = 1 - pc[0]
        web.request("", type="terminate", conn=pc[0])
        prev.wait()
    finally:
        for c in keep:
            c.close()
        n.quit()
        control.stop(proc)

    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
