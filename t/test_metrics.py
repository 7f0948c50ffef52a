"""Metrics for Prometheus (xmpp_cm_metrics): an http location of the same
nginx serves the stream module's counters and gauges, summed over all
workers through the module's shared memory zone."""
import signal

from lib.metrics import Metrics, http_block, promtool_check
from lib.raw import DEFAULT_HEADER, NS_CLIENT, NS_SASL, q
from lib.util import free_port, wait_until

FAST = "xmpp_cm_reconnect 100ms 1s;"


def start(nginx, sb, **kw):
    port = free_port()
    ngx = nginx(standin=sb, main_extra=http_block(port), **kw)
    ngx.metrics = Metrics(port)
    return ngx


def test_bound_streams_over_two_workers(standin, nginx, raw):
    """N clients spread over 2 workers: the bound gauge is N wherever the
    scrape lands; it follows clients that leave, and the socket gauges
    equal the sockets at the stand-in."""
    sb = standin()
    ngx = start(nginx, sb, workers=2, connections=3,
                listen_extra=" reuseport")
    m = ngx.metrics
    clients = []
    cms = set()
    while len(cms) < 2 or len(clients) < 6:
        assert len(clients) < 60, "reuseport never spread clients"
        c = raw(ngx.port)
        c.login("alice", "alicepw", resource="r%d" % len(clients))
        cms.add(wait_until(lambda: sb.session(c.stream_id), 5,
                           what="session at stand-in")["cm"])
        clients.append(c)
    n = len(clients)
    for _ in range(4):          # scrapes land on either worker
        assert m.get("xmpp_cm_streams", cm="cm1", state="bound") == n
        assert m.value("xmpp_cm_streams", state="authenticating") == 0
        assert m.value("xmpp_cm_streams", state="detached") == 0
        assert m.value("xmpp_cm_upstream_sockets", cm="cm1",
                       state="ready") == 6
        assert m.value("xmpp_cm_upstream_sockets", state="connecting") == 0
        assert m.value("xmpp_cm_workers", upstream="up") == 2
        assert m.value("xmpp_cm_workers", upstream="down") == 0
        assert m.value("xmpp_cm_streams_opened_total") == n
        assert m.value("xmpp_cm_logins_total", result="success") == n

    # an unauthenticated stream counts as authenticating
    pending = raw(ngx.port)
    pending.open()
    wait_until(lambda: m.get("xmpp_cm_streams",
                             state="authenticating") == 1, 5,
               what="authenticating == 1")

    for c in clients[:3]:
        c.close()
    pending.close()
    wait_until(lambda: m.get("xmpp_cm_streams", state="bound") == n - 3
               and m.value("xmpp_cm_streams", state="authenticating") == 0,
               5, what="bound == %d after 3 clients left" % (n - 3))


