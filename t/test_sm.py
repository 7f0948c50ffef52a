"""XEP-0198 stream management at the CM (docs/delivery.md): <sm/> offered
after authentication, <enable/>, both counts (h of the client's stanzas
means Openfire accepted them), the unacknowledged queue and the CM's
<r/>, resumption on the same worker, and what goes back to Openfire as
<failed> when no resumption comes.  Raw clients: exact bytes and counts."""
import base64
import hashlib
import hmac
import os
import re
import socket
import time

from lib.raw import NS_CLIENT, NS_STREAM, NS_SASL, NS_BIND, q, tostr
from lib.util import wait_until

SM = "urn:xmpp:sm:3"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
ENABLE = '<enable xmlns="urn:xmpp:sm:3" resume="true"/>'
R = '<r xmlns="urn:xmpp:sm:3"/>'


def ack(h):
    return '<a xmlns="urn:xmpp:sm:3" h="%d"/>' % h


def start(standin, nginx, extra="", **kw):
    sb = standin(**kw)
    ngx = nginx(standin=sb, extra=extra)
    return sb, ngx


def login(raw, ngx, user="alice", pw="alicepw", resource="sm", enable=True):
    c = raw(ngx.port)
    c.login(user, pw, resource=resource)
    en = None
    if enable:
        c.send(ENABLE)
        en = c.wait_tag(q(SM, "enabled"))
    return c, en


def route_to(sb, c, payload):
    cm = sb.session(c.stream_id)["cm"]
    sb.call("send_route", cm=cm, streamid=c.stream_id, payload=payload)


def chat(to, body, mid, frm="bob@localhost/x"):
    return ('<message from="%s" to="%s" type="chat" id="%s">'
            '<body>%s</body></message>' % (frm, to, mid, body))


def routes(sb):
    return sb.inbound(r"^\s*<route\b")


def offline(sb, user="alice"):
    return sb.call("offline", user=user)["messages"]


def sm_elements(c, name):
    return [e for e in c.all_elements() if e.tag == q(SM, name)]


def messages(c):
    return [e for e in c.all_elements() if e.tag == q(NS_CLIENT, "message")]


def test_features_offer_sm_after_auth_only(standin, nginx, raw):
    sb, ngx = start(standin, nginx)
    c = raw(ngx.port)
    _, pre = c.open()
    assert pre.find(q(SM, "sm")) is None, tostr(pre)
    r = c.auth_plain("alice", "alicepw")
    assert r.tag == q(NS_SASL, "success")
    _, post = c.restart()
    assert post.find(q(SM, "sm")) is not None, tostr(post)


def test_sm_off_is_not_offered_and_refused(standin, nginx, raw):
    sb, ngx = start(standin, nginx, extra="xmpp_cm_stream_management off;")
    c = raw(ngx.port)
    c.open()
    c.auth_plain("alice", "alicepw")
    _, post = c.restart()
    assert post.find(q(SM, "sm")) is None, tostr(post)
    c.send(ENABLE)
    assert c.expect_stream_error() == "unsupported-stanza-type"


def test_enable_before_auth_is_not_authorized(standin, nginx, raw):
    sb, ngx = start(standin, nginx)
    c = raw(ngx.port)
    c.open()
    c.send(ENABLE)
    assert c.expect_stream_error() == "not-authorized"


def test_enabled_names_the_stream_and_max(standin, nginx, raw):
    sb, ngx = start(standin, nginx, extra="xmpp_cm_resume_timeout 90s;")
    c, en = login(raw, ngx)
    assert en.get("id") == c.stream_id
    assert re.match(r"^w\d+-[0-9a-f]{16}$", en.get("id"))
    assert en.get("resume") == "true"
    assert en.get("max") == "90"
    # never routed to Openfire
    assert not any("urn:xmpp:sm:3" in r for r in routes(sb)), \
        routes(sb)


def test_enable_shorter_client_max_and_no_resume(standin, nginx, raw):
    sb, ngx = start(standin, nginx)
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="m")
    c.send('<enable xmlns="urn:xmpp:sm:3" resume="true" max="7"/>')
    en = c.wait_tag(q(SM, "enabled"))
    assert en.get("max") == "7"
    c2 = raw(ngx.port)
    c2.login("bob", "bobpw", resource="m")
    c2.send('<enable xmlns="urn:xmpp:sm:3"/>')
    en2 = c2.wait_tag(q(SM, "enabled"))
    assert en2.get("id") is None and en2.get("resume") is None


def test_resume_timeout_zero_turns_resumption_off(standin, nginx, raw):
    sb, ngx = start(standin, nginx, extra="xmpp_cm_resume_timeout 0;")
    c, en = login(raw, ngx)
    assert en.get("resume") is None and en.get("id") is None


def test_enable_twice_and_before_bind_fail(standin, nginx, raw):
    sb, ngx = start(standin, nginx)
    c = raw(ngx.port)
    c.open()
    c.auth_plain("alice", "alicepw")
    c.restart()
    c.send(ENABLE)
    f = c.wait_tag(q(SM, "failed"))
    assert f.find(q(STANZAS, "unexpected-request")) is not None, tostr(f)
    res = c.iq('<bind xmlns="%s"><resource>b</resource></bind>' % NS_BIND,
               "b1")
    assert res.get("type") == "result"
    c.send(ENABLE)
    c.wait_tag(q(SM, "enabled"))
    c.send(ENABLE)
    f = c.wait_tag(q(SM, "failed"))
    assert f.find(q(STANZAS, "unexpected-request")) is not None, tostr(f)
    # the stream goes on
    res = c.iq('<query xmlns="jabber:iq:roster"/>', "r1", type_="get")
    assert res.get("type") == "result"


