#!/usr/bin/python3
"""Idle-session memory of an nginx worker running the CM, for the modes the
C load generator does not cover: TLS (direct TLS) and XEP-0138 compression.

    bench/idle_mem.py MODE N PORT WORKER_PID [CA_FILE]

MODE is plain, tls (direct TLS to PORT, trusting CA_FILE) or zlib (plain
TCP, compression negotiated after login; the server needs
xmpp_cm_compression on).  N clients log in as alice with PLAIN, bind, and
stay idle; prints the worker's RSS delta per session.  Needs a stand-in
or Openfire with user alice/alicepw behind the CM."""
import asyncio
import base64
import re
import ssl
import sys
import zlib

MODE, N, PORT, WPID = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4])
CA = sys.argv[5] if len(sys.argv) > 5 else None
H = (b'<?xml version="1.0"?><stream:stream xmlns="jabber:client" '
     b'xmlns:stream="http://etherx.jabber.org/streams" to="localhost" '
     b'version="1.0">')


def rss_kib():
    with open("/proc/%d/status" % WPID) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


async def one(i, conns):
    ctx = None
    if MODE == "tls":
        ctx = ssl.create_default_context(cafile=CA)
    r, w = await asyncio.open_connection(
        "127.0.0.1", PORT, ssl=ctx,
        server_hostname="localhost" if ctx else None)
    st = {"buf": b"", "d": None, "c": None}

    async def until(pat):
        while pat not in st["buf"]:
            d = await asyncio.wait_for(r.read(65536), 10)
            if not d:
                raise RuntimeError("EOF waiting for %r" % pat)
            st["buf"] += st["d"].decompress(d) if st["d"] else d
        st["buf"] = st["buf"][st["buf"].index(pat) + len(pat):]

    def send(b):
        if st["c"]:
            b = st["c"].compress(b) + st["c"].flush(zlib.Z_SYNC_FLUSH)
        w.write(b)

    send(H)
    await until(b"</stream:features>")
    send(b'<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">'
         + base64.b64encode(b"\0alice\0alicepw") + b"</auth>")
    await until(b"success")
    send(H)
    await until(b"</stream:features>")
    if MODE == "zlib":
        send(b'<compress xmlns="http://jabber.org/protocol/compress">'
             b'<method>zlib</method></compress>')
        await until(b'<compressed xmlns="http://jabber.org/protocol/'
                    b'compress"/>')
        st["c"], st["d"] = zlib.compressobj(), zlib.decompressobj()
        send(H)
        await until(b"</stream:features>")
    send(b'<iq type="set" id="b"><bind xmlns="urn:ietf:params:xml:ns:'
         b'xmpp-bind"><resource>r%d</resource></bind></iq>' % i)
    await until(b"</iq>")
    conns.append((r, w))


async def main():
    conns = []
    sem = asyncio.Semaphore(100)
    before = rss_kib()

    async def limited(i):
        async with sem:
            await one(i, conns)

    await asyncio.gather(*[limited(i) for i in range(N)])
    await asyncio.sleep(1)
    after = rss_kib()
    print("%s sessions %d worker RSS %d -> %d KiB, %d bytes per session"
          % (MODE, len(conns), before, after,
             (after - before) * 1024 // len(conns)))


asyncio.run(main())
