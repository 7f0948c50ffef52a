"""XMPP over BOSH (XEP-0124, XEP-0206): `xmpp_cm_bosh NAME;` in an http
location of the same nginx, sharing the stream server's CM sockets to
Openfire (the stand-in) and its client settings.

The client is t/lib/bosh.py: raw HTTP requests with http.client, several
connections side by side for held requests, each response body parsed on
its own."""
import base64
import os
import re
import time

import pytest

from lib.bosh import (Bosh, NS_BIND, NS_CLIENT, NS_HTTPBIND, NS_SASL,
                      NS_STREAM, NS_XBOSH, NS_XSTREAMS, q)
from lib import nginx as nginx_lib
from lib.raw import q as rq
from lib.util import free_port, wait_until


def http_block(port, name="cm1", more="", loc_more=""):
    return """
http {
    access_log access.log;
    client_body_temp_path http_body;
    proxy_temp_path http_proxy;
    fastcgi_temp_path http_fastcgi;
    uwsgi_temp_path http_uwsgi;
    scgi_temp_path http_scgi;
    server {
        listen 127.0.0.1:%d;
        %s
        location = /http-bind { xmpp_cm_bosh %s; %s }
        location = /metrics { xmpp_cm_metrics; }
    }
}
""" % (port, more, name, loc_more)


def start(nginx, sb, extra="", more="", loc_more="", **kw):
    hport = free_port()
    ngx = nginx(standin=sb, extra=extra,
                main_extra=http_block(hport, more=more, loc_more=loc_more),
                **kw)
    ngx.hport = hport
    return ngx


def chat(to, body, id_):
    return ('<message xmlns="jabber:client" to="%s" type="chat" id="%s">'
            '<body>%s</body></message>' % (to, id_, body))


# ------------------------------------------------------------ the core
def test_login_bind_and_messages_with_a_tcp_client(standin, nginx, raw):
    """Session creation (XEP-0124 7.1, XEP-0206 4: sid, wait, hold,
    requests, inactivity, authid, from, xmpp:version, xmlns:stream and the
    features), SASL PLAIN through the stand-in, restart, bind, messages
    both ways with a TCP client."""
    sb = standin()
    ngx = start(nginx, sb)
    b = Bosh(ngx.hport)
    r = b.create(to="localhost", wait="30", hold="1")
    assert r.status == 200 and not r.terminate, r.raw
    assert r.headers.get("Content-Type", "").startswith("text/xml")
    assert re.fullmatch(r"[0-9a-f]{32}", r.get("sid"))
    assert r.get("wait") == "30" and r.get("hold") == "1"
    assert r.get("requests") == "2" and r.get("inactivity") == "60"
    assert r.get("from") == "localhost"
    assert r.get("{%s}version" % NS_XBOSH) == "1.0"
    assert 'xmlns:stream="http://etherx.jabber.org/streams"' in \
        r.raw.decode()
    authid = r.get("authid")
    assert authid and len(authid) >= 8
    feats = r.body.find(q(NS_STREAM, "features"))
    mechs = [m.text for m in feats.iter(q(NS_SASL, "mechanism"))]
    assert "PLAIN" in mechs

    creds = base64.b64encode(b"\0alice\0alicepw").decode()
    r = b.request('<auth xmlns="%s" mechanism="PLAIN">%s</auth>'
                  % (NS_SASL, creds))
    assert [e.tag for e in r.children] == [q(NS_SASL, "success")], r.raw
    r = b.request("", **{"xmpp:restart": "true", "xmlns:xmpp": NS_XBOSH,
                         "to": "localhost"})
    feats = r.body.find(q(NS_STREAM, "features"))
    assert feats is not None and feats.find(q(NS_BIND, "bind")) is not None
    r = b.request('<iq xmlns="jabber:client" type="set" id="b1"><bind '
                  'xmlns="%s"><resource>web</resource></bind></iq>' % NS_BIND)
    iq = r.children[0]
    assert iq.get("type") == "result" and iq.get("id") == "b1"
    assert iq.find(q(NS_BIND, "bind")).find(q(NS_BIND, "jid")).text == \
        "alice@localhost/web"

    # the session at Openfire is the CM's, with the HTTP client's address
    creates = sb.inbound(r"<session\b.*<create", authid)
    assert creates and "127.0.0.1" in creates[0], creates

    bob = raw(ngx.port)
    assert bob.login("bob", "bobpw", resource="tcp") == "bob@localhost/tcp"

    # as a browser does (hold=1): one long-poll held, a new request
    # releases it and is held in its place
    poll = b.post("", conn=1)
    time.sleep(0.3)
    p = b.post(chat("bob@localhost/tcp", "hello from bosh \u00e9", "w1"))
    r = poll.wait(timeout=5)
    assert not r.terminate and r.children == [], r.raw
    m = bob.next_element(match=lambda e: e.tag == rq(NS_CLIENT, "message"))
    assert m.get("from") == "alice@localhost/web" and m.get("id") == "w1"
    assert m.find(rq(NS_CLIENT, "body")).text == "hello from bosh \u00e9"

    # the held request is released by data, at once
    bob.send('<message to="alice@localhost/web" type="chat" id="t1">'
             '<body>hi bosh</body></message>')
    t0 = time.monotonic()
    r = p.wait(timeout=5)
    assert time.monotonic() - t0 < 3
    msgs = [e for e in r.children if e.tag == q(NS_CLIENT, "message")]
    assert len(msgs) == 1 and msgs[0].get("id") == "t1", r.raw
    assert msgs[0].find(q(NS_CLIENT, "body")).text == "hi bosh"
    assert msgs[0].get("from") == "bob@localhost/tcp"
    # XEP-0206: stanzas in the body are qualified by jabber:client
    assert b'<message xmlns="jabber:client"' in r.raw

    # terminate (XEP-0124 12): answered, the session closed at Openfire
    r = b.request('<presence xmlns="jabber:client" type="unavailable"/>',
                  type="terminate")
    assert r.terminate and r.get("condition") is None, r.raw
    wait_until(lambda: sb.close_iqs_for(authid), 10,
               what="session close at Openfire")
    # the unavailable presence went up before the close
    assert sb.inbound(r'type="unavailable"', authid)
    r = b.request("")
    assert r.terminate and r.condition == "item-not-found", r.raw


