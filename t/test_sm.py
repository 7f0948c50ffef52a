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


def route_to(sb, c, payload, sid=None):
    sid = sid or c.stream_id
    cm = sb.session(sid)["cm"]
    sb.call("send_route", cm=cm, streamid=sid, payload=payload)


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


# ------------------------------------------------------------ SASL mechs
def b64(b):
    if isinstance(b, str):
        b = b.encode()
    return base64.b64encode(b).decode()


def sasl_result(c):
    return c.next_element(
        None, lambda e: e.tag in (q(NS_SASL, "success"), q(NS_SASL, "failure"),
                                  q(NS_SASL, "challenge")), "SASL step")


def auth_scram(c, user, pw, authzid=None):
    """SCRAM-SHA-1 (RFC 5802), with an a= authzid when given."""
    cnonce = b64(os.urandom(18))
    gs2 = "n,%s," % ("a=" + authzid.replace("=", "=3D").replace(",", "=2C")
                     if authzid else "")
    bare = "n=%s,r=%s" % (user.replace("=", "=3D").replace(",", "=2C"),
                          cnonce)
    c.send('<auth xmlns="%s" mechanism="SCRAM-SHA-1">%s</auth>'
           % (NS_SASL, b64(gs2 + bare)))
    ch = sasl_result(c)
    assert ch.tag == q(NS_SASL, "challenge"), tostr(ch)
    first = base64.b64decode(ch.text).decode()
    attrs = dict(a.split("=", 1) for a in first.split(","))
    salted = hashlib.pbkdf2_hmac("sha1", pw.encode(),
                                 base64.b64decode(attrs["s"]),
                                 int(attrs["i"]))
    without = "c=%s,r=%s" % (b64(gs2), attrs["r"])
    auth_msg = ("%s,%s,%s" % (bare, first, without)).encode()
    ck = hmac.new(salted, b"Client Key", "sha1").digest()
    sig = hmac.new(hashlib.sha1(ck).digest(), auth_msg, "sha1").digest()
    proof = bytes(a ^ b for a, b in zip(ck, sig))
    c.send('<response xmlns="%s">%s</response>'
           % (NS_SASL, b64(without + ",p=" + b64(proof))))
    return sasl_result(c)


def auth_digest(c, user, pw, realm="localhost", authzid=None):
    """DIGEST-MD5 (RFC 2831) as a client speaks it to Openfire."""
    c.send('<auth xmlns="%s" mechanism="DIGEST-MD5"/>' % NS_SASL)
    ch = sasl_result(c)
    assert ch.tag == q(NS_SASL, "challenge"), tostr(ch)
    text = base64.b64decode(ch.text).decode()
    nonce = re.search(r'nonce="([^"]*)"', text).group(1)
    cnonce = b64(os.urandom(12))
    nc, uri = "00000001", "xmpp/localhost"

    def hx(b):
        return hashlib.md5(b).hexdigest()

    a1 = hashlib.md5(("%s:%s:%s" % (user, realm, pw)).encode()).digest() + \
        (":%s:%s" % (nonce, cnonce)).encode()
    if authzid:
        a1 += (":" + authzid).encode()
    resp = hx(("%s:%s:%s:%s:auth:%s" % (
        hx(a1), nonce, nc, cnonce,
        hx(("AUTHENTICATE:" + uri).encode()))).encode())
    msg = ('username="%s",realm="%s",nonce="%s",cnonce="%s",nc=%s,'
           'qop=auth,digest-uri="%s",response=%s,charset=utf-8'
           % (user, realm, nonce, cnonce, nc, uri, resp))
    if authzid:
        msg += ',authzid="%s"' % authzid
    c.send('<response xmlns="%s">%s</response>' % (NS_SASL, b64(msg)))
    return sasl_result(c)


def authenticate(raw, ngx, user, pw, mech="PLAIN", **kw):
    """A new connection, authenticated and restarted, not bound."""
    c = raw(ngx.port)
    c.open()
    if mech == "PLAIN":
        r = c.auth_plain(user, pw)
    elif mech == "SCRAM-SHA-1":
        r = auth_scram(c, user, pw, **kw)
    else:
        r = auth_digest(c, user, pw, **kw)
    assert r.tag == q(NS_SASL, "success"), tostr(r)
    _, feats = c.restart()
    assert feats.find(q(SM, "sm")) is not None
    return c


def resume(c, previd, h):
    c.send('<resume xmlns="urn:xmpp:sm:3" previd="%s" h="%d"/>'
           % (previd, h))
    return c.next_element(None, lambda e: e.tag in (q(SM, "resumed"),
                                                   q(SM, "failed")),
                          "resumed or failed")


def drop(c, reset=False):
    """The TCP connection goes away without </stream:stream>."""
    if reset:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                          b"\1\0\0\0\0\0\0\0")
    c.close()


