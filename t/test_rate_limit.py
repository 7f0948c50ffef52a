"""xmpp_cm_limit_rate: a byte rate with a burst per client stream, enforced
by delaying reads (nothing is dropped), so that one client cannot flood
Openfire through the shared socket.

Rates are checked from byte counts over measured elapsed time: whatever
the CM read from a client in [t0, t1] is at most the bucket (the burst)
plus rate * (t1 - t0), so a flood of `total` bytes cannot be through
before (total - burst) / rate; the upper bound is generous (a loaded
machine, 50 ms read slices).
"""
import re
import threading
import time
import zlib

import pytest

from conftest import server_block
from lib.raw import NS_BIND, NS_CLIENT, NS_SASL, q
from test_compression import HEADER, ZClient
from test_tls import TlsRaw, certs, client_ctx, tls_lines  # noqa: F401

BODY = "r" * 4000


def msg(i, who="a", to="bob@localhost/b", body=BODY):
    return ('<message to="%s" type="chat" id="%s%d"><body>%d %s</body>'
            '</message>' % (to, who, i, i, body)).encode()


def sender(client, data):
    """sendall() in a thread: the CM delays reading, the kernel buffers
    fill, and the test must go on reading at the other end."""
    def run():
        client.sock.settimeout(60)
        client.sock.sendall(data)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def is_msg(prefix):
    return lambda e: (e.tag == q(NS_CLIENT, "message")
                      and (e.get("id") or "").startswith(prefix))


def cm(standin, nginx, extra, listen_extra=""):
    """A CM with one Openfire socket (every client shares it)."""
    sb = standin()
    ngx = nginx(standin=sb, connections=1, log_level="info", extra=extra,
                listen_extra=listen_extra)
    return sb, ngx


def logged_in(raw, ngx, *who):
    """Clients logged in as (user, resource) pairs, in that order."""
    out = []
    for user, res in who:
        c = raw(ngx.port, timeout=10)
        c.login(user, user + "pw", resource=res)
        out.append(c)
    return out


def bounds(total, rate, burst):
    lo = max(total - burst, 0) / rate * 0.9
    hi = total / rate * 1.5 + 2.0
    return lo, hi


def test_flood_delayed_not_dropped(standin, nginx, raw):
    """A client sending far more than its rate: every message arrives, in
    order, at about the configured rate."""
    rate, burst = 128 * 1024, 16 * 1024
    _, ngx = cm(standin, nginx, "xmpp_cm_limit_rate 128k burst=16k;")
    b, a = logged_in(raw, ngx, ("bob", "b"), ("alice", "a"))

    n = 100
    data = b"".join(msg(i) for i in range(n))
    total = len(data)
    t0 = time.monotonic()
    th = sender(a, data)
    got = []
    while len(got) < n:
        el = b.next_element(30, is_msg("a"), "alice's message %d" % len(got))
        got.append(el.get("id"))
    elapsed = time.monotonic() - t0
    th.join(10)
    assert got == ["a%d" % i for i in range(n)]
    lo, hi = bounds(total, rate, burst)
    print("%d bytes in %.2fs = %.0f B/s (rate %d, band %.2f-%.2fs)"
          % (total, elapsed, total / elapsed, rate, lo, hi))
    assert elapsed >= lo, "%d bytes through in %.2fs: faster than %d B/s " \
        "with a %d B burst" % (total, elapsed, rate, burst)
    assert elapsed <= hi, "%d bytes took %.2fs at %d B/s" % (total, elapsed,
                                                             rate)
    # delayed, not cut
    assert a.stream_error() is None and not a.eof
    assert b.stream_error() is None
    assert ngx.log_lines(r"xmpp_cm_limit_rate")


def test_second_client_keeps_latency(standin, nginx, raw):
    """While one client's flood is being delayed, another client on the
    same CM (and the same Openfire socket) gets through at once."""
    rate = 64 * 1024
    _, ngx = cm(standin, nginx, "xmpp_cm_limit_rate 64k burst=8k;")
    b, a, c = logged_in(raw, ngx, ("bob", "b"), ("alice", "a"), ("bob", "c"))

    n = 64                              # ~256 KB: ~4 s at the rate
    data = b"".join(msg(i) for i in range(n))
    t0 = time.monotonic()
    th = sender(a, data)
    got = 0
    while got < 8:
        b.next_element(30, is_msg("a"), "alice's flood")
        got += 1
    # the flood is under way and being delayed: carol speaks
    t1 = time.monotonic()
    c.send(msg(0, who="c", body="hello"))
    late = []

    def carol_or_alice(e):
        if is_msg("c")(e):
            return True
        if is_msg("a")(e):
            late.append(e.get("id"))
        return False

    b.next_element(10, carol_or_alice, "carol's message")
    latency = time.monotonic() - t1
    print("carol's latency %.3fs after %d of alice's %d messages (%.2fs "
          "into the flood)" % (latency, got + len(late), n, t1 - t0))
    assert got + len(late) < n, \
        "alice's flood was through before carol's message"
    assert latency < 1.0, "carol waited %.2fs behind alice's flood" % latency
    while got + len(late) < n:
        b.next_element(30, is_msg("a"), "rest of alice's flood")
        got += 1
    th.join(10)
    assert time.monotonic() - t0 >= (len(data) - 8192) / rate * 0.9


