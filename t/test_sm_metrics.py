"""XEP-0198 in the metrics (docs/metrics.md): the SM and held gauges, the
resumption, expiry and resent counters, and the gauges back at 0 once
the streams end."""
from lib.metrics import Metrics, http_block, promtool_check
from lib.raw import q
from lib.util import free_port, wait_until
from test_sm import (SM, ack, authenticate, chat, drop, login, messages,
                     resume, route_to)


def start(standin, nginx, extra=""):
    sb = standin()
    port = free_port()
    ngx = nginx(standin=sb, extra=extra, main_extra=http_block(port))
    return sb, ngx, Metrics(port)


def test_enable_drop_resume_and_failed_resume(standin, nginx, raw):
    sb, ngx, m = start(standin, nginx)
    a, en = login(raw, ngx)
    wait_until(lambda: m.get("xmpp_cm_sm_streams") == 1, 5,
               what="sm streams == 1")
    assert m.value("xmpp_cm_sm_held_streams") == 0
    for i in range(2):
        route_to(sb, a, chat("alice@localhost/sm", "m%d" % i, "m%d" % i))
    a.wait_for(lambda: len(messages(a)) == 2, what="2 messages")
    a.send(ack(1))
    drop(a)
    wait_until(lambda: m.get("xmpp_cm_sm_held_streams") == 1, 5,
               what="held == 1")
    assert m.value("xmpp_cm_sm_streams") == 1
    c = authenticate(raw, ngx, "alice", "alicepw")
    f = resume(c, "nonsense", 0)
    assert f.tag == q(SM, "failed")
    m.fetch()
    assert m.value("xmpp_cm_sm_resumptions_total", result="failed") == 1
    assert m.value("xmpp_cm_sm_resumptions_total", result="resumed") == 0
    assert m.value("xmpp_cm_sm_held_streams") == 1
    assert resume(c, en.get("id"), 1).tag == q(SM, "resumed")
    c.wait_for(lambda: len(messages(c)) == 1, what="1 resent")
    m.fetch()
    assert m.value("xmpp_cm_sm_resumptions_total", result="resumed") == 1
    assert m.value("xmpp_cm_sm_held_streams") == 0
    assert m.value("xmpp_cm_sm_streams") == 1
    assert m.value("xmpp_cm_sm_resent_total") == 1
    assert m.value("xmpp_cm_sm_expired_total") == 0
    rc, out = promtool_check(m.text)
    assert rc == 0 and out.strip() == "", out
    c.send("</stream:stream>")
    c.wait_eof()
    wait_until(lambda: m.get("xmpp_cm_sm_streams") == 0, 5,
               what="sm streams == 0 after a clean close")
    assert m.value("xmpp_cm_sm_held_streams") == 0


def test_expiry_counts_and_gauges_go_back(standin, nginx, raw):
    sb, ngx, m = start(standin, nginx, extra="xmpp_cm_resume_timeout 1s;")
    a, en = login(raw, ngx)
    route_to(sb, a, chat("alice@localhost/sm", "kept", "k1"))
    a.wait_for(lambda: messages(a), what="k1")
    drop(a)
    wait_until(lambda: m.get("xmpp_cm_sm_held_streams") == 1, 5,
               what="held == 1")
    wait_until(lambda: m.get("xmpp_cm_sm_expired_total") == 1, 5,
               what="expired == 1")
    assert m.value("xmpp_cm_sm_held_streams") == 0
    assert m.value("xmpp_cm_sm_streams") == 0
    assert m.value("xmpp_cm_sm_resumptions_total", result="resumed") == 0