def logged_in(ngx, user="alice", pw="alicepw", resource="web", wait="60"):
    b = Bosh(ngx.hport)
    b.create_wait = wait
    jid = b.login(user, pw, resource=resource, wait=wait)
    assert jid == "%s@localhost/%s" % (user, resource)
    return b


def test_wait_expiry_releases_an_empty_response(standin, nginx):
    """XEP-0124 10: a held request is answered empty when "wait" runs
    out; the client's wait is capped by xmpp_cm_bosh_max_wait."""
    sb = standin()
    ngx = start(nginx, sb, loc_more="xmpp_cm_bosh_max_wait 2s;")
    b = Bosh(ngx.hport)
    r = b.create(wait="60")
    assert r.get("wait") == "2", r.raw
    t0 = time.monotonic()
    r = b.request("")
    took = time.monotonic() - t0
    assert not r.terminate and r.children == [], r.raw
    assert 1.5 < took < 4, took


def test_hold_one_two_requests_the_older_is_answered(standin, nginx):
    """XEP-0124 11: with hold=1 a second request makes the CM answer the
    older one at once; the newer stays held until wait."""
    sb = standin()
    ngx = start(nginx, sb, loc_more="xmpp_cm_bosh_max_wait 3s;")
    b = Bosh(ngx.hport)
    assert b.create(hold="1").get("hold") == "1"
    first = b.post("", conn=0)
    time.sleep(0.5)
    t0 = time.monotonic()
    second = b.post("", conn=1)
    r1 = first.wait(timeout=5)
    assert time.monotonic() - t0 < 1.5
    assert not r1.terminate and r1.children == []
    r2 = second.wait(timeout=6)
    assert time.monotonic() - t0 > 2
    assert not r2.terminate


def test_hold_zero_is_polling(standin, nginx):
    sb = standin()
    ngx = start(nginx, sb)
    b = Bosh(ngx.hport)
    r = b.create(hold="0")
    assert r.get("hold") == "0" and r.get("requests") == "1"
    t0 = time.monotonic()
    r = b.request("")
    assert time.monotonic() - t0 < 1 and not r.terminate


