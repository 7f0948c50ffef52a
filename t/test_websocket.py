"""XMPP over WebSocket (RFC 7395): `xmpp_cm_websocket NAME;` in an http
location of the same nginx, sharing the stream server's CM sockets to
Openfire (the stand-in) and its client settings.

The client is t/lib/ws.py: handshake and frames written by hand, every
server message parsed on its own as an XML document (RFC 7395 3.3.1), so
that the rule-breaking cases (unmasked, binary, fragmented, oversize,
two elements, partial elements) can be sent too."""
import base64
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest

from lib.metrics import Metrics, scrape, parse
from lib.raw import q as rq
from lib.util import free_port, wait_until
from lib.ws import (BINARY, CLOSE, CONT, NS_BIND, NS_CLIENT, NS_FRAMING,
                    NS_SASL, NS_STREAM, PING, PONG, TEXT, HandshakeError,
                    WsClient, frame, open_el, q)

COMPRESS = "http://jabber.org/features/compress"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"


def http_block(port, location="/xmpp-websocket", name="cm1", server="",
               listen="", more=""):
    return """
http {
    access_log access.log;
    client_body_temp_path http_body;
    proxy_temp_path http_proxy;
    fastcgi_temp_path http_fastcgi;
    uwsgi_temp_path http_uwsgi;
    scgi_temp_path http_scgi;
    server {
        listen 127.0.0.1:%d%s;
        %s
        location = %s { xmpp_cm_websocket %s; }
        location = /metrics { xmpp_cm_metrics; }
        %s
    }
}
""" % (port, listen, server, location, name, more)


def start(nginx, sb, extra="", http_server="", listen="", main_extra="",
          **kw):
    wport = free_port()
    ngx = nginx(standin=sb, extra=extra,
                main_extra=main_extra + http_block(wport, server=http_server,
                                                   listen=listen), **kw)
    ngx.wport = wport
    return ngx


_clients = []


@pytest.fixture(autouse=True)
def _close_clients(nginx):
    """clients close before nginx quits (it waits for open sessions)"""
    yield
    while _clients:
        _clients.pop().close()


def ws(ngx, **kw):
    c = WsClient(ngx.wport, **kw)
    _clients.append(c)
    return c


# ------------------------------------------------------------ the core
@pytest.mark.parametrize("version", ["4.1", "4.8"])
def test_login_and_messages_with_a_tcp_client(standin, nginx, raw, version):
    """A web client logs in over WebSocket (SASL PLAIN through the
    stand-in, restart by a new <open/>, bind, session), and exchanges
    messages both ways with a TCP client through the same CM sockets;
    with Openfire 4.1's inline and 4.8's escaped-text SASL payloads."""
    sb = standin(version=version)
    ngx = start(nginx, sb)
    c = ws(ngx)
    o, feats = c.open()
    # RFC 7395 3.4: the answer is an <open/> with the stream's id and
    # version; no STARTTLS nor XEP-0138 over WebSocket
    assert o.get("version") == "1.0" and o.get("from") == "localhost"
    assert o.get("id") and len(o.get("id")) >= 8
    mechs = [m.text for m in feats.iter(q(NS_SASL, "mechanism"))]
    assert "PLAIN" in mechs
    assert feats.find(q(NS_TLS, "starttls")) is None
    r = c.auth_plain("alice", "alicepw")
    assert r.tag == q(NS_SASL, "success")
    o2, feats = c.open()
    assert o2.get("id") == o.get("id")
    assert feats.find(q(NS_BIND, "bind")) is not None
    assert feats.find(q(COMPRESS, "compression")) is None
    res = c.iq('<bind xmlns="%s"><resource>web</resource></bind>' % NS_BIND,
               "b1")
    assert res.get("type") == "result"
    assert res.find(q(NS_BIND, "bind")).find(q(NS_BIND, "jid")).text == \
        "alice@localhost/web"

    bob = raw(ngx.port)
    assert bob.login("bob", "bobpw", resource="tcp") == "bob@localhost/tcp"

    c.send('<message xmlns="jabber:client" to="bob@localhost/tcp" '
           'type="chat" id="w1"><body>hello from the web \u00e9</body>'
           '</message>')
    m = bob.next_element(match=lambda e: e.tag == rq(NS_CLIENT, "message"))
    assert m.get("from") == "alice@localhost/web" and m.get("id") == "w1"
    assert m.find(rq(NS_CLIENT, "body")).text == "hello from the web \u00e9"

    bob.send('<message to="alice@localhost/web" type="chat" id="t1">'
             '<body>hi web</body></message>')
    m = c.next_element(match=lambda e: e.tag == q(NS_CLIENT, "message"))
    assert m.get("from") == "bob@localhost/tcp" and m.get("id") == "t1"
    assert m.find(q(NS_CLIENT, "body")).text == "hi web"

    # the session on Openfire is the CM's, created like a TCP client's,
    # with the HTTP client's address
    s = sb.session(o.get("id"))
    assert s is not None, sb.state().get("sessions")
    creates = [x for x in sb.inbound(r"<session\b.*<create", o.get("id"))]
    assert creates and "127.0.0.1" in creates[0], creates

    # RFC 7395 3.6: <close/>, answered with <close/> and a close frame
    c.send('<close xmlns="%s"/>' % NS_FRAMING)
    got = c.until_close()
    assert got and ET.fromstring(got[-1]).tag == q(NS_FRAMING, "close")
    assert c.close_code == 1000
    wait_until(lambda: sb.close_iqs_for(o.get("id")), 10,
               what="session close at Openfire")


