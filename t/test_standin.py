"""Tests of the Openfire stand-in itself (t/standin/openfire_standin.py).

Raw sockets play the connection manager and replay the exchanges recorded
against a real Openfire 4.1.6 (docs/openfire-protocol.md, section 7);
the server's answers must match those bytes, with only the random parts
(stream ids, Tinder IQ ids, time stamps) left open.  Then the [4.8+]
variants, the control channel, and the edge cases (limits, bad input,
timers)."""
import base64
import codecs
import collections
import hashlib
import hmac
import itertools
import os
import re
import socket
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "standin"))

import control                                   # noqa: E402
from openfire_standin import Splitter, java_hash  # noqa: E402

SECRET = "cmsecret"
CMP = "http://jabber.org/protocol/connectionmanager"
HDR = ('<stream:stream xmlns:stream="http://etherx.jabber.org/streams" '
       'xmlns="jabber:connectionmanager" to="%s" version="1.0">')
CONFIG_41 = (
    '<iq type="set" id="{IQID}"><configuration xmlns="http://jabber.org/'
    'protocol/connectionmanager"><starttls xmlns="urn:ietf:params:xml:ns:'
    'xmpp-tls"/><mechanisms xmlns="urn:ietf:params:xml:ns:xmpp-sasl">'
    '<mechanism>PLAIN</mechanism><mechanism>SCRAM-SHA-1</mechanism>'
    '<mechanism>EXTERNAL</mechanism><mechanism>CRAM-MD5</mechanism>'
    '<mechanism>DIGEST-MD5</mechanism></mechanisms><compression xmlns="'
    'http://jabber.org/features/compress"><method>zlib</method>'
    '</compression><register xmlns="http://jabber.org/features/'
    'iq-register"/></configuration></iq>')
TRANSCRIPT_MECHS = "PLAIN,SCRAM-SHA-1,EXTERNAL,CRAM-MD5,DIGEST-MD5"
PLACEHOLDERS = {"{ID}": "[0-9a-z]{1,10}", "{IQID}": r"\d{1,3}-\d+",
                "{STAMP}": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z",
                "{B64}": "[A-Za-z0-9+/=]+", "{UUID}": "[0-9a-f-]{36}"}
_names = itertools.count(1)


def tx(template):
    """Transcript template -> regex: literal text, placeholders open."""
    parts = re.split("(%s)" % "|".join(re.escape(p) for p in PLACEHOLDERS),
                     template)
    return "".join(PLACEHOLDERS.get(p, re.escape(p)) for p in parts)


def b64(s):
    return base64.b64encode(s.encode()).decode()


def plain(user, pw):
    return b64("\0%s\0%s" % (user, pw))


# ------------------------------------------------------------ raw CM socket
class CM:
    """A raw connection-manager socket that reads the server's output as
    top-level fragments (cut by the stand-in's own splitter)."""

    def __init__(self, port, to=None):
        self.sock = socket.create_connection(("127.0.0.1", port), 5)
        self.splitter = Splitter(limit=1 << 30)
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.frags = collections.deque()
        self.spaces = 0          # whitespace (heartbeats) seen
        self.eof = False
        self.to = to
        self.name = to.split("/")[0] if to else None
        self.sid = None

    def send(self, text):
        self.sock.sendall(text.encode("utf-8") if isinstance(text, str)
                          else text)

    def _fill(self, timeout):
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            return
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return
        frags, err = self.splitter.feed(self.decoder.decode(data))
        assert err is None, err
        for kind, f in frags:
            if kind == "ws":
                self.spaces += len(f)
            else:
                self.frags.append(f)

    def frag(self, timeout=3):
        deadline = time.monotonic() + timeout
        while not self.frags:
            left = deadline - time.monotonic()
            if self.eof or left <= 0:
                raise AssertionError("no fragment (eof=%s)" % self.eof)
            self._fill(left)
        return self.frags.popleft()

    def expect(self, *templates, timeout=3):
        got = []
        for t in templates:
            f = self.frag(timeout)
            got.append(f)
            assert re.fullmatch(tx(t), f), "\nwant %s\ngot  %s" % (t, f)
        return got[0] if len(got) == 1 else got

    def quiet(self, t=0.2):
        """Nothing (but whitespace) arrives within t seconds."""
        deadline = time.monotonic() + t
        while not self.frags and not self.eof and \
                time.monotonic() < deadline:
            self._fill(deadline - time.monotonic())
        assert not self.frags, list(self.frags)

    def drain(self, t=0.2):
        """Read for t seconds; return and forget every fragment."""
        deadline = time.monotonic() + t
        while not self.eof and time.monotonic() < deadline:
            self._fill(deadline - time.monotonic())
        out = list(self.frags)
        self.frags.clear()
        return out

    def expect_eof(self, timeout=3):
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self._fill(deadline - time.monotonic())
        assert self.eof, "socket still open"
        assert not self.frags, list(self.frags)

    # protocol steps
    def open(self, to=None):
        self.to = to or self.to
        self.name = self.to.split("/")[0]
        self.send(HDR % self.to)
        h = self.frag()
        m = re.fullmatch(tx(
            "<?xml version='1.0' encoding='UTF-8'?><stream:stream xmlns:"
            'stream="http://etherx.jabber.org/streams" xmlns="jabber:'
            'connectionmanager" from="%s" id="{ID}" version="1.0" >'
            % self.to).replace("[0-9a-z]{1,10}", "([0-9a-z]{1,10})"), h)
        assert m, h
        self.sid = m.group(1)
        self.expect('<stream:features><starttls xmlns="urn:ietf:params:xml:'
                    'ns:xmpp-tls"></starttls></stream:features>')
        return self

    def digest(self, secret=SECRET):
        return hashlib.sha1((self.sid + secret).encode()).hexdigest()

    def handshake(self):
        self.send("<handshake>%s</handshake>" % self.digest())
        self.expect("<handshake></handshake>")
        self.config = self.frag()
        assert self.config.startswith('<iq type="set" id="'), self.config
        return self

    def create(self, sid, host=True):
        h = '<host name="127.0.0.1" address="127.0.0.1"/>' if host else ""
        self.send('<iq type="set" id="c-%s" from="%s" to="localhost">'
                  '<session xmlns="%s" id="%s"><create>%s</create></session>'
                  '</iq>' % (sid, self.name, CMP, sid, h))

    def route(self, sid, payload):
        self.send('<route from="%s" to="localhost" streamid="%s">%s</route>'
                  % (self.name, sid, payload))

    def close_sess(self, sid, iqid):
        self.send('<iq type="set" id="%s"><session xmlns="%s" id="%s">'
                  '<close/></session></iq>' % (iqid, CMP, sid))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def sb():
    proc, port, cport = control.start_standin(
        heartbeat=0, rosters="empty",
        users="alice:alicepw,bob:bobpw,admin:admin")
    ctl = control.StandinControl("127.0.0.1", cport)
    ctl.port_cm = port
    ctl.proc = proc
    yield ctl
    ctl.close()
    assert control.stop(proc) == 0


@pytest.fixture
def cms(sb):
    """Factory for raw CM sockets with a fresh CM name per test; closes
    them afterwards and restores the stand-in's settings."""
    made = []
    base = "cmt%d.localhost" % next(_names)

    def factory(res="s1", name=None, open=True, handshake=True):
        c = CM(sb.port_cm, "%s/%s" % (name or base, res))
        made.append(c)
        if open:
            c.open()
            if handshake:
                c.handshake()
        return c
    factory.name = base
    yield factory
    for c in made:
        c.close()
    for k, v in (("version", "4.1"), ("rosters", "empty"),
                 ("mechanisms", "PLAIN,SCRAM-SHA-1,EXTERNAL,"
                                "SCRAM-SHA-1-PLUS"),
                 ("socket_order", "registration"), ("heartbeat", 0),
                 ("idle", 300), ("accept", True), ("read_paused", False),
                 ("secret", SECRET), ("iq_auth", False),
                 ("register", True), ("blocked_ips", [])):
        sb.call("set", key=k, value=v)
    # closing the sockets drops the test's sessions (last socket rule)
    sb.wait_for(lambda: not [s for s in sb.state()["sessions"]
                             if s["cm"].startswith("cmt")], 3)


