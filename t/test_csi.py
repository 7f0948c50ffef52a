"""XEP-0352 client state indication at the CM (docs/architecture.md,
"Client state indication"): while a client is inactive, presence updates
(the latest per sender), chat states and other unimportant stanzas are
held; anything else goes out at once, after what was held before it;
<active/> flushes; the hold limit flushes rather than drops; CSI never
reaches Openfire."""
import asyncio
import re
import time

from lib import xmpp
from lib.raw import NS_CLIENT, NS_STREAM, q
from lib.util import wait_until

NS_CSI = "urn:xmpp:csi:0"
INACTIVE = '<inactive xmlns="urn:xmpp:csi:0"/>'
ACTIVE = '<active xmlns="urn:xmpp:csi:0"/>'
EXTRA = "xmpp_cm_close_delay 100ms;"


def start(standin, nginx, raw, extra=""):
    sb = standin()
    ngx = nginx(standin=sb, extra=EXTRA + "\n" + extra)
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="csi")
    cm = sb.session(c.stream_id)["cm"]

    def route(payload):
        sb.call("send_route", cm=cm, streamid=c.stream_id, payload=payload)

    return sb, ngx, c, route


def presence(frm, status):
    return ('<presence from="%s" to="alice@localhost/csi">'
            '<status>%s</status></presence>' % (frm, status))


def chatstate(frm, state, mid):
    return ('<message from="%s" to="alice@localhost/csi" type="chat" '
            'id="%s"><%s xmlns="http://jabber.org/protocol/chatstates"/>'
            '</message>' % (frm, mid, state))


def chat(frm, body, mid):
    return ('<message from="%s" to="alice@localhost/csi" type="chat" '
            'id="%s"><body>%s</body></message>' % (frm, mid, body))


def delivered(c, since):
    """(kind, from, marker) of the stanzas received after index since."""
    c.pump(0.02)
    out = []
    for e in c.all_elements()[since:]:
        if e.tag == q(NS_CLIENT, "presence"):
            out.append(("p", e.get("from"), e.findtext(q(NS_CLIENT,
                                                         "status"))))
        elif e.tag == q(NS_CLIENT, "message"):
            out.append(("m", e.get("from"), e.get("id")))
    return out


def settle(c, t=0.4):
    end = time.monotonic() + t
    while time.monotonic() < end:
        c.pump(0.05)


def sync(c, route, since, mark):
    """Route an urgent message and wait for it: everything routed before
    it has been handled by the CM."""
    route(chat("sync@localhost/s", "sync", mark))
    wait_until(lambda: any(x[2] == mark for x in delivered(c, since)), 5,
               what="sync message %s" % mark)


def test_features_offer_csi(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, extra=EXTRA)
    c = raw(ngx.port)
    _, f = c.open()
    assert f.find(q(NS_CSI, "csi")) is None
    c.login("alice", "alicepw")
    feats = [e for e in c.all_elements() if e.tag == q(NS_STREAM, "features")]
    assert feats[-1].find(q(NS_CSI, "csi")) is not None


def test_not_offered_with_hold_limit_0(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, extra=EXTRA + "xmpp_cm_csi_hold_limit 0;")
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    feats = [e for e in c.all_elements() if e.tag == q(NS_STREAM, "features")]
    assert feats[-1].find(q(NS_CSI, "csi")) is None
    c.send(INACTIVE)
    assert c.expect_stream_error(5) == "unsupported-stanza-type"


def test_csi_before_authentication_refused(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, extra=EXTRA)
    c = raw(ngx.port)
    c.open()
    c.send(INACTIVE)
    assert c.expect_stream_error(5) == "not-authorized"
    assert c.stream_ended()
    assert sb.inbound("urn:xmpp:csi") == []