def closes_with(c, cond, code, timeout=5):
    """The server ends the stream: (<open/> if none was sent yet), the
    stream error, <close/>, a close frame with code, then the end of the
    connection.  Returns the messages."""
    got = c.until_close(timeout)
    assert c.stream_error(got) == cond, got
    tags = [ET.fromstring(m).tag for m in got]
    assert tags[-1] == q(NS_FRAMING, "close"), got
    assert tags[-2] == q(NS_STREAM, "error"), got
    assert c.close_code == code, (c.close_code, got)
    return got


# ------------------------------------------------------------ the upgrade
def test_handshake_refusals(standin, nginx):
    """RFC 6455 4.2.1 and RFC 7395 3.1: the subprotocol xmpp is required
    and echoed; a bad key, version or upgrade is an HTTP error."""
    sb = standin()
    ngx = start(nginx, sb)

    def refused(**kw):
        c = WsClient(ngx.wport, connect_only=True)
        try:
            c.handshake(**kw)
        except HandshakeError as e:
            return e.status, e.headers
        finally:
            c.close()
        raise AssertionError("upgrade accepted: %r" % kw)

    assert refused(protocols=None)[0] == 400
    assert refused(protocols="xmpp2, XMPP")[0] == 400
    assert refused(key="c2hvcnQ=")[0] == 400
    assert refused(key="!" * 24)[0] == 400
    st, h = refused(version="12")
    assert st == 426 and h.get("sec-websocket-version") == "13", h
    assert refused(method="POST")[0] == 405
    c = ws(ngx, connect_only=True)
    c.sock.sendall(b"GET /xmpp-websocket HTTP/1.1\r\nHost: x\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   b"Sec-WebSocket-Version: 13\r\n"
                   b"Sec-WebSocket-Protocol: xmpp\r\n\r\n")
    st, h = c._read_response()
    assert st == 426 and h.get("upgrade") == "websocket", (st, h)
    c.close()
    assert len(ngx.log_lines(r"websocket upgrade refused")) == 7
    assert not sb.sessions(), "a refused upgrade made a session"
    # a list of subprotocols with xmpp in it: xmpp is echoed
    c = ws(ngx, protocols="chat, xmpp")
    c.open()


def test_frames_right_behind_the_request(standin, nginx):
    """The client's first frames may arrive with the upgrade request in one
    read: they are the stream's first bytes."""
    sb = standin()
    ngx = start(nginx, sb)
    c = ws(ngx, connect_only=True)
    key = base64.b64encode(os.urandom(16)).decode()
    req = ("GET /xmpp-websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
           "Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: %s\r\n"
           "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n"
           % key).encode()
    c.sock.sendall(req + frame(TEXT, open_el()))
    st, h = c._read_response()
    assert st == 101
    o = c.next_element()
    assert o.tag == q(NS_FRAMING, "open")
    f = c.next_element()
    assert f.tag == q(NS_STREAM, "features")


