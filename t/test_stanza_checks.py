"""What Openfire trusts a connection manager to check or clean in client
stanzas (docs/openfire-protocol.md, section 8; issue 9 items 6, 10-13): JIDs, stanza
types, <show/>, the stream's xml:lang, the domain in the stream header.

The stand-in misbehaves the way Openfire 4.1.6 does when such a stanza
reaches it through a CM, so every test here fails for the reason a real
deployment would."""
import pytest

from lib.raw import NS_CLIENT, NS_SASL, NS_STREAM, StreamReader, q, tostr

NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_PING = "urn:xmpp:ping"


def login(raw, ngx, user, resource, header=None):
    c = raw(ngx.port)
    if header is None:
        c.login(user, user + "pw", resource=resource)
        return c
    # the same login as RawClient.login, with our own stream header
    c.open(header=header)
    r = c.auth_plain(user, user + "pw")
    assert r.tag == q(NS_SASL, "success"), tostr(r)
    c.readers.append(StreamReader())
    c._consumed = 0
    c.open(header=header)
    res = c.iq('<bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"><resource>'
               '%s</resource></bind>' % resource, "bind1")
    assert res.get("type") == "result", tostr(res)
    return c


def by_id(c, sid, timeout=5):
    return c.next_element(timeout, lambda e: e.get("id") == sid,
                          "stanza with id %s" % sid)


def ping(c, sid):
    """A round trip through Openfire: everything sent before it has been
    handled by the CM (and routed, if it was) once the result is back."""
    r = c.iq('<ping xmlns="%s"/>' % NS_PING, sid, type_="get")
    assert r.get("type") == "result", tostr(r)


def routed(sb, sid):
    return [x for x in sb.inbound(r"^\s*<route\b")
            if 'id="%s"' % sid in x or "id='%s'" % sid in x]


def stanza_error(el):
    err = el.find(q(NS_CLIENT, "error"))
    assert err is not None, tostr(el)
    conds = [c.tag.split("}", 1)[1] for c in err
             if c.tag.startswith("{%s}" % NS_STANZAS)]
    return err.get("type"), conds


@pytest.fixture
def pair(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb)
    alice = login(raw, ngx, "alice", "pc")
    bob = login(raw, ngx, "bob", "phone")
    alice.send("<presence id='a0'/>")
    ping(alice, "a0-ping")
    bob.send("<presence id='b0'/>")
    by_id(alice, "b0")
    by_id(bob, "a0")
    return sb, ngx, alice, bob


MALFORMED = [
    # (stanza, id, the 'to' that comes back as 'from')
    ("<message to='a@b@localhost' id='j1' type='chat'><body>x</body>"
     "</message>", "j1", "a@b@localhost"),
    ("<message to='@localhost' id='j2'><body>x</body></message>", "j2",
     "@localhost"),
    ("<iq to='bob@@localhost' type='get' id='j3'><ping xmlns='urn:xmpp:ping'"
     "/></iq>", "j3", "bob@@localhost"),
    ("<presence to='x@@localhost' type='subscribe' id='j4'/>", "j4",
     "x@@localhost"),
    ("<message to='%s@localhost' id='j5'><body>x</body></message>"
     % ("n" * 1024), "j5", "n" * 1024 + "@localhost"),
    ("<message to='bob@localhost/' id='j6'><body>x</body></message>", "j6",
     "bob@localhost/"),
    ("<message to='bob@' id='j7'><body>x</body></message>", "j7", "bob@"),
    ("<message to='b&lt;b@localhost' id='j8'><body>x</body></message>",
     "j8", "b<b@localhost"),
    ("<message to='bob b@localhost' id='j9'><body>x</body></message>",
     "j9", "bob b@localhost"),
    ("<message to='bob@local_host' id='j10'><body>x</body></message>",
     "j10", "bob@local_host"),
    ("<message to='bob@-localhost' id='j11'><body>x</body></message>",
     "j11", "bob@-localhost"),
    ("<message to='bob@a..b' id='j12'><body>x</body></message>", "j12",
     "bob@a..b"),
    ("<message to='bob@%s.com' id='j13'><body>x</body></message>"
     % ("a" * 64), "j13", "bob@%s.com" % ("a" * 64)),
    ("<message to='bob@[::1' id='j14'><body>x</body></message>", "j14",
     "bob@[::1"),
    ("<message to='bob@[1::2::3]' id='j15'><body>x</body></message>",
     "j15", "bob@[1::2::3]"),
    ("<message to='bob\u00a0x@localhost' id='j16'><body>x</body>"
     "</message>", "j16", "bob\u00a0x@localhost"),
    ("<message to='bob@localhost/a&#x7f;b' id='j17'><body>x</body>"
     "</message>", "j17", "bob@localhost/a\x7fb"),
    ("<message from='@localhost' to='bob@localhost' id='j18'><body>x</body>"
     "</message>", "j18", "bob@localhost"),
    ("<message to='bob@localhost/%s' id='j19'><body>x</body></message>"
     % ("r" * 1024), "j19", "bob@localhost/" + "r" * 1024),
    # the reply keeps the stanza's own namespace declarations
    ("<message xmlns:x='urn:x' to='@localhost' x:a='1' id='j20' "
     "type='chat'><x:y>&lt;&#x41;</x:y><body>x</body></message>", "j20",
     "@localhost"),
    ("<presence to='x@@localhost'\n from = \"alice@localhost/pc\" "
     "id='j21'><show>away</show></presence>", "j21", "x@@localhost"),
]


