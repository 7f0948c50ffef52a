#!/usr/bin/python3
"""The cost of a XEP-0198 resumption relayed between workers
(src/ngx_stream_xmpp_cm_handoff.c) against one resumed at its own worker.

    bench/handoff.py [MESSAGES [IDLE]]

Starts the Openfire stand-in (t/standin) and nginx with worker_processes 4
and the module of build/ (scripts/build.sh first).  For each mode, local
(the new connection lands on the worker that holds the stream) and
relayed (it lands on another one):

  - MESSAGES (default 20000) chat messages of a 200-byte body from bob to
    the resumed alice, then as many from alice to bob; prints the wall
    time and the CPU time of all nginx workers per message (user+system
    from /proc/PID/stat), each direction; then 1000 messages one at a
    time (the next sent when the last arrived): the median and 90th
    percentile of the time from bob's write to alice's read.  The stand-in routes every
    message in Python and bounds the rate; the CPU per message of nginx
    is the figure that compares the modes.
  - IDLE (default 200) resumed streams left idle: the sum of the workers'
    RSS grown, per stream (the held streams exist before, in both modes).

Prints one line per figure; docs/performance.md has a run."""
import base64
import os
import re
import socket
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "t"))
sys.path.insert(0, os.path.join(ROOT, "t", "standin"))

from conftest import Standin, server_block          # noqa: E402
from lib import nginx as nginx_lib                  # noqa: E402
from lib.util import free_port, wait_until          # noqa: E402

MESSAGES = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
IDLE = int(sys.argv[2]) if len(sys.argv) > 2 else 200
PINGS = 1000
H = (b'<?xml version="1.0"?><stream:stream xmlns="jabber:client" '
     b'xmlns:stream="http://etherx.jabber.org/streams" to="localhost" '
     b'version="1.0">')
TICK = os.sysconf("SC_CLK_TCK")