def test_r_before_enable_is_a_stream_error(standin, nginx, raw):
    sb, ngx = start(standin, nginx)
    c, _ = login(raw, ngx, enable=False)
    c.send(R)
    assert c.expect_stream_error() == "unsupported-stanza-type"


def test_client_stanzas_counted_h_after_openfire(standin, nginx, raw):
    """Three messages and an IQ, then <r/>: h is 4, and the 4 reached
    Openfire before the <a/> was sent (h means accepted)."""
    sb, ngx = start(standin, nginx)
    c, _ = login(raw, ngx)
    before = len(routes(sb))
    for i in range(3):
        c.send(chat("bob@localhost", "m%d" % i, "c%d" % i, frm=c.jid))
    c.send('<iq type="get" id="rq1"><query xmlns="jabber:iq:roster"/></iq>')
    c.send(R)
    a = c.wait_tag(q(SM, "a"))
    assert a.get("h") == "4"
    routed = routes(sb)[before:]
    for i in range(3):
        assert any("c%d" % i in r for r in routed), routed
    c.send(R)
    a = c.wait_tag(q(SM, "a"))
    assert a.get("h") == "4"


def test_stanza_answered_at_the_cm_counts(standin, nginx, raw):
    """A stanza the CM answers itself (a malformed JID) is handled: h
    counts it, and the error the CM sends counts in its own queue."""
    sb, ngx = start(standin, nginx)
    c, _ = login(raw, ngx)
    c.send('<message to="a@b@c" id="bad1"><body>x</body></message>')
    c.send(chat("bob@localhost", "ok", "good1", frm=c.jid))
    c.send(R)
    a = c.wait_tag(q(SM, "a"))
    assert a.get("h") == "2"
    err = [m for m in messages(c) if m.get("id") == "bad1"]
    assert err and err[0].get("type") == "error"
    # the CM's own error is a stanza the client acknowledges
    c.send(ack(1))
    c.send(R)
    assert c.wait_tag(q(SM, "a")).get("h") == "2"
    assert c.stream_error() is None


def test_cm_requests_acks_after_ten_stanzas(standin, nginx, raw):
    sb, ngx = start(standin, nginx)
    c, _ = login(raw, ngx)
    for i in range(10):
        route_to(sb, c, chat(c.jid, "n%d" % i, "n%d" % i))
    r = c.wait_tag(q(SM, "r"))
    # the <r/> comes after the tenth stanza
    got = c.text
    assert got.index("n9") < got.rindex("<r xmlns")
    c.send(ack(10))
    route_to(sb, c, chat(c.jid, "after", "after1"))
    c.wait_for(lambda: any(m.get("id") == "after1" for m in messages(c)),
               what="after1")
    # one stanza unacknowledged: asked for after the short delay
    t0 = time.monotonic()
    c.wait_tag(q(SM, "r"), timeout=3)
    assert time.monotonic() - t0 > 0.5
    c.send(ack(11))
    assert c.stream_error() is None


def test_ack_too_high_is_a_stream_error(standin, nginx, raw):
    sb, ngx = start(standin, nginx)
    c, _ = login(raw, ngx)
    route_to(sb, c, chat(c.jid, "one", "o1"))
    c.wait_for(lambda: messages(c), what="o1")
    c.send(ack(2))
    assert c.expect_stream_error() == "undefined-condition"
    assert re.search(r'<handled-count-too-high xmlns="urn:xmpp:sm:3" '
                     r'h="2" send-count="1"/>', c.text), c.text


def test_ack_going_back_is_a_stream_error(standin, nginx, raw):
    sb, ngx = start(standin, nginx)
    c, _ = login(raw, ngx)
    route_to(sb, c, chat(c.jid, "one", "o1"))
    route_to(sb, c, chat(c.jid, "two", "o2"))
    c.wait_for(lambda: len(messages(c)) == 2, what="2 messages")
    c.send(ack(2))
    c.send(ack(1))
    assert c.expect_stream_error() == "undefined-condition"


def test_unacknowledged_bound_is_a_stream_error(standin, nginx, raw):
    """A client that never acknowledges: past xmpp_cm_client_output_limit
    bytes kept it gets policy-violation, and what it did not acknowledge
    goes back to Openfire (nothing is lost silently)."""
    sb, ngx = start(standin, nginx,
                    extra="xmpp_cm_client_output_limit 20k; "
                    "xmpp_cm_max_stanza_size 16k;")
    c, _ = login(raw, ngx)
    body = "x" * 1000
    cm = sb.session(c.stream_id)["cm"]
    n = 0
    while not c.eof and n < 40:
        sb.call("send_route", cm=cm, streamid=c.stream_id,
                payload=chat(c.jid, body, "big%d" % n))
        n += 1
        c.pump(0.02)
    assert c.expect_stream_error() == "policy-violation"
    assert "too many unacknowledged stanzas" in c.text
    # 20k at about 1.1k each: the 19 kept go back, in order
    wait_until(lambda: len(offline(sb)) >= 19, 5,
               what="messages returned to Openfire")
    ids = [re.search(r'id="(big\d+)"', m).group(1) for m in offline(sb)]
    assert ids == ["big%d" % i for i in range(len(ids))], ids