def test_burst_goes_through_at_once(standin, nginx, raw):
    """A short burst within burst= is read at once, though it is many
    seconds' worth at the rate."""
    _, ngx = cm(standin, nginx, "xmpp_cm_limit_rate 4k burst=64k;")
    b, a = logged_in(raw, ngx, ("bob", "b"), ("alice", "a"))
    n = 10
    data = b"".join(msg(i) for i in range(n))       # ~40 KB: 10 s at 4k
    t0 = time.monotonic()
    a.send(data)
    for i in range(n):
        el = b.next_element(10, is_msg("a"), "burst message %d" % i)
        assert el.get("id") == "a%d" % i
    elapsed = time.monotonic() - t0
    print("%d bytes in %.2fs" % (len(data), elapsed))
    assert elapsed < len(data) / 4096 / 4, \
        "the burst took %.2fs (%.1fs at the rate)" % (elapsed,
                                                      len(data) / 4096)
    # over the burst: the rest goes at the rate
    more = b"".join(msg(i) for i in range(n, n + 8))   # ~32 KB
    t1 = time.monotonic()
    th = sender(a, more)
    for i in range(n, n + 8):
        b.next_element(20, is_msg("a"), "message %d" % i)
    th.join(10)
    elapsed = time.monotonic() - t1
    # the bucket held at most 64k - 40k (+ refill since) when this began
    lo = (len(more) - (65536 - len(data)) - 4096 * (t1 - t0)) / 4096 * 0.9
    print("then %d bytes in %.2fs (at least %.2fs)" % (len(more), elapsed,
                                                      lo))
    assert elapsed >= lo


def test_delayed_client_not_cut_by_timeouts(standin, nginx, raw):
    """Time a client spends delayed by the limit counts neither as idle
    time nor against xmpp_cm_stanza_timeout: a 48 KB stanza at 16k/s
    takes ~3 s with both timeouts at 1s, and goes through; the idle
    timeout still cuts the client once it really is idle."""
    rate, burst = 16 * 1024, 4096
    sb, ngx = cm(standin, nginx, "xmpp_cm_limit_rate 16k burst=4k;\n"
                                "xmpp_cm_idle_timeout 1s;\n"
                                "xmpp_cm_stanza_timeout 1s;")
    [a] = logged_in(raw, ngx, ("alice", "a"))
    sid = a.stream_id
    big = msg(0, to="bob@localhost/b", body="x" * 48 * 1024)
    small = b"".join(msg(i, to="bob@localhost/b", body="y" * 500)
                     for i in range(1, 6))
    data = big + small
    t0 = time.monotonic()
    th = sender(a, data)
    sb.wait(lambda: any(re.search(r"""id=["']a5["']""", r)
                        for r in sb.routes_for(sid)),
            timeout=30, what="alice's last message at Openfire")
    elapsed = time.monotonic() - t0
    th.join(10)
    lo = (len(data) - burst) / rate * 0.9
    print("%d bytes in %.2fs (at least %.2fs)" % (len(data), elapsed, lo))
    assert elapsed >= lo
    a.pump(0.1)
    assert a.stream_error() is None and not a.eof, a.text[-500:]
    # really idle now: the idle timeout still applies
    t1 = time.monotonic()
    assert a.expect_stream_error(10) == "connection-timeout"
    assert "idle for too long" in a.text
    assert time.monotonic() - t1 >= 0.5