def test_repeated_rid_gets_the_same_response(standin, nginx):
    """XEP-0124 14.3: a request repeated (its response was lost) gets the
    same response again."""
    sb = standin()
    ngx = start(nginx, sb)
    b = Bosh(ngx.hport)
    b.create()
    creds = base64.b64encode(b"\0alice\0alicepw").decode()
    auth = '<auth xmlns="%s" mechanism="PLAIN">%s</auth>' % (NS_SASL, creds)
    body, rid = b.body(auth)
    r1 = b.start(body, 0, rid).wait()
    assert [e.tag for e in r1.children] == [q(NS_SASL, "success")]
    r2 = b.start(body, 1, rid).wait(timeout=5)
    assert r2.raw == r1.raw
    # the session goes on: the restart is taken
    r = b.request("", **{"xmpp:restart": "true", "xmlns:xmpp": NS_XBOSH})
    assert r.body.find(q(NS_STREAM, "features")) is not None, r.raw
    # one authentication went to Openfire, not two
    assert len(sb.inbound(r"<auth\b")) == 1


def test_rid_out_of_window_terminates(standin, nginx):
    """XEP-0124 14.1: a rid beyond the window (requests) ends the session
    with item-not-found, in an HTTP 200; Openfire's session is closed."""
    sb = standin()
    ngx = start(nginx, sb)
    b = Bosh(ngx.hport)
    r = b.create()
    authid = r.get("authid")
    r = b.request("", rid=b.rid + 5)
    assert r.status == 200 and r.terminate, r.raw
    assert r.condition == "item-not-found"
    wait_until(lambda: sb.close_iqs_for(authid), 10,
               what="session close at Openfire")
    r = b.request("")
    assert r.terminate and r.condition == "item-not-found"


def test_rid_behind_without_kept_response_terminates(standin, nginx):
    sb = standin()
    ngx = start(nginx, sb)
    b = Bosh(ngx.hport)
    b.create()
    r = b.request("", rid=b.rid - 10)
    assert r.terminate and r.condition == "item-not-found", r.raw


def test_rid_gap_is_taken_in_order(standin, nginx, raw):
    """XEP-0124 14.2: a request that arrives before the one with the rid
    below it waits for it; both are then taken in rid order (the TCP
    client gets m1 before m2 although m2 was sent first)."""
    sb = standin()
    ngx = start(nginx, sb, loc_more="xmpp_cm_bosh_max_wait 2s;")
    bob = raw(ngx.port)
    bob.login("bob", "bobpw", resource="tcp")
    b = Bosh(ngx.hport)
    b.login("alice", "alicepw", resource="web")
    rid = b.rid
    body2, _ = b.body(chat("bob@localhost/tcp", "second", "m2"),
                      rid=rid + 2)
    later = b.start(body2, 1, rid + 2)
    time.sleep(0.5)
    bob.pump(0.3)
    assert "m2" not in bob.text
    body1, _ = b.body(chat("bob@localhost/tcp", "first", "m1"), rid=rid + 1)
    first = b.start(body1, 0, rid + 1)
    r1 = first.wait(timeout=5)
    r2 = later.wait(timeout=5)
    assert not r1.terminate and not r2.terminate, (r1.raw, r2.raw)
    m = bob.next_element(match=lambda e: e.tag == rq(NS_CLIENT, "message"))
    assert m.get("id") == "m1"
    m = bob.next_element(match=lambda e: e.tag == rq(NS_CLIENT, "message")
                         and e.get("id") != "m1")
    assert m.get("id") == "m2"
    b.rid = rid + 2


def test_unknown_sid_is_item_not_found(standin, nginx):
    sb = standin()
    ngx = start(nginx, sb)
    b = Bosh(ngx.hport)
    b.sid = "0" * 32
    r = b.request("")
    assert r.status == 200 and r.terminate
    assert r.condition == "item-not-found"


