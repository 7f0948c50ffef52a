"""The session life cycle, bogus routes, upstream loss and graceful
shutdown."""
import re
import signal
import socket
import struct
import time
import xml.etree.ElementTree as ET

import pytest

from lib.raw import NS_CLIENT, q, tostr
from lib.util import attr, wait_until
from lib.xmpp import Client, run

FAST = "xmpp_cm_reconnect 100ms 1s;\nxmpp_cm_close_delay 300ms;"


def cm_name(sb):
    return sb.cm_sockets("cm1-")[0]["cm"]


# ------------------------------------------------ server closes a session
def test_server_close_session_without_error(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST)
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    sb.call("close_session", streamid=c.stream_id, error=None)
    c.wait_eof(5)
    assert c.stream_error() is None, c.text
    assert c.stream_ended(), c.text
    # the CM does not echo a close of its own (Openfire already forgot it)
    time.sleep(0.6)
    assert sb.close_iqs_for(c.stream_id) == [], sb.close_iqs_for(c.stream_id)


def test_server_close_session_with_error(standin, nginx, raw):
    sb = standin(version="4.8")
    ngx = nginx(standin=sb, extra=FAST)
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    sb.call("close_session", streamid=c.stream_id, error="conflict")
    assert c.expect_stream_error(5) == "conflict", c.text
    assert c.stream_ended(), c.text


@pytest.mark.parametrize("version", ["4.1", "4.8"])
def test_kick(standin, nginx, version):
    """Openfire kicks a bound session: the stream error arrives as a route
    payload (inline on 4.1, escaped text on 4.8); slixmpp sees it and the
    stream ends."""
    sb = standin(version=version)
    ngx = nginx(standin=sb, extra=FAST)

    async def scenario():
        a = Client("alice@localhost/pc", "alicepw", ngx.port)
        await a.login()
        sb.call("kick", jid="alice@localhost/pc", condition="conflict")
        await a.wait_disconnected(10)
        return a.stream_errors

    errs = run(scenario(), 30)
    assert errs == ["conflict"], errs


def test_route_error_item_not_found_resets(standin, nginx, raw):
    """Openfire forgot the session silently (admin kick on >=4.3): the
    next stanza gets a route error item-not-found and the CM closes the
    client with <reset/>."""
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST)
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    sid = c.stream_id
    name = cm_name(sb)
    sb.call("send_raw", cm=name,
            xml='<route streamid="%s" from="localhost" to="%s" type="error">'
                '<error code="404" type="cancel"><item-not-found '
                'xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></error></route>'
                % (sid, name))
    assert c.expect_stream_error(5) == "reset", c.text


# ------------------------------------------------ client goes away
def test_client_drop_sends_close_after_delay(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, extra="xmpp_cm_close_delay 600ms;")
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    sid = c.stream_id
    # abortive close (RST)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                      struct.pack("ii", 1, 0))
    t0 = time.monotonic()
    c.close()
    closes = wait_until(lambda: sb.close_iqs_for(sid), 5,
                        what="close IQ for %s" % sid)
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.5, "close sent before xmpp_cm_close_delay: %.2fs" \
        % elapsed
    assert len(closes) == 1, closes
    el = ET.fromstring(closes[0])
    assert el.get("type") == "set" and el.get("id"), closes[0]
    wait_until(lambda: sb.session(sid) is None, 3, what="session removed")


def test_client_stream_end_sends_close(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST)
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    sid = c.stream_id
    c.send("</stream:stream>")
    c.wait_eof(5)
    assert c.stream_ended(), c.text
    assert c.stream_error() is None, c.text
    wait_until(lambda: sb.close_iqs_for(sid), 5, what="close IQ")
    wait_until(lambda: sb.session(sid) is None, 3, what="session removed")


