"""Confirmed delivery on the link to Openfire (xmpp_cm_confirm,
docs/delivery.md): barrier IQs, the unconfirmed window, and the resend of
what a reset socket had not got confirmed, in order, with no second
create for a session Openfire already has."""
import re
import time

from lib.metrics import Metrics, http_block
from lib.raw import NS_CLIENT, q
from lib.util import free_port, wait_until

FAST = "xmpp_cm_reconnect 100ms 1s;"


def start(nginx, sb, **kw):
    port = free_port()
    ngx = nginx(standin=sb, main_extra=http_block(port), **kw)
    ngx.metrics = Metrics(port)
    return ngx


def msg(i, to="bob@localhost/b", size=0):
    return ('<message to="%s" type="chat" id="c%d"><body>%d %s</body>'
            '</message>' % (to, i, i, "x" * size)).encode()


def sock_of(sb, streamid):
    """The resource of the CM socket that carried the stream's last
    element the stand-in processed."""
    res = None
    for e in sb.events():
        if e["dir"] == "in" and re.search(r'\bstreamid="%s"' % streamid,
                                          e["xml"]):
            res = e["resource"]
    return res


def receive(b, n, timeout, first=None):
    """Message ids b receives until n distinct ones came: (all ids in the
    order they came, distinct ids in the order of their first copy)."""
    got, seen = [], []
    deadline = time.monotonic() + timeout
    while len(seen) < n:
        left = deadline - time.monotonic()
        assert left > 0, "only %d of %d messages arrived: %s" % (
            len(seen), n, seen)
        el = b.next_element(left, lambda e: e.tag == q(NS_CLIENT, "message"))
        mid = el.get("id")
        got.append(mid)
        if mid not in seen:
            seen.append(mid)
    return got, seen


def test_barriers_confirm_and_release(standin, nginx, raw):
    """Each socket sends barriers (an IQ get with a child, which Openfire
    answers with bad-request on any socket of the name, after everything
    before it on the socket); every answer releases what it confirms: the
    unconfirmed gauge goes back to 0 once traffic stops.  Barriers go at a
    quarter of the window or xmpp_cm_confirm_delay after the first element
    they cover, not per stanza."""
    sb = standin()
    ngx = start(nginx, sb, connections=2, log_level="info",
                extra="xmpp_cm_confirm_window 64 64k;\n"
                      "xmpp_cm_confirm_delay 1s;")
    m = ngx.metrics
    t0 = time.monotonic()
    a = raw(ngx.port, timeout=10)
    a.login("alice", "alicepw", resource="a")
    b = raw(ngx.port, timeout=10)
    b.login("bob", "bobpw", resource="b")
    N = 200
    a.send(b"".join(msg(i) for i in range(N)))
    _, seen = receive(b, N, 20)
    assert seen == ["c%d" % i for i in range(N)]
    wait_until(lambda: m.get("xmpp_cm_upstream_unconfirmed", cm="cm1",
                               unit="stanzas") == 0
               and m.get("xmpp_cm_upstream_unconfirmed", cm="cm1",
                           unit="bytes") == 0, 10,
               what="everything confirmed and released")
    elapsed = time.monotonic() - t0
    barriers = m.get("xmpp_cm_upstream_barriers_total", cm="cm1")
    answers = m.get("xmpp_cm_upstream_barrier_answers_total", cm="cm1")
    wait = m.get("xmpp_cm_upstream_confirm_wait_seconds_total", cm="cm1")
    # the elements the CM routed: both logins and the messages
    routed = len([x for x in sb.inbound(r"^<route\b|^<iq type=\"set\"")])
    print("%d elements routed, %d barriers, %d answers, mean wait %.3f s"
          % (routed, barriers, answers, wait / max(answers, 1)))
    assert 1 <= answers <= barriers
    # a quarter of the window (16) per barrier, plus one per delay (1s)
    # on each socket at most
    assert barriers <= routed / 16 + 2 * (elapsed + 2), barriers
    # on the wire: IQ gets with a child, each answered bad-request
    gets = sb.inbound(r'^<iq type="get" id="b\d+-\d+-\d+"')
    assert len(gets) == barriers, gets[:3]
    assert all("<ping xmlns=\"urn:xmpp:ping\"/>" in x for x in gets)
    ids = {re.search(r'id="([^"]+)"', x).group(1) for x in gets}
    answered = [e["xml"] for e in sb.events() if e["dir"] == "out"
                and re.search(r'<iq type="error" id="b', e["xml"])]
    assert {re.search(r'id="([^"]+)"', x).group(1) for x in answered} \
        == ids
    assert all("bad-request" in x for x in answered)
    # nothing about them in the log above debug (not "ignored IQ")
    assert not ngx.log_lines(r"ignored IQ from Openfire")


