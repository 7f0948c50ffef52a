"""Bad client input.  Each case asserts the exact stream error
condition (docs/directives.md, "Client stream errors") and that the bad part (which carries the
marker BADMARK) never reached the stand-in; the session is closed upstream.
Plus the positive controls (limits not hit, 1-byte writes, quoting)."""
import re
import time
import xml.etree.ElementTree as ET

import pytest

from lib.raw import NS_SASL, q, tostr
from lib.util import wait_until

HEADER = ('<stream:stream xmlns:stream="http://etherx.jabber.org/streams" '
          'xmlns="jabber:client" to="localhost" version="1.0">')
EXTRA = "xmpp_cm_close_delay 100ms;"


@pytest.fixture
def cm(standin, nginx):
    """A stand-in and an nginx in front of it, with given extra config."""
    def make(extra=""):
        sb = standin()
        ngx = nginx(standin=sb, extra=EXTRA + "\n" + extra)
        return sb, ngx
    return make


def check_rejected(sb, c, cond, sid=None):
    got = c.expect_stream_error(5)
    assert got == cond, "expected <%s/>, got %r; received %r" % (
        cond, got, c.text[-1500:])
    assert c.stream_ended(), "no </stream:stream>: %r" % c.text[-500:]
    time.sleep(0.3)
    leaked = sb.inbound("BADMARK")
    assert leaked == [], "bad input reached the server: %r" % leaked
    if sid and any(x for x in sb.inbound(r"<create", sid)):
        wait_until(lambda: sb.close_iqs_for(sid), 5,
                   what="close IQ after the stream error")


# ------------------------------------------------------------ pre-header
PRE_HEADER = [
    ("stanza_before_header",
     '<message xmlns="jabber:client" to="bob@localhost"><body>BADMARK'
     '</body></message>', "invalid-namespace"),
    ("billion_laughs",
     '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "BADMARK">'
     '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
     ']>' + HEADER + '<message>&lol2;</message>', "restricted-xml"),
    ("external_entity",
     '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY ext SYSTEM '
     '"file:///etc/passwd">]>' + HEADER, "restricted-xml"),
    ("huge_header_attribute",
     HEADER[:-1] + ' x="' + "BADMARK" * 5000 + '">', "policy-violation"),
    ("doctype", '<?xml version="1.0"?><!DOCTYPE stream:stream SYSTEM '
                '"BADMARK.dtd">' + HEADER, "restricted-xml"),
    ("internal_entity_decl",
     '<?xml version="1.0"?><!DOCTYPE stream:stream [<!ENTITY bad '
     '"BADMARK">]>' + HEADER, "restricted-xml"),
]


@pytest.mark.parametrize("case,data,cond", PRE_HEADER,
                         ids=[p[0] for p in PRE_HEADER])
def test_before_header(cm, raw, case, data, cond):
    sb, ngx = cm()
    c = raw(ngx.port)
    c.send(data)
    check_rejected(sb, c, cond)
    assert "<stream:stream" in c.text, c.text
    assert sb.inbound(r"<create") == []


# ------------------------------------------------------------ pre-auth
PRE_AUTH = [
    ("message_before_auth",
     '<message to="bob@localhost" type="chat"><body>BADMARK</body></message>',
     "not-authorized"),
    ("presence_before_auth", '<presence><status>BADMARK</status></presence>',
     "not-authorized"),
    ("oversize_before_auth",
     '<iq type="get" id="big"><query xmlns="jabber:iq:register"><x>BADMARK'
     + "y" * 20000 + '</x></query></iq>', "policy-violation"),
    ("route_before_auth",
     '<route to="localhost" from="cm1" streamid="x"><auth xmlns="%s" '
     'mechanism="PLAIN">BADMARK</auth></route>' % NS_SASL,
     "unsupported-stanza-type"),
]


@pytest.mark.parametrize("case,data,cond", PRE_AUTH,
                         ids=[p[0] for p in PRE_AUTH])
def test_pre_auth(cm, raw, case, data, cond):
    sb, ngx = cm()
    c = raw(ngx.port)
    c.open()
    c.send(data)
    check_rejected(sb, c, cond, c.stream_id)


def test_preauth_limit_not_hit(cm, raw):
    """Control: a 10k pre-auth IQ (under the 16k default) is routed."""
    sb, ngx = cm()
    c = raw(ngx.port)
    c.open()
    c.send('<iq type="get" id="okbig"><query xmlns="jabber:iq:register">'
           '<x>GOODMARK' + "y" * 10000 + '</x></query></iq>')
    wait_until(lambda: sb.inbound("GOODMARK"), 5, what="pre-auth IQ routed")
    assert not c.eof