def bodies(c):
    return [m.findtext(q(NS_CLIENT, "body")) for m in messages(c)]


# ------------------------------------------------------------ resumption
def held(sb, ngx, c, bob, sent_before, gap):
    """alice (c) got sent_before messages from bob; bob sends gap more
    after alice's connection dropped."""
    for i in range(gap):
        bob.send('<message to="alice@localhost/sm" type="chat" id="g%d">'
                 '<body>gap%d</body></message>' % (i, i))


def test_resume_after_drop_resends_exactly_the_unacknowledged(standin, nginx,
                                                              raw):
    sb, ngx = start(standin, nginx)
    a, en = login(raw, ngx)
    bob, _ = login(raw, ngx, user="bob", pw="bobpw", resource="b",
                   enable=False)
    for i in range(3):
        bob.send('<message to="alice@localhost/sm" type="chat" id="m%d">'
                 '<body>m%d</body></message>' % (i, i))
    a.wait_for(lambda: len(messages(a)) == 3, what="3 messages")
    a.send(ack(1))
    for i in range(2):
        a.send(chat("bob@localhost/b", "from-a%d" % i, "fa%d" % i,
                    frm=a.jid))
    a.send(R)
    assert a.wait_tag(q(SM, "a")).get("h") == "2"
    old = a.stream_id
    drop(a)
    held(sb, ngx, a, bob, 3, 2)
    a2 = authenticate(raw, ngx, "alice", "alicepw")
    r = resume(a2, en.get("id"), 1)
    assert r.tag == q(SM, "resumed"), tostr(r)
    assert r.get("previd") == en.get("id") and r.get("h") == "2"
    a2.wait_for(lambda: len(messages(a2)) == 4, what="4 messages")
    assert bodies(a2) == ["m1", "m2", "gap0", "gap1"]
    # the new connection's own session is closed, the old one goes on
    sb.wait(lambda: sb.close_iqs_for(a2.stream_id), 5,
            what="close of the new connection's session")
    assert sb.session(old) is not None
    assert not sb.close_iqs_for(old)
    # and the resumed stream works both ways, h counting on
    bob.send('<message to="alice@localhost/sm" id="after">'
             '<body>after</body></message>')
    a2.wait_for(lambda: "after" in bodies(a2), what="after")
    a2.send(chat("bob@localhost/b", "back", "back1", frm="alice@localhost/sm"))
    bob.wait_for(lambda: "back" in bodies(bob), what="back")
    a2.send(R)
    assert a2.wait_tag(q(SM, "a")).get("h") == "3"
    a2.send(ack(6))
    time.sleep(0.1)
    assert a2.stream_error() is None
    assert bodies(a2).count("m1") == 1 and "m0" not in bodies(a2)


def test_resume_after_reset_and_while_old_connection_lingers(standin, nginx,
                                                             raw):
    """A RST ends the old connection at once; a client that comes back
    while its old connection is still open takes the stream over, and the
    old connection gets conflict."""
    sb, ngx = start(standin, nginx)
    a, en = login(raw, ngx)
    drop(a, reset=True)
    a2 = authenticate(raw, ngx, "alice", "alicepw")
    assert resume(a2, en.get("id"), 0).tag == q(SM, "resumed")
    # a2 still open: a third connection takes over
    a3 = authenticate(raw, ngx, "alice", "alicepw")
    assert resume(a3, en.get("id"), 0).tag == q(SM, "resumed")
    assert a2.expect_stream_error() == "conflict"
    route_to(sb, a3, chat("alice@localhost/sm", "x", "x1"), en.get("id"))
    a3.wait_for(lambda: bodies(a3) == ["x"], what="x")


def test_resume_by_another_account_fails_and_leaves_the_stream(standin, nginx,
                                                               raw):
    sb, ngx = start(standin, nginx)
    a, en = login(raw, ngx)
    route_to(sb, a, chat("alice@localhost/sm", "kept", "k1"))
    a.wait_for(lambda: messages(a), what="k1")
    drop(a)
    b = authenticate(raw, ngx, "bob", "bobpw")
    f = resume(b, en.get("id"), 0)
    assert f.tag == q(SM, "failed")
    assert f.find(q(STANZAS, "item-not-found")) is not None, tostr(f)
    # bob's stream goes on (it may bind now)
    res = b.iq('<bind xmlns="%s"><resource>r</resource></bind>' % NS_BIND,
               "b1")
    assert res.get("type") == "result"
    a2 = authenticate(raw, ngx, "alice", "alicepw")
    assert resume(a2, en.get("id"), 0).tag == q(SM, "resumed")
    a2.wait_for(lambda: bodies(a2) == ["kept"], what="kept")


