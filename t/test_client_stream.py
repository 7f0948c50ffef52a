"""The client stream (header validation, stream id, features,
session create, restart after SASL, route wrapping)."""
import re
import time
import xml.etree.ElementTree as ET

import pytest

from lib.raw import (NS_BIND, NS_CLIENT, NS_REGISTER, NS_SASL, NS_SESSION,
                     NS_STREAM, q, tostr)
from lib.util import attr, wait_until

SID_RE = re.compile(r"^w(\d+)-([0-9a-f]{16})$")

HDR = ('<?xml version="1.0"?><stream:stream xmlns:stream="{sns}" '
       'xmlns="{ns}"{to}{version}>')


def header(to="localhost", ns="jabber:client",
           sns="http://etherx.jabber.org/streams", version="1.0"):
    return HDR.format(sns=sns, ns=ns,
                      to=' to="%s"' % to if to is not None else "",
                      version=' version="%s"' % version
                      if version is not None else "")


BAD_HEADERS = [
    ("wrong_to", header(to="example.org"), "host-unknown"),
    ("missing_to", header(to=None), "host-unknown"),
    ("wrong_stream_ns", header(sns="urn:wrong"), "invalid-namespace"),
    ("default_ns_server", header(ns="jabber:server"), "invalid-namespace"),
    ("default_ns_cm", header(ns="jabber:connectionmanager"),
     "invalid-namespace"),
    ("version_missing", header(version=None), "unsupported-version"),
    ("version_2", header(version="2.0"), "unsupported-version"),
    ("root_not_stream",
     '<stream:foo xmlns:stream="http://etherx.jabber.org/streams" '
     'xmlns="jabber:client" to="localhost" version="1.0">', "bad-format"),
    ("encoding_latin1",
     '<?xml version="1.0" encoding="ISO-8859-1"?>' + header()[21:],
     "unsupported-encoding"),
]


@pytest.mark.parametrize("case,hdr,cond", BAD_HEADERS,
                         ids=[b[0] for b in BAD_HEADERS])
def test_bad_header(standin, nginx, raw, case, hdr, cond):
    sb = standin()
    ngx = nginx(standin=sb)
    c = raw(ngx.port)
    c.send(hdr)
    got = c.expect_stream_error(timeout=5)
    assert got == cond, "expected %s, got %s; received %r" % (cond, got,
                                                             c.text)
    # the CM answered with its own header first, then the error, then close
    assert c.text.index("<stream:stream") < c.text.index("<stream:error"), \
        c.text
    assert c.stream_ended(), "no </stream:stream> after the error: %r" % c.text
    # Openfire never heard of a session for a refused stream
    time.sleep(0.2)
    assert sb.inbound(r"<create") == [], sb.inbound(r"<create")
    assert sb.inbound(r"^\s*<route") == []


def test_good_header_response(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb)
    c = raw(ngx.port)
    h, feats = c.open()
    assert h.get("from") == "localhost", h
    assert h.get("version") == "1.0", h
    assert c.reader.header_raw_tag == q(NS_STREAM, "stream")
    m = SID_RE.match(h.get("id", ""))
    assert m, "stream id %r is not w<pid>-<16 hex>" % h.get("id")
    assert int(m.group(1)) in ngx.worker_pids()


def test_stream_ids_differ(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb)
    ids = set()
    for _ in range(5):
        c = raw(ngx.port)
        h, _ = c.open()
        assert SID_RE.match(h["id"]), h
        ids.add(h["id"])
        c.close()
    assert len(ids) == 5, ids
    rnd = [i.split("-")[1] for i in ids]
    assert len(set(rnd)) == 5


def test_preauth_features(standin, nginx, raw):
    sb = standin(mechanisms="PLAIN,SCRAM-SHA-1,SCRAM-SHA-1-PLUS,EXTERNAL,"
                            "DIGEST-MD5,SCRAM-SHA-256-PLUS")
    ngx = nginx(standin=sb)
    c = raw(ngx.port)
    _, feats = c.open()
    mechs = feats.find(q(NS_SASL, "mechanisms"))
    assert mechs is not None, tostr(feats)
    names = [m.text for m in mechs.findall(q(NS_SASL, "mechanism"))]
    assert names == ["PLAIN", "SCRAM-SHA-1", "DIGEST-MD5"], names
    assert feats.find(q(NS_REGISTER, "register")) is not None, tostr(feats)
    for child in feats:
        assert child.tag in (q(NS_SASL, "mechanisms"),
                             q(NS_REGISTER, "register"),
                             q("http://jabber.org/features/iq-auth", "auth"),
                             q("urn:xmpp:stream-limits:0", "limits")), \
            "unexpected feature %s" % tostr(child)