def test_byte_by_byte_frames_and_big_messages(standin, nginx, raw):
    """Frames cut at every byte across reads, and messages past the 16- and
    64-bit length forms, both ways."""
    sb = standin()
    ngx = start(nginx, sb, extra="xmpp_cm_max_stanza_size 200k;")
    c = ws(ngx)
    data = frame(TEXT, open_el())
    for i in range(len(data)):
        c.send_raw(data[i:i + 1])
        time.sleep(0.002)
    c.next_element()
    c.next_element()
    r = c.auth_plain("alice", "alicepw")
    assert r.tag == q(NS_SASL, "success")
    c.open()
    c.iq('<bind xmlns="%s"><resource>web</resource></bind>' % NS_BIND, "b1")
    bob = raw(ngx.port)
    bob.login("bob", "bobpw", resource="tcp")
    for size in (100, 1000, 70000, 150000):
        body = "x" * size
        c.send('<message xmlns="jabber:client" to="bob@localhost/tcp" '
               'id="s%d"><body>%s</body></message>' % (size, body))
        m = bob.next_element(match=lambda e: e.get("id") == "s%d" % size,
                             timeout=10)
        assert m.find(rq(NS_CLIENT, "body")).text == body
        bob.send('<message to="alice@localhost/web" id="r%d"><body>%s'
                 '</body></message>' % (size, body))
        m = c.next_element(match=lambda e: e.get("id") == "r%d" % size,
                           timeout=10)
        assert m.find(q(NS_CLIENT, "body")).text == body


# ------------------------------------------------------------ frames
def test_fragmented_message_with_ping_between(standin, nginx, raw):
    """A message in three fragments with a ping between them (RFC 6455
    5.4: control frames may come between fragments): the pong carries the
    ping's payload, the message is one stanza."""
    sb = standin()
    ngx = start(nginx, sb)
    c = ws(ngx)
    c.login("alice", "alicepw")
    bob = raw(ngx.port)
    bob.login("bob", "bobpw", resource="tcp")
    msg = ('<message xmlns="jabber:client" to="bob@localhost/tcp" id="f1">'
           '<body>in three parts</body></message>').encode()
    c.send_frame(TEXT, msg[:10], fin=False)
    c.send_frame(PING, b"are you there")
    c.send_frame(CONT, msg[10:40], fin=False)
    c.send_frame(CONT, msg[40:], fin=True)
    fin, op, payload = c.recv_frame()
    assert (fin, op, payload) == (True, PONG, b"are you there")
    m = bob.next_element(match=lambda e: e.get("id") == "f1")
    assert m.find(rq(NS_CLIENT, "body")).text == "in three parts"
    # a pong the client sends unasked is let go
    c.send_frame(PONG, b"x")
    c.send('<iq xmlns="jabber:client" type="get" id="p1" to="localhost">'
           '<ping xmlns="urn:xmpp:ping"/></iq>')
    r = c.next_element(match=lambda e: e.get("id") == "p1")
    assert r.get("type") in ("result", "error")


def test_close_frame_from_the_client(standin, nginx):
    """RFC 6455 5.5.1: a close frame is answered with <close/> and a close
    frame; the session at Openfire closes."""
    sb = standin()
    ngx = start(nginx, sb)
    c = ws(ngx)
    o, _ = c.open()
    c.send_frame(CLOSE, struct.pack("!H", 1000))
    got = c.until_close()
    assert [ET.fromstring(m).tag for m in got] == [q(NS_FRAMING, "close")]
    assert c.close_code == 1000
    wait_until(lambda: sb.close_iqs_for(o.get("id")), 10,
               what="session close at Openfire")