@pytest.mark.parametrize("body", [
    "<body xmlns='http://jabber.org/protocol/httpbind' rid='1' to='localhost'",
    "<body xmlns='urn:other' rid='1' to='localhost'/>",
    "<body xmlns='http://jabber.org/protocol/httpbind' to='localhost'/>",
    "<body xmlns='http://jabber.org/protocol/httpbind' rid='x1'/>",
    "<!DOCTYPE body [<!ENTITY a 'b'>]><body "
    "xmlns='http://jabber.org/protocol/httpbind' rid='1'/>",
    "",
])
def test_bad_request(standin, nginx, body):
    """XEP-0124 17.2 bad-request for what is not a <body/> with a rid."""
    sb = standin()
    ngx = start(nginx, sb, wait_sockets=False)
    b = Bosh(ngx.hport)
    r = b.start(body).wait()
    assert r.status == 200 and r.terminate, r.raw
    assert r.condition == "bad-request"


def test_partial_children_are_bad_request(standin, nginx):
    """The children of a body are whole elements: a partial one ends the
    session with bad-request rather than waiting in the framer."""
    sb = standin()
    ngx = start(nginx, sb)
    b = Bosh(ngx.hport)
    authid = b.create().get("authid")
    r = b.request("<message xmlns='jabber:client'><body>x</body></message>"
                  "<![CDATA[<message>]]>")
    assert r.terminate and r.condition == "bad-request", r.raw
    wait_until(lambda: sb.close_iqs_for(authid), 10,
               what="session close at Openfire")


def test_restart_before_authentication_is_bad_request(standin, nginx):
    sb = standin()
    ngx = start(nginx, sb)
    b = Bosh(ngx.hport)
    b.create()
    r = b.request("", **{"xmpp:restart": "true", "xmlns:xmpp": NS_XBOSH})
    assert r.terminate and r.condition == "bad-request", r.raw


def test_body_over_the_limit_is_policy_violation(standin, nginx):
    sb = standin()
    ngx = start(nginx, sb, extra="xmpp_cm_max_stanza_size 4k;")
    b = Bosh(ngx.hport)
    b.create()
    r = b.request(chat("bob@localhost", "x" * 20000, "big"))
    assert r.terminate and r.condition == "policy-violation", r.raw


def test_stanza_over_the_limit_is_a_stream_error(standin, nginx):
    """The engine's limits hold as for TCP: a stanza over
    xmpp_cm_preauth_max_stanza_size ends the stream with policy-violation,
    in a remote-stream-error (XEP-0206 7)."""
    sb = standin()
    ngx = start(nginx, sb, extra="xmpp_cm_preauth_max_stanza_size 2k;")
    b = Bosh(ngx.hport)
    b.create()
    r = b.request('<auth xmlns="%s" mechanism="PLAIN">%s</auth>'
                  % (NS_SASL, "A" * 3000))
    assert r.terminate and r.condition == "remote-stream-error", r.raw
    err = r.body.find(q(NS_STREAM, "error"))
    assert err is not None and err.find(q(NS_XSTREAMS, "policy-violation")) \
        is not None, r.raw


def test_inactivity_ends_the_session_and_returns_messages(standin, nginx,
                                                          raw):
    """XEP-0124 7.1 inactivity: no request held for that long ends the
    session; a message queued for it goes back to Openfire in
    <session><failed> (openfire-cm-protocol.md 5.4) before the close."""
    sb = standin()
    ngx = start(nginx, sb, loc_more="xmpp_cm_bosh_inactivity 2s;")
    b = Bosh(ngx.hport)
    b.login("alice", "alicepw", resource="web")
    authid = [x for x in sb.inbound(r"<create") if "<iq" in x]
    bob = raw(ngx.port)
    bob.login("bob", "bobpw", resource="tcp")
    bob.send('<message to="alice@localhost/web" type="chat" id="lost1">'
             '<body>are you there</body></message>')
    sid = re.search(r'id="([^"]+)"><create', authid[-1]).group(1)
    wait_until(lambda: sb.close_iqs_for(sid), 10,
               what="session close at Openfire")
    failed = sb.inbound(r"<failed>.*lost1", sid)
    assert failed, sb.inbound(None, sid)[-5:]
    assert 'xmlns="jabber:client"' in failed[0]
    # the failed IQ went before the close
    evs = sb.inbound(None, sid)
    i_failed = next(i for i, x in enumerate(evs) if "<failed>" in x)
    i_close = next(i for i, x in enumerate(evs)
                   if "<iq" in x and "<close" in x)
    assert i_failed < i_close
    r = b.request("")
    assert r.terminate and r.condition == "item-not-found"