# ------------------------------------------------------------ post-auth
POST_AUTH = [
    ("processing_instruction", '<?BADMARK data?>', "restricted-xml"),
    ("pi_inside_stanza",
     '<message to="bob@localhost"><?BADMARK x?><body>x</body></message>',
     "restricted-xml"),
    ("comment", '<!-- BADMARK -->', "restricted-xml"),
    ("comment_inside_stanza",
     '<message to="bob@localhost"><body>x<!-- BADMARK --></body></message>',
     "restricted-xml"),
    ("malformed",
     '<message to="bob@localhost"><body>BADMARK</bdy></message>',
     "not-well-formed"),
    ("invalid_utf8",
     b'<message to="bob@localhost"><body>BADMARK \xff\xfe</body></message>',
     "not-well-formed"),
    ("overlong_utf8",
     b'<message to="bob@localhost"><body>BADMARK \xc0\xaf</body></message>',
     "not-well-formed"),
    ("control_char",
     b'<message to="bob@localhost"><body>BADMARK \x01</body></message>',
     "not-well-formed"),
    ("unbound_prefix",
     '<foo:message to="bob@localhost"><body>BADMARK</body></foo:message>',
     "not-well-formed"),
    ("duplicate_attribute",
     '<message to="bob@localhost" to="alice@localhost"><body>BADMARK</body>'
     '</message>', "not-well-formed"),
    ("undefined_entity",
     '<message to="bob@localhost"><body>BADMARK &bad;</body></message>',
     "not-well-formed"),
    ("route_injection",
     '<route to="localhost" from="cm1" streamid="x"><message '
     'to="bob@localhost"><body>BADMARK</body></message></route>',
     "unsupported-stanza-type"),
    ("route_injection_cm_ns",
     '<route xmlns="jabber:connectionmanager" to="localhost" streamid="x">'
     '<message to="bob@localhost"><body>BADMARK</body></message></route>',
     "unsupported-stanza-type"),
    ("handshake_injection", '<handshake>BADMARK</handshake>',
     "unsupported-stanza-type"),
    ("session_injection",
     '<session xmlns="http://jabber.org/protocol/connectionmanager" '
     'id="BADMARK"><close/></session>', "unsupported-stanza-type"),
    ("iq_session_injection_foreign_ns",
     '<foo xmlns="urn:BADMARK"/>', "unsupported-stanza-type"),
    ("nested_stream",
     '<stream:stream to="localhost" version="1.0" id="BADMARK">',
     "unsupported-stanza-type"),
    ("nested_stream_declared",
     '<stream:stream xmlns:stream="http://etherx.jabber.org/streams" '
     'to="localhost" version="1.0" id="BADMARK">',
     "unsupported-stanza-type"),
    ("stream_features_from_client",
     '<stream:features xmlns:stream="http://etherx.jabber.org/streams">'
     '<x xmlns="urn:BADMARK"/></stream:features>',
     "unsupported-stanza-type"),
    ("sasl_after_auth",
     '<auth xmlns="%s" mechanism="PLAIN">QkFETUFSSw==BADMARK</auth>' % NS_SASL,
     "unsupported-stanza-type"),
    ("text_between_stanzas", 'BADMARK', "bad-format"),
    ("text_after_stanza",
     '<message to="bob@localhost"><body>ok</body></message>BADMARK',
     "bad-format"),
]


@pytest.mark.parametrize("case,data,cond", POST_AUTH,
                         ids=[p[0] for p in POST_AUTH])
def test_post_auth(cm, raw, case, data, cond):
    sb, ngx = cm()
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    c.send(data)
    check_rejected(sb, c, cond, c.stream_id)


def nested(depth, marker):
    """A message whose innermost element is at nesting depth `depth`
    (the message itself is depth 1)."""
    inner = marker
    for i in range(depth - 2):
        inner = '<a%d>%s</a%d>' % (i, inner, i)
    return ('<message to="bob@localhost"><x xmlns="urn:t">%s</x></message>'
            % inner)


def test_depth_limit_exceeded(cm, raw):
    sb, ngx = cm("xmpp_cm_max_depth 8;")
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    c.send(nested(12, "BADMARK"))
    check_rejected(sb, c, "policy-violation", c.stream_id)


def test_depth_under_limit_routed(cm, raw):
    sb, ngx = cm("xmpp_cm_max_depth 8;")
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    c.send(nested(6, "GOODMARK"))
    wait_until(lambda: sb.inbound("GOODMARK"), 5, what="nested routed")
    assert not c.eof


def test_oversize_after_auth(cm, raw):
    sb, ngx = cm("xmpp_cm_max_stanza_size 4k;\n"
                 "xmpp_cm_preauth_max_stanza_size 2k;")
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    c.send('<message to="bob@localhost"><body>BADMARK%s</body></message>'
           % ("z" * 5000))
    check_rejected(sb, c, "policy-violation", c.stream_id)


def test_under_size_limit_routed(cm, raw):
    sb, ngx = cm("xmpp_cm_max_stanza_size 4k;\n"
                 "xmpp_cm_preauth_max_stanza_size 2k;")
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    c.send('<message to="bob@localhost"><body>GOODMARK%s</body></message>'
           % ("z" * 3000))
    wait_until(lambda: sb.inbound("GOODMARK"), 5, what="3k message routed")
    assert not c.eof