@pytest.mark.parametrize("stanza,sid,back", MALFORMED,
                         ids=[m[1] for m in MALFORMED])
def test_jid_malformed(pair, stanza, sid, back):
    """A malformed 'to' (or 'from') is answered by the CM with
    jid-malformed (modify), 'to' and 'from' swapped, the children kept;
    nothing goes to Openfire (item 11)."""
    sb, ngx, alice, bob = pair
    alice.send(stanza)
    r = by_id(alice, sid)
    assert r.get("type") == "error", tostr(r)
    assert stanza_error(r) == ("modify", ["jid-malformed"]), tostr(r)
    assert r.tag.split("}")[1] == stanza[1:stanza.index(" ")]
    if back is not None:
        assert r.get("from") == back, tostr(r)
    assert r.get("to") == "alice@localhost/pc", tostr(r)
    if "<body>" in stanza:
        assert r.find(q(NS_CLIENT, "body")).text == "x", tostr(r)
    if sid == "j20":
        assert r.find("{urn:x}y").text == "<A", tostr(r)
        assert r.get("{urn:x}a") == "1", tostr(r)
    ping(alice, "after-" + sid)
    assert routed(sb, sid) == []
    assert routed(sb, "after-" + sid)


def test_jid_malformed_error_dropped(pair):
    """An error stanza with a malformed JID is dropped (never an error
    about an error), and logged."""
    sb, ngx, alice, bob = pair
    alice.send("<message to='a@@localhost' type='error' id='e1'>"
               "<error type='cancel'><item-not-found xmlns='%s'/></error>"
               "</message>" % NS_STANZAS)
    alice.send("<iq to='@localhost' type='error' id='e2'/>")
    ping(alice, "after-e")
    assert [e for e in alice.reader.stanzas if e.get("id") in ("e1", "e2")] \
        == []
    assert routed(sb, "e1") == [] and routed(sb, "e2") == []
    assert len(ngx.log_lines(r"\[info\].*dropped an error <\w+> with a "
                             r"malformed JID")) == 2


VALID = [
    "bob@localhost/r@s/t",          # a resource may hold '@' and '/'
    "bob@localhost/with space",
    "bob@[::1]",
    "bob@[2001:db8::1]/r",
    "bob@127.0.0.1",
    "j\u00fcrgen@localhost",
    "\u00e9l\u00e8ve@b\u00fccher.example/\u00e9",
    "localhost",
    "bob@localhost",
    "%s@localhost/%s" % ("n" * 1023, "r" * 1023),
    "bob@%s.com" % ("a" * 63),
]