def test_resume_unknown_previd_and_bad_h(standin, nginx, raw):
    sb, ngx = start(standin, nginx)
    a, en = login(raw, ngx)
    pid = en.get("id")[1:].split("-")[0]
    drop(a)
    c = authenticate(raw, ngx, "alice", "alicepw")
    for previd in ("w%s-ffffffffffffffff" % pid, "nonsense",
                   "w1-0123456789abcdef"):
        f = resume(c, previd, 0)
        assert f.tag == q(SM, "failed")
        assert f.find(q(STANZAS, "item-not-found")) is not None, tostr(f)
    # h past what was sent: refused, the held stream untouched
    f = resume(c, en.get("id"), 5)
    assert f.tag == q(SM, "failed")
    assert resume(c, en.get("id"), 0).tag == q(SM, "resumed")


def test_resume_after_bind_is_unexpected(standin, nginx, raw):
    sb, ngx = start(standin, nginx)
    a, en = login(raw, ngx)
    drop(a)
    c, _ = login(raw, ngx, resource="other", enable=False)
    f = resume(c, en.get("id"), 0)
    assert f.find(q(STANZAS, "unexpected-request")) is not None, tostr(f)


def test_expired_stream_returns_messages_to_openfire(standin, nginx, raw):
    """No resumption within xmpp_cm_resume_timeout: what alice had not
    acknowledged and what came while she was away go back to Openfire as
    <failed>, in order, and the session is closed; then the id is
    unknown."""
    sb, ngx = start(standin, nginx, extra="xmpp_cm_resume_timeout 1s;")
    a, en = login(raw, ngx)
    bob, _ = login(raw, ngx, user="bob", pw="bobpw", resource="b",
                   enable=False)
    for i in range(3):
        bob.send('<message to="alice@localhost/sm" type="chat" id="m%d">'
                 '<body>m%d</body></message>' % (i, i))
    a.wait_for(lambda: len(messages(a)) == 3, what="3 messages")
    a.send(ack(1))
    old = a.stream_id
    drop(a)
    held(sb, ngx, a, bob, 3, 2)
    sb.wait(lambda: sb.close_iqs_for(old), 5, what="close after the wait")
    got = [re.search(r"<body>([^<]*)</body>", m).group(1)
           for m in offline(sb)]
    assert got == ["m1", "m2", "gap0", "gap1"], got
    c = authenticate(raw, ngx, "alice", "alicepw")
    f = resume(c, en.get("id"), 1)
    assert f.find(q(STANZAS, "item-not-found")) is not None, tostr(f)


def test_clean_close_returns_unacknowledged_messages(standin, nginx, raw):
    sb, ngx = start(standin, nginx)
    a, en = login(raw, ngx)
    for i in range(3):
        route_to(sb, a, chat("alice@localhost/sm", "c%d" % i, "c%d" % i))
    a.wait_for(lambda: len(messages(a)) == 3, what="3 messages")
    a.send(ack(1))
    a.send("</stream:stream>")
    a.wait_eof()
    sb.wait(lambda: len(offline(sb)) == 2, 5, what="2 returned")
    got = [re.search(r"<body>([^<]*)</body>", m).group(1)
           for m in offline(sb)]
    assert got == ["c1", "c2"]
    c = authenticate(raw, ngx, "alice", "alicepw")
    assert resume(c, en.get("id"), 1).tag == q(SM, "failed")


def test_not_resumable_drop_returns_at_once(standin, nginx, raw):
    """SM without resumption: a dropped connection ends the stream, and
    unacknowledged messages go back at once."""
    sb, ngx = start(standin, nginx)
    a = raw(ngx.port)
    a.login("alice", "alicepw", resource="sm")
    a.send('<enable xmlns="urn:xmpp:sm:3"/>')
    a.wait_tag(q(SM, "enabled"))
    route_to(sb, a, chat("alice@localhost/sm", "u0", "u0"))
    a.wait_for(lambda: messages(a), what="u0")
    drop(a)
    sb.wait(lambda: len(offline(sb)) == 1, 5, what="1 returned")


def mechs():
    return dict(mechanisms=["PLAIN", "SCRAM-SHA-1", "DIGEST-MD5"])


def test_resume_with_scram_sha1(standin, nginx, raw):
    sb, ngx = start(standin, nginx, **mechs())
    a, en = login(raw, ngx)
    drop(a)
    c = authenticate(raw, ngx, "alice", "alicepw", mech="SCRAM-SHA-1")
    assert resume(c, en.get("id"), 0).tag == q(SM, "resumed")
    # the account of a= (an authzid) counts over n=
    a2, en2 = login(raw, ngx, resource="sm2")
    drop(a2)
    c2 = authenticate(raw, ngx, "alice", "alicepw", mech="SCRAM-SHA-1",
                      authzid="alice@localhost")
    assert resume(c2, en2.get("id"), 0).tag == q(SM, "resumed")
    # bob's SCRAM cannot take alice's stream
    a3, en3 = login(raw, ngx, resource="sm3")
    drop(a3)
    b = authenticate(raw, ngx, "bob", "bobpw", mech="SCRAM-SHA-1")
    assert resume(b, en3.get("id"), 0).tag == q(SM, "failed")