@pytest.mark.parametrize("case,cond,code", [
    ("unmasked", "bad-format", 1002),
    ("binary", "bad-format", 1003),
    ("rsv", "bad-format", 1002),
    ("opcode", "bad-format", 1002),
    ("bad_continuation", "bad-format", 1002),
    ("fragmented_control", "bad-format", 1002),
    ("long_control", "bad-format", 1002),
    ("two_elements", "bad-format", 1000),
    ("partial", "not-well-formed", 1000),
    ("text_only", "not-well-formed", 1000),
    ("bad_utf8", "unsupported-encoding", 1007),
    ("bad_xml", "not-well-formed", 1000),
    ("stream_header", "restricted-xml", 1000),
    ("open_twice", "bad-format", 1000),
    ("open_wrong_ns", "invalid-namespace", 1000),
])
def test_rule_breaking_frames(standin, nginx, case, cond, code):
    """Each rule of RFC 6455 and RFC 7395 3.3 broken once, in an open
    stream: the stream error, <close/>, the close code, the end."""
    sb = standin()
    ngx = start(nginx, sb)
    c = ws(ngx)
    o, _ = c.open()
    stanza = '<presence xmlns="jabber:client"/>'
    send = {
        "unmasked": lambda: c.send_frame(TEXT, stanza, mask=False),
        "binary": lambda: c.send_frame(BINARY, stanza),
        "rsv": lambda: c.send_frame(TEXT, stanza, rsv=4),
        "opcode": lambda: c.send_frame(3, stanza),
        "bad_continuation": lambda: c.send_frame(CONT, stanza),
        "fragmented_control": lambda: c.send_frame(PING, b"x", fin=False),
        "long_control": lambda: c.send_frame(PING, b"x" * 126),
        "two_elements": lambda: c.send(stanza + stanza),
        "partial": lambda: c.send('<iq xmlns="jabber:client" type="get">'),
        "text_only": lambda: c.send("hello"),
        "bad_utf8": lambda: c.send_frame(
            TEXT, b'<presence xmlns="jabber:client"><status>\xc3\x28'
                  b'</status></presence>'),
        "bad_xml": lambda: c.send('<iq xmlns="jabber:client"></message>'),
        "stream_header": lambda: c.send(
            '<?xml version="1.0"?>'),
        "open_twice": lambda: c.send(open_el()),
        "open_wrong_ns": lambda: c.send(
            '<open xmlns="jabber:client" to="localhost" version="1.0"/>'),
    }[case]
    send()
    closes_with(c, cond, code)
    wait_until(lambda: sb.close_iqs_for(o.get("id")), 10,
               what="session close at Openfire")


def test_oversize_messages(standin, nginx, raw):
    """A message is one element: xmpp_cm_preauth_max_stanza_size before
    authentication and xmpp_cm_max_stanza_size after it bound the message
    (a message of exactly the limit is taken, one byte more is
    policy-violation with close code 1009), whole or in fragments; the
    length is refused from the frame header, before the bytes come."""
    sb = standin()
    ngx = start(nginx, sb, extra="xmpp_cm_preauth_max_stanza_size 1000;\n"
                                 "xmpp_cm_max_stanza_size 4000;")
    c = ws(ngx)
    c.open()
    c.send('<presence xmlns="jabber:client">%s</presence>' % (" " * 1000))
    closes_with(c, "policy-violation", 1009)

    c = ws(ngx)
    c.login("alice", "alicepw")
    bob = raw(ngx.port)
    bob.login("bob", "bobpw", resource="tcp")
    head = '<message xmlns="jabber:client" to="bob@localhost/tcp" id="%s">' \
           '<body>'
    tail = '</body></message>'

    def msg(mid, size):
        pad = size - len(head % mid) - len(tail)
        s = (head % mid) + "y" * pad + tail
        assert len(s) == size
        return s

    c.send(msg("exact", 4000))
    m = bob.next_element(match=lambda e: e.get("id") == "exact")
    assert len(m.find(rq(NS_CLIENT, "body")).text) > 3900
    s = msg("over", 4001).encode()
    c.send_frame(TEXT, s[:2000], fin=False)
    c.send_frame(CONT, s[2000:], fin=True)
    closes_with(c, "policy-violation", 1009)

    # only the header of a 1 GiB frame: refused at once
    c = ws(ngx)
    c.open()
    c.send_raw(struct.pack("!BBQ", 0x81, 0x80 | 127, 1 << 30) + b"abcd")
    closes_with(c, "policy-violation", 1009)


def test_stanza_before_open_and_unknown_host(standin, nginx):
    """RFC 7395 3.3.3: an error during the opening is sent after an
    <open/>; a stanza before <open/> is bad-format."""
    sb = standin()
    ngx = start(nginx, sb)
    c = ws(ngx)
    c.send('<presence xmlns="jabber:client"/>')
    got = closes_with(c, "bad-format", 1000)
    assert ET.fromstring(got[0]).tag == q(NS_FRAMING, "open")
    c = ws(ngx)
    c.send(open_el("nowhere.example"))
    got = closes_with(c, "host-unknown", 1000)
    assert ET.fromstring(got[0]).tag == q(NS_FRAMING, "open")
    assert not sb.sessions()


