"""XEP-0198 over WebSocket (RFC 7395): the same engine, so the same stream
management as a TCP client: <sm/> in the features after authentication,
acks, and a dropped WebSocket connection resumed by a new one (same
worker), with what the client had not acknowledged and what came during
the gap delivered once, in order."""

import xml.etree.ElementTree as ET

from lib.raw import NS_CLIENT as RNS_CLIENT, q as rq
from lib.ws import NS_BIND, q
from test_websocket import _close_clients, start, ws  # noqa: F401

SM = "urn:xmpp:sm:3"
NS_CLIENT = "jabber:client"


def bodies(c, n):
    got = []
    while len(got) < n:
        m = c.next_element(match=lambda e: e.tag == q(NS_CLIENT, "message"),
                           what="message %d" % (len(got) + 1))
        got.append(m.find(q(NS_CLIENT, "body")).text)
    return got


def test_enable_ack_and_resume_over_websocket(standin, nginx, raw):
    sb = standin()
    ngx = start(nginx, sb)
    c = ws(ngx)
    c.open()
    assert c.auth_plain("alice", "alicepw").tag.endswith("success")
    _, feats = c.open()
    assert feats.find(q(SM, "sm")) is not None, ET.tostring(feats)
    res = c.iq('<bind xmlns="%s"><resource>web</resource></bind>' % NS_BIND,
               "b1")
    assert res.get("type") == "result"

    c.send('<enable xmlns="%s" resume="true"/>' % SM)
    en = c.next_element(match=lambda e: e.tag == q(SM, "enabled"),
                        what="<enabled/>")
    assert en.get("resume") == "true" and en.get("id")
    previd = en.get("id")

    bob = raw(ngx.port)
    bob.login("bob", "bobpw", resource="tcp")

    # the client's stanza is acknowledged once Openfire has it
    c.send('<message xmlns="jabber:client" to="bob@localhost/tcp" '
           'type="chat" id="w1"><body>one</body></message>')
    c.send('<r xmlns="%s"/>' % SM)
    a = c.next_element(match=lambda e: e.tag == q(SM, "a"), what="<a/>")
    assert a.get("h") == "1"
    m = bob.next_element(match=lambda e: e.tag == rq(RNS_CLIENT, "message"))
    assert m.find(rq(RNS_CLIENT, "body")).text == "one"

    # two for alice, received and not acknowledged; the connection drops
    for i in (1, 2):
        bob.send('<message to="alice@localhost/web" type="chat" id="t%d">'
                 '<body>before %d</body></message>' % (i, i))
    assert bodies(c, 2) == ["before 1", "before 2"]
    c.close()

    # one more while alice is away
    bob.send('<message to="alice@localhost/web" type="chat" id="t3">'
             '<body>during</body></message>')

    c2 = ws(ngx)
    c2.open()
    assert c2.auth_plain("alice", "alicepw").tag.endswith("success")
    c2.open()
    c2.send('<resume xmlns="%s" previd="%s" h="0"/>' % (SM, previd))
    r = c2.next_element(match=lambda e: e.tag in (q(SM, "resumed"),
                                                  q(SM, "failed")),
                        what="<resumed/>")
    assert r.tag == q(SM, "resumed"), ET.tostring(r)
    assert r.get("previd") == previd and r.get("h") == "1"
    assert bodies(c2, 3) == ["before 1", "before 2", "during"]

    # the stream goes on: acknowledged all, and a new message flows
    c2.send('<a xmlns="%s" h="3"/>' % SM)
    bob.send('<message to="alice@localhost/web" type="chat" id="t4">'
             '<body>after</body></message>')
    assert bodies(c2, 1) == ["after"]