def test_resume_with_digest_md5(standin, nginx, raw):
    sb, ngx = start(standin, nginx, **mechs())
    a, en = login(raw, ngx)
    route_to(sb, a, chat("alice@localhost/sm", "d0", "d0"))
    a.wait_for(lambda: messages(a), what="d0")
    drop(a)
    b = authenticate(raw, ngx, "bob", "bobpw", mech="DIGEST-MD5")
    assert resume(b, en.get("id"), 0).tag == q(SM, "failed")
    c = authenticate(raw, ngx, "alice", "alicepw", mech="DIGEST-MD5")
    assert resume(c, en.get("id"), 0).tag == q(SM, "resumed")
    c.wait_for(lambda: bodies(c) == ["d0"], what="d0 again")


def test_fifty_clients_resume_at_once(standin, nginx, raw):
    sb, ngx = start(standin, nginx)
    n = 50
    olds = []
    for i in range(n):
        user = "alice" if i % 2 == 0 else "bob"
        c, en = login(raw, ngx, user=user, pw=user + "pw",
                      resource="r%d" % i)
        route_to(sb, c, chat("%s@localhost/r%d" % (user, i), "before%d" % i,
                             "b%d" % i))
        olds.append((user, c, en))
    for user, c, en in olds:
        c.wait_for(lambda: messages(c), what="before")
        drop(c)
    news = []
    for i, (user, c, en) in enumerate(olds):
        c2 = authenticate(raw, ngx, user, user + "pw")
        c2.send('<resume xmlns="urn:xmpp:sm:3" previd="%s" h="0"/>'
                % en.get("id"))
        news.append((i, c2, en))
    for i, c2, en in news:
        r = c2.next_element(None, lambda e: e.tag in (q(SM, "resumed"),
                                                    q(SM, "failed")))
        assert r.tag == q(SM, "resumed"), (i, tostr(r))
        c2.wait_for(lambda: bodies(c2) == ["before%d" % i],
                    what="before%d" % i)
    assert len(sb.sessions()) >= n


def test_held_for_inactive_client_survive_a_drop(standin, nginx, raw):
    """XEP-0352 and XEP-0198 together: what the CM held for an inactive
    client when its connection dropped is kept with the stream and
    written after the resumption, counted like any stanza."""
    sb, ngx = start(standin, nginx)
    a, en = login(raw, ngx)
    a.send('<inactive xmlns="urn:xmpp:csi:0"/>')
    route_to(sb, a, '<presence from="carol@localhost/c" '
                    'to="alice@localhost/sm"><status>away1</status>'
                    '</presence>')
    route_to(sb, a, chat("alice@localhost/sm", "urgent", "u1"))
    a.wait_for(lambda: bodies(a) == ["urgent"], what="urgent")
    route_to(sb, a, '<presence from="dave@localhost/d" '
                    'to="alice@localhost/sm"><status>held</status>'
                    '</presence>')
    # the held presence does not come while inactive
    a.pump(0.3)
    assert "held" not in a.text
    a.send(ack(2))
    drop(a)
    c = authenticate(raw, ngx, "alice", "alicepw")
    r = resume(c, en.get("id"), 2)
    assert r.tag == q(SM, "resumed"), tostr(r)
    p = c.next_element(None, lambda e: e.tag == q(NS_CLIENT, "presence"))
    assert p.get("from") == "dave@localhost/d"
    c.send(ack(3))
    c.send(R)
    c.wait_tag(q(SM, "a"))
    assert c.stream_error() is None


def test_resume_refused_when_the_account_is_unknown(standin, nginx, raw):
    """SASL ANONYMOUS names no account: resumption is refused with
    not-authorized, and the held stream stays resumable."""
    sb, ngx = start(standin, nginx, mechanisms=["PLAIN", "ANONYMOUS"])
    a, en = login(raw, ngx)
    drop(a)
    c = raw(ngx.port)
    c.open()
    c.send('<auth xmlns="%s" mechanism="ANONYMOUS"/>' % NS_SASL)
    assert sasl_result(c).tag == q(NS_SASL, "success")
    c.restart()
    f = resume(c, en.get("id"), 0)
    assert f.find(q(STANZAS, "not-authorized")) is not None, tostr(f)
    a2 = authenticate(raw, ngx, "alice", "alicepw")
    assert resume(a2, en.get("id"), 0).tag == q(SM, "resumed")