def test_stanza_timeout_does_not_count_delays(standin, nginx, raw):
    """A stanza's start, then 48 KB of it at once (3 s at 16k/s), then its
    end once the CM has read that: with xmpp_cm_stanza_timeout 2s the
    stanza goes through, as the client itself took well under 2 s between
    its pieces that the CM was waiting for; only the time the CM delayed
    it is over 2 s."""
    rate, burst = 16 * 1024, 4096
    sb, ngx = cm(standin, nginx, "xmpp_cm_limit_rate 16k burst=4k;\n"
                                 "xmpp_cm_stanza_timeout 2s;")
    [a] = logged_in(raw, ngx, ("alice", "a"))
    sid = a.stream_id
    start = b'<message to="bob@localhost/b" type="chat" id="big"><body>'
    middle = b"z" * 48 * 1024
    a.send(start)
    time.sleep(0.2)         # the client's own pace: the CM reads the start
    t0 = time.monotonic()
    a.send(middle)
    # the end follows once the CM has read the middle: by the configured
    # rate that is at most len(middle) / rate from now (+ a margin)
    time.sleep(len(middle) / rate + 0.5)
    a.send(b"</body></message>")
    sb.wait(lambda: any(re.search(r"""id=["']big["']""", r)
                        for r in sb.routes_for(sid)),
            timeout=10, what="the big message at Openfire")
    elapsed = time.monotonic() - t0
    print("stanza through after %.2fs" % elapsed)
    a.pump(0.1)
    assert a.stream_error() is None and not a.eof, a.text[-500:]
    assert elapsed >= (len(middle) - burst) / rate * 0.9


def test_authenticated_while_delayed(standin, nginx, raw):
    """<success/> arrives while the client's reads are delayed by the
    pre-authentication rate: the delay ends as planned and the rest is
    read at the rate after authentication, not when the idle timeout
    fires."""
    _, ngx = cm(standin, nginx, "xmpp_cm_preauth_limit_rate 2k burst=1k;\n"
                                "xmpp_cm_limit_rate 1m;")
    a = raw(ngx.port, timeout=15)
    a.open()
    cred = "AGFsaWNlAGFsaWNlcHc="           # \0alice\0alicepw
    t0 = time.monotonic()
    a.send('<auth xmlns="%s" mechanism="PLAIN">%s</auth>' % (NS_SASL, cred)
           + " " * 8192)                     # 8 KB: 3.5 s at 2k
    r = a.next_element(5, lambda e: e.tag == q(NS_SASL, "success"),
                       "SASL success")
    assert r is not None
    a.readers.pop()
    a.restart(timeout=5)
    elapsed = time.monotonic() - t0
    print("restarted %.2fs after <auth/> and 8 KB" % elapsed)
    assert elapsed < 8192 / 2048 / 2
    assert a.iq('<bind xmlns="%s"><resource>a</resource></bind>' % NS_BIND,
                "bind1").get("type") == "result"


def test_preauth_rate(standin, nginx, raw):
    """xmpp_cm_preauth_limit_rate applies until the client authenticates,
    xmpp_cm_limit_rate (here off) after."""
    _, ngx = cm(standin, nginx, "xmpp_cm_preauth_limit_rate 2k burst=1k;")
    a = raw(ngx.port, timeout=15)
    a.open()
    # ~6 KB of white space between the header and <auth/>: 2.5 s at 2k
    # after the 1k burst
    t0 = time.monotonic()
    a.send(b" " * 6144)
    r = a.auth_plain("alice", "alicepw")
    pre = time.monotonic() - t0
    assert r.tag == q(NS_SASL, "success")
    print("6 KB before authentication: %.2fs" % pre)
    assert pre >= (6144 - 1024) / 2048 * 0.9
    a.restart()
    assert a.iq('<bind xmlns="%s"><resource>a</resource></bind>' % NS_BIND,
                "bind1").get("type") == "result"
    [b] = logged_in(raw, ngx, ("bob", "b"))
    data = b"".join(msg(i) for i in range(20))     # 80 KB, no limit now
    t1 = time.monotonic()
    a.send(data)
    for i in range(20):
        b.next_element(10, is_msg("a"), "message %d" % i)
    post = time.monotonic() - t1
    print("80 KB after authentication: %.2fs" % post)
    assert post < 2.0


def test_tls_flood_delayed_not_dropped(standin, nginx, certs):
    """Over TLS the bytes counted are the decrypted ones c->recv returns
    (as nginx's own rate limits); what OpenSSL has decrypted but the CM
    has not read yet is picked up when the delay ends (epoll would not
    report it)."""
    rate, burst = 64 * 1024, 8192
    _, ngx = cm(standin, nginx, tls_lines(certs, None)
                + "\nxmpp_cm_limit_rate 64k burst=8k;", listen_extra=" ssl")
    clients = []
    try:
        for user, res in (("bob", "b"), ("alice", "a")):
            c = TlsRaw(ngx.port, client_ctx(certs), direct=True,
                       timeout=10)
            clients.append(c)
            c.login(user, user + "pw", resource=res)
        b, a = clients
        n = 48
        data = b"".join(msg(i) for i in range(n))
        t0 = time.monotonic()
        th = sender(a, data)
        for i in range(n):
            el = b.next_element(30, is_msg("a"), "message %d" % i)
            assert el.get("id") == "a%d" % i
        elapsed = time.monotonic() - t0
        th.join(10)
        lo, hi = bounds(len(data), rate, burst)
        print("%d bytes over TLS in %.2fs (band %.2f-%.2fs)"
              % (len(data), elapsed, lo, hi))
        assert lo <= elapsed <= hi
    finally:
        for c in clients:
            c.close()