def test_window_full_pauses_then_resumes(standin, nginx, raw):
    """Openfire reads and routes but its answers to barriers are held: the
    socket's unconfirmed window (16 stanzas) fills, the client routing to
    it is paused (read no more), so what the CM keeps stays bounded; once
    the answers come, it is read again and every message arrives, in
    order."""
    sb = standin()
    ngx = start(nginx, sb, connections=1, log_level="info",
                extra="xmpp_cm_confirm_window 16 64k;")
    m = ngx.metrics
    a = raw(ngx.port, timeout=10)
    a.login("alice", "alicepw", resource="a")
    b = raw(ngx.port, timeout=10)
    b.login("bob", "bobpw", resource="b")
    wait_until(lambda: m.get("xmpp_cm_upstream_unconfirmed", cm="cm1",
                               unit="stanzas") == 0, 10,
               what="the logins confirmed")
    pauses0 = m.get("xmpp_cm_flow_control_pauses_total", cm="cm1")
    sb.call("set", key="answer_gets", value=False)
    N = 300
    data = b"".join(msg(i, size=1000) for i in range(N))
    try:
        sent = 0
        last = time.monotonic()
        while sent < len(data) and time.monotonic() - last < 1.5:
            n = a.send_nonblocking(data[sent:], max_wait=0.2)
            if n:
                sent += n
                last = time.monotonic()
        # what Openfire got is what the window let through
        held = []
        while True:
            try:
                el = b.next_element(1.0, lambda e: e.tag == q(NS_CLIENT,
                                                              "message"))
            except Exception:
                break
            held.append(el.get("id"))
        kept = m.get("xmpp_cm_upstream_unconfirmed", cm="cm1",
                       unit="stanzas")
        pauses = m.get("xmpp_cm_flow_control_pauses_total", cm="cm1")
        print("answers held: %d of %d messages through, %d unconfirmed "
              "kept, %d pauses" % (len(held), N, kept, pauses - pauses0))
        assert len(held) < N, "the client was never paused"
        assert 16 <= kept <= 16 + 40, kept
        assert pauses > pauses0
    finally:
        sb.call("set", key="answer_gets", value=True)
    if sent < len(data):
        a.sock.settimeout(20)
        a.sock.sendall(data[sent:])
    _, seen = receive(b, N - len(held), 30)
    assert held + seen == ["c%d" % i for i in range(N)]
    wait_until(lambda: m.get("xmpp_cm_upstream_unconfirmed", cm="cm1",
                               unit="stanzas") == 0, 10,
               what="everything confirmed")


def test_reset_resends_in_order_without_a_second_create(standin, nginx,
                                                        raw):
    """Alice's socket stops being read and is reset 0.5 s later: the
    messages she sent meanwhile were never processed, and go again on the
    other socket, all of them, in her order, ahead of what she sends after
    the reset; her session's create, which Openfire had acted on, is not
    sent again (it would replace her session)."""
    sb = standin()
    ngx = start(nginx, sb, connections=2, log_level="info", extra=FAST)
    m = ngx.metrics
    a = raw(ngx.port, timeout=10)
    a.login("alice", "alicepw", resource="a")
    b = raw(ngx.port, timeout=10)
    b.login("bob", "bobpw", resource="b")
    res = sock_of(sb, a.stream_id)
    assert res
    r = sb.call("drop_sockets", resource=res, hold=0.5)
    assert r["dropped"] == 1
    for i in range(30):
        a.send(msg(i))
        time.sleep(0.02)
    wait_until(lambda: ngx.log_lines(r"sent again on the socket cm1-"), 10,
               what="the resend")
    for i in range(30, 40):
        a.send(msg(i))
    got, seen = receive(b, 40, 20)
    assert seen == ["c%d" % i for i in range(40)], seen
    print("%d copies of 40 messages" % len(got))
    assert len(sb.inbound(r"<create\b", a.stream_id)) == 1
    assert m.get("xmpp_cm_upstream_resent_total", cm="cm1") >= 1
    # she is still bound: her session was not replaced by a second create
    res = a.iq('<ping xmlns="urn:xmpp:ping"/>', "p1", type_="get",
               to="localhost")
    assert res.get("type") == "result"


def test_reset_resends_creates_never_processed(standin, nginx, raw):
    """A socket stops being read while clients open streams: the creates
    (and SASL) it carried were never processed, so they go again, once,
    on the other socket, and every client logs in; each session is created
    exactly once."""
    sb = standin()
    ngx = start(nginx, sb, connections=2, log_level="info", extra=FAST)
    socks = sb.cm_sockets("cm1-")
    assert len(socks) == 2
    r = sb.call("drop_sockets", resource=socks[0]["resource"], hold=0.5)
    assert r["dropped"] == 1
    clients = [raw(ngx.port, timeout=10) for _ in range(6)]
    for i, c in enumerate(clients):
        c.login("alice", "alicepw", resource="r%d" % i)
    assert ngx.log_lines(r"sent again on the socket cm1-")
    for c in clients:
        assert len(sb.inbound(r"<create\b", c.stream_id)) == 1, c.stream_id
    assert ngx.metrics.get("xmpp_cm_upstream_resent_total", cm="cm1") >= 1


def test_confirm_off_sends_no_barriers(standin, nginx, raw):
    """xmpp_cm_confirm off: no barrier ever goes to Openfire, nothing is
    kept."""
    sb = standin()
    ngx = start(nginx, sb, connections=1, extra="xmpp_cm_confirm off;")
    a = raw(ngx.port, timeout=10)
    a.login("alice", "alicepw", resource="a")
    b = raw(ngx.port, timeout=10)
    b.login("bob", "bobpw", resource="b")
    a.send(b"".join(msg(i) for i in range(20)))
    receive(b, 20, 10)
    # a round trip after them, as long as the logins' (over which a
    # barrier would have gone with it on)
    res = a.iq('<ping xmlns="urn:xmpp:ping"/>', "p1", type_="get",
               to="localhost")
    assert res.get("type") == "result"
    assert not sb.inbound(r'^<iq type="get" id="b')
    assert ngx.metrics.get("xmpp_cm_upstream_barriers_total",
                             cm="cm1") == 0
    assert ngx.metrics.get("xmpp_cm_upstream_unconfirmed", cm="cm1",
                             unit="stanzas") == 0
