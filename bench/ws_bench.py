#!/usr/bin/python3
"""WebSocket (RFC 7395) against TCP in the same run: the nginx worker's
memory per idle session and CPU per relayed message.

    bench/ws_bench.py [--sessions N] [--pairs P] [--messages M]

For each transport a fresh nginx (1 worker, the module from build/) runs
in front of bench/fakeof (the fast Openfire stand-in, `make -C bench`):

  idle  N clients log in (PLAIN, restart, bind) and stay idle; the
        worker's VmRSS after, less before, over N.  TCP clients open a
        <stream:stream>, WebSocket clients upgrade on an http location
        with xmpp_cm_websocket and send <open/> frames.
  msg   P pairs of clients; each client sends M messages to its peer and
        reads M; the worker's on-CPU time (/proc/PID/schedstat) for the
        phase over the 2*P*M messages relayed (each one is read from a
        client, routed to fakeof, read back and written to the peer).

Prints a table and one JSON line.  Not part of the test suite."""
import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
MODULE = os.path.join(ROOT, "build", "ngx_stream_xmpp_cm_module.so")
STREAM_SO = "/usr/lib/nginx/modules/ngx_stream_module.so"
NGINX = "/usr/sbin/nginx"

CONF = """\
load_module {stream};
load_module {module};
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 65536;
error_log {prefix}/error.log notice;
pid {prefix}/nginx.pid;
events {{ worker_connections 65536; }}
stream {{
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        xmpp_cm_pass 127.0.0.1:{far};
        xmpp_cm_domain localhost;
        xmpp_cm_secret cmsecret;
        xmpp_cm_name bench;
    }}
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/b;
    proxy_temp_path {prefix}/p;
    fastcgi_temp_path {prefix}/f;
    uwsgi_temp_path {prefix}/u;
    scgi_temp_path {prefix}/s;
    server {{
        listen 127.0.0.1:{wport} backlog=4096;
        location = /xmpp-websocket {{ xmpp_cm_websocket bench; }}
    }}
}}
"""

HDR = (b'<?xml version="1.0"?><stream:stream xmlns="jabber:client" '
       b'xmlns:stream="http://etherx.jabber.org/streams" to="localhost" '
       b'version="1.0">')
OPEN = (b'<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="localhost" '
        b'version="1.0"/>')


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def cpu_ns(pid):
    with open("/proc/%d/schedstat" % pid) as f:
        return int(f.read().split()[0])


class Nginx:
    def __init__(self):
        self.far = subprocess.Popen(
            [os.path.join(BENCH, "fakeof"), "--listen", "127.0.0.1:0",
             "--domain", "localhost", "--secret", "cmsecret"],
            stdout=subprocess.PIPE)
        line = self.far.stdout.readline().decode()
        far_port = int(line.split()[1])
        self.prefix = tempfile.mkdtemp(prefix="ngx-ws-")
        self.port, self.wport = free_port(), free_port()
        path = os.path.join(self.prefix, "nginx.conf")
        with open(path, "w") as f:
            f.write(CONF.format(stream=STREAM_SO, module=MODULE,
                                prefix=self.prefix, port=self.port,
                                wport=self.wport, far=far_port))
        self.proc = subprocess.Popen([NGINX, "-p", self.prefix, "-c", path,
                                      "-e", self.prefix + "/error.log"])
        deadline = time.time() + 15
        log = os.path.join(self.prefix, "error.log")
        while time.time() < deadline:
            if os.path.exists(log) and open(log).read().count(
                    "connected to Openfire") >= 4:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("CM pool not up")
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)],
                             stdout=subprocess.PIPE).stdout.split()
        self.worker = int(out[0])

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)
        self.far.send_signal(signal.SIGTERM)
        self.far.wait(10)
        shutil.rmtree(self.prefix, ignore_errors=True)


class Tcp:
    """An XMPP client over TCP (asyncio streams)."""

    async def connect(self, ngx):
        self.r, self.w = await asyncio.open_connection("127.0.0.1", ngx.port)
        self.buf = b""

    def send(self, b):
        self.w.write(b)

    async def read(self):
        d = await asyncio.wait_for(self.r.read(65536), 30)
        if not d:
            raise RuntimeError("EOF")
        return d

    async def until(self, pat):
        while pat not in self.buf:
            self.buf += await self.read()
        self.buf = self.buf[self.buf.index(pat) + len(pat):]

    async def login(self, ngx, user, res):
        await self.connect(ngx)
        self.send(HDR)
        await self.until(b"</stream:features>")
        self.send(b'<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" '
                  b'mechanism="PLAIN">'
                  + base64.b64encode(b"\0" + user + b"\0pw") + b"</auth>")
        await self.until(b"success")
        self.send(HDR)
        await self.until(b"</stream:features>")
        self.send(b'<iq type="set" id="b"><bind xmlns="urn:ietf:params:xml:'
                  b'ns:xmpp-bind"><resource>' + res + b'</resource></bind>'
                  b'</iq>')
        await self.until(b"</iq>")