# ------------------------------------------------------------ good input
def test_one_byte_writes(cm, raw):
    """A stanza split into 1-byte writes goes through (no reparse
    deferral stall)."""
    sb, ngx = cm()
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    stanza = ('<message to="bob@localhost" type="chat" id="tiny1">'
              '<body>GOODMARK one byte at a time \u00e9</body></message>')
    c.send_bytewise(stanza, delay=0.003)
    r = wait_until(lambda: sb.inbound("GOODMARK"), 5,
                   what="bytewise stanza routed")
    inner = r[0][r[0].index(">") + 1:r[0].rindex("</route>")]
    assert inner.replace(' xmlns="jabber:client"', "", 1) == stanza, r
    # the header and the SASL exchange also work bytewise
    c2 = raw(ngx.port)
    c2.send_bytewise(HEADER, delay=0.002)
    c2.wait_features(5)


def test_single_quoted_attribute_requoted(cm, raw):
    """A ' -quoted attribute value containing " and > reaches Openfire as
    well-formed double-quoted XML, and bob receives the same value."""
    sb, ngx = cm()
    a = raw(ngx.port)
    a.login("alice", "alicepw", resource="a")
    b = raw(ngx.port)
    b.login("bob", "bobpw", resource="b")
    value = 'he said "hi" > bye /> x'
    a.send("<message to='bob@localhost/b' type='chat' id='qt1'>"
           "<body>GOODMARK</body><x xmlns='urn:t' v='%s'/></message>" % value)
    routes = wait_until(
        lambda: [r for r in sb.routes_for(a.stream_id) if "qt1" in r], 5,
        what="route with the quoted message")
    r = routes[0]
    el = ET.fromstring(r)                    # well-formed as a whole
    msg = list(el)[0]
    x = msg.find("{urn:t}x")
    assert x is not None and x.get("v") == value, r
    # only double-quoted attributes, > escaped inside values
    inner = r[r.index(">") + 1:r.rindex("</route>")]
    for m in re.finditer(r"<[^!?/][^>]*>", inner):
        assert "='" not in m.group(0), "single-quoted attribute: " + inner
    assert "&gt;" in inner or "&#62;" in inner, inner
    got = b.next_element(5, lambda e: e.get("id") == "qt1")
    gx = got.find("{urn:t}x")
    assert gx is not None and gx.get("v") == value, tostr(got)


def test_whitespace_between_stanzas_ok(cm, raw):
    sb, ngx = cm()
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    c.send('  \n\t <message to="bob@localhost" id="ws1"><body>GOODMARK'
           '</body></message>\r\n  ')
    wait_until(lambda: sb.inbound("GOODMARK"), 5, what="routed")
    time.sleep(0.2)
    c.pump(0.1)
    assert not c.eof and c.stream_error() is None


def test_client_whitespace_keepalives(cm, raw):
    """Single-space keepalives from the client, each in its own read,
    between stanzas are ignored."""
    sb, ngx = cm()
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    for _ in range(3):
        c.send(" ")
        time.sleep(0.15)
    c.send('<message to="bob@localhost" id="ka1"><body>GOODMARK</body>'
           '</message>')
    wait_until(lambda: sb.inbound("GOODMARK"), 5, what="routed after "
               "keepalives")
    for _ in range(3):
        c.send("\n")
        time.sleep(0.15)
    c.pump(0.1)
    assert not c.eof and c.stream_error() is None, c.text[-300:]


# ------------------------------------------------------------ more hostile
def test_second_stream_header_before_auth(cm, raw):
    sb, ngx = cm()
    c = raw(ngx.port)
    c.open()
    c.send(HEADER.replace('to="localhost"', 'to="BADMARK"'))
    check_rejected(sb, c, "unsupported-stanza-type")


def test_one_megabyte_attribute(cm, raw):
    sb, ngx = cm()
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="big")
    try:
        c.send('<message to="bob@localhost" x="BADMARK' + "a" * (1 << 20)
               + '"><body/></message>')
    except OSError:
        pass                    # the CM may cut us while we write
    check_rejected(sb, c, "policy-violation", c.stream_id)


def test_ten_thousand_attributes(cm, raw):
    """Well-formed but absurd: 10000 attributes (under the size limit)
    are parsed without trouble and routed as written."""
    sb, ngx = cm()
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="attrs")
    attrs = " ".join('a%d="v"' % i for i in range(10000))
    c.send('<message to="bob@localhost" id="many" %s><body>ok</body>'
           '</message>' % attrs)
    sb.wait(lambda: [r for r in sb.routes_for(c.stream_id)
                     if 'a9999="v"' in r], 10, "the 10000-attribute stanza")
    assert c.stream_error() is None, c.text


def test_huge_base64_auth_before_authentication(cm, raw):
    """A SASL <auth> far over the pre-authentication limit."""
    sb, ngx = cm()
    c = raw(ngx.port)
    c.open()
    try:
        c.send('<auth xmlns="%s" mechanism="PLAIN">BADMARK%s</auth>'
               % (NS_SASL, "QUFB" * 50000))
    except OSError:
        pass
    check_rejected(sb, c, "policy-violation")