def test_counters_move(standin, nginx, raw):
    """Logins, a failed login, stanzas and bytes both ways, a stream
    error, a message handed back in <failed/>, a dropped route, a
    detached session, and reconnects after Openfire restarts."""
    sb = standin()
    ngx = start(nginx, sb, extra=FAST + "\nxmpp_cm_close_delay 30s;")
    m = ngx.metrics
    assert m.get("xmpp_cm_logins_total", result="success") == 0

    alice = raw(ngx.port)
    alice.login("alice", "alicepw", resource="a")
    bob = raw(ngx.port)
    bob.login("bob", "bobpw", resource="b")
    bad = raw(ngx.port)
    bad.open()
    r = bad.auth_plain("alice", "wrong")
    assert r.tag == q(NS_SASL, "failure"), r
    assert m.get("xmpp_cm_logins_total", result="success") == 2
    assert m.value("xmpp_cm_logins_total", result="failure") == 1
    assert m.value("xmpp_cm_streams_opened_total") == 3

    # one message, alice -> Openfire -> bob
    out0 = m.value("xmpp_cm_stanzas_total", direction="to_openfire")
    in0 = m.value("xmpp_cm_stanzas_total", direction="to_client")
    bout0 = m.value("xmpp_cm_bytes_total", direction="to_openfire")
    bin0 = m.value("xmpp_cm_bytes_total", direction="to_client")
    msg = ('<message to="bob@localhost/b" type="chat" id="m1">'
           '<body>hello</body></message>')
    alice.send(msg)
    got = bob.next_element(5, lambda e: e.tag == q(NS_CLIENT, "message"))
    assert got.get("id") == "m1"
    m.fetch()
    assert m.value("xmpp_cm_stanzas_total", direction="to_openfire") \
        == out0 + 1
    assert m.value("xmpp_cm_bytes_total", direction="to_openfire") \
        == bout0 + len(msg)
    assert m.value("xmpp_cm_stanzas_total", direction="to_client") == in0 + 1
    assert m.value("xmpp_cm_bytes_total", direction="to_client") > bin0

    # a stream error the CM sends
    err0 = m.get("xmpp_cm_stream_errors_total", condition="host-unknown")
    e = raw(ngx.port)
    e.send(DEFAULT_HEADER.format(to="elsewhere.example"))
    assert e.expect_stream_error(5) == "host-unknown", e.text
    wait_until(lambda: m.get("xmpp_cm_stream_errors_total",
                             condition="host-unknown") == err0 + 1, 5,
               what="stream error counted")

    # bob leaves: his session waits out the close delay, detached
    bob_sid = bob.stream_id
    cm = sb.session(bob_sid)["cm"]
    bob.close()
    wait_until(lambda: m.get("xmpp_cm_streams", state="detached") == 1
               and m.value("xmpp_cm_streams", state="bound") == 1, 5,
               what="bob's session detached")

    # a message for him goes back in <failed/>; a presence is dropped
    sb.call("send_route", cm=cm, streamid=bob_sid, escaped=False,
            payload='<message to="bob@localhost/b" from="alice@localhost/a" '
                    'type="chat" id="late"><body>late</body></message>')
    wait_until(lambda: sb.inbound(r"<failed>.*late", bob_sid), 5,
               what="<failed> for the late message")
    assert m.get("xmpp_cm_failed_returned_total") == 1
    sb.call("send_route", cm=cm, streamid="w1-00000000deadbeef",
            escaped=False,
            payload='<presence from="alice@localhost/a" '
                    'to="nobody@localhost/x"/>')
    wait_until(lambda: m.get("xmpp_cm_dropped_total",
                             reason="closed_stream") == 1, 5,
               what="dropped presence counted")

    # Openfire restarts: every socket reconnects
    rec0 = m.get("xmpp_cm_upstream_reconnects_total")
    sb.restart()
    wait_until(lambda: len(sb.cm_sockets("cm1-")) == 2, 15,
               what="sockets back")
    wait_until(lambda: m.get("xmpp_cm_upstream_sockets",
                             state="ready") == 2, 5, what="2 ready sockets")
    assert m.value("xmpp_cm_upstream_reconnects_total") >= rec0 + 2
    assert m.value("xmpp_cm_workers", upstream="up") == 1


def test_handshake_failures(standin, nginx):
    """A wrong secret: Openfire refuses the handshake, the CM counts it
    and its worker shows as down."""
    sb = standin()
    ngx = start(nginx, sb, secret="wrongsecret", wait_sockets=False,
                extra="xmpp_cm_reconnect 200ms 1s;")
    m = ngx.metrics
    wait_until(lambda: m.get("xmpp_cm_upstream_handshake_failures_total")
               >= 2, 10, what="handshake failures counted")
    assert m.value("xmpp_cm_upstream_sockets", state="ready") == 0
    assert m.value("xmpp_cm_workers", upstream="down") == 1
    assert m.value("xmpp_cm_workers", upstream="up") == 0


def test_totals_survive_reload(standin, nginx, raw):
    """After a reload, once the old worker has exited, no counter is lower
    than before it, and the gauges are what the new worker has."""
    sb = standin()
    ngx = start(nginx, sb, extra=FAST + "\nxmpp_cm_close_delay 0;")
    m = ngx.metrics
    a = raw(ngx.port)
    a.login("alice", "alicepw", resource="a")
    b = raw(ngx.port)
    b.login("bob", "bobpw", resource="b")
    a.send('<message to="bob@localhost/b" type="chat" id="x"><body>x'
           '</body></message>')
    b.next_element(5, lambda e: e.tag == q(NS_CLIENT, "message"))
    a.close()
    b.close()
    wait_until(lambda: m.get("xmpp_cm_streams", state="bound") == 0, 5,
               what="clients gone")
    before = dict(m.fetch().samples)
    old = set(ngx.worker_pids())

    ngx.signal(signal.SIGHUP)
    wait_until(lambda: set(ngx.worker_pids()) and
               not (set(ngx.worker_pids()) & old), 15,
               what="old worker exited")
    wait_until(lambda: m.get("xmpp_cm_upstream_sockets",
                             state="ready") == 2, 10,
               what="new worker's sockets ready")
    after = m.fetch().samples
    for key, v in before.items():
        if key[0].endswith("_total"):
            assert after.get(key, -1) >= v, (key, v, after.get(key))
    assert m.value("xmpp_cm_logins_total", result="success") == 2
    assert m.value("xmpp_cm_stanzas_total", direction="to_openfire") == \
        before[("xmpp_cm_stanzas_total",
                (("cm", "cm1"), ("direction", "to_openfire")))]
    assert m.value("xmpp_cm_workers", upstream="up") == 1
    assert m.value("xmpp_cm_streams", state="bound") == 0

    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="c")
    assert m.get("xmpp_cm_logins_total", result="success") == 3
    assert m.value("xmpp_cm_streams", state="bound") == 1