def login(c, sid, user, pw, res):
    """create + PLAIN + bind on CM socket c (4.1 inline replies)."""
    c.create(sid)
    c.expect('<iq type="result" id="c-%s" from="localhost" to="%s"><session '
             'xmlns="%s" id="%s"><create><host name="127.0.0.1" address='
             '"127.0.0.1"/></create></session></iq>' % (sid, c.name, CMP, sid))
    c.route(sid, '<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism='
                 '"PLAIN">%s</auth>' % plain(user, pw))
    c.expect('<route from="localhost" to="%s" streamid="%s"><success xmlns='
             '"urn:ietf:params:xml:ns:xmpp-sasl"/></route>' % (c.name, sid))
    c.route(sid, '<iq xmlns="jabber:client" type="set" id="b-%s"><bind xmlns='
                 '"urn:ietf:params:xml:ns:xmpp-bind"><resource>%s</resource>'
                 '</bind></iq>' % (sid, res))
    c.expect('<route streamid="%s" from="localhost" to="%s"><iq type="result"'
             ' id="b-%s" to="localhost/%s"><bind xmlns="urn:ietf:params:xml:'
             'ns:xmpp-bind"><jid>%s@localhost/%s</jid></bind></iq></route>'
             % (sid, c.name, sid, sid, user, res))


# ------------------------------------------------------------ stream open
def test_header_handshake_and_configuration(sb, cms):
    sb.call("set", key="mechanisms", value=TRANSCRIPT_MECHS)
    c = cms(open=False)
    c.open()                 # header + features exactly as in row 1
    assert re.fullmatch("[0-9a-z]{1,10}", c.sid)
    c.send("<handshake>%s</handshake>" % c.digest())
    _, cfg = c.expect("<handshake></handshake>", CONFIG_41)
    c.send('<iq type="result" id="%s"/>' % re.search(r'id="([^"]+)"',
                                                     cfg).group(1))
    c.quiet()
    st = [s for s in sb.state()["sockets"] if s["cm"] == cms.name]
    assert [(s["resource"], s["authenticated"]) for s in st] == [("s1", True)]


def test_handshake_digest_is_sha1_hex_case_insensitive(sb, cms):
    c = cms(handshake=False)
    d = c.digest()
    assert d == hashlib.sha1((c.sid + "cmsecret").encode()).hexdigest()
    c.send("<handshake> %s </handshake>" % d.upper())
    c.expect("<handshake></handshake>")
    cfg = c.frag()
    assert "<mechanism>PLAIN</mechanism><mechanism>SCRAM-SHA-1</mechanism>" \
           "<mechanism>EXTERNAL</mechanism><mechanism>SCRAM-SHA-1-PLUS" \
           "</mechanism>" in cfg, cfg


def test_configuration_options(sb, cms):
    sb.call("set", key="iq_auth", value=True)
    sb.call("set", key="register", value=False)
    sb.call("set", key="mechanisms", value=["SCRAM-SHA-1"])
    c = cms()
    assert c.config.endswith(
        '<mechanisms xmlns="urn:ietf:params:xml:ns:xmpp-sasl"><mechanism>'
        'SCRAM-SHA-1</mechanism></mechanisms><compression xmlns="http://'
        'jabber.org/features/compress"><method>zlib</method></compression>'
        '<auth xmlns="http://jabber.org/features/iq-auth"/></configuration>'
        '</iq>'), c.config


def test_wrong_secret(sb, cms):
    c = cms(handshake=False)
    c.send("<handshake>%s</handshake>" % c.digest("wrong"))
    c.expect('<stream:error xmlns:stream="http://etherx.jabber.org/streams">'
             '<not-authorized xmlns="urn:ietf:params:xml:ns:xmpp-streams"/>'
             '</stream:error>')
    c.expect_eof()          # no </stream:stream> on 4.1.6
    # the same address works again at once (row: same-name-after-bad)
    cms().quiet()


def test_wrong_secret_48_ends_stream(sb, cms):
    sb.call("set", key="version", value="4.8")
    c = cms(open=False)
    c.send(HDR % c.to)
    h = c.expect('<?xml version="1.0" encoding="UTF-8"?><stream:stream '
                 'xmlns:stream="http://etherx.jabber.org/streams" xmlns='
                 '"jabber:connectionmanager" version="1.0" from="%s" '
                 'id="{ID}">' % c.to, "<stream:features/>")[0]
    c.sid = re.search(r'id="(\w+)"', h).group(1)
    c.send("<handshake>%s</handshake>" % c.digest("wrong"))
    c.expect('<stream:error xmlns:stream="http://etherx.jabber.org/streams">'
             '<not-authorized xmlns="urn:ietf:params:xml:ns:xmpp-streams"/>'
             '</stream:error>', "</stream:stream>")
    c.expect_eof()


def test_open_without_to(sb, cms):
    c = cms(open=False)
    c.send('<stream:stream xmlns:stream="http://etherx.jabber.org/streams" '
           'xmlns="jabber:connectionmanager" version="1.0">')
    c.expect("<?xml version='1.0' encoding='UTF-8'?><stream:stream xmlns:"
             'stream="http://etherx.jabber.org/streams" xmlns="jabber:'
             'connectionmanager" from="null" version="1.0">',
             '<stream:error xmlns:stream="http://etherx.jabber.org/streams">'
             '<bad-format xmlns="urn:ietf:params:xml:ns:xmpp-streams"/>'
             '</stream:error>')
    c.expect_eof()
    # 4.8+: a header without id (and no from), then a silent close
    sb.call("set", key="version", value="4.8")
    c = cms(open=False)
    c.send('<stream:stream xmlns:stream="http://etherx.jabber.org/streams" '
           'xmlns="jabber:connectionmanager" version="1.0">')
    c.expect('<?xml version="1.0" encoding="UTF-8"?><stream:stream xmlns:'
             'stream="http://etherx.jabber.org/streams" xmlns="jabber:'
             'connectionmanager" version="1.0">')
    c.expect_eof()


def test_wrong_default_namespace(sb, cms):
    c = cms(open=False)
    c.send('<stream:stream xmlns:stream="http://etherx.jabber.org/streams" '
           'xmlns="jabber:client" to="%s/s1" version="1.0">' % cms.name)
    c.expect("<?xml version='1.0' encoding='UTF-8'?><stream:stream from=\""
             '%s/s1" id="{ID}" xmlns="jabber:client" xmlns:stream="http://'
             'etherx.jabber.org/streams" version="1.0">' % cms.name,
             '<stream:error xmlns:stream="http://etherx.jabber.org/streams">'
             '<invalid-namespace xmlns="urn:ietf:params:xml:ns:xmpp-streams"'
             '/></stream:error>')
    c.expect_eof()


def test_xml_declaration_single_quotes_and_split_writes(sb, cms):
    """The header may follow <?xml?>, use single quotes, and arrive one
    byte at a time."""
    c = cms(open=False)
    data = ("<?xml version='1.0'?><stream:stream xmlns:stream='http://"
            "etherx.jabber.org/streams' xmlns='jabber:connectionmanager' "
            "to='%s/s1' version='1.0'>" % cms.name).encode()
    for i in range(len(data)):
        c.send(data[i:i + 1])
    h = c.frag()
    assert 'from="%s/s1"' % cms.name in h, h
    c.sid = re.search(r'id="(\w+)"', h).group(1)
    c.frag()
    hs = ("<handshake>%s</handshake>" % c.digest()).encode()
    for i in range(0, len(hs), 3):
        c.send(hs[i:i + 3])
    c.expect("<handshake></handshake>")