def test_compressed_stream_counts_socket_bytes(standin, nginx, raw):
    """With XEP-0138 the bytes counted are those read from the socket,
    still compressed: 160 KB of messages that compress to a few KB go
    through at once at 4k/s (they would take 40 s counted inflated)."""
    _, ngx = cm(standin, nginx, "xmpp_cm_limit_rate 4k burst=8k;\n"
                                "xmpp_cm_compression on;")
    [b] = logged_in(raw, ngx, ("bob", "b"))
    z = ZClient(ngx.port)
    z.login(b"alice", b"alicepw")
    z.start_zlib()
    z.send(HEADER)
    z.until(rb"</stream:features>")
    z.bind(b"z")
    n = 20
    t0 = time.monotonic()
    wire = 0
    for i in range(n):
        data = msg(i, body="a" * 8000)
        packed = z.deflate.compress(data) + z.deflate.flush(zlib.Z_SYNC_FLUSH)
        wire += len(packed)
        z.s.sendall(packed)
    for i in range(n):
        el = b.next_element(10, is_msg("a"), "message %d" % i)
        assert el.get("id") == "a%d" % i
    elapsed = time.monotonic() - t0
    inflated = n * len(msg(0, body="a" * 8000))
    print("%d bytes (%d on the wire) in %.2fs" % (inflated, wire, elapsed))
    assert wire < 8192
    assert elapsed < inflated / 4096 / 8


def conf_body(extra):
    return server_block(15222, "127.0.0.1:5262", connections=2, extra=extra)


def test_valid_values_accepted(nginx_t):
    for extra in ("xmpp_cm_limit_rate 0;",
                  "xmpp_cm_limit_rate 100k;",
                  "xmpp_cm_limit_rate 1m burst=256k;",
                  "xmpp_cm_limit_rate 1m burst=0;",
                  "xmpp_cm_limit_rate 8k;\nxmpp_cm_preauth_limit_rate 0;",
                  "xmpp_cm_limit_rate 8k;\n"
                  "xmpp_cm_preauth_limit_rate 64k burst=16k;"):
        rc, out = nginx_t(conf_body(extra))
        assert rc == 0, "%s\n%s" % (extra, out)
    # on the stream level, inherited by the server
    rc, out = nginx_t("xmpp_cm_limit_rate 10k burst=20k;\n"
                      + conf_body(""))
    assert rc == 0, out


BAD = [
    ("not_a_size", "xmpp_cm_limit_rate fast;", "xmpp_cm_limit_rate"),
    ("negative", "xmpp_cm_limit_rate -1k;", "xmpp_cm_limit_rate"),
    ("bad_burst", "xmpp_cm_limit_rate 1k burst=lots;", "xmpp_cm_limit_rate"),
    ("empty_burst", "xmpp_cm_limit_rate 1k burst=;", "xmpp_cm_limit_rate"),
    ("unknown_param", "xmpp_cm_limit_rate 1k nodelay;",
     "xmpp_cm_limit_rate"),
    ("too_many", "xmpp_cm_limit_rate 1k burst=1k burst=2k;",
     "xmpp_cm_limit_rate"),
    ("too_large", "xmpp_cm_limit_rate 1025m;", "xmpp_cm_limit_rate"),
    ("burst_too_large", "xmpp_cm_limit_rate 1k burst=2048m;",
     "xmpp_cm_limit_rate"),
    ("duplicate", "xmpp_cm_limit_rate 1k;\nxmpp_cm_limit_rate 2k;",
     "xmpp_cm_limit_rate"),
    ("preauth_bad", "xmpp_cm_preauth_limit_rate 1x;",
     "xmpp_cm_preauth_limit_rate"),
]


@pytest.mark.parametrize("case,extra,directive", BAD,
                         ids=[x[0] for x in BAD])
def test_bad_values_rejected(nginx_t, case, extra, directive):
    rc, out = nginx_t(conf_body(extra))
    assert rc != 0, "nginx -t accepted %s:\n%s" % (case, out)
    assert "[emerg]" in out and directive in out, out
    assert "unknown directive" not in out, out
    assert re.search(r"nginx-t\.conf:\d+", out), out