@pytest.mark.parametrize("to", VALID)
def test_jid_valid_passes(pair, to):
    """Valid edge cases are routed as they are."""
    sb, ngx, alice, bob = pair
    alice.send("<message to='%s' id='v1'><body>x</body></message>" % to)
    ping(alice, "after-v1")
    assert [e for e in alice.reader.stanzas if e.get("id") == "v1"] == []
    rt = routed(sb, "v1")
    assert len(rt) == 1
    assert 'to="%s"' % to in rt[0]


def test_to_domain_normalised(pair):
    """A 'to' with an upper-case domain and localpart and a trailing dot
    reaches bob: the CM normalises what Openfire's stringprep would have
    (items 6 and 11)."""
    sb, ngx, alice, bob = pair
    alice.send("<message to='BOB@LocalHost./Phone' id='n0' type='chat'>"
               "<body>0</body></message>")
    alice.send("<message to='BOB@LocalHost./phone' id='n1' type='chat'>"
               "<body>1</body></message>")
    alice.send("<message to='Bob@LOCALHOST' id='n2' type='chat'>"
               "<body>2</body></message>")
    m = by_id(bob, "n1")
    assert m.find(q(NS_CLIENT, "body")).text == "1"
    assert m.get("to") == "bob@localhost/phone"
    m = by_id(bob, "n2")
    assert m.find(q(NS_CLIENT, "body")).text == "2"
    # the resourcepart is case-sensitive: 'Phone' is not bob's resource
    assert 'to="bob@localhost/Phone"' in routed(sb, "n0")[0]


def test_stream_header_domain_normalised(standin, nginx, raw):
    """Header to='localhost.' (RFC 7622 3.2) and a U-label for a domain
    configured as an A-label are served (item 6)."""
    sb = standin()
    more = {"\u4f8b\u3048.example": "xn--r8jz45g.example",
            "ma\u00f1ana-\u00f1u.example": "xn--maana-u-5zae.example",
            "\u00fcn\u00ef-\u00e7\u00f6d\u00e9-stra\u00dfe.x":
            "xn--n-d-strae-n1a5fza8e2ezd.x",
            "\U0001f600x.x": "xn--x-iv3s.x",
            "x." + "\u00f1" * 20: "x.xn--idaaaaaaaaaaaaaaaaaaaa"}
    ngx = nginx(standin=sb, domain="localhost xn--bcher-kva.example "
                + " ".join(more.values()))
    for to, served in list(more.items()) + [
            ("localhost.", "localhost"),
            ("LOCALHOST", "localhost"),
            ("b\u00fccher.example", "xn--bcher-kva.example"),
            ("B\u00fcCHER.example.", "xn--bcher-kva.example"),
            ("XN--BCHER-KVA.example", "xn--bcher-kva.example")]:
        c = raw(ngx.port)
        h, f = c.open(to=to)
        assert h.get("from") == served, (to, h)
        assert c.stream_error() is None
        c.close()
    for to in ("localhost..", "b\u00fccher.example.com", "other"):
        c = raw(ngx.port)
        c.send('<?xml version="1.0"?><stream:stream xmlns:stream="%s" '
               'xmlns="jabber:client" to="%s" version="1.0">'
               % (NS_STREAM, to))
        assert c.expect_stream_error() == "host-unknown", to