def test_registered_before_handshake_and_duplicate_address(sb, cms):
    """Row 7: registered at stream open; row 6: a second socket with the
    same address replaces the first, which gets no replies any more."""
    a = cms(handshake=False)
    st = {s["id"]: s for s in sb.state()["sockets"] if s["cm"] == cms.name}
    assert [s["registered"] for s in st.values()] == [True]
    a.send("<handshake>%s</handshake>" % a.digest())
    a.expect("<handshake></handshake>")
    a.frag()
    b = cms()                                   # same name/resource
    regs = [s["registered"] for s in sb.state()["sockets"]
            if s["cm"] == cms.name]
    assert sorted(regs) == [False, True]
    a.create("r1x")                            # processed, answered on b
    b.expect('<iq type="result" id="c-r1x" from="localhost" to="%s">'
             '<session xmlns="%s" id="r1x"><create><host name="127.0.0.1" '
             'address="127.0.0.1"/></create></session></iq>'
             % (cms.name, CMP))
    a.quiet()


# ------------------------------------------------------------ before handshake
def test_route_and_iq_before_handshake(sb, cms):
    c = cms(handshake=False)
    c.send('<route from="%s" to="localhost" streamid="x1" id="r0"><message '
           'xmlns="jabber:client" to="bob@localhost"><body>x</body></message>'
           '</route>' % cms.name)
    c.expect('<route streamid="x1" id="r0" to="%s" from="localhost" type='
             '"error"><error code="401" type="auth"><not-authorized xmlns="'
             'urn:ietf:params:xml:ns:xmpp-stanzas"/></error></route>'
             % cms.name)
    c.send('<iq type="set" id="i0"><session xmlns="%s" id="r1z"><create/>'
           '</session></iq>' % CMP)
    c.expect('<iq type="error" id="i0"><session xmlns="%s" id="r1z"><create/>'
             '</session><error code="401" type="auth"><not-authorized xmlns='
             '"urn:ietf:params:xml:ns:xmpp-stanzas"/></error></iq>' % CMP)


# ------------------------------------------------------------ session IQs
def test_session_iqs(sb, cms):
    c = cms()
    n = cms.name
    c.create("r1a")
    c.expect('<iq type="result" id="c-r1a" from="localhost" to="%s"><session'
             ' xmlns="%s" id="r1a"><create><host name="127.0.0.1" address='
             '"127.0.0.1"/></create></session></iq>' % (n, CMP))
    c.send('<iq type="set" id="c-r1b" from="%s" to="localhost"><session '
           'xmlns="%s" id="r1b"><create></create></session></iq>' % (n, CMP))
    c.expect('<iq type="result" id="c-r1b" from="localhost" to="%s"><session'
             ' xmlns="%s" id="r1b"><create/></session></iq>' % (n, CMP))
    c.create("r1a")                       # existing id: replaced, result
    c.expect('<iq type="result" id="c-r1a" from="localhost" to="%s"><session'
             ' xmlns="%s" id="r1a"><create><host name="127.0.0.1" address='
             '"127.0.0.1"/></create></session></iq>' % (n, CMP))
    c.close_sess("r1b", "cl1")
    c.expect('<iq type="result" id="cl1"><session xmlns="%s" id="r1b">'
             '<close/></session></iq>' % CMP)
    c.close_sess("r1nosuch", "cl2")
    c.expect('<iq type="error" id="cl2"><session xmlns="%s" id="r1nosuch">'
             '<close/></session><error code="404" type="cancel"><item-not-'
             'found xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></error></iq>'
             % CMP)
    steps = [
        ('<iq type="set" id="nid"><session xmlns="%s"><create/></session></iq>',
         '<iq type="error" id="nid"><session xmlns="%s"><create/></session>'
         '<error code="400" type="modify"><bad-request xmlns="urn:ietf:params'
         ':xml:ns:xmpp-stanzas"/><id-required xmlns="http://jabber.org/'
         'protocol/connectionmanager#errors"/></error></iq>'),
        ('<iq type="get" id="g1"><session xmlns="%s" id="r1a"/></iq>',
         '<iq type="error" id="g1"><session xmlns="%s" id="r1a"/><error code='
         '"400" type="modify"><bad-request xmlns="urn:ietf:params:xml:ns:'
         'xmpp-stanzas"/></error></iq>'),
        ('<iq type="set" id="u1"><session xmlns="%s" id="r1a"><frobnicate/>'
         '</session></iq>',
         '<iq type="error" id="u1"><session xmlns="%s" id="r1a"><frobnicate/>'
         '</session><error code="400" type="modify"><bad-request xmlns="urn:'
         'ietf:params:xml:ns:xmpp-stanzas"/></error></iq>'),
        ('<iq type="set" id="u2"><other xmlns="urn:x" id="r1a"/></iq>',
         '<iq type="error" id="u2"><other xmlns="urn:x" id="r1a"/><error code='
         '"400" type="modify"><bad-request xmlns="urn:ietf:params:xml:ns:'
         'xmpp-stanzas"/></error></iq>'),
        ('<iq type="set" id="f0"><session xmlns="%s" id="r1a"><failed/>'
         '</session></iq>',
         '<iq type="error" id="f0"><session xmlns="%s" id="r1a"><failed/>'
         '</session><error code="400" type="modify"><bad-request xmlns="urn:'
         'ietf:params:xml:ns:xmpp-stanzas"/><invalid-payload xmlns="http://'
         'jabber.org/protocol/connectionmanager#errors"/></error></iq>'),
        ('<iq type="set" id="f1"><session xmlns="%s" id="r1a"><failed>'
         '<presence xmlns="jabber:client"/></failed></session></iq>',
         '<iq type="error" id="f1"><session xmlns="%s" id="r1a"><failed>'
         '<presence xmlns=""/></failed></session><error code="400" type="'
         'modify"><bad-request xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>'
         '<unknown-stanza xmlns="http://jabber.org/protocol/'
         'connectionmanager#errors"/></error></iq>'),
    ]
    for send, want in steps:
        c.send(send.replace("%s", CMP))
        c.expect(want.replace("%s", CMP))
    # IQ errors and results from the CM are ignored
    c.send('<iq type="error" id="e1"><session xmlns="%s" id="r1a"/><error '
           'type="cancel"><item-not-found xmlns="urn:ietf:params:xml:ns:'
           'xmpp-stanzas"/></error></iq><iq type="result" id="x"/>' % CMP)
    c.quiet()
    c.close_sess("r1a", "cl3")
    c.expect('<iq type="result" id="cl3"><session xmlns="%s" id="r1a">'
             '<close/></session></iq>' % CMP)


def test_create_blocked_ip_not_allowed(sb, cms):
    sb.call("set", key="blocked_ips", value=["127.0.0.1"])
    c = cms()
    c.create("rb1")
    c.expect('<iq type="error" id="c-rb1" from="localhost" to="%s"><session '
             'xmlns="%s" id="rb1"><create><host name="127.0.0.1" address='
             '"127.0.0.1"/></create></session><error code="405" type="cancel">'
             '<not-allowed xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>'
             '</error></iq>' % (cms.name, CMP))


# ------------------------------------------------------------ routes
def test_routes_unknown_abort_foo_empty(sb, cms):
    c = cms()
    n = cms.name
    c.send('<route from="%s" to="localhost" streamid="r1nosuch" id="r1">'
           '<message xmlns="jabber:client" to="bob@localhost"><body>x</body>'
           '</message></route>' % n)
    c.expect('<route streamid="r1nosuch" id="r1" from="localhost" to="%s" '
             'type="error"><error code="404" type="cancel"><item-not-found '
             'xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></error></route>'
             % n)
    c.create("r1c")
    c.frag()
    for payload in ('<abort xmlns="urn:ietf:params:xml:ns:xmpp-sasl"/>',
                    '<foo xmlns="urn:x"/>'):
        c.route("r1c", payload)
        c.expect('<route streamid="r1c" from="localhost" to="%s" type="error">'
                 '<error code="400" type="modify"><bad-request xmlns="urn:ietf:'
                 'params:xml:ns:xmpp-stanzas"/><unknown-stanza xmlns="http://'
                 'jabber.org/protocol/connectionmanager#errors"/></error>'
                 '</route>' % n)
    c.route("r1c", "")                      # empty route: NPE, socket closed
    c.expect_eof()


def test_route_without_streamid_closes_socket(sb, cms):
    c = cms()
    c.send('<route from="%s" to="localhost" id="r2"><message xmlns="jabber:'
           'client" to="bob@localhost"><body>x</body></message></route>'
           % cms.name)
    c.expect_eof()