def test_message_to_closing_session_returned_as_failed(standin, nginx, raw):
    """During the close delay a message routed to the gone client is sent
    back in <failed> (and stored offline by the server)."""
    sb = standin()
    ngx = nginx(standin=sb, extra="xmpp_cm_close_delay 2s;")
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="gone")
    sid = c.stream_id
    c.close()
    time.sleep(0.3)
    name = cm_name(sb)
    sb.call("send_route", cm=name, streamid=sid, escaped=False,
            payload='<message to="alice@localhost/gone" from="bob@localhost/x"'
                    ' type="chat" id="late1"><body>late</body></message>')
    failed = wait_until(lambda: sb.inbound(r"<failed>.*late1", sid), 3,
                        what="failed for the late message")
    assert 'xmlns="jabber:client"' in failed[0], failed[0]
    wait_until(lambda: sb.close_iqs_for(sid), 5, what="close IQ")
    evs = [e["xml"] for e in sb.events() if e["dir"] == "in"]
    i_failed = next(i for i, x in enumerate(evs) if "late1" in x)
    i_close = next(i for i, x in enumerate(evs)
                   if re.search(r"<close\s*/>", x) and sid in x)
    assert i_failed < i_close


# ------------------------------------------------ unknown stream ids
def test_bogus_route_message(standin, nginx):
    sb = standin()
    nginx(standin=sb, extra=FAST)
    name = cm_name(sb)
    sid = "ghost-0001"
    msg = ('<message to="alice@localhost/x" from="bob@localhost/y" '
           'type="chat" id="ghost1"><body>lost?</body></message>')
    sb.call("send_route", cm=name, streamid=sid, payload=msg, escaped=False)
    failed = wait_until(lambda: sb.inbound(r"<failed", sid), 5,
                        what="<failed> for %s" % sid)
    x = failed[0]
    el = ET.fromstring(x)
    sess = [c for c in el if c.tag.endswith("session")]
    assert sess and sess[0].get("id") == sid, x
    fl = [c for c in sess[0] if c.tag.endswith("failed")]
    assert fl, x
    m = list(fl[0])
    assert len(m) == 1 and m[0].tag == "{jabber:client}message", x
    assert m[0].get("id") == "ghost1", x
    assert m[0].find("{jabber:client}body").text == "lost?", x
    closes = wait_until(lambda: sb.close_iqs_for(sid), 5,
                        what="<close/> for %s" % sid)
    assert len(closes) == 1, closes
    evs = [e["xml"] for e in sb.events() if e["dir"] == "in"]
    assert evs.index(x) < evs.index(closes[0]), "close before failed"


def test_bogus_route_iq_get(standin, nginx):
    sb = standin()
    nginx(standin=sb, extra=FAST)
    name = cm_name(sb)
    sid = "ghost-0002"
    iq = ('<iq type="get" id="gq1" from="bob@localhost/y" '
          'to="alice@localhost/x"><query xmlns="jabber:iq:version"/></iq>')
    sb.call("send_route", cm=name, streamid=sid, payload=iq, escaped=False)
    replies = wait_until(
        lambda: [r for r in sb.routes_for(sid) if "gq1" in r], 5,
        what="error reply route for gq1")
    el = ET.fromstring(replies[0])
    assert el.tag == "route" and el.get("streamid") == sid, replies[0]
    iqs = list(el)
    assert len(iqs) == 1, replies[0]
    r = iqs[0]
    assert r.tag.endswith("iq") and r.get("type") == "error", replies[0]
    assert r.get("id") == "gq1", replies[0]
    assert r.get("to") == "bob@localhost/y", replies[0]
    assert any(c.tag.endswith("error") for c in r), replies[0]
    wait_until(lambda: sb.close_iqs_for(sid), 5, what="close for ghost")


def test_bogus_route_presence_dropped(standin, nginx):
    sb = standin()
    nginx(standin=sb, extra=FAST)
    name = cm_name(sb)
    sid = "ghost-0003"
    sb.call("send_route", cm=name, streamid=sid, escaped=False,
            payload='<presence from="bob@localhost/y" to="alice@localhost/x"/>')
    wait_until(lambda: sb.close_iqs_for(sid), 5, what="close for ghost")
    assert sb.inbound(r"<failed", sid) == []
    assert sb.routes_for(sid) == []