def test_cors_preflight_and_origin(standin, nginx):
    sb = standin()
    ngx = start(nginx, sb, loc_more="xmpp_cm_bosh_allow_origin "
                "https://chat.example.com http://localhost:8080;")
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", ngx.hport, timeout=5)
    c.request("OPTIONS", "/http-bind", headers={
        "Origin": "https://chat.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    r = c.getresponse()
    r.read()
    h = {k.lower(): v for k, v in r.getheaders()}
    assert r.status == 200
    assert h["access-control-allow-origin"] == "https://chat.example.com"
    assert "POST" in h["access-control-allow-methods"]
    assert "content-type" in h["access-control-allow-headers"].lower()
    c.request("OPTIONS", "/http-bind", headers={
        "Origin": "https://evil.example.net",
        "Access-Control-Request-Method": "POST"})
    r = c.getresponse()
    r.read()
    h = {k.lower(): v for k, v in r.getheaders()}
    assert r.status == 403 and "access-control-allow-origin" not in h
    b = Bosh(ngx.hport, origin="http://localhost:8080")
    r = b.create()
    h = {k.lower(): v for k, v in r.headers.items()}
    assert h["access-control-allow-origin"] == "http://localhost:8080"
    b = Bosh(ngx.hport, origin="https://evil.example.net")
    r = b.create()
    h = {k.lower(): v for k, v in r.headers.items()}
    assert "access-control-allow-origin" not in h


def test_get_is_not_allowed(standin, nginx):
    sb = standin()
    ngx = start(nginx, sb, wait_sockets=False)
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", ngx.hport, timeout=5)
    c.request("GET", "/http-bind")
    r = c.getresponse()
    r.read()
    assert r.status == 405


STREAM = """
    server {
        listen 127.0.0.1:1;
        xmpp_cm_pass 127.0.0.1:2;
        xmpp_cm_domain localhost;
        xmpp_cm_name cm1;
        xmpp_cm_secret s;
    }
"""


def nginx_t_http(tmp_path, module_path, http):
    conf = nginx_lib.make_conf(str(tmp_path), module_path, STREAM,
                               log_level="info",
                               main_extra="http {\n server {\n listen "
                               "127.0.0.1:3;\n %s\n }\n}\n" % http)
    return nginx_lib.nginx_t(str(tmp_path), conf)


@pytest.mark.parametrize("http,msg", [
    ("location = /b { xmpp_cm_bosh nosuch; }",
     'no stream server with xmpp_cm_pass has the xmpp_cm_name "nosuch"'),
    ("location = /b { xmpp_cm_bosh cm1; xmpp_cm_bosh_allow_origin "
     "chat.example.com; }",
     'invalid "xmpp_cm_bosh_allow_origin" "chat.example.com"'),
    ("location = /b { xmpp_cm_bosh cm1; xmpp_cm_bosh_max_wait 0; }",
     "must be at least 1s"),
    ("location = /b { xmpp_cm_bosh cm1; xmpp_cm_bosh_max_hold 100; }",
     "must be between"),
])
def test_nginx_t_rejects(tmp_path, module_path, http, msg):
    rc, out = nginx_t_http(tmp_path, module_path, http)
    assert rc != 0 and msg in out, out


def test_nginx_t_accepts(tmp_path, module_path):
    rc, out = nginx_t_http(tmp_path, module_path, """
        location = /http-bind {
            xmpp_cm_bosh cm1;
            xmpp_cm_bosh_allow_origin *;
            xmpp_cm_bosh_max_wait 30s;
            xmpp_cm_bosh_inactivity 90s;
            xmpp_cm_bosh_max_hold 2;
        }""")
    assert rc == 0, out


def test_metrics_count_bosh_sessions(standin, nginx):
    """The same metrics as TCP clients (a BOSH session is a client stream:
    authenticating, then bound), and the BOSH gauge and counters."""
    from lib.metrics import Metrics
    sb = standin()
    ngx = start(nginx, sb)
    m = Metrics(ngx.hport)
    assert m.get("xmpp_cm_bosh_sessions", cm="cm1") == 0
    b = Bosh(ngx.hport)
    b.create()
    assert m.get("xmpp_cm_bosh_sessions", cm="cm1") == 1
    assert m.get("xmpp_cm_streams", cm="cm1", state="authenticating") == 1
    b.close()
    b = Bosh(ngx.hport)
    b.login("alice", "alicepw")
    assert m.get("xmpp_cm_bosh_sessions", cm="cm1") == 2
    assert m.get("xmpp_cm_bosh_sessions_total", cm="cm1") == 2
    assert m.get("xmpp_cm_streams", cm="cm1", state="bound") == 1
    # create, auth, restart, bind: 4, plus the first session's creation
    assert m.get("xmpp_cm_bosh_requests_total", cm="cm1") == 5
    r = b.request("", type="terminate")
    assert r.terminate
    wait_until(lambda: m.get("xmpp_cm_bosh_sessions", cm="cm1") == 1, 5,
               what="the gauge down after terminate")
    assert m.get("xmpp_cm_streams", cm="cm1", state="bound") == 0


def test_auth_timeout_ends_a_held_request(standin, nginx):
    """The engine's timers run on a BOSH session as on a TCP client:
    xmpp_cm_auth_timeout ends an unauthenticated session, and the held
    request carries the stream error (remote-stream-error)."""
    sb = standin()
    ngx = start(nginx, sb, extra="xmpp_cm_auth_timeout 1s;")
    b = Bosh(ngx.hport)
    authid = b.create().get("authid")
    t0 = time.monotonic()
    r = b.request("", timeout=10)
    assert time.monotonic() - t0 < 5
    assert r.terminate and r.condition == "remote-stream-error", r.raw
    err = r.body.find(q(NS_STREAM, "error"))
    assert err.find(q(NS_XSTREAMS, "connection-timeout")) is not None
    wait_until(lambda: sb.close_iqs_for(authid), 10,
               what="session close at Openfire")


def test_terminate_returns_what_waits_to_openfire(standin, nginx, raw):
    """A client's terminate with a message queued for it (no request held
    to take it): the message goes back in <session><failed> before the
    close rather than into the terminate response."""
    sb = standin()
    ngx = start(nginx, sb)
    b = Bosh(ngx.hport)
    b.login("alice", "alicepw", resource="web")
    sid = [x for x in sb.inbound(r"<create") if "<iq" in x]
    sid = re.search(r'id="([^"]+)"><create', sid[-1]).group(1)
    bob = raw(ngx.port)
    bob.login("bob", "bobpw", resource="tcp")
    bob.send('<message to="alice@localhost/web" type="chat" id="q1">'
             '<body>queued</body></message>')
    wait_until(lambda: sb.inbound(r'id="q1"'), 5, what="message at Openfire")
    time.sleep(0.3)
    r = b.request("", type="terminate")
    assert r.terminate and b"q1" not in r.raw, r.raw
    wait_until(lambda: sb.close_iqs_for(sid), 10,
               what="session close at Openfire")
    evs = sb.inbound(None, sid)
    failed = [i for i, x in enumerate(evs) if "<failed>" in x and "q1" in x]
    close = [i for i, x in enumerate(evs) if "<iq" in x and "<close" in x]
    assert failed and failed[0] < close[0], evs[-5:]


def test_hold_is_capped_by_max_hold(standin, nginx):
    sb = standin()
    ngx = start(nginx, sb, loc_more="xmpp_cm_bosh_max_hold 2;")
    b = Bosh(ngx.hport)
    r = b.create(hold="5")
    assert r.get("hold") == "2" and r.get("requests") == "3"


def test_requests_at_another_worker_are_relayed_to_the_owner(standin,
                                                              nginx, raw):
    """A session lives in its worker (the sid's first 8 hex digits are its
    pid); with two workers and HTTP/1.1 connections spread by reuseport,
    requests that reach the other worker are relayed over the owner's
    local socket and answered as local ones: login, a message out, a
    held long-poll released by a message in.  After a reload the owner is
    gone: item-not-found (docs/bosh.md, Workers)."""
    import http.client
    import signal
    sb = standin()
    hport = free_port()
    block = http_block(hport).replace(
        "listen 127.0.0.1:%d;" % hport,
        "listen 127.0.0.1:%d reuseport;" % hport)
    ngx = nginx(standin=sb, main_extra=block, workers=2)

    def conn_at(want=None, avoid=None):
        """A keepalive connection and the worker serving it, told by the
        sid of a throwaway session created over it."""
        for _ in range(80):
            c = http.client.HTTPConnection("127.0.0.1", hport, timeout=10)
            p = Bosh(hport)
            p.conns = [c]
            pid = int(p.create().get("sid")[:8], 16)
            if (want is None or pid == want) and pid != avoid:
                return c, pid
            c.close()
        pytest.fail("reuseport never gave the wanted worker a connection")

    b = Bosh(hport)
    c0, owner = conn_at()
    assert owner in ngx.worker_pids()
    b.conns = [c0]
    assert b.login("alice", "alicepw") == "alice@localhost/web"
    assert int(b.sid[:8], 16) == owner
    # from here every request reaches the other worker
    cx, other = conn_at(avoid=owner)
    cy, _ = conn_at(want=other)
    b.conns = [cx, cy]

    def relayed():
        return (len(ngx.log_lines(r"\b%d#\d+: .*BOSH request relayed to "
                                  r"worker %d\b" % (other, owner))),
                len(ngx.log_lines(r"\b%d#\d+: .*BOSH request rid \d+ of "
                                  r"session \"%s\" from client \S+ relayed "
                                  r"by another worker" % (owner, b.sid))))

    bob = raw(ngx.port)
    assert bob.login("bob", "bobpw", resource="tcp") == "bob@localhost/tcp"
    n0 = relayed()
    # as a browser does (hold=1): a request held at the owner through the
    # relay, its message out; the next one releases it and is held
    poll = b.post(chat("bob@localhost/tcp", "via the other worker", "x1"))
    m = bob.next_element(match=lambda e: e.tag == rq(NS_CLIENT, "message"))
    assert m.get("from") == "alice@localhost/web" and m.get("id") == "x1"
    assert relayed() == (n0[0] + 1, n0[1] + 1)
    p = b.post("", conn=1)
    r = poll.wait(timeout=10)
    assert r.status == 200 and not r.terminate and r.children == [], r.raw
    wait_until(lambda: relayed() == (n0[0] + 2, n0[1] + 2), 5,
               what="the second request at the owner")

    # the held one is released by data, at once
    bob.send('<message to="alice@localhost/web" type="chat" id="y1">'
             '<body>to the held poll</body></message>')
    t0 = time.monotonic()
    r = p.wait(timeout=10)
    assert time.monotonic() - t0 < 3
    assert r.status == 200 and not r.terminate, r.raw
    assert r.headers.get("Content-Type", "").startswith("text/xml")
    msgs = [e for e in r.children if e.tag == q(NS_CLIENT, "message")]
    assert len(msgs) == 1 and msgs[0].get("id") == "y1", r.raw
    assert relayed() == (n0[0] + 2, n0[1] + 2)

    # the owner gone (a reload ends its sessions; the TCP client's stream
    # would keep an old worker): item-not-found
    bob.close()
    ngx.signal(signal.SIGHUP)
    wait_until(lambda: owner not in ngx.worker_pids()
               and len(ngx.worker_pids()) == 2, 15, what="the old workers gone")
    c = http.client.HTTPConnection("127.0.0.1", hport, timeout=10)
    c.request("POST", "/http-bind", body=(
        "<body xmlns='http://jabber.org/protocol/httpbind' rid='%d' "
        "sid='%s'/>" % (b.rid + 1, b.sid)).encode())
    r = c.getresponse()
    raw_ = r.read()
    c.close()
    assert r.status == 200 and b"type=\"terminate\"" in raw_ \
        and b"item-not-found" in raw_, raw_
    assert ngx.log_lines(r"BOSH request for a session of worker %d, which "
                         r"is gone" % owner)


def test_missing_rid_never_comes(standin, nginx):
    """XEP-0124 14.2: a request ahead of a missing rid waits at most
    "wait" for it; then the session ends with item-not-found."""
    sb = standin()
    ngx = start(nginx, sb, loc_more="xmpp_cm_bosh_max_wait 1s;")
    b = Bosh(ngx.hport)
    authid = b.create().get("authid")
    t0 = time.monotonic()
    r = b.request("", rid=b.rid + 2, timeout=10)
    assert 0.5 < time.monotonic() - t0 < 5
    assert r.terminate and r.condition == "item-not-found", r.raw
    wait_until(lambda: sb.close_iqs_for(authid), 10,
               what="session close at Openfire")


def test_limit_req_applies(standin, nginx):
    """nginx's request limits work in the BOSH location (docs/bosh.md,
    Rate): over the limit, nginx's 503; the session goes on, and the
    request repeated later is taken."""
    sb = standin()
    hport = free_port()
    block = http_block(hport, loc_more="limit_req zone=b;").replace(
        "    server {", "    limit_req_zone $binary_remote_addr zone=b:1m "
        "rate=2r/s;\n    server {", 1)
    ngx = nginx(standin=sb, main_extra=block)
    b = Bosh(hport)
    r = b.create(hold="0")
    assert not r.terminate
    body, rid = b.body("")
    r = b.start(body, 0, rid).wait()
    assert r.status == 503
    time.sleep(1.1)
    r = b.start(body, 0, rid).wait()
    assert r.status == 200 and not r.terminate, r.raw


@pytest.mark.skipif(not __import__("shutil").which("curl"),
                    reason="curl (with nghttp2) not installed")
def test_http2(standin, nginx, raw):
    """Over HTTP/2 (here cleartext, prior knowledge; `listen 443 ssl
    http2` in docs/bosh.md): login, bind, a message to a TCP client in a
    request held until wait runs out."""
    import subprocess
    sb = standin()
    hport = free_port()
    block = http_block(hport, loc_more="xmpp_cm_bosh_max_wait 2s;").replace(
        "listen 127.0.0.1:%d;" % hport, "listen 127.0.0.1:%d http2;" % hport)
    ngx = nginx(standin=sb, main_extra=block)
    bob = raw(ngx.port)
    bob.login("bob", "bobpw", resource="tcp")
    url = "http://127.0.0.1:%d/http-bind" % hport

    def curl(*bodies):
        # --parallel without --parallel-immediate: one multiplexed
        # connection
        args = ["curl", "-sS"]
        for i, body in enumerate(bodies):
            if i:
                args.append("--next")
            # options are per URL after --next
            args += ["--http2-prior-knowledge", "-H",
                     "Content-Type: text/xml", "-w",
                     "\\n%{http_version} %{http_code}\\n",
                     "--data-binary", body, url]
        out = subprocess.run(args, capture_output=True, timeout=20,
                             text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout

    b = Bosh(hport)
    body, rid = b.body("", to="localhost", wait="2", hold="1",
                       **{"xmlns:xmpp": NS_XBOSH, "xmpp:version": "1.0"})
    out = curl(body)
    assert "\n2 200" in out, out
    sid = re.search(r'sid="([0-9a-f]+)"', out).group(1)
    b.sid = sid
    creds = base64.b64encode(b"\0bob\0bobpw").decode()
    out = curl(b.body('<auth xmlns="%s" mechanism="PLAIN">%s</auth>'
                      % (NS_SASL, creds))[0])
    assert "<success" in out, out
    out = curl(b.body("", **{"xmpp:restart": "true",
                             "xmlns:xmpp": NS_XBOSH})[0])
    assert "<bind" in out, out
    out = curl(b.body('<iq xmlns="jabber:client" type="set" id="b1"><bind '
                      'xmlns="%s"><resource>h2</resource></bind></iq>'
                      % NS_BIND)[0])
    assert "bob@localhost/h2" in out, out
    t0 = time.monotonic()
    out = curl(b.body(chat("bob@localhost/tcp", "over h2", "h1"))[0])
    assert "\n2 200" in out, out
    assert 1.5 < time.monotonic() - t0 < 6
    m = bob.next_element(match=lambda e: e.tag == rq(NS_CLIENT, "message"))
    assert m.get("id") == "h1"
    log = open(os.path.join(ngx.prefix, "access.log")).read()
    assert log.count("HTTP/2.0") == 5, log