def test_no_starttls_no_compression(standin, nginx, raw, cert):
    """TLS is the http server's, even when the stream server requires
    STARTTLS of TCP clients; XEP-0138, offered to TCP clients, is neither
    offered nor taken over WebSocket."""
    sb = standin()
    ngx = start(nginx, sb, extra="xmpp_cm_starttls required;\n"
                "ssl_certificate %s;\nssl_certificate_key %s;"
                % (cert / "c.pem", cert / "k.pem"))
    t = raw(ngx.port)
    _, f = t.open()
    assert f.find(rq(NS_TLS, "starttls")) is not None
    c = ws(ngx)
    _, f = c.open()
    assert f.find(q(NS_TLS, "starttls")) is None
    c.send('<starttls xmlns="%s"/>' % NS_TLS)
    got = c.until_close()
    assert ET.fromstring(got[0]).tag == q(NS_TLS, "failure"), got

    sb2 = standin()
    ngx = start(nginx, sb2, extra="xmpp_cm_compression on;")
    t2 = raw(ngx.port)
    t2.open()
    t2.auth_plain("bob", "bobpw")
    _, f = t2.restart()
    assert f.find(rq(COMPRESS, "compression")) is not None
    c = ws(ngx)
    c.open()
    c.auth_plain("alice", "alicepw")
    _, f = c.open()
    assert f.find(q(COMPRESS, "compression")) is None
    c.send('<compress xmlns="http://jabber.org/protocol/compress">'
           '<method>zlib</method></compress>')
    r = c.next_element()
    assert r.tag == "{http://jabber.org/protocol/compress}failure", r


def test_auth_timeout_over_websocket(standin, nginx):
    """The stream server's timeouts hold: not authenticated in time is a
    connection-timeout stream error over the WebSocket too."""
    sb = standin()
    ngx = start(nginx, sb, extra="xmpp_cm_auth_timeout 1s;")
    c = ws(ngx)
    c.open()
    closes_with(c, "connection-timeout", 1000, timeout=6)


def test_stanza_timeout_counts_a_trickled_frame(standin, nginx):
    """xmpp_cm_stanza_timeout: a frame whose bytes trickle in is a partial
    stanza, as for TCP."""
    sb = standin()
    ngx = start(nginx, sb, extra="xmpp_cm_stanza_timeout 1s;\n"
                                 "xmpp_cm_idle_timeout 60s;")
    c = ws(ngx)
    c.login("alice", "alicepw")
    data = frame(TEXT, '<presence xmlns="jabber:client"/>')
    t0 = time.monotonic()
    for b in data[:-1]:
        c.send_raw(bytes([b]))
        r, _, _ = select.select([c.sock], [], [], 0.3)
        if r:
            break
    closes_with(c, "connection-timeout", 1000)
    assert 0.9 < time.monotonic() - t0 < 4


# ------------------------------------------------------------ config
def test_nginx_t_unknown_name(nginx_t, tmp_path):
    """nginx -t resolves NAME against the stream servers, whichever block
    comes first; an unknown NAME, or no stream{}, is refused clearly."""
    from conftest import server_block
    stream = server_block(free_port(), "127.0.0.1:%d" % free_port())
    http = """
}
http {
    access_log off;
    client_body_temp_path http_body;
    proxy_temp_path http_proxy;
    fastcgi_temp_path http_fastcgi;
    uwsgi_temp_path http_uwsgi;
    scgi_temp_path http_scgi;
    server {
        listen 127.0.0.1:%d;
        location = /xmpp-websocket { xmpp_cm_websocket %s; }
    }
""" % (free_port(), "%s")
    rc, out = nginx_t(stream + http % "cm1")
    assert rc == 0, out
    rc, out = nginx_t(stream + http % "CM1")
    assert rc == 0, out
    rc, out = nginx_t(stream + http % "nosuch")
    assert rc != 0, out
    assert re.search(r'\[emerg\].*"xmpp_cm_websocket nosuch" in \S+:\d+: no '
                     r'stream server with xmpp_cm_pass has the xmpp_cm_name '
                     r'"nosuch"', out), out
    rc, out = nginx_t(stream + http % ("cm1;\n xmpp_cm_websocket cm1"))
    assert rc != 0 and "is duplicate" in out, out


