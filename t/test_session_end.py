"""How sessions end between the CM and Openfire: Openfire's close IQ is
answered, a client that leaves is closed on Openfire at once (so that
bare-JID messages go to the user's other resources), and nothing routed
to a stream the CM is ending is lost without Openfire being told."""
import re

from lib.raw import NS_CLIENT, q, tostr
from lib.util import wait_until


def cm_of(sb, sid):
    return sb.session(sid)["cm"]


def test_openfire_close_iq_answered(standin, nginx, raw):
    """RFC 6120 8.2.3: the <session><close/></session> set gets a result
    (Openfire ignores it)."""
    sb = standin()
    ngx = nginx(standin=sb)
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    sid = c.stream_id
    sb.call("close_session", streamid=sid)
    c.wait_eof(5)
    out = [e["xml"] for e in sb.events() if e["dir"] == "out"
           and "<close/>" in e["xml"] and sid in e["xml"]]
    assert len(out) == 1, out
    iq_id = re.search(r'<iq [^>]*id="([^"]+)"', out[0]).group(1)
    res = wait_until(
        lambda: sb.inbound(r'<iq\b[^>]*\btype="result"[^>]*>|'
                           r'<iq\b[^>]*\btype="result"[^>]*/>'), 5,
        what="a result for the close IQ %s" % iq_id)
    mine = [x for x in res if re.search(r'\bid="%s"' % re.escape(iq_id), x)]
    assert len(mine) == 1, res
    assert 'to="localhost"' in mine[0], mine[0]


def test_bare_jid_messages_reach_the_other_resource(standin, nginx, raw):
    """Two resources of alice; the most recently active one ends its
    stream without unavailable presence.  Openfire (4.1.6) routes bare-JID
    chats to the most recently active available resource, so it must
    learn at once that the stream is gone: all 5 reach the other one."""
    sb = standin()
    ngx = nginx(standin=sb)
    bob = raw(ngx.port)
    bob.login("bob", "bobpw", resource="b")
    stay = raw(ngx.port)
    stay.login("alice", "alicepw", resource="stay")
    stay.send("<presence/>")
    leave = raw(ngx.port)
    leave.login("alice", "alicepw", resource="leave")
    leave.send("<presence/>")
    # the leaving resource is the most recently active one
    r = leave.iq('<ping xmlns="urn:xmpp:ping"/>', "p1", type_="get",
                 to="localhost")
    assert r.get("type") == "result", tostr(r)
    wait_until(lambda: len(sb.sessions(user="alice", available=True)) == 2,
               5, what="both alice resources available")

    leave.send("</stream:stream>")
    leave.wait_eof(5)
    assert leave.stream_error() is None, leave.text

    for i in range(5):
        bob.send('<message to="alice@localhost" type="chat" id="bare%d">'
                 '<body>n%d</body></message>' % (i, i))
    got = []
    for i in range(5):
        m = stay.next_element(
            5, lambda e: e.tag == q(NS_CLIENT, "message"),
            "bare-JID message %d of 5 at the other resource (got %d)"
            % (i + 1, len(got)))
        got.append(m.get("id"))
    assert got == ["bare%d" % i for i in range(5)], got
    assert sb.call("offline", user="alice")["messages"] == []


def test_message_after_stream_error_in_route_returned(standin, nginx, raw):
    """A route carries a stream error and then a message: the client gets
    the error and the end of its stream, nothing after it, and the message
    goes back in <failed/> before the session's <close/>."""
    sb = standin()
    ngx = nginx(standin=sb)
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="r")
    sid = c.stream_id
    sb.call("send_route", cm=cm_of(sb, sid), streamid=sid, escaped=False,
            payload='<stream:error xmlns:stream="http://etherx.jabber.org/'
                    'streams"><conflict xmlns="urn:ietf:params:xml:ns:'
                    'xmpp-streams"/></stream:error>'
                    '<message to="alice@localhost/r" from="bob@localhost/b" '
                    'type="chat" id="after1"><body>after</body></message>')
    assert c.expect_stream_error(5) == "conflict", c.text
    assert "after1" not in c.text, c.text
    failed = wait_until(lambda: sb.inbound(r"<failed>.*after1", sid), 5,
                        what="<failed> for the message after the error")
    closes = wait_until(lambda: sb.close_iqs_for(sid), 5, what="close IQ")
    evs = [e["xml"] for e in sb.events() if e["dir"] == "in"]
    assert evs.index(failed[0]) < evs.index(closes[0]), \
        "close sent before the message was handed back"
    offline = sb.call("offline", user="alice")["messages"]
    assert any("after1" in m for m in offline), offline


def test_message_for_ending_stream_not_written(standin, nginx, raw):
    """A client that does not read is cut (output limit): the stanza that
    overflowed and every one after it in the same route go back to
    Openfire, none is dropped silently."""
    sb = standin()
    ngx = nginx(standin=sb, extra="xmpp_cm_client_output_limit 256k;")
    c = raw(ngx.port, rcvbuf=4096)
    c.login("alice", "alicepw", resource="r")
    sid = c.stream_id
    big = "x" * 100000
    msgs = "".join('<message to="alice@localhost/r" from="bob@localhost/b" '
                   'type="chat" id="big%d"><body>%s</body></message>'
                   % (i, big) for i in range(6))
    sb.call("send_route", cm=cm_of(sb, sid), streamid=sid, escaped=False,
            payload=msgs)
    failed = wait_until(lambda: sb.inbound(r"<failed>", sid), 5,
                        what="<failed> for the overflowing messages")
    wait_until(lambda: sb.close_iqs_for(sid), 5, what="close IQ")
    evs = [e["xml"] for e in sb.events() if e["dir"] == "in"]
    ids = sorted(set(re.findall(r'id="(big\d)"', "".join(
        x for x in evs if "<failed>" in x))))
    # the output limit is passed at the 3rd message: it and all after it
    assert ids == ["big2", "big3", "big4", "big5"], ids
    closes = sb.close_iqs_for(sid)
    assert max(evs.index(x) for x in failed) < evs.index(closes[0])


def test_route_after_client_left_handed_back(standin, nginx, raw):
    """With the default (no close delay) the <close/> goes out as the
    client's stream ends; a message Openfire routed before it processed
    the close comes back in <failed/> like for any closed stream, and the
    id is not taken for a ghost (no second <close/>)."""
    sb = standin()
    ngx = nginx(standin=sb)
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="gone")
    sid = c.stream_id
    cm = cm_of(sb, sid)
    c.send("</stream:stream>")
    c.wait_eof(5)
    wait_until(lambda: sb.close_iqs_for(sid), 5, what="close IQ at once")
    sb.call("send_route", cm=cm, streamid=sid, escaped=False,
            payload='<message to="alice@localhost/gone" from="bob@localhost/'
                    'b" type="chat" id="late2"><body>late</body></message>')
    wait_until(lambda: sb.inbound(r"<failed>.*late2", sid), 5,
               what="<failed> for the late message")
    # a ghost <close/> would be queued right after the <failed/> on the
    # same socket (same write); a login of another client adds a margin
    d = raw(ngx.port)
    d.login("bob", "bobpw", resource="b")
    assert len(sb.close_iqs_for(sid)) == 1, sb.close_iqs_for(sid)