@pytest.mark.parametrize("stanza", [
    '<message xmlns="jabber:connectionmanager" to="bob@localhost" id="tm">'
    '<body>x</body></message>',
    "<presence/>", '<foo xmlns="urn:x"/>', "</stream:stream>",
    '<stream:error><internal-server-error xmlns="urn:ietf:params:xml:ns:'
    'xmpp-streams"/></stream:error>'])
def test_toplevel_stanza_or_stream_end_closes_silently(sb, cms, stanza):
    c = cms()
    c.send(stanza)
    c.expect_eof()


def test_malformed_and_control_chars_internal_server_error(sb, cms):
    for bad in ('<iq type="set" id="a"><x></y></iq>', "<a>\x01</a>",
                b"<a>\xff\xfe</a>", "junk"):
        c = cms()
        c.send(bad)
        c.expect('<stream:error xmlns:stream="http://etherx.jabber.org/'
                 'streams"><internal-server-error xmlns="urn:ietf:params:xml:'
                 'ns:xmpp-streams"/></stream:error>', "</stream:stream>")
        c.expect_eof()


def test_fragment_size_limit(sb, cms):
    c = cms()
    c.create("rbig")
    c.frag()
    # just below the limit (whole route fragment = 1,048,576 chars): fine
    head = '<route from="%s" to="localhost" streamid="nosuch">' \
        '<message xmlns="jabber:client" to="x@localhost"><body>' % cms.name
    tail = "</body></message></route>"
    body = "a" * (1048576 - len(head) - len(tail))
    c.send(head + body + tail)
    assert 'streamid="nosuch"' in c.frag(5)
    c.send(head + body + "a" + tail)
    c.expect('<stream:error xmlns:stream="http://etherx.jabber.org/streams">'
             '<policy-violation xmlns="urn:ietf:params:xml:ns:xmpp-streams"/>'
             '<text xmlns="urn:ietf:params:xml:ns:xmpp-streams">Maximum '
             'stanza length exceeded</text></stream:error>',
             "</stream:stream>", timeout=5)
    c.expect_eof()


# ------------------------------------------------------------ SASL and bind
def test_sasl_plain_failures_and_successes(sb, cms):
    c = cms()
    n = cms.name
    auth = ('<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism='
            '"PLAIN">%s</auth>')
    fail = ('<route from="localhost" to="%s" streamid="%%s"><failure xmlns='
            '"urn:ietf:params:xml:ns:xmpp-sasl"><%%s/></failure></route>' % n)
    succ = ('<route from="localhost" to="%s" streamid="%%s"><success xmlns='
            '"urn:ietf:params:xml:ns:xmpp-sasl"/></route>' % n)
    c.create("r1f")
    c.frag()
    for i in range(3):
        c.route("r1f", auth % "AGFsaWNlAG5vcGU=")
        c.expect(fail % ("r1f", "not-authorized"))
    # the third failure closes the session (close IQ) ...
    c.expect('<iq type="set" id="{IQID}" from="localhost" to="%s"><session '
             'xmlns="%s" id="r1f"><close/></session></iq>' % (n, CMP))
    # ... but it stays registered: a correct auth still succeeds (row 22)
    c.route("r1f", auth % "AGFsaWNlAGFsaWNlcHc=")
    c.expect(succ % "r1f")
    c.create("r1m")
    c.frag()
    c.route("r1m", '<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism='
                   '"X-NOPE">AAAA</auth>')
    c.expect(fail % ("r1m", "invalid-mechanism"))
    c.route("r1m", auth % "!!!notbase64")
    c.expect(fail % ("r1m", "incorrect-encoding"))
    # PLAIN without initial response: empty challenge, then <response>
    c.create("r1n")
    c.frag()
    c.route("r1n", '<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism='
                   '"PLAIN"/>')
    c.expect('<route from="localhost" to="%s" streamid="r1n"><challenge '
             'xmlns="urn:ietf:params:xml:ns:xmpp-sasl"/></route>' % n)
    c.route("r1n", '<response xmlns="urn:ietf:params:xml:ns:xmpp-sasl">'
                   'AGJvYgBib2Jwdw==</response>')
    c.expect(succ % "r1n")
    # EXTERNAL is advertised (the CM must filter it) but cannot succeed
    c.create("r1e")
    c.frag()
    c.route("r1e", '<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism='
                   '"EXTERNAL">=</auth>')
    c.expect(fail % ("r1e", "not-authorized"))
    for sid, iqid in (("r1f", "clf"), ("r1m", "clm"), ("r1n", "cln"),
                      ("r1e", "cle")):
        c.close_sess(sid, iqid)
        c.expect('<iq type="result" id="%s"><session xmlns="%s" id="%s">'
                 '<close/></session></iq>' % (iqid, CMP, sid))


def scram_exchange(c, sid, user, pw, expect_ok=True):
    """Client side of SCRAM-SHA-1 (RFC 5802) over routes; returns the
    server's final payload (success v=... verified)."""
    n = c.name
    cnonce = "fyko+d2lbbFgONRv9qkxdawL"
    bare = "n=%s,r=%s" % (user, cnonce)
    c.route(sid, '<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism='
                 '"SCRAM-SHA-1">%s</auth>' % b64("n,," + bare))
    ch = c.expect('<route from="localhost" to="%s" streamid="%s"><challenge '
                  'xmlns="urn:ietf:params:xml:ns:xmpp-sasl">{B64}</challenge>'
                  '</route>' % (n, sid))
    server_first = base64.b64decode(re.search(r">([^<]+)</challenge",
                                              ch).group(1)).decode()
    attrs = dict(a.split("=", 1) for a in server_first.split(","))
    assert attrs["r"].startswith(cnonce) and attrs["i"] == "4096"
    salt = base64.b64decode(attrs["s"])
    salted = hashlib.pbkdf2_hmac("sha1", pw.encode(), salt, 4096)
    ckey = hmac.new(salted, b"Client Key", "sha1").digest()
    final_wo = "c=biws,r=%s" % attrs["r"]
    auth_msg = ",".join((bare, server_first, final_wo)).encode()
    sig = hmac.new(hashlib.sha1(ckey).digest(), auth_msg, "sha1").digest()
    proof = bytes(a ^ b for a, b in zip(ckey, sig))
    c.route(sid, '<response xmlns="urn:ietf:params:xml:ns:xmpp-sasl">%s'
                 '</response>' % b64(final_wo + ",p=" +
                                     base64.b64encode(proof).decode()))
    if not expect_ok:
        c.expect('<route from="localhost" to="%s" streamid="%s"><failure '
                 'xmlns="urn:ietf:params:xml:ns:xmpp-sasl"><not-authorized/>'
                 '</failure></route>' % (n, sid))
        return None
    ok = c.expect('<route from="localhost" to="%s" streamid="%s"><success '
                  'xmlns="urn:ietf:params:xml:ns:xmpp-sasl">{B64}</success>'
                  '</route>' % (n, sid))
    v = base64.b64decode(re.search(r">([^<]+)</success", ok).group(1))
    skey = hmac.new(salted, b"Server Key", "sha1").digest()
    assert v == b"v=" + base64.b64encode(
        hmac.new(skey, auth_msg, "sha1").digest())
    return v


def test_sasl_scram_sha1(sb, cms):
    c = cms()
    c.create("rs1")
    c.frag()
    scram_exchange(c, "rs1", "bob", "bobpw")
    c.create("rs2")
    c.frag()
    scram_exchange(c, "rs2", "bob", "wrong", expect_ok=False)
    st = {s["streamid"]: s for s in sb.state()["sessions"]
          if s["cm"] == cms.name}
    assert st["rs1"]["authenticated"] and st["rs1"]["user"] == "bob"
    assert not st["rs2"]["authenticated"]