def test_features_follow_latest_configuration(standin, nginx, raw):
    """A new configuration IQ (after reconnect) changes the offered
    mechanisms."""
    sb = standin(mechanisms="PLAIN,SCRAM-SHA-1")
    ngx = nginx(standin=sb, extra="xmpp_cm_reconnect 100ms 1s;")
    c = raw(ngx.port)
    _, feats = c.open()
    names = [m.text for m in feats.iter(q(NS_SASL, "mechanism"))]
    assert names == ["PLAIN", "SCRAM-SHA-1"]
    c.close()
    sb.call("set", key="mechanisms", value="SCRAM-SHA-1,X-OTHER")
    old = {s["resource"] for s in sb.cm_sockets("cm1-")}
    sb.call("drop_sockets", cm=None)
    wait_until(lambda: len({s["resource"] for s in sb.cm_sockets("cm1-")}
                           - old) == 2, 10, what="reconnect")
    c = raw(ngx.port)
    _, feats = c.open()
    names = [m.text for m in feats.iter(q(NS_SASL, "mechanism"))]
    assert names == ["SCRAM-SHA-1", "X-OTHER"], names


def test_session_create_carries_client_ip(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb)
    c = raw(ngx.port)
    h, _ = c.open()
    sid = h["id"]
    s = wait_until(lambda: sb.session(sid), 5, what="session at stand-in")
    assert s["host"] == {"name": "127.0.0.1", "address": "127.0.0.1"}, s
    assert s["cm"].startswith("cm1-"), s
    creates = [x for x in sb.inbound(r"<create", sid)]
    assert len(creates) == 1, creates
    assert '<host name="127.0.0.1" address="127.0.0.1"/>' in creates[0], \
        creates[0]
    el = ET.fromstring(creates[0])
    assert el.tag == "iq" or el.tag.endswith("}iq"), creates[0]
    assert el.get("type") == "set" and el.get("id"), creates[0]


def test_restart_after_auth_offers_bind_session(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb)
    c = raw(ngx.port)
    h, _ = c.open()
    sid = h["id"]
    r = c.auth_plain("alice", "alicepw")
    assert r.tag == q(NS_SASL, "success"), tostr(r)
    h2, feats = c.restart()
    assert h2["id"] == sid, (h2, sid)
    assert feats.find(q(NS_BIND, "bind")) is not None, tostr(feats)
    sess = feats.find(q(NS_SESSION, "session"))
    assert sess is not None, tostr(feats)
    assert sess.find(q(NS_SESSION, "optional")) is not None, tostr(feats)
    assert feats.find(q(NS_SASL, "mechanisms")) is None, tostr(feats)
    res = c.iq('<bind xmlns="%s"><resource>r1</resource></bind>' % NS_BIND,
               "b1")
    assert res.get("type") == "result", tostr(res)
    jid = res.find(q(NS_BIND, "bind")).find(q(NS_BIND, "jid")).text
    assert jid == "alice@localhost/r1"
    s = wait_until(lambda: (sb.session(sid) or {}).get("jid"), 5,
                   what="bound session at stand-in")
    assert s == "alice@localhost/r1"


def test_stanza_routed_byte_for_byte(standin, nginx, raw):
    """Client stanzas reach Openfire inside <route to=DOMAIN from=CMNAME
    streamid=ID> with xmlns="jabber:client", otherwise unchanged."""
    sb = standin()
    ngx = nginx(standin=sb)
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="r1")
    sid = c.stream_id
    stanza = ('<message to="bob@localhost" type="chat" id="bb1">'
              '<body>byte &amp; for &lt;byte&gt; \u00e9\u4e2d</body>'
              '<x xmlns="urn:example:x" a="1"><y>t</y>\n  </x></message>')
    c.send(stanza)
    # by the payload's id, not a substring: the route's random stream id
    # and CM name are hex and may contain "bb1"
    routes = wait_until(
        lambda: [r for r in sb.routes_for(sid) if payload_ids(r) == ["bb1"]],
        5, what="route with the message")
    r = routes[0]
    el = ET.fromstring(r)
    assert el.tag == "route", r
    assert el.get("to") == "localhost", r
    assert el.get("streamid") == sid, r
    assert NAME_OK(el.get("from")), r
    inner = r[r.index(">") + 1:r.rindex("</route>")]
    assert 'xmlns="jabber:client"' in inner[:inner.index(">")], inner
    assert inner.replace(' xmlns="jabber:client"', "", 1) == stanza, \
        "payload changed:\n sent %r\n got  %r" % (stanza, inner)


def payload_ids(route):
    """The id attributes of a route's payload elements ([] if it does not
    parse)."""
    try:
        return [ch.get("id") for ch in ET.fromstring(route)]
    except ET.ParseError:
        return []


def NAME_OK(frm):
    return bool(frm) and re.match(r"^cm1-\d+-[0-9a-f]{6}(/.*)?$", frm)


def test_order_kept_single_session(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, log_level="info")
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    sid = c.stream_id
    c.send("".join('<message to="bob@localhost" id="o%d"><body>%d</body>'
                   '</message>' % (i, i) for i in range(300)))
    routes = wait_until(
        lambda: (lambda rs: rs if len(rs) >= 300 else None)(
            [r for r in sb.routes_for(sid) if 'id="o' in r]),
        10, what="300 routes")
    ids = [int(re.search(r'id="o(\d+)"', r).group(1)) for r in routes]
    assert ids == list(range(300))