def test_promtool_accepts_output(standin, nginx, raw):
    """promtool check metrics: the format and the naming conventions,
    for two CM names, with traffic; HEAD and other methods."""
    sb = standin()
    mport = free_port()
    body = """
server {
    listen 127.0.0.1:@PORT@;
    xmpp_cm_pass @UPSTREAM@;
    xmpp_cm_domain localhost;
    xmpp_cm_name cm1;
    xmpp_cm_secret cmsecret;
    xmpp_cm_connections 2;
}
server {
    listen 127.0.0.1:%d;
    xmpp_cm_pass @UPSTREAM@;
    xmpp_cm_domain localhost;
    xmpp_cm_name cm2.example;
    xmpp_cm_secret cmsecret;
    xmpp_cm_connections 1;
}
""" % free_port()
    ngx = nginx(body, standin=sb, main_extra=http_block(mport),
                wait_sockets=False)
    wait_until(lambda: len(sb.cm_sockets("cm1-")) == 2
               and len(sb.cm_sockets("cm2.example-")) == 1, 10,
               what="sockets of both CM names")
    m = Metrics(mport)
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="a")
    m.fetch()
    assert m.value("xmpp_cm_streams", cm="cm1", state="bound") == 1
    assert m.value("xmpp_cm_streams", cm="cm2.example", state="bound") == 0
    assert m.value("xmpp_cm_upstream_sockets", cm="cm2.example",
                   state="ready") == 1
    rc, out = promtool_check(m.text)
    assert rc == 0 and out.strip() == "", out

    from lib.metrics import scrape
    status, _, text = scrape(mport, method="HEAD")
    assert status == 200 and text == ""
    status, _, _ = scrape(mport, method="POST")
    assert status == 405


def test_slots_directive(nginx_t, tmp_path):
    """xmpp_cm_metrics_slots: checked by nginx -t; with room for 2 workers
    the zone still serves both."""
    body = """
xmpp_cm_metrics_slots %s;
server {
    listen 127.0.0.1:%d;
    xmpp_cm_pass 127.0.0.1:%d;
    xmpp_cm_domain localhost;
    xmpp_cm_secret s;
}
"""
    rc, out = nginx_t(body % ("1", free_port(), free_port()))
    assert rc != 0 and 'invalid "xmpp_cm_metrics_slots" "1"' in out, out
    rc, out = nginx_t(body % ("2;\nxmpp_cm_metrics_slots 3", free_port(),
                              free_port()))
    assert rc != 0 and "is duplicate" in out, out
    rc, out = nginx_t(body % ("2", free_port(), free_port()))
    assert rc == 0, out


def test_two_workers_in_two_slots(standin, nginx, raw):
    sb = standin()
    ngx = start(nginx, sb, workers=2, stream_extra="xmpp_cm_metrics_slots 2;")
    m = ngx.metrics
    assert m.get("xmpp_cm_workers", upstream="up") == 2
    assert m.value("xmpp_cm_upstream_sockets", state="ready") == 4
    assert not ngx.log_lines(r"metrics slots are taken")


def test_killed_worker_gauges_gone_counters_kept(standin, nginx, raw):
    """A worker killed without exiting (SIGKILL): its gauges leave the
    sums at once, its counters stay (folded in by the worker that takes
    its slot)."""
    import os
    sb = standin()
    ngx = start(nginx, sb, extra=FAST)
    ngx.allowed_bad.append(r"exited on signal 9")
    m = ngx.metrics
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="a")
    assert m.get("xmpp_cm_streams", state="bound") == 1
    [old] = ngx.worker_pids()
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: ngx.worker_pids() and ngx.worker_pids() != [old],
               10, what="a new worker")
    wait_until(lambda: m.get("xmpp_cm_upstream_sockets",
                             state="ready") == 2, 10,
               what="the new worker's sockets")
    assert m.value("xmpp_cm_streams", state="bound") == 0
    assert m.value("xmpp_cm_workers", upstream="up") == 1
    assert m.value("xmpp_cm_logins_total", result="success") == 1
    assert m.value("xmpp_cm_streams_opened_total") == 1
    d = raw(ngx.port)
    d.login("bob", "bobpw", resource="b")
    assert m.get("xmpp_cm_logins_total", result="success") == 2
    assert m.value("xmpp_cm_streams", state="bound") == 1