def test_bind_preauth_iq_session_roster_ping_unknown(sb, cms):
    c = cms()
    n = cms.name
    c.create("r1s")
    c.frag()
    c.route("r1s", '<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism='
                   '"PLAIN">AGFsaWNlAGFsaWNlcHc=</auth>')
    c.frag()
    pre = '<route streamid="r1s" from="localhost" to="%s">%%s</route>' % n
    c.route("r1s", '<iq xmlns="jabber:client" type="get" id="early" to="'
                   'localhost"><ping xmlns="urn:xmpp:ping"/></iq>')
    c.expect(pre % '<iq type="error" id="early" from="localhost" to="'
             'localhost/r1s"><ping xmlns="urn:xmpp:ping"/><error code="401" '
             'type="auth"><not-authorized xmlns="urn:ietf:params:xml:ns:xmpp-'
             'stanzas"/></error></iq>')
    c.route("r1s", '<iq xmlns="jabber:client" type="set" id="bind1"><bind '
                   'xmlns="urn:ietf:params:xml:ns:xmpp-bind"><resource>cmpr1'
                   '</resource></bind></iq>')
    c.expect(pre % '<iq type="result" id="bind1" to="localhost/r1s"><bind '
             'xmlns="urn:ietf:params:xml:ns:xmpp-bind"><jid>alice@localhost/'
             'cmpr1</jid></bind></iq>')
    for send, want in (
        ('<iq xmlns="jabber:client" type="set" id="sess1"><session xmlns="'
         'urn:ietf:params:xml:ns:xmpp-session"/></iq>',
         '<iq type="result" id="sess1" to="alice@localhost/cmpr1"/>'),
        ('<iq xmlns="jabber:client" type="get" id="ros1"><query xmlns="'
         'jabber:iq:roster"/></iq>',
         '<iq type="result" id="ros1" to="alice@localhost/cmpr1"><query '
         'xmlns="jabber:iq:roster"/></iq>'),
        ('<iq xmlns="jabber:client" type="get" id="ping1" to="localhost">'
         '<ping xmlns="urn:xmpp:ping"/></iq>',
         '<iq type="result" id="ping1" from="localhost" to="alice@localhost/'
         'cmpr1"/>'),
        ('<iq xmlns="jabber:client" type="get" id="unk1" to="localhost">'
         '<query xmlns="urn:x:nope"/></iq>',
         '<iq type="error" id="unk1" from="localhost" to="alice@localhost/'
         'cmpr1"><query xmlns="urn:x:nope"/><error code="501" type="cancel">'
         '<feature-not-implemented xmlns="urn:ietf:params:xml:ns:xmpp-'
         'stanzas"/></error></iq>')):
        c.route("r1s", send)
        c.expect(pre % want)
    # bind without a resource: resource = stream id (row 23)
    c.create("r1r")
    c.frag()
    c.route("r1r", '<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism='
                   '"PLAIN">AGJvYgBib2Jwdw==</auth>')
    c.frag()
    c.route("r1r", '<iq xmlns="jabber:client" type="set" id="bind2"><bind '
                   'xmlns="urn:ietf:params:xml:ns:xmpp-bind"/></iq>')
    c.expect('<route streamid="r1r" from="localhost" to="%s"><iq type="result"'
             ' id="bind2" to="localhost/r1r"><bind xmlns="urn:ietf:params:xml:'
             'ns:xmpp-bind"><jid>bob@localhost/r1r</jid></bind></iq></route>'
             % n)
    st = {s["streamid"]: s for s in sb.state()["sessions"] if s["cm"] == n}
    assert st["r1s"]["jid"] == "alice@localhost/cmpr1"
    assert st["r1r"]["jid"] == "bob@localhost/r1r"


def test_message_presence_before_bind_raw_stream_error(sb, cms):
    c = cms()
    c.create("rpb")
    c.frag()
    c.route("rpb", '<message xmlns="jabber:client" to="bob@localhost"><body>'
                   'x</body></message>')
    c.expect('<route from="localhost" to="%s" streamid="rpb"><stream:error '
             'xmlns:stream="http://etherx.jabber.org/streams"><not-authorized'
             ' xmlns="urn:ietf:params:xml:ns:xmpp-streams"/></stream:error>'
             '</route>' % cms.name)
    assert [s for s in sb.state()["sessions"] if s["streamid"] == "rpb"]


def test_preauth_iq_to_foreign_jid_closes_session(sb, cms):
    c = cms()
    c.create("rfj")
    c.frag()
    c.route("rfj", '<iq xmlns="jabber:client" type="get" id="f" to="bob@'
                   'localhost"><query xmlns="jabber:iq:version"/></iq>')
    c.expect('<route from="localhost" to="%s" streamid="rfj"><stream:error '
             'xmlns:stream="http://etherx.jabber.org/streams"><not-authorized'
             ' xmlns="urn:ietf:params:xml:ns:xmpp-streams"/></stream:error>'
             '</route>' % cms.name,
             '<iq type="set" id="{IQID}" from="localhost" to="%s"><session '
             'xmlns="%s" id="rfj"><close/></session></iq>' % (cms.name, CMP))


# ------------------------------------------------------------ presence/messages
def test_presence_message_one_socket(sb, cms):
    """The presence_message_one_socket transcript (empty rosters)."""
    c = cms()
    n = cms.name
    R = '<route streamid="%%s" from="localhost" to="%s">%%s</route>' % n
    login(c, "r1a", "alice", "alicepw", "ra")
    login(c, "r1b", "bob", "bobpw", "rb")
    c.route("r1a", '<presence xmlns="jabber:client"><priority>1</priority>'
                   '</presence>')
    c.route("r1b", '<presence xmlns="jabber:client"/>')
    c.quiet()                                 # row 28: nothing at all
    c.route("r1a", '<message xmlns="jabber:client" to="bob@localhost/rb" '
                   'type="chat" id="m1"><body>hi bob</body></message>')
    c.expect(R % ("r1b", '<message to="bob@localhost/rb" type="chat" id="m1" '
                         'from="alice@localhost/ra"><body>hi bob</body>'
                         '</message>'))
    c.route("r1a", '<message xmlns="jabber:client" to="bob@localhost" type='
                   '"chat" id="m2"><body>bare</body></message>')
    c.expect(R % ("r1b", '<message to="bob@localhost" type="chat" id="m2" '
                         'from="alice@localhost/ra"><body>bare</body>'
                         '</message>'))
    c.route("r1a", '<message xmlns="jabber:client" to="admin@localhost" type='
                   '"chat" id="m3"><body>offline r1</body></message>')
    c.route("r1a", '<message xmlns="jabber:client" to="nobodyr1@localhost" '
                   'type="chat" id="m4"><body>no such user</body></message>')
    c.quiet()
    assert sb.call("offline", user="admin")["messages"] == [
        '<message to="admin@localhost" type="chat" id="m3" from="alice@'
        'localhost/ra"><body>offline r1</body></message>']
    c.route("r1a", '<iq xmlns="jabber:client" type="get" id="iq1" to="bob@'
                   'localhost/rb"><ping xmlns="urn:xmpp:ping"/></iq>')
    c.expect(R % ("r1b", '<iq type="get" id="iq1" to="bob@localhost/rb" from='
                         '"alice@localhost/ra"><ping xmlns="urn:xmpp:ping"/>'
                         '</iq>'))
    c.route("r1a", '<iq xmlns="jabber:client" type="get" id="iq2" to="bob@'
                   'localhost/gone"><ping xmlns="urn:xmpp:ping"/></iq>')
    c.expect(R % ("r1a", '<iq type="error" id="iq2" from="bob@localhost/gone" '
                         'to="alice@localhost/ra"><ping xmlns="urn:xmpp:ping"'
                         '/><error code="503" type="cancel"><service-'
                         'unavailable xmlns="urn:ietf:params:xml:ns:xmpp-'
                         'stanzas"/></error></iq>'))
    # <failed>: stored offline, the result echoes it with xmlns="" (row 32)
    c.send('<iq type="set" id="fl1" from="%s" to="localhost"><session xmlns='
           '"%s" id="r1b"><failed><message xmlns="jabber:client" from="alice@'
           'localhost/ra" to="bob@localhost/rb" type="chat" id="m1"><body>hi '
           'bob</body></message></failed></session></iq>' % (n, CMP))
    c.expect('<iq type="result" id="fl1" from="localhost" to="%s"><session '
             'xmlns="%s" id="r1b"><failed><message xmlns="" from="alice@'
             'localhost/ra" to="bob@localhost/rb" type="chat" id="m1"><body>'
             'hi bob</body></message></failed></session></iq>' % (n, CMP))
    # admin logs in: the offline message arrives at the initial presence
    login(c, "r1d", "admin", "admin", "rd")
    c.route("r1d", '<presence xmlns="jabber:client"/>')
    c.expect(R % ("r1d", '<message to="admin@localhost" type="chat" id="m3" '
                         'from="alice@localhost/ra"><body>offline r1</body>'
                         '<delay xmlns="urn:xmpp:delay" from="localhost" '
                         'stamp="{STAMP}"/></message>'))
    assert sb.call("offline", user="admin")["messages"] == []
    # resource conflict: alice logs in again with resource ra (row 33)
    c.create("r1a2")
    c.frag()
    c.route("r1a2", '<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" '
                    'mechanism="PLAIN">AGFsaWNlAGFsaWNlcHc=</auth>')
    c.frag()
    c.route("r1a2", '<iq xmlns="jabber:client" type="set" id="b-r1a2"><bind '
                    'xmlns="urn:ietf:params:xml:ns:xmpp-bind"><resource>ra'
                    '</resource></bind></iq>')
    c.expect('<route from="localhost" to="%s" streamid="r1a"><stream:error '
             'xmlns:stream="http://etherx.jabber.org/streams"><conflict xmlns='
             '"urn:ietf:params:xml:ns:xmpp-streams"/></stream:error></route>'
             % n,
             '<iq type="set" id="{IQID}" from="localhost" to="%s"><session '
             'xmlns="%s" id="r1a"><close/></session></iq>' % (n, CMP),
             R % ("r1a", '<presence type="unavailable" from="alice@localhost/'
                         'ra" to="alice@localhost/ra"/>'),
             R % ("r1a2", '<iq type="result" id="b-r1a2" to="localhost/r1a2">'
                          '<bind xmlns="urn:ietf:params:xml:ns:xmpp-bind">'
                          '<jid>alice@localhost/ra</jid></bind></iq>'))
    c.close_sess("r1b", "clb")
    c.expect(R % ("r1b", '<presence type="unavailable" from="bob@localhost/rb"'
                         ' to="bob@localhost/rb"/>'),
             '<iq type="result" id="clb"><session xmlns="%s" id="r1b"><close/>'
             '</session></iq>' % CMP)
    c.close_sess("r1a", "cla")
    c.expect('<iq type="error" id="cla"><session xmlns="%s" id="r1a"><close/>'
             '</session><error code="404" type="cancel"><item-not-found xmlns='
             '"urn:ietf:params:xml:ns:xmpp-stanzas"/></error></iq>' % CMP)
    c.close_sess("r1a2", "cla2")
    c.expect('<iq type="result" id="cla2"><session xmlns="%s" id="r1a2">'
             '<close/></session></iq>' % CMP)
    # bob's message from <failed> is waiting for him
    assert len(sb.call("offline", user="bob")["messages"]) == 1
    login(c, "r1b2", "bob", "bobpw", "rb")
    c.route("r1b2", '<presence xmlns="jabber:client"/>')
    c.expect(R % ("r1b2", '<message from="alice@localhost/ra" to="bob@'
                          'localhost/rb" type="chat" id="m1"><body>hi bob'
                          '</body><delay xmlns="urn:xmpp:delay" from="'
                          'localhost" stamp="{STAMP}"/></message>'))


