"""Issue 9, client side: the stanza timeout per stanza, stream errors on a
restarted stream, white space before a restarted stream, the client's own
stream error, SASL mechanisms the CM does not offer, and replies to a
client that half-closed its socket."""
import os
import re
import socket
import time

import pytest

from lib.raw import (NS_CLIENT, NS_SASL, NS_STREAM, DEFAULT_HEADER,
                     StreamReader, q, tostr)
from lib.util import wait_until
from test_compression import HEADER as ZHEADER, ZClient
from test_tls import TlsRaw, certs, client_ctx, tls_lines  # noqa: F401

NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
FAST = "xmpp_cm_close_delay 100ms;"


def fresh_stream(c):
    """The client's side of a restart: a fresh parser for what follows."""
    c.readers.append(StreamReader())
    c._consumed = 0


def assert_error_on_fresh_stream(c, cond):
    """The restarted stream got a header of its own, then the error."""
    c.wait_eof(5)
    r = c.reader
    assert r.error is None, "unparseable restarted stream (%s): %r" % (
        r.error, c.text[-600:])
    assert r.header_raw_tag == q(NS_STREAM, "stream"), c.text[-600:]
    errs = [e for e in r.stanzas if e.tag == q(NS_STREAM, "error")]
    assert errs, "no stream error on the restarted stream: %r" % c.text[-600:]
    got = [e.tag.rsplit("}", 1)[1] for e in errs[0]
           if not e.tag.endswith("}text")]
    assert got == [cond], (got, c.text[-600:])
    assert r.ended, "no </stream:stream>: %r" % c.text[-600:]


# ------------------------------------------------ 1. stanza timeout
def test_stanza_timeout_per_stanza_back_to_back(standin, nginx, raw):
    """Stanzas streamed back to back, every read ending inside a stanza,
    for three times the stanza timeout: each stanza completes at once, so
    the stream lives on and every stanza is routed."""
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST + "\nxmpp_cm_stanza_timeout 1s;\n"
                                  "xmpp_cm_idle_timeout 20s;")
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="stream")
    n = 0
    c.send('<message to="bob@localhost" id="bb0"><body>BB-0')
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3.2:
        time.sleep(0.1)
        n += 1
        # ends one stanza and starts the next: the read ends mid-stanza
        c.send('</body></message><message to="bob@localhost" id="bb%d">'
               '<body>BB-%d' % (n, n))
        c.pump(0)
        assert not c.eof and c.stream_error() is None, \
            "cut after %.1fs: %r" % (time.monotonic() - t0, c.text[-300:])
    c.send("</body></message>")
    wait_until(lambda: len(sb.inbound(r"BB-\d+<")) == n + 1, 5,
               what="all %d stanzas routed" % (n + 1))
    c.pump(0.2)
    assert not c.eof and c.stream_error() is None, c.text[-300:]


def test_char_reference_between_stanzas_idle_timeout(standin, nginx, raw):
    """&#32; between stanzas is white space: the idle timeout applies,
    not the stanza timeout."""
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST + "\nxmpp_cm_stanza_timeout 1s;\n"
                                  "xmpp_cm_idle_timeout 3s;")
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="ref")
    c.send('<message to="bob@localhost" id="r1"><body>REF-1</body></message>'
           '&#32;')
    wait_until(lambda: sb.inbound("REF-1"), 5, what="routed")
    t0 = time.monotonic()
    assert c.expect_stream_error(6) == "connection-timeout", c.text
    elapsed = time.monotonic() - t0
    assert "idle for too long" in c.text, c.text[-300:]
    assert elapsed > 2.3, elapsed


# ------------------------------------------------ 3. errors on a restart
def sasl_success(c):
    c.open()
    r = c.auth_plain("alice", "alicepw")
    assert r.tag == q(NS_SASL, "success"), tostr(r)
    fresh_stream(c)


RESTART_BAD = [
    ("wrong_to", DEFAULT_HEADER.format(to="example.org"), "host-unknown"),
    ("bad_namespace",
     DEFAULT_HEADER.format(to="localhost").replace(
         'xmlns="jabber:client"', 'xmlns="jabber:server"'),
     "invalid-namespace"),
    ("not_stream",
     DEFAULT_HEADER.format(to="localhost").replace("stream:stream",
                                                   "stream:strom"),
     "bad-format"),
]