class Ws(Tcp):
    """The same over WebSocket: text frames, masked."""

    async def connect(self, ngx):
        self.r, self.w = await asyncio.open_connection("127.0.0.1",
                                                       ngx.wport)
        self.buf = b""
        self.raw = b""
        key = base64.b64encode(os.urandom(16))
        self.w.write(b"GET /xmpp-websocket HTTP/1.1\r\nHost: localhost\r\n"
                     b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: " + key + b"\r\n"
                     b"Sec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Protocol: xmpp\r\n\r\n")
        while b"\r\n\r\n" not in self.raw:
            self.raw += await Tcp.read(self)
        head, _, self.raw = self.raw.partition(b"\r\n\r\n")
        assert b" 101 " in head.split(b"\r\n")[0], head

    def send(self, b):
        if b == HDR:
            b = OPEN
        n = len(b)
        mask = b"\x01\x02\x03\x04"
        if n < 126:
            h = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            h = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            h = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        self.w.write(h + mask + bytes(c ^ mask[i & 3]
                                      for i, c in enumerate(b)))

    async def read(self):
        """payloads of the complete frames read, joined"""
        out = b""
        while not out:
            self.raw += await Tcp.read(self)
            while len(self.raw) >= 2:
                n, h = self.raw[1] & 0x7f, 2
                if n == 126:
                    n, h = struct.unpack("!H", self.raw[2:4])[0], 4
                elif n == 127:
                    n, h = struct.unpack("!Q", self.raw[2:10])[0], 10
                if len(self.raw) < h + n:
                    break
                out += self.raw[h:h + n]
                self.raw = self.raw[h + n:]
        return out


async def idle(cls, ngx, n):
    before = rss_kib(ngx.worker)
    clients = [cls() for _ in range(n)]
    sem = asyncio.Semaphore(200)

    async def one(i, c):
        async with sem:
            await c.login(ngx, b"u%d" % i, b"r")

    await asyncio.gather(*[one(i, c) for i, c in enumerate(clients)])
    await asyncio.sleep(1)
    after = rss_kib(ngx.worker)
    for c in clients:
        c.w.close()
    return (after - before) * 1024 / n


async def msg(cls, ngx, pairs, m):
    clients = [cls() for _ in range(2 * pairs)]
    await asyncio.gather(*[c.login(ngx, b"u%d" % i, b"r")
                           for i, c in enumerate(clients)])
    body = b"x" * 100

    async def run(i, c):
        peer = b"u%d@localhost/r" % (i ^ 1)
        for k in range(m):
            c.send(b'<message to="' + peer + b'" type="chat" id="m%d">'
                   b'<body>' % k + body + b'</body></message>')
        got = 0
        tail = b""
        while got < m:
            d = tail + await c.read()
            got += d.count(b"</message>")
            tail = d[-12:]
            if tail.endswith(b"</message>"):
                tail = b""

    t0 = cpu_ns(ngx.worker)
    w0 = time.monotonic()
    await asyncio.gather(*[run(i, c) for i, c in enumerate(clients)])
    wall = time.monotonic() - w0
    cpu = cpu_ns(ngx.worker) - t0
    for c in clients:
        c.w.close()
    total = 2 * pairs * m
    return cpu / total, total / wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--messages", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if not os.path.exists(os.path.join(BENCH, "fakeof")):
        subprocess.run(["make", "-C", BENCH, "fakeof"], check=True)
    res = {"params": vars(a), "tcp": {}, "websocket": {}}
    for name, cls in (("tcp", Tcp), ("websocket", Ws)):
        mem, cpu, rate = [], [], []
        for _ in range(a.rounds):
            ngx = Nginx()
            try:
                mem.append(asyncio.run(idle(cls, ngx, a.sessions)))
            finally:
                ngx.stop()
            ngx = Nginx()
            try:
                c, r = asyncio.run(msg(cls, ngx, a.pairs, a.messages))
                cpu.append(c)
                rate.append(r)
            finally:
                ngx.stop()
        res[name] = {"idle_bytes_per_session": sorted(mem),
                     "cpu_ns_per_message": sorted(cpu),
                     "messages_per_s": sorted(rate)}
    med = lambda v: sorted(v)[len(v) // 2]
    print("%-10s %22s %22s" % ("transport", "idle B/session (median)",
                               "worker CPU ns/message"))
    for name in ("tcp", "websocket"):
        r = res[name]
        print("%-10s %22.0f %22.0f" % (name, med(r["idle_bytes_per_session"]),
                                        med(r["cpu_ns_per_message"])))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