def test_mutual_rosters_presence_and_probes(sb, cms):
    sb.call("set", key="rosters", value="mutual")
    c = cms()
    R = '<route streamid="%%s" from="localhost" to="%s">%%s</route>' % cms.name
    login(c, "pa", "alice", "alicepw", "pc")
    c.route("pa", '<iq xmlns="jabber:client" type="get" id="r"><query xmlns='
                  '"jabber:iq:roster"/></iq>')
    c.expect(R % ("pa", '<iq type="result" id="r" to="alice@localhost/pc">'
                        '<query xmlns="jabber:iq:roster"><item jid="bob@'
                        'localhost" subscription="both"/><item jid="admin@'
                        'localhost" subscription="both"/></query></iq>'))
    c.route("pa", '<presence xmlns="jabber:client"><show>away</show>'
                  '</presence>')
    c.quiet()
    login(c, "pb", "bob", "bobpw", "phone")
    c.route("pb", '<presence xmlns="jabber:client"/>')
    # bob's presence to alice (to = bare JID), then the probe answer
    c.expect(R % ("pa", '<presence from="bob@localhost/phone" to="alice@'
                        'localhost"/>'),
             R % ("pb", '<presence from="alice@localhost/pc" to="bob@'
                        'localhost/phone"><show>away</show></presence>'))
    c.route("pa", '<presence xmlns="jabber:client" type="unavailable"/>')
    c.expect(R % ("pb", '<presence type="unavailable" from="alice@localhost/'
                        'pc" to="bob@localhost"/>'))
    c.close_sess("pb", "x1")
    c.expect(R % ("pb", '<presence type="unavailable" from="bob@localhost/'
                        'phone" to="bob@localhost/phone"/>'),
             '<iq type="result" id="x1"><session xmlns="%s" id="pb"><close/>'
             '</session></iq>' % CMP)


# ------------------------------------------------------------ sockets
def test_hash_based_socket_choice_two_sockets(sb, cms):
    """Row 34: session traffic goes to sockets[abs(hash(id)) % n], in
    registration order (default) or ConcurrentHashMap order (socket_order
    "chm", which is what 4.1.6 showed: r1a, created on s1, came on s2)."""
    for order, name in (("registration", "cmr1r.localhost"),
                        ("chm", "cmr1a.localhost")):
        sb.call("set", key="socket_order", value=order)
        s1 = cms("s1", name=name)
        s2 = cms("s2", name=name)
        listed = [s["resource"] for s in sb.state()["sockets"]
                  if s["cm"] == name]
        assert listed == ["s1", "s2"]
        if order == "registration":
            ordered = [s1, s2]
        else:
            ordered = [s2, s1]          # bucket 0 = .../s2, bucket 1 = s1
        s1.create("r1a")
        s2.create("r1b")
        # replies to the CM's IQs come on a random socket of the name
        got = s1.drain(0.2) + s2.drain(0.1)
        assert sorted(re.search(r'id="([^"]+)"', f).group(1)
                      for f in got) == ["c-r1a", "c-r1b"], got
        for sid, user, pw in (("r1a", "alice", "alicepw"),
                              ("r1b", "bob", "bobpw")):
            s1.route(sid, '<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" '
                          'mechanism="PLAIN">%s</auth>' % plain(user, pw))
            target = ordered[abs(java_hash(sid)) % 2]
            assert 'streamid="%s"><success' % sid in target.frag()
            (s2 if target is s1 else s1).quiet(0.1)
        if order == "chm":      # as recorded: r1a on s2, r1b on s1
            assert ordered[abs(java_hash("r1a")) % 2] is s2
            assert ordered[abs(java_hash("r1b")) % 2] is s1
        s1.close()
        s2.close()


def test_last_socket_close_drops_sessions(sb, cms):
    s1 = cms("s1")
    s2 = cms("s2")
    for s, sid, user, pw, res in ((s1, "r1a", "alice", "alicepw", "ra"),
                                  (s2, "r1b", "bob", "bobpw", "rb")):
        s.create(sid)
        s.route(sid, '<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" '
                     'mechanism="PLAIN">%s</auth>' % plain(user, pw))
        s.route(sid, '<iq xmlns="jabber:client" type="set" id="b"><bind xmlns'
                     '="urn:ietf:params:xml:ns:xmpp-bind"><resource>%s'
                     '</resource></bind></iq>' % res)
    sb.wait_for(lambda: len([x for x in sb.state()["sessions"]
                             if x["cm"] == cms.name and x["jid"]]) == 2)
    s1.close()
    sb.wait_for(lambda: len([x for x in sb.state()["sockets"]
                             if x["cm"] == cms.name]) == 1)
    # sessions survive; all traffic now on s2 (row 35)
    assert len([x for x in sb.state()["sessions"]
                if x["cm"] == cms.name]) == 2
    s2.drain(0.2)
    s2.route("r1b", '<message xmlns="jabber:client" to="alice@localhost/ra" '
                    'type="chat" id="m2"><body>after s1 gone</body>'
                    '</message>')
    s2.expect('<route streamid="r1a" from="localhost" to="%s"><message to="'
              'alice@localhost/ra" type="chat" id="m2" from="bob@localhost/rb"'
              '><body>after s1 gone</body></message></route>' % cms.name)
    s2.close()
    sb.wait_for(lambda: not [x for x in sb.state()["sessions"]
                             if x["cm"] == cms.name])
    s3 = cms("s3")
    s3.route("r1a", '<message xmlns="jabber:client" to="bob@localhost" type='
                    '"chat" id="m4"><body>?</body></message>')
    s3.expect('<route streamid="r1a" from="localhost" to="%s" type="error">'
              '<error code="404" type="cancel"><item-not-found xmlns="urn:'
              'ietf:params:xml:ns:xmpp-stanzas"/></error></route>' % cms.name)