# ------------------------------------------------ upstream loss
def test_upstream_drop_clients_told_and_relogin(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST)
    a = raw(ngx.port)
    a.login("alice", "alicepw", resource="a")
    b = raw(ngx.port)
    b.login("bob", "bobpw", resource="b")
    old = {s["resource"] for s in sb.cm_sockets("cm1-")}
    sb.call("drop_sockets", cm=None)
    assert a.expect_stream_error(5) == "remote-connection-failed", a.text
    assert b.expect_stream_error(5) == "remote-connection-failed", b.text
    wait_until(lambda: len({s["resource"] for s in sb.cm_sockets("cm1-")}
                           - old) == 2, 10, what="CM reconnect")

    async def relogin():
        x = Client("alice@localhost/again", "alicepw", ngx.port)
        y = Client("bob@localhost/again", "bobpw", ngx.port)
        await x.login()
        await y.login()
        x.send_message("bob@localhost/again", "after reconnect", "ar1")
        f, body, _ = await y.recv()
        await x.close()
        await y.close()
        return f, body

    assert run(relogin(), 40) == ("alice@localhost/again", "after reconnect")


def test_no_upstream_client_rejected_at_once(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, extra="xmpp_cm_reconnect 200ms 1s;")
    sb.stop()
    time.sleep(0.5)
    t0 = time.monotonic()
    c = raw(ngx.port)
    c.send('<?xml version="1.0"?><stream:stream xmlns:stream='
           '"http://etherx.jabber.org/streams" xmlns="jabber:client" '
           'to="localhost" version="1.0">')
    cond = c.expect_stream_error(2)
    assert time.monotonic() - t0 < 2
    assert cond == "remote-connection-failed", c.text


def test_never_connected_upstream_client_rejected(nginx, raw):
    ngx = nginx(standin=None, extra="xmpp_cm_reconnect 200ms 1s;")
    t0 = time.monotonic()
    c = raw(ngx.port)
    c.send('<?xml version="1.0"?><stream:stream xmlns:stream='
           '"http://etherx.jabber.org/streams" xmlns="jabber:client" '
           'to="localhost" version="1.0">')
    cond = c.expect_stream_error(2)
    assert time.monotonic() - t0 < 2
    assert cond == "remote-connection-failed", c.text


def test_standin_restart_serves_again(standin, nginx):
    sb = standin()
    ngx = nginx(standin=sb, extra="xmpp_cm_reconnect 100ms 500ms;")
    sb.restart()
    wait_until(lambda: len(sb.cm_sockets("cm1-")) == 2, 10,
               what="CM reconnected to the restarted stand-in")

    async def login():
        x = Client("alice@localhost/pc", "alicepw", ngx.port)
        await x.login()
        await x.close()
        return True

    assert run(login(), 30)


# ------------------------------------------------ graceful shutdown
def test_graceful_quit_closes_sessions_first(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, main_extra="worker_shutdown_timeout 1s;",
                extra="xmpp_cm_close_delay 300ms;")
    clients = []
    for user, pw in (("alice", "alicepw"), ("bob", "bobpw")):
        c = raw(ngx.port)
        c.login(user, pw, resource="q")
        clients.append(c)
    sids = [c.stream_id for c in clients]
    ngx.quit(timeout=10)
    assert ngx.proc.returncode == 0, ngx.proc.returncode
    for c in clients:
        assert c.expect_stream_error(3) == "system-shutdown", c.text
    evs = sb.events()
    close_seq = {}
    for e in evs:
        if e["dir"] == "in" and re.search(r"<close\s*/>", e.get("xml", "")):
            for sid in sids:
                if sid in e["xml"]:
                    close_seq[sid] = (e["seq"], e["sock"])
    assert set(close_seq) == set(sids), close_seq
    sock_close = {e["sock"]: e["seq"] for e in evs if e["dir"] == "close"
                  and str(e.get("cm", "")).startswith("cm1-")}
    assert sock_close, "CM sockets not closed"
    # each close IQ reached Openfire before the socket it went on closed
    # (across sockets the stand-in's read order says nothing)
    for sid, (seq, sock) in close_seq.items():
        assert sock in sock_close and seq < sock_close[sock], \
            (close_seq, sock_close)


def test_openfire_system_shutdown_forwarded(standin, nginx, raw):
    """Openfire stopping sends <system-shutdown/> on every CM socket; the
    CM tells its clients the same."""
    sb = standin()
    ngx = nginx(standin=sb, extra="xmpp_cm_reconnect 200ms 1s;")
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    sb.stop()                      # SIGTERM: the stand-in sends the error
    assert c.expect_stream_error(5) == "system-shutdown", c.text