@pytest.mark.parametrize("case,hdr,cond", RESTART_BAD,
                         ids=[b[0] for b in RESTART_BAD])
def test_error_after_sasl_restart_has_header(standin, nginx, raw, case, hdr,
                                             cond):
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST)
    c = raw(ngx.port)
    sasl_success(c)
    c.send(hdr)
    assert_error_on_fresh_stream(c, cond)


def test_kick_before_restart_header_has_header(standin, nginx, raw):
    """Openfire ends the session between <success/> and the client's new
    header: the error still comes on a stream with a header."""
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST)
    c = raw(ngx.port)
    sasl_success(c)
    sb.call("close_session", streamid=c.stream_id, error="conflict")
    assert_error_on_fresh_stream(c, "conflict")


def test_error_after_compression_restart_has_header(standin, nginx):
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST + "\nxmpp_cm_compression on;")
    z = ZClient(ngx.port)
    z.login(b"alice", b"alicepw")
    z.start_zlib()
    z.send(ZHEADER.replace(b'to="localhost"', b'to="example.org"'))
    out = z.until(rb"</stream:stream>")
    assert re.match(rb"\s*(<\?xml[^>]*>)?<stream:stream ", out), out
    assert b"<host-unknown " in out, out


def test_error_after_starttls_restart_has_header(standin, nginx, certs):
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST + "\n" + tls_lines(certs))
    c = TlsRaw(ngx.port)
    try:
        c.open()
        c.starttls(client_ctx(certs))
        fresh_stream(c)
        c.send(DEFAULT_HEADER.format(to="example.org"))
        assert_error_on_fresh_stream(c, "host-unknown")
    finally:
        c.close()


# ------------------------------------------------ 4. white space, XML decl
def test_keepalive_before_success_does_not_kill_restart(standin, nginx, raw):
    """A keepalive the client sent just before <success/> arrived lands in
    front of the restarted stream's XML declaration: skipped."""
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST)
    c = raw(ngx.port)
    sasl_success(c)
    c.send(" ")
    time.sleep(0.05)        # its own read, as a keepalive would be
    c.send("\r\n\t")
    c.readers.pop()         # open() below expects the reader it gets
    _, feats = c.restart()
    assert feats.find(q(NS_BIND, "bind")) is not None, tostr(feats)
    res = c.iq('<bind xmlns="%s"><resource>ka</resource></bind>' % NS_BIND,
               "b1")
    assert res.get("type") == "result", tostr(res)


@pytest.mark.parametrize("data", [
    ' <?xml version="1.0"?>' + DEFAULT_HEADER.format(to="localhost")[21:],
    '<?xml version="1.0"?>' + DEFAULT_HEADER.format(to="localhost"),
], ids=["space_before_decl", "second_decl"])
def test_misplaced_xml_declaration_not_well_formed(standin, nginx, raw,
                                                   data):
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST)
    c = raw(ngx.port)
    c.send(data)
    assert c.expect_stream_error(5) == "not-well-formed", c.text


def test_misplaced_xml_declaration_on_restart(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST)
    c = raw(ngx.port)
    sasl_success(c)
    c.send(' x<?xml version="1.0"?>' + DEFAULT_HEADER.format(to="localhost"))
    assert_error_on_fresh_stream(c, "not-well-formed")


# ------------------------------------------------ 5. the client's error
@pytest.mark.parametrize("login", [False, True], ids=["preauth", "bound"])
def test_client_stream_error_ends_with_close_tag(standin, nginx, raw, login):
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST)
    c = raw(ngx.port)
    if login:
        c.login("alice", "alicepw", resource="err")
    else:
        c.open()
    sid = c.stream_id
    c.send('<stream:error><text xmlns="urn:ietf:params:xml:ns:xmpp-streams">'
           'going</text><conflict xmlns="urn:ietf:params:xml:ns:xmpp-streams"'
           '/></stream:error>')
    c.wait_eof(5)
    assert c.stream_error() is None, c.text[-400:]
    assert c.reader.error is None and c.reader.ended, c.text[-400:]
    assert ngx.log_lines(r"\[info\].*client sent a stream error: conflict"), \
        ngx.log_lines(r"stream error")
    wait_until(lambda: sb.close_iqs_for(sid), 5, what="close IQ")