def test_heartbeat_and_idle_timeout(sb, cms):
    c = cms()
    sb.call("set", key="heartbeat", value=0.2)
    time.sleep(0.7)
    c.quiet(0.1)
    assert c.spaces >= 2, c.spaces
    sb.call("set", key="heartbeat", value=0)
    sb.call("set", key="idle", value=0.6)
    t0 = time.monotonic()
    c.expect('<stream:error xmlns:stream="http://etherx.jabber.org/streams">'
             '<connection-timeout xmlns="urn:ietf:params:xml:ns:xmpp-streams"'
             '/><text xmlns="urn:ietf:params:xml:ns:xmpp-streams">Connection '
             'has been idle.</text></stream:error>', "</stream:stream>")
    assert 0.2 < time.monotonic() - t0 < 2.5
    c.expect_eof()
    # whitespace keeps a socket alive
    d = cms("s2")
    for _ in range(8):
        d.send(" ")
        time.sleep(0.1)
    d.quiet(0.05)
    assert not d.eof
    ev = sb.events(since=0)["events"]
    assert [e for e in ev if e["dir"] == "in" and e["xml"] == " "
            and e["cm"] == cms.name]


# ------------------------------------------------------------ 4.8 variants
def test_48_escaped_raw_text_and_conflict_without_close_iq(sb, cms):
    sb.call("set", key="version", value="4.8")
    c = cms(open=False)
    c.send(HDR % c.to)
    h = c.frag()
    c.sid = re.search(r'id="(\w+)"', h).group(1)
    c.expect("<stream:features/>")
    c.send("<handshake>%s</handshake>" % c.digest())
    c.expect("<handshake></handshake>")
    c.frag()
    n = cms.name
    R = '<route streamid="%%s" from="localhost" to="%s">%%s</route>' % n
    raw = '<route from="localhost" to="%s" streamid="%%s">%%s</route>' % n
    for sid in ("e1", "e2"):
        c.create(sid)
        c.frag()
        c.route(sid, '<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" '
                     'mechanism="PLAIN">AGFsaWNlAGFsaWNlcHc=</auth>')
        c.expect(raw % (sid, '&lt;success xmlns="urn:ietf:params:xml:ns:'
                             'xmpp-sasl"/&gt;'))
        c.route(sid, '<iq xmlns="jabber:client" type="set" id="b"><bind '
                     'xmlns="urn:ietf:params:xml:ns:xmpp-bind"><resource>x'
                     '</resource></bind></iq>')
        if sid == "e1":
            # pre-bind address is DOMAIN/UUID on 4.8+
            c.expect(R % (sid, '<iq type="result" id="b" to="localhost/{UUID}'
                               '"><bind xmlns="urn:ietf:params:xml:ns:xmpp-'
                               'bind"><jid>alice@localhost/x</jid></bind>'
                               '</iq>'))
            c.route(sid, '<presence xmlns="jabber:client"/>')
    # conflict: escaped stream error, no close IQ (bound), own unavailable
    c.expect(raw % ("e1", '&lt;stream:error xmlns:stream="http://etherx.'
                          'jabber.org/streams"&gt;&lt;conflict xmlns="urn:'
                          'ietf:params:xml:ns:xmpp-streams"/&gt;&lt;/stream:'
                          'error&gt;'),
             R % ("e1", '<presence type="unavailable" from="alice@localhost/x"'
                        ' to="alice@localhost/x"/>'),
             R % ("e2", '<iq type="result" id="b" to="localhost/{UUID}"><bind'
                        ' xmlns="urn:ietf:params:xml:ns:xmpp-bind"><jid>alice'
                        '@localhost/x</jid></bind></iq>'))
    # 4.8 keeps jabber:client inside <failed> (ancestor rule)
    c.send('<iq type="set" id="f" to="localhost"><session xmlns="%s" id="e2">'
           '<failed><message xmlns="jabber:client" to="bob@localhost" type='
           '"chat"><body>k</body></message></failed></session></iq>' % CMP)
    c.expect('<iq type="result" id="f" from="localhost"><session xmlns="%s" '
             'id="e2"><failed><message xmlns="jabber:client" to="bob@'
             'localhost" type="chat"><body>k</body></message></failed>'
             '</session></iq>' % CMP)
    assert sb.call("offline", user="bob", clear=True)["messages"] == [
        '<message xmlns="jabber:client" to="bob@localhost" type="chat"><body>'
        'k</body></message>']
    assert sb.call("offline", user="bob")["messages"] == []
    # a SASL failure closing an unbound session: close IQ, no error inside
    c.create("e3")
    c.frag()
    for i in range(3):
        c.route("e3", '<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" '
                      'mechanism="PLAIN">AAAA</auth>')
        c.expect(raw % ("e3", '&lt;failure xmlns="urn:ietf:params:xml:ns:'
                              'xmpp-sasl"&gt;&lt;not-authorized/&gt;&lt;/'
                              'failure&gt;'))
    c.expect('<iq type="set" id="{IQID}" from="localhost" to="%s"><session '
             'xmlns="%s" id="e3"><close/></session></iq>' % (n, CMP))


# ------------------------------------------------------------ control channel
def test_control_kick_close_session_send_route_raw(sb, cms):
    c = cms()
    n = cms.name
    R = '<route streamid="%%s" from="localhost" to="%s">%%s</route>' % n
    raw = '<route from="localhost" to="%s" streamid="%%s">%%s</route>' % n
    login(c, "k1", "alice", "alicepw", "k")
    c.route("k1", '<presence xmlns="jabber:client"/>')
    r = sb.call("kick", jid="alice@localhost/k", condition="conflict")
    assert r["kicked"] == ["k1"]
    c.expect(raw % ("k1", '<stream:error xmlns:stream="http://etherx.jabber.'
                          'org/streams"><conflict xmlns="urn:ietf:params:xml:'
                          'ns:xmpp-streams"/></stream:error>'),
             '<iq type="set" id="{IQID}" from="localhost" to="%s"><session '
             'xmlns="%s" id="k1"><close/></session></iq>' % (n, CMP),
             R % ("k1", '<presence type="unavailable" from="alice@localhost/k"'
                        ' to="alice@localhost/k"/>'))
    assert not [s for s in sb.state()["sessions"] if s["streamid"] == "k1"]
    # close_session with an error: inside <session>, as 4.8+ does
    login(c, "k2", "bob", "bobpw", "k")
    sb.call("close_session", streamid="k2", error="conflict")
    c.expect('<iq type="set" id="{IQID}" from="localhost" to="%s"><session '
             'xmlns="%s" id="k2"><close/><stream:error xmlns:stream="http://'
             'etherx.jabber.org/streams"><conflict xmlns="urn:ietf:params:'
             'xml:ns:xmpp-streams"/></stream:error></session></iq>'
             % (n, CMP))
    assert not [s for s in sb.state()["sessions"] if s["streamid"] == "k2"]
    sb.call("send_route", cm=n, streamid="ghost", payload='<message to="a@b"'
            '/>', escaped=False)
    c.expect(R % ("ghost", '<message to="a@b"/>'))
    sb.call("send_route", cm=n, streamid="ghost", payload='<success xmlns="'
            'urn:ietf:params:xml:ns:xmpp-sasl"/>', escaped=True)
    c.expect(raw % ("ghost", '&lt;success xmlns="urn:ietf:params:xml:ns:'
                             'xmpp-sasl"/&gt;'))
    sb.call("send_raw", cm=n, xml="<foo/>")
    c.expect("<foo/>")
    with pytest.raises(control.StandinError):
        sb.call("send_raw", cm="nosuch.cm", xml="<foo/>")
    with pytest.raises(control.StandinError):
        sb.call("nosuchcmd")