def test_presence_latest_per_sender(standin, nginx, raw):
    sb, ngx, c, route = start(standin, nginx, raw)
    c.send(INACTIVE)
    settle(c, 0.2)
    n0 = len(c.all_elements())
    for i in range(1, 6):
        route(presence("bob@localhost/b", "b%d" % i))
        route(presence("carol@localhost/c", "c%d" % i))
    route(presence("bob@localhost/other", "o1"))
    settle(c, 0.8)
    assert delivered(c, n0) == [], "held presence went out"
    c.send(ACTIVE)
    wait_until(lambda: len(delivered(c, n0)) >= 3, 5, what="flush")
    settle(c, 0.3)
    # in the order of the latest of each sender
    assert delivered(c, n0) == [("p", "bob@localhost/b", "b5"),
                                ("p", "carol@localhost/c", "c5"),
                                ("p", "bob@localhost/other", "o1")]
    # active again: delivered at once
    route(presence("bob@localhost/b", "b6"))
    wait_until(lambda: len(delivered(c, n0)) == 4, 5, what="active presence")
    assert sb.inbound("urn:xmpp:csi") == []
    assert sb.inbound("<inactive") == [] and sb.inbound("<active") == []


def test_body_message_at_once_after_held(standin, nginx, raw):
    sb, ngx, c, route = start(standin, nginx, raw)
    c.send(INACTIVE)
    settle(c, 0.2)
    n0 = len(c.all_elements())
    route(presence("bob@localhost/b", "b1"))
    route(chatstate("bob@localhost/b", "composing", "cs1"))
    route(presence("carol@localhost/c", "c1"))
    route(chatstate("bob@localhost/b", "paused", "cs2"))
    settle(c, 0.6)
    assert delivered(c, n0) == [], "chat states or presence not held"
    route(chat("bob@localhost/b", "hello", "m1"))
    wait_until(lambda: any(x[2] == "m1" for x in delivered(c, n0)), 5,
               what="message with a body while inactive")
    assert delivered(c, n0) == [("p", "bob@localhost/b", "b1"),
                                ("m", "bob@localhost/b", "cs1"),
                                ("p", "carol@localhost/c", "c1"),
                                ("m", "bob@localhost/b", "cs2"),
                                ("m", "bob@localhost/b", "m1")]
    # still inactive: held again after it
    n1 = len(c.all_elements())
    route(presence("bob@localhost/b", "b2"))
    route(chatstate("bob@localhost/b", "active", "cs3"))
    settle(c, 0.6)
    assert delivered(c, n1) == []
    c.send(ACTIVE)
    wait_until(lambda: len(delivered(c, n1)) == 2, 5, what="flush")
    assert delivered(c, n1) == [("p", "bob@localhost/b", "b2"),
                                ("m", "bob@localhost/b", "cs3")]


def test_urgent_stanzas_not_held(standin, nginx, raw):
    sb, ngx, c, route = start(standin, nginx, raw)
    c.send(INACTIVE)
    settle(c, 0.2)
    n0 = len(c.all_elements())
    urgent = [
        ('<presence from="bob@localhost" to="alice@localhost" '
         'type="subscribe"/>', "subscribe"),
        ('<message from="room@muc.localhost" to="alice@localhost/csi" '
         'id="inv"><x xmlns="http://jabber.org/protocol/muc#user"><invite '
         'from="bob@localhost"/></x></message>', "invite"),
        ('<message from="bob@localhost/b" to="alice@localhost/csi" '
         'type="error" id="err"><composing xmlns="http://jabber.org/'
         'protocol/chatstates"/></message>', "error"),
        ('<iq from="bob@localhost/b" to="alice@localhost/csi" type="get" '
         'id="iq1"><ping xmlns="urn:xmpp:ping"/></iq>', "iq"),
    ]
    for i, (payload, what) in enumerate(urgent):
        route(payload)
        wait_until(lambda: (c.pump(0.02), len(c.all_elements()) > n0 + i)[1], 5,
                   what="urgent %s delivered while inactive" % what)


def test_hold_limit_flushes_nothing_lost(standin, nginx, raw):
    sb, ngx, c, route = start(standin, nginx, raw,
                              "xmpp_cm_csi_hold_limit 1k;")
    c.send(INACTIVE)
    settle(c, 0.2)
    n0 = len(c.all_elements())
    ids = ["cs%d" % i for i in range(30)]    # ~150 bytes each: 4.5k
    for mid in ids:
        route(chatstate("bob@localhost/b", "composing", mid))
    settle(c, 0.8)
    early = delivered(c, n0)
    assert early, "the hold limit did not flush"
    assert len(early) < 30, "nothing was held"
    c.send(ACTIVE)
    wait_until(lambda: len(delivered(c, n0)) == 30, 5, what="all 30")
    settle(c, 0.3)
    assert [x[2] for x in delivered(c, n0)] == ids