def test_stream_lang_applied(standin, nginx, raw):
    """The stream's xml:lang goes on every routed stanza without its own
    (RFC 6120 8.1.5, item 10); a stanza's own xml:lang is kept."""
    sb = standin()
    ngx = nginx(standin=sb)
    hdr = ('<?xml version="1.0"?><stream:stream xmlns:stream="%s" '
           'xmlns="jabber:client" to="localhost" version="1.0" '
           "xml:lang='de-CH'>" % NS_STREAM)
    alice = login(raw, ngx, "alice", "pc", header=hdr)
    bob = login(raw, ngx, "bob", "phone")
    alice.send("<message to='bob@localhost/phone' id='l1'><body>a</body>"
               "</message>")
    alice.send("<message to='bob@localhost/phone' id='l2' xml:lang='fr'>"
               "<body>b</body></message>")
    alice.send("<presence id='l3'/>")
    alice.send("<message xmlns='jabber:client' to='bob@localhost/phone' "
               "id='l4'/>")
    ping(alice, "l5")
    m = by_id(bob, "l1")
    assert m.get("{http://www.w3.org/XML/1998/namespace}lang") == "de-CH"
    m = by_id(bob, "l2")
    assert m.get("{http://www.w3.org/XML/1998/namespace}lang") == "fr"
    r1, = routed(sb, "l1")
    assert r1.count("xml:lang") == 1 and 'xml:lang="de-CH"' in r1
    r2, = routed(sb, "l2")
    assert r2.count("xml:lang") == 1 and 'xml:lang="fr"' in r2
    assert 'xml:lang="de-CH"' in routed(sb, "l3")[0]
    assert 'xml:lang="de-CH"' in routed(sb, "l4")[0]
    assert 'xml:lang="de-CH"' in routed(sb, "l5")[0]
    # a stream without xml:lang adds none
    bob.send("<message to='alice@localhost/pc' id='l6'><body>c</body>"
             "</message>")
    by_id(alice, "l6")
    assert "xml:lang" not in routed(sb, "l6")[0]


@pytest.mark.parametrize("show", ["<show/>", "<show></show>",
                                  "<show>bogus</show>", "<show> away</show>",
                                  "<show>AWAY</show>"])
def test_invalid_show_removed(pair, show):
    """An empty or unknown <show/> is removed before routing (item 12):
    forwarded, Openfire stores bare-JID messages offline instead of
    delivering them."""
    sb, ngx, alice, bob = pair
    bob.send("<presence id='p1'><priority>1</priority>%s"
             "<status>s</status></presence>" % show)
    by_id(alice, "p1")
    r, = routed(sb, "p1")
    assert "<show" not in r and "<status>s</status>" in r \
        and "<priority>1</priority>" in r, r
    alice.send("<message to='bob@localhost' id='m1' type='chat'>"
               "<body>hi</body></message>")
    m = by_id(bob, "m1")
    assert m.find(q(NS_CLIENT, "body")).text == "hi"


def test_valid_show_kept(pair):
    sb, ngx, alice, bob = pair
    for i, v in enumerate(("away", "chat", "dnd", "xa")):
        bob.send("<presence id='k%d'><show>%s</show></presence>" % (i, v))
        p = by_id(alice, "k%d" % i)
        assert p.find(q(NS_CLIENT, "show")).text == v
    bob.send("<presence id='k9'><show>away</show><show>dnd</show></presence>")
    r = by_id(bob, "k9")
    assert stanza_error(r) == ("modify", ["bad-request"]), tostr(r)
    assert routed(sb, "k9") == []


BAD_TYPES = [
    "<presence type='bogus' id='t1'/>",
    "<message type='bogus' to='bob@localhost' id='t2'><body>x</body>"
    "</message>",
    "<iq type='bogus' id='t3'><ping xmlns='urn:xmpp:ping'/></iq>",
    "<iq id='t4'><ping xmlns='urn:xmpp:ping'/></iq>",
    "<iq type='' id='t5'><ping xmlns='urn:xmpp:ping'/></iq>",
    "<presence type='Unavailable' id='t6'/>",
]


@pytest.mark.parametrize("stanza", BAD_TYPES,
                         ids=["t%d" % i for i in range(1, 7)])
def test_bad_type(pair, stanza):
    """An unknown stanza type gets bad-request (modify) from the CM and
    nothing goes to Openfire (item 13); the session lives on."""
    sb, ngx, alice, bob = pair
    sid = stanza.split("id='")[1].split("'")[0]
    alice.send(stanza)
    r = by_id(alice, sid)
    assert r.get("type") == "error", tostr(r)
    assert stanza_error(r) == ("modify", ["bad-request"]), tostr(r)
    ping(alice, "after-" + sid)
    assert routed(sb, sid) == []
    assert not alice.stream_ended()