def test_control_events_drop_accept_read_paused(sb, cms):
    first = sb.events(since=0)["next"]
    c = cms()
    c.send('<iq type="result" id="zz"/>')
    ev = sb.wait_for(lambda: [e for e in sb.events(since=first)["events"]
                              if e["cm"] == cms.name and e["dir"] == "in"
                              and e["xml"] == '<iq type="result" id="zz"/>'])
    assert ev[0]["resource"] == "s1" and ev[0]["seq"] >= first
    r = sb.events(since=first)
    dirs = [e["dir"] for e in r["events"] if e["sock"] == ev[0]["sock"]]
    assert dirs[:4] == ["conn", "in", "out", "out"], dirs
    assert r["next"] == r["events"][-1]["seq"] + 1
    # drop_sockets closes them (TCP), the state forgets them
    assert sb.call("drop_sockets", cm=cms.name)["dropped"] == 1
    c.expect_eof()
    assert not [s for s in sb.state()["sockets"] if s["cm"] == cms.name]
    assert [e for e in sb.events(since=first)["events"]
            if e["dir"] == "close" and e["sock"] == ev[0]["sock"]]
    # accept false: connections are closed at once
    sb.call("set", key="accept", value=False)
    d = CM(sb.port_cm, cms.name + "/s2")
    d.expect_eof()
    d.close()
    sb.call("set", key="accept", value=True)
    # read_paused: nothing is processed until resumed
    e = cms("s3")
    sb.call("set", key="read_paused", value=True)
    e.create("rp1")
    e.quiet(0.3)
    sb.call("set", key="read_paused", value=False)
    assert e.frag().startswith('<iq type="result" id="c-rp1"')


def test_sigterm_sends_system_shutdown():
    proc, port, cport = control.start_standin(heartbeat=0)
    try:
        c = CM(port, "cmq.localhost/s1").open().handshake()
        ctl = control.StandinControl("127.0.0.1", cport)
        assert ctl.call("ping")["ok"]
        ctl.close()
        proc.terminate()
        c.expect('<stream:error xmlns:stream="http://etherx.jabber.org/'
                 'streams"><system-shutdown xmlns="urn:ietf:params:xml:ns:'
                 'xmpp-streams"/></stream:error>', "</stream:stream>")
        c.expect_eof()
        assert proc.wait(5) == 0
    finally:
        control.stop(proc)
    # the shutdown command does the same
    proc, port, cport = control.start_standin(heartbeat=0)
    try:
        c = CM(port, "cmq.localhost/s1").open().handshake()
        control.StandinControl("127.0.0.1", cport).call("shutdown")
        c.expect('<stream:error xmlns:stream="http://etherx.jabber.org/'
                 'streams"><system-shutdown xmlns="urn:ietf:params:xml:ns:'
                 'xmpp-streams"/></stream:error>', "</stream:stream>")
        c.expect_eof()
        assert proc.wait(5) == 0
    finally:
        control.stop(proc)


def test_many_sessions_throughput(sb, cms):
    """A few thousand sessions and thousands of stanzas per second."""
    c = cms()
    N = 2000
    c.send("".join(
        '<iq type="set" id="c%d"><session xmlns="%s" id="t%d"><create/>'
        '</session></iq>' % (i, CMP, i) for i in range(N)))
    for i in range(N):
        assert c.frag(10).startswith('<iq type="result" id="c%d"' % i)
    t0 = time.monotonic()
    c.send("".join(
        '<route from="x" to="localhost" streamid="t%d"><auth xmlns="urn:ietf:'
        'params:xml:ns:xmpp-sasl" mechanism="PLAIN">%s</auth></route>'
        % (i, plain("alice", "alicepw")) for i in range(N)))
    for i in range(N):
        assert "<success" in c.frag(10)
    elapsed = time.monotonic() - t0
    assert elapsed < 5, elapsed


def test_splitter_units():
    """The fragment splitter: double quotes only (like Openfire), CDATA,
    comments, the header with its XML declaration, whitespace runs."""
    sp = Splitter(limit=100)
    out, err = sp.feed("<?xml version='1.0'?> <stream:stream a=\"1\">  <a b=\"x>"
                       "/y\"><![CDATA[</a>]]><!-- </a> --></a><b/>\n")
    assert err is None
    assert out == [("header", "<?xml version='1.0'?> <stream:stream a=\"1\">"),
                   ("ws", "  "),
                   ("element", '<a b="x>/y"><![CDATA[</a>]]><!-- </a> --></a>'),
                   ("element", "<b/>"), ("ws", "\n")]
    out, err = sp.feed("<c><d>")
    assert out == [] and err is None
    out, err = sp.feed("</d></c></stream:stream>")
    assert out == [("element", "<c><d></d></c>"), ("end", "</stream:stream>")]
    # single quotes are not tracked: '>' inside them cuts the tag
    sp = Splitter()
    out, err = sp.feed("<a b='x/>'/>")
    assert out == [("element", "<a b='x/>")]
    assert Splitter(limit=10).feed("<a>" + "x" * 20)[1] == "policy-violation"
    assert Splitter().feed("text")[1] == "internal-server-error"


def test_iq_auth_and_inband_register(sb, cms):
    sb.call("set", key="iq_auth", value=True)
    c = cms()
    R = '<route streamid="%%s" from="localhost" to="%s">%%s</route>' % cms.name
    c.create("ia")
    c.frag()
    c.route("ia", '<iq xmlns="jabber:client" type="set" id="r1"><query xmlns='
                  '"jabber:iq:register"><username>carol</username><password>'
                  'carolpw</password></query></iq>')
    c.expect(R % ("ia", '<iq type="result" id="r1" to="localhost/ia"/>'))
    c.route("ia", '<iq xmlns="jabber:client" type="set" id="r2"><query xmlns='
                  '"jabber:iq:register"><username>carol</username><password>'
                  'x</password></query></iq>')
    c.expect(R % ("ia", '<iq type="error" id="r2" to="localhost/ia"><query '
                        'xmlns="jabber:iq:register"><username>carol</username>'
                        '<password>x</password></query><error code="409" '
                        'type="cancel"><conflict xmlns="urn:ietf:params:xml:'
                        'ns:xmpp-stanzas"/></error></iq>'))
    c.route("ia", '<iq xmlns="jabber:client" type="set" id="a1"><query xmlns='
                  '"jabber:iq:auth"><username>carol</username><password>'
                  'carolpw</password><resource>old</resource></query></iq>')
    # IQAuthHandler.login: the result goes to the new full JID
    c.expect(R % ("ia", '<iq type="result" id="a1" '
                        'to="carol@localhost/old"/>'))
    st = [s for s in sb.state()["sessions"] if s["streamid"] == "ia"][0]
    assert st["jid"] == "carol@localhost/old" and st["authenticated"]


def test_read_paused_holds_new_connections(sb):
    """read_paused is a hung Openfire: a connection made while it holds
    gets no answer (asyncio adds its reader after connection_made, so the
    pause must come later), and gets one once reading resumes."""
    sb.call("set", key="read_paused", value=True)
    s = socket.create_connection(("127.0.0.1", sb.port_cm))
    try:
        s.sendall(b"<?xml version='1.0'?><stream:stream xmlns:stream='http:"
                  b"//etherx.jabber.org/streams' xmlns='jabber:"
                  b"connectionmanager' to='localhost'>")
        s.settimeout(1.0)
        with pytest.raises(socket.timeout):
            s.recv(100)
        sb.call("set", key="read_paused", value=False)
        s.settimeout(5)
        assert s.recv(100).startswith(b"<?xml")
    finally:
        s.close()