def test_presence_from_real_contact(standin, nginx, raw):
    """End to end: bob changes presence 5 times through the CM."""
    sb = standin()
    ngx = nginx(standin=sb, extra=EXTRA)
    a = raw(ngx.port)
    a.login("alice", "alicepw", resource="csi")
    a.send("<presence/>")
    b = raw(ngx.port)
    b.login("bob", "bobpw", resource="b")
    b.send("<presence/>")
    wait_until(lambda: (a.pump(0.02),
                        any(e.tag == q(NS_CLIENT, "presence")
                            and (e.get("from") or "").startswith("bob@")
                            for e in a.all_elements()))[1], 5,
               what="bob's initial presence")
    a.send(INACTIVE)
    settle(a, 0.3)
    n0 = len(a.all_elements())
    for i in range(1, 6):
        b.send("<presence><status>s%d</status></presence>" % i)
    settle(a, 1.0)
    assert [x for x in delivered(a, n0) if x[0] == "p"] == []
    a.send(ACTIVE)
    wait_until(lambda: delivered(a, n0), 5, what="flush")
    settle(a, 0.3)
    assert delivered(a, n0) == [("p", "bob@localhost/b", "s5")]
    b.send('<message to="alice@localhost/csi" type="chat" id="x1">'
           '<body>hi</body></message>')
    wait_until(lambda: any(x[2] == "x1" for x in delivered(a, n0)), 5,
               what="message")
    assert sb.inbound("urn:xmpp:csi") == []


def test_slixmpp_csi(standin, nginx):
    sb = standin()
    ngx = nginx(standin=sb, extra=EXTRA)

    async def go():
        a = xmpp.Client("alice@localhost/sx", "alicepw", ngx.port)
        a.x.register_plugin("xep_0352")
        b = xmpp.Client("bob@localhost/sx", "bobpw", ngx.port)
        await a.login()
        await b.login()
        await a.wait_presence("bob@localhost")
        assert a.x.plugin["xep_0352"].enabled
        a.x.plugin["xep_0352"].send_inactive()
        await asyncio.sleep(0.3)
        n0 = len(a.presences)
        for i in range(5):
            b.x.send_presence(pstatus="s%d" % i)
        await asyncio.sleep(1.0)
        assert a.presences[n0:] == []
        b.send_message("alice@localhost/sx", "while inactive", "sx1")
        item = await a.recv(5)
        assert item[1] == "while inactive"
        # the held presences came first: only the latest of bob's
        assert a.presences[n0:] == [("bob@localhost/sx", "available")]
        await a.close()
        await b.close()

    xmpp.run(go())
    assert sb.inbound("urn:xmpp:csi") == []


def test_held_stanzas_compressed(standin, nginx):
    """XEP-0138 on: what was held goes out deflated, in order."""
    from test_compression import HEADER, ZClient, z_sid
    sb = standin()
    ngx = nginx(standin=sb, extra=EXTRA + "xmpp_cm_compression on;")
    z = ZClient(ngx.port)
    z.login(b"alice", b"alicepw")
    z.start_zlib()
    z.send(HEADER)
    z.until(rb"</stream:features>")
    z.bind(b"csi")
    sid = z_sid(sb, "alice")
    cm = sb.session(sid)["cm"]

    def route(payload):
        sb.call("send_route", cm=cm, streamid=sid, payload=payload)

    z.send(INACTIVE.encode())
    time.sleep(0.2)
    route(presence("bob@localhost/b", "b1"))
    route(chatstate("bob@localhost/b", "composing", "cs1"))
    route(presence("bob@localhost/b", "b2"))
    time.sleep(0.4)
    route(chat("bob@localhost/b", "hello", "m1"))
    got = z.until(rb'id="m1"><body>hello</body></message>')
    held = re.findall(rb"<status>(b\d)</status>|id=\"(cs1|m1)\"", got)
    assert [a or b for a, b in held] == [b"cs1", b"b2", b"m1"], got
    route(presence("bob@localhost/b", "b3"))
    time.sleep(0.3)
    z.send(ACTIVE.encode())
    z.until(rb"<status>b3</status></presence>")