class C:
    """A blocking client that counts bytes, parses only what it waits
    for."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.s.settimeout(30)
        self.buf = b""

    def until(self, pat):
        while True:
            m = re.search(pat, self.buf)
            if m:
                out, self.buf = self.buf[:m.end()], self.buf[m.end():]
                return out
            d = self.s.recv(1 << 20)
            if not d:
                raise RuntimeError("EOF waiting for %r: %r"
                                   % (pat, self.buf[-300:]))
            self.buf += d

    def count(self, pat, n):
        """Reads until pat was seen n times; acknowledges as it goes."""
        seen = 0
        while seen < n:
            d = self.s.recv(1 << 20)
            if not d:
                raise RuntimeError("EOF after %d of %d" % (seen, n))
            self.buf += d
            seen += self.buf.count(pat)
            cut = self.buf.rfind(pat)
            if cut >= 0:
                self.buf = self.buf[cut + len(pat):]

    def opened(self):
        self.s.sendall(H)
        return self.until(rb"</stream:features>")

    def authenticated(self, user):
        self.s.sendall(b'<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" '
                       b'mechanism="PLAIN">' + base64.b64encode(
                           b"\0%s\0%spw" % (user, user)) + b"</auth>")
        self.until(rb"<success")
        return self.opened()

    def bound(self, resource):
        self.s.sendall(b'<iq type="set" id="b"><bind xmlns="urn:ietf:params:'
                       b'xml:ns:xmpp-bind"><resource>%s</resource></bind>'
                       b'</iq>' % resource)
        self.until(rb"</iq>")


def wid(features):
    return int(re.search(rb'id="w(\d+)-', features).group(1))


def cpu(pids):
    t = 0
    for p in pids:
        with open("/proc/%d/stat" % p) as f:
            v = f.read().rsplit(")", 1)[1].split()
        t += int(v[11]) + int(v[12])
    return t / TICK


def rss(pids):
    t = 0
    for p in pids:
        with open("/proc/%d/status" % p) as f:
            t += int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    return t


def held(port, resource):
    """alice on some worker with resumption enabled, then her TCP
    connection dies; returns (stream id, its worker)."""
    c = C(port)
    c.opened()
    feats = c.authenticated(b"alice")
    c.bound(resource)
    c.s.sendall(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
    m = c.until(rb"<enabled[^>]*/>")
    sid = re.search(rb"id='?\"?(w\d+-[0-9a-f]+)", m).group(1)
    c.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                   b"\x01\0\0\0\0\0\0\0")
    c.s.close()
    return sid, wid(feats)


def resumed(port, sid, owner, relayed):
    for _ in range(200):
        c = C(port)
        w = wid(c.opened())
        if (w != owner) == relayed:
            c.authenticated(b"alice")
            c.s.sendall(b"<resume xmlns='urn:xmpp:sm:3' previd='%s' h='0'/>"
                        % sid)
            c.until(rb"<resumed[^>]*/>")
            return c
        c.s.close()
    raise RuntimeError("no connection landed as wanted")


def run(port, pids, bob, relayed):
    name = "relayed" if relayed else "local"
    sid, owner = held(port, b"bench-" + name.encode())
    a = resumed(port, sid, owner, relayed)
    jid = b"alice@localhost/bench-" + name.encode()
    body = b"m" * 200

    c0, t0 = cpu(pids), time.monotonic()
    msg = (b'<message to="%s" type="chat"><body>%s</body></message>'
           % (jid, body))
    for i in range(0, MESSAGES, 100):
        bob.s.sendall(msg * min(100, MESSAGES - i))
    a.count(b"</message>", MESSAGES)
    c1, t1 = cpu(pids), time.monotonic()
    print("%-8s down  %6d msgs  %6.2f s  %7.0f msgs/s  nginx CPU %6.1f us/msg"
          % (name, MESSAGES, t1 - t0, MESSAGES / (t1 - t0),
             (c1 - c0) * 1e6 / MESSAGES))

    c0, t0 = cpu(pids), time.monotonic()
    msg = (b'<message to="bob@localhost/bench" type="chat"><body>%s</body>'
           b'</message>' % body)
    for i in range(0, MESSAGES, 100):
        a.s.sendall(msg * min(100, MESSAGES - i))
    bob.count(b"</message>", MESSAGES)
    c1, t1 = cpu(pids), time.monotonic()
    print("%-8s up    %6d msgs  %6.2f s  %7.0f msgs/s  nginx CPU %6.1f us/msg"
          % (name, MESSAGES, t1 - t0, MESSAGES / (t1 - t0),
             (c1 - c0) * 1e6 / MESSAGES))

    # one message at a time: the latency the extra hop adds
    lat = []
    one = (b'<message to="%s" type="chat"><body>%s</body></message>'
           % (jid, body))
    for i in range(PINGS):
        t0 = time.monotonic()
        bob.s.sendall(one)
        a.count(b"</message>", 1)
        lat.append(time.monotonic() - t0)
    lat.sort()
    print("%-8s one   %6d msgs  median %5.0f us  p90 %5.0f us (bob -> "
          "Openfire -> alice, one at a time)"
          % (name, PINGS, lat[len(lat) // 2] * 1e6,
             lat[len(lat) * 9 // 10] * 1e6))
    a.s.close()


def idle(port, pids, relayed):
    name = "relayed" if relayed else "local"
    streams = [held(port, b"idle-%s-%d" % (name.encode(), i))
               for i in range(IDLE)]
    before = rss(pids)
    conns = [resumed(port, sid, owner, relayed) for sid, owner in streams]
    after = rss(pids)
    print("%-8s idle  %6d resumed streams: workers' RSS +%d KiB, %.0f B "
          "per stream" % (name, IDLE, after - before,
                          (after - before) * 1024.0 / IDLE))
    for c in conns:
        c.s.close()


def main():
    so = os.path.join(ROOT, "build", "ngx_stream_xmpp_cm_module.so")
    if not os.path.exists(so):
        sys.exit("build the module first: bash scripts/build.sh")
    sb = Standin({})
    port = free_port()
    body = server_block(port, "127.0.0.1:%d" % sb.port, connections=2,
                        extra="xmpp_cm_client_output_limit 64m;\n"
                              "xmpp_cm_resume_timeout 60s;",
                        listen_extra=" reuseport")
    prefix = tempfile.mkdtemp(prefix="handoff-bench-")
    n = nginx_lib.Nginx(prefix, so, body, workers=4, log_level="notice",
                        worker_connections=8192)
    n.start()
    try:
        n.wait_port(port)
        wait_until(lambda: len([s for s in sb.state().get("sockets", [])
                                if s.get("authenticated")]) >= 8, 15,
                   what="the CM sockets")
        pids = n.worker_pids()
        bob = C(port)
        bob.opened()
        bob.authenticated(b"bob")
        bob.bound(b"bench")
        for relayed in (False, True, False, True):
            run(port, pids, bob, relayed)
        for relayed in (False, True):
            idle(port, pids, relayed)
    finally:
        n.quit()
        sb.stop()


if __name__ == "__main__":
    main()