def test_http_before_stream(module_path, tmp_path):
    """http{} first, stream{} after it: the name still resolves."""
    import lib.nginx as nl
    from conftest import server_block
    conf = """%s
daemon off;
error_log %s/e.log info;
pid %s/n.pid;
events {}
http {
    access_log off;
    client_body_temp_path http_body;
    proxy_temp_path http_proxy;
    fastcgi_temp_path http_fastcgi;
    uwsgi_temp_path http_uwsgi;
    scgi_temp_path http_scgi;
    server {
        listen 127.0.0.1:%d;
        location = /xmpp-websocket { xmpp_cm_websocket %%s; }
    }
}
stream {
%s
}
""" % (nl.load_modules(str(tmp_path), module_path), tmp_path, tmp_path,
       free_port(), server_block(free_port(), "127.0.0.1:%d" % free_port()))
    rc, out = nl.nginx_t(str(tmp_path), conf % "cm1")
    assert rc == 0, out
    rc, out = nl.nginx_t(str(tmp_path), conf % "other")
    assert rc != 0 and 'the xmpp_cm_name "other"' in out, out
    # no stream{} at all
    rc, out = nl.nginx_t(str(tmp_path), conf.split("stream {")[0] % "cm1")
    assert rc != 0 and 'the xmpp_cm_name "cm1"' in out, out


# ------------------------------------------------------------ TLS, realip
@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    d = tmp_path_factory.mktemp("wscert")
    os.chmod(str(d), 0o755)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-keyout", str(d / "k.pem"), "-out", str(d / "c.pem")],
                   check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    for f in ("k.pem", "c.pem"):
        os.chmod(str(d / f), 0o644)
    return d


def test_over_tls(standin, nginx, raw, cert):
    """wss://: `listen ... ssl` in the http server; login and messages."""
    sb = standin()
    ngx = start(nginx, sb, listen=" ssl",
                http_server="ssl_certificate %s; ssl_certificate_key %s;"
                % (cert / "c.pem", cert / "k.pem"))
    c = ws(ngx, tls=True)
    assert c.login("alice", "alicepw") == "alice@localhost/web"
    bob = raw(ngx.port)
    bob.login("bob", "bobpw", resource="tcp")
    bob.send('<message to="alice@localhost/web" id="t1"><body>over tls'
             '</body></message>')
    m = c.next_element(match=lambda e: e.get("id") == "t1")
    assert m.find(q(NS_CLIENT, "body")).text == "over tls"
    c.send('<close xmlns="%s"/>' % NS_FRAMING)
    c.until_close()
    assert c.close_code == 1000


def test_realip_address_in_session_create(standin, nginx):
    """The session's host address at Openfire is the HTTP client's as
    nginx's realip module sets it."""
    sb = standin()
    ngx = start(nginx, sb, http_server="set_real_ip_from 127.0.0.1; "
                "real_ip_header X-Forwarded-For;")
    c = ws(ngx, extra_headers=["X-Forwarded-For: 203.0.113.7"])
    o, _ = c.open()
    s = sb.session(o.get("id"))
    assert s and s["host"] and s["host"]["address"] == "203.0.113.7", s


def test_metrics_count_websockets(standin, nginx):
    sb = standin()
    ngx = start(nginx, sb)
    m = Metrics(ngx.wport)
    c = ws(ngx)
    c.login("alice", "alicepw")
    m.fetch()
    assert m.value("xmpp_cm_websocket_connections") == 1
    assert m.value("xmpp_cm_websocket_upgrades_total") == 1
    assert m.value("xmpp_cm_streams", state="bound") == 1
    c.send('<close xmlns="%s"/>' % NS_FRAMING)
    c.until_close()
    wait_until(lambda: m.get("xmpp_cm_websocket_connections") == 0, 5,
               what="websocket gauge back to 0")
    assert m.value("xmpp_cm_websocket_upgrades_total") == 1


def test_graceful_quit_and_openfire_shutdown(standin, nginx, raw):
    """The worker's end reaches web clients as TCP ones: on a graceful quit
    with worker_shutdown_timeout, system-shutdown, <close/> and a close
    frame; a stream error Openfire sends goes out with the framing rules
    (its own message, stream prefix declared)."""
    sb = standin()
    ngx = start(nginx, sb, main_extra="worker_shutdown_timeout 1s;")
    c = ws(ngx)
    c.login("alice", "alicepw")
    t = raw(ngx.port)
    t.login("bob", "bobpw")
    ngx.quit(timeout=10)
    assert ngx.proc.returncode == 0, ngx.proc.returncode
    closes_with(c, "system-shutdown", 1000)
    assert t.expect_stream_error(3) == "system-shutdown"

    sb = standin()
    ngx = start(nginx, sb, extra="xmpp_cm_reconnect 200ms 1s;")
    c = ws(ngx)
    c.login("alice", "alicepw")
    sb.stop()
    closes_with(c, "system-shutdown", 1000)
