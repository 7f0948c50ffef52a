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


def start(nginx, sb, extra="", http_server="", listen="", **kw):
    wport = free_port()
    ngx = nginx(standin=sb, extra=extra,
                main_extra=http_block(wport, server=http_server,
                                      listen=listen), **kw)
    ngx.wport = wport
    return ngx


def ws(ngx, **kw):
    c = WsClient(ngx.wport, **kw)
    return c


# ------------------------------------------------------------ the core
def test_login_and_messages_with_a_tcp_client(standin, nginx, raw):
    """A web client logs in over WebSocket (SASL PLAIN through the
    stand-in, restart by a new <open/>, bind, session), and exchanges
    messages both ways with a TCP client through the same CM sockets."""
    sb = standin()
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