def test_create_refused_policy_violation(standin, nginx, raw):
    """Openfire refuses the session (client IP blocked): the client gets
    <policy-violation/>."""
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST)
    sb.call("set", key="blocked_ips", value=["127.0.0.1"])
    c = raw(ngx.port)
    c.send('<?xml version="1.0"?><stream:stream xmlns:stream='
           '"http://etherx.jabber.org/streams" xmlns="jabber:client" '
           'to="localhost" version="1.0">')
    assert c.expect_stream_error(5) == "policy-violation", c.text
    assert sb.sessions() == []


def test_auth_timeout(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST + "\nxmpp_cm_auth_timeout 1s;")
    c = raw(ngx.port)
    t0 = time.monotonic()
    c.open()
    sid = c.stream_id
    assert c.expect_stream_error(5) == "connection-timeout", c.text
    assert 0.8 < time.monotonic() - t0 < 4
    wait_until(lambda: sb.close_iqs_for(sid), 5, what="close IQ")


def test_idle_timeout(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST + "\nxmpp_cm_idle_timeout 1500ms;")
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    sid = c.stream_id
    # traffic keeps it alive ...
    for i in range(4):
        time.sleep(0.6)
        c.send(" ")
    c.pump(0.05)
    assert not c.eof, "closed although the client was sending"
    # ... silence does not
    t0 = time.monotonic()
    assert c.expect_stream_error(5) == "connection-timeout", c.text
    assert time.monotonic() - t0 > 1.0
    wait_until(lambda: sb.close_iqs_for(sid), 5, what="close IQ")


def test_three_sasl_failures_end_stream(standin, nginx, raw):
    """After 3 failed SASL attempts Openfire closes the unbound session with
    a close IQ: the client sees the failures and then the end of the
    stream."""
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST)
    c = raw(ngx.port)
    c.open()
    for i in range(3):
        r = c.auth_plain("alice", "bad%d" % i)
        assert r.tag == "{urn:ietf:params:xml:ns:xmpp-sasl}failure", tostr(r)
        assert [x.tag.split("}")[1] for x in r] == ["not-authorized"], tostr(r)
    c.wait_eof(5)
    assert c.stream_ended(), c.text
    assert c.stream_error() is None, c.text


# ------------------------------------------------ slow clients
def test_stanza_timeout_trickling_client(standin, nginx, raw):
    """A client that keeps a stanza open by trickling bytes is cut by
    xmpp_cm_stanza_timeout although it is never idle."""
    sb = standin()
    ngx = nginx(standin=sb, extra="xmpp_cm_stanza_timeout 1s;\n"
                                  "xmpp_cm_idle_timeout 10s;")
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="slow")
    t0 = time.monotonic()
    c.send('<message to="bob@localhost"><body>')
    cond = None
    for _ in range(20):
        time.sleep(0.25)
        try:
            c.send("x")
        except OSError:
            break
        # the CM lingers after the error (reading and dropping): look
        c.pump(0.01)
        if c.stream_error():
            break
    cond = c.expect_stream_error(3)
    assert cond == "connection-timeout", c.text
    assert "stanza not completed in time" in c.text
    assert time.monotonic() - t0 < 3
    assert sb.routes_for(c.stream_id) and \
        not [r for r in sb.routes_for(c.stream_id) if "<body>x" in r]


def test_auth_deadline_not_moved_by_traffic(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, extra="xmpp_cm_auth_timeout 1500ms;")
    c = raw(ngx.port)
    c.open()
    t0 = time.monotonic()
    # whitespace and complete pre-auth IQs keep coming; no authentication
    for i in range(10):
        time.sleep(0.25)
        try:
            c.send(' <iq type="get" id="v%d" to="localhost"><query '
                   'xmlns="jabber:iq:version"/></iq>' % i)
        except OSError:
            break
        if c.stream_error():
            break
    assert c.expect_stream_error(3) == "connection-timeout", c.text
    assert "not authenticated in time" in c.text
    assert 1.2 < time.monotonic() - t0 < 3.5
