"""Flow control in both directions."""
import socket
import time

import pytest

from lib.raw import NS_CLIENT, q
from lib.util import proc_rss_kb, wait_until

BODY = "f" * 4000


def msg(i, to="bob@localhost/b"):
    return ('<message to="%s" type="chat" id="f%d"><body>%d %s</body>'
            '</message>' % (to, i, i, BODY)).encode()


@pytest.mark.slow
def test_upstream_backpressure_stops_client_reads(standin, nginx, raw):
    """While Openfire does not read, a flooding client stops being read
    (bounded nginx memory); after Openfire reads again everything arrives,
    in order."""
    sb = standin()
    ngx = nginx(standin=sb, connections=1, log_level="info",
                listen_extra=" rcvbuf=64k",
                extra="xmpp_cm_upstream_watermarks 64k 16k;")
    a = raw(ngx.port, sndbuf=65536, timeout=10)
    a.login("alice", "alicepw", resource="a")
    b = raw(ngx.port, timeout=10)
    b.login("bob", "bobpw", resource="b")
    [worker] = ngx.worker_pids()
    rss0 = proc_rss_kb(worker)

    sb.call("set", key="read_paused", value=True)
    time.sleep(0.2)
    N = 16000                       # 16000 * ~4.1 KB = ~65 MB
    sent_msgs = 0
    partial = b""
    last_progress = time.monotonic()
    deadline = time.monotonic() + 30
    blocked = False
    while sent_msgs < N and time.monotonic() < deadline:
        if not partial:
            partial = msg(sent_msgs)
        n = a.send_nonblocking(partial, max_wait=0.2)
        if n:
            last_progress = time.monotonic()
            partial = partial[n:]
            if not partial:
                sent_msgs += 1
        elif time.monotonic() - last_progress > 2.0:
            blocked = True
            break
    sent_bytes = sent_msgs * len(msg(0))
    assert blocked, "client was never stopped: %d messages (%d bytes) " \
        "accepted while Openfire was not reading" % (sent_msgs, sent_bytes)
    rss1 = proc_rss_kb(worker)
    print("paused: %d messages (%d bytes) written before the client was "
          "stopped; worker RSS %d -> %d KiB" % (sent_msgs, sent_bytes, rss0,
                                                rss1))
    assert rss1 - rss0 < 16 * 1024, \
        "worker RSS grew by %d KiB while paused" % (rss1 - rss0)
    # Openfire saw only part of it
    routed = len(sb.routes_for(a.stream_id))
    print("routed while paused: %d" % routed)
    assert routed < sent_msgs

    sb.call("set", key="read_paused", value=False)
    if partial:                     # finish the message we were writing
        a.sock.settimeout(20)
        a.sock.sendall(partial)
        sent_msgs += 1
    total = sent_msgs
    got = []
    deadline = time.monotonic() + 90
    while len(got) < total:
        assert time.monotonic() < deadline, \
            "only %d of %d messages arrived" % (len(got), total)
        el = b.next_element(20, lambda e: e.tag == q(NS_CLIENT, "message"))
        got.append(el.get("id"))
        # keep memory of the raw log small
        if len(b.received) > 1 << 20:
            b.received = b.received[-4096:]
    assert got == ["f%d" % i for i in range(total)]


def test_client_not_reading_is_disconnected(standin, nginx, raw):
    """bob never reads while alice floods him: the CM drops bob (session
    closed upstream) and keeps serving everyone else."""
    sb = standin()
    ngx = nginx(standin=sb, log_level="info", listen_extra=" sndbuf=32k",
                extra="xmpp_cm_client_output_limit 64k;\n"
                      "xmpp_cm_max_stanza_size 32k;\n"
                      "xmpp_cm_close_delay 200ms;")
    [worker] = ngx.worker_pids()
    b = raw(ngx.port, rcvbuf=4096, timeout=10)
    b.login("bob", "bobpw", resource="b")
    bsid = b.stream_id
    a = raw(ngx.port, timeout=10)
    a.login("alice", "alicepw", resource="a")
    data = b"".join(msg(i) for i in range(1500))       # ~6 MB
    a.sock.settimeout(15)
    a.sock.sendall(data)
    wait_until(lambda: sb.close_iqs_for(bsid), 20,
               what="close IQ for the non-reading client")
    wait_until(lambda: sb.session(bsid) is None, 5, what="bob's session gone")
    # bob's connection is closed; whatever he gets at the end is the
    # policy-violation stream error
    b.wait_eof(15)
    tail = b.text[-3000:]
    if "<stream:error" in tail:
        assert "<policy-violation" in tail, tail
    # the worker still serves: bob logs in again and alice reaches him
    assert ngx.worker_pids() == [worker]
    b2 = raw(ngx.port)
    b2.login("bob", "bobpw", resource="b2")
    a.send('<message to="bob@localhost/b2" type="chat" id="after1">'
           '<body>still here</body></message>')
    el = b2.next_element(10, lambda e: e.get("id") == "after1")
    assert el.find(q(NS_CLIENT, "body")).text == "still here"
