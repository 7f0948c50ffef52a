"""Many streams interleaved on one worker.  Idle streams park their
expat parsers and others adopt them; streams that start while no parser
is parked take one, and the next read of a parked stream then re-enters
its root.  Everything must keep working in lockstep."""
import base64

from lib.raw import NS_CLIENT, NS_SASL, q

N = 40


def test_interleaved_logins_and_messages(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb)
    bob = raw(ngx.port)
    bob.login("bob", "bobpw", resource="sink")
    bob.send("<presence/>")

    cs = [raw(ngx.port) for _ in range(N)]
    for c in cs:                      # every stream open and idle
        c.open()
    for c in cs:                      # SASL, one after the other
        c.send('<auth xmlns="%s" mechanism="PLAIN">%s</auth>' % (
            NS_SASL, base64.b64encode(b"\0alice\0alicepw").decode()))
    for c in cs:
        assert c.next_element(5).tag == q(NS_SASL, "success"), c.text
    for c in cs:                      # restarts take parsers at doc start
        c.restart()
    for i, c in enumerate(cs):
        res = c.iq('<bind xmlns="urn:ietf:params:xml:ns:xmpp-bind">'
                   '<resource>c%d</resource></bind>' % i, "b%d" % i)
        assert res.get("type") == "result", c.text
    for rnd in range(3):              # stanzas from all streams, in turns
        for i, c in enumerate(cs):
            c.send('<message to="bob@localhost/sink" id="m%d-%d">'
                   '<body>%d-%d</body></message>' % (i, rnd, i, rnd))
    got = set()
    for _ in range(3 * N):
        m = bob.next_element(10, lambda e: e.tag == q(NS_CLIENT, "message"))
        got.add(m.findtext(q(NS_CLIENT, "body")))
    assert got == {"%d-%d" % (i, r) for i in range(N) for r in range(3)}
    for c in cs:
        assert c.stream_error() is None, c.text


def test_stream_reads_when_no_parser_is_parked(standin, nginx, raw):
    """A's idle stream parked its parser; B's new stream took it and holds
    it mid-stanza; A's next stanza must re-enter its open stream on a
    fresh parser (the synthetic root), not see a nested stream."""
    sb = standin()
    ngx = nginx(standin=sb)
    a = raw(ngx.port)
    a.login("alice", "alicepw", resource="a")     # idle: parser parked
    b = raw(ngx.port)
    b.open()
    b.send('<iq type="get" id="partial"')         # holds the parser
    a.send('<message to="bob@localhost" id="x"><body>still fine</body>'
           '</message>')
    sb.wait(lambda: [r for r in sb.routes_for(a.stream_id)
                     if "still fine" in r], 5, "A's message routed")
    assert a.stream_error() is None, a.text
    b.send(' to="localhost"><query xmlns="jabber:iq:version"/></iq>')
    sb.wait(lambda: [r for r in sb.routes_for(b.stream_id)
                     if 'id="partial"' in r], 5, "B's IQ routed")