# ------------------------------------------------ 7. SASL mechanisms
@pytest.mark.parametrize("mech", ["EXTERNAL", "SCRAM-SHA-1-PLUS", "FOO",
                                  "SCRAM-SHA-256", "PLAIN\t"])
def test_mechanism_not_offered_answered_locally(standin, nginx, raw, mech):
    """Hidden (EXTERNAL, *-PLUS) and unknown mechanisms get
    invalid-mechanism from the CM; Openfire never sees them, so they do not
    count as failed attempts: four of them, then a login."""
    sb = standin(mechanisms="PLAIN,SCRAM-SHA-1,EXTERNAL,SCRAM-SHA-1-PLUS")
    ngx = nginx(standin=sb, extra=FAST)
    c = raw(ngx.port)
    c.open()
    for i in range(4):
        c.send('<auth xmlns="%s" mechanism="%s">AGFsaWNlAGFsaWNlcHc=</auth>'
               % (NS_SASL, mech))
        r = c.next_element(5, lambda e: e.tag in (q(NS_SASL, "failure"),
                                                 q(NS_SASL, "success")))
        assert r.tag == q(NS_SASL, "failure"), tostr(r)
        assert [x.tag for x in r] == [q(NS_SASL, "invalid-mechanism")], \
            tostr(r)
    assert sb.inbound(r"<auth\b") == [], sb.inbound(r"<auth\b")
    r = c.auth_plain("alice", "alicepw")
    assert r.tag == q(NS_SASL, "success"), tostr(r)


# ------------------------------------------------ 8. half-close
def worker_fds(ngx):
    pid = ngx.worker_pids()[0]
    return len(os.listdir("/proc/%d/fd" % pid))


@pytest.mark.parametrize("body,check", [
    ('<query xmlns="jabber:iq:roster"/>', "{jabber:iq:roster}query"),
    ('<ping xmlns="urn:xmpp:ping"/>', None),
], ids=["roster", "ping"])
def test_reply_delivered_after_half_close(standin, nginx, raw, body, check):
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST)
    fds = worker_fds(ngx)
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="hc")
    c.send('<iq type="get" id="hc1" to="localhost">%s</iq>' % body)
    c.sock.shutdown(socket.SHUT_WR)
    t0 = time.monotonic()
    res = c.next_element(5, lambda e: e.tag == q(NS_CLIENT, "iq")
                         and e.get("id") == "hc1", "the reply")
    assert res.get("type") == "result", tostr(res)
    if check:
        assert res.find(check) is not None, tostr(res)
    # and then the stream ends at once (nothing else is awaited)
    c.wait_eof(3)
    assert c.stream_ended() and c.stream_error() is None, c.text[-300:]
    assert time.monotonic() - t0 < 3
    # the client's side is closed already: no linger, the socket goes
    wait_until(lambda: worker_fds(ngx) == fds, 2,
               what="the client connection closed in the worker")


def test_half_close_with_nothing_pending_closes(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST)
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="hc0")
    sid = c.stream_id
    c.send('<message to="bob@localhost" id="m1"><body>HC-0</body></message>')
    c.sock.shutdown(socket.SHUT_WR)
    t0 = time.monotonic()
    c.wait_eof(3)
    assert time.monotonic() - t0 < 1.5
    wait_until(lambda: sb.inbound("HC-0"), 5, what="the message routed")
    wait_until(lambda: sb.close_iqs_for(sid), 5, what="close IQ")


def test_half_close_reply_never_comes_bounded(standin, nginx, raw):
    """An IQ to a full JID that never answers: the CM waits at most its
    linger (5 s), then ends the stream."""
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST)
    b = raw(ngx.port)
    b.login("bob", "bobpw", resource="mute")
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="hc2")
    c.send('<iq type="get" id="hc2" to="bob@localhost/mute"><query '
           'xmlns="jabber:iq:version"/></iq>')
    c.sock.shutdown(socket.SHUT_WR)
    b.next_element(5, lambda e: e.get("id") == "hc2", "the IQ at bob")
    t0 = time.monotonic()
    c.wait_eof(8)
    assert 3 < time.monotonic() - t0 < 7
    assert c.stream_ended(), c.text[-300:]
