"""Client TLS: STARTTLS (xmpp_cm_starttls optional|required), direct TLS
(XEP-0368, `listen ... ssl` + `ssl_alpn xmpp-client`), per-domain
certificates (SNI), STARTTLS injection, failed handshakes, nginx -t, and a
second client implementation (libstrophe, t/clients/strophe_login.c).

Certificates are generated once per session with the openssl CLI: a test
CA and leaf certificates for localhost, example.com and example.net (each
with a subjectAltName), signed by that CA.  They live in a world-readable
temporary directory because certificates named with variables
(`$ssl_server_name`) are read by the worker processes, which run as
`nobody` when the tests run as root."""
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import server_block
from lib.raw import NS_REGISTER, NS_SASL, RawClient, local, ns_of, q, tostr
from lib.util import free_port, wait_until
from lib.xmpp import Client, run

T_DIR = os.path.dirname(os.path.abspath(__file__))
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_CMP = "http://jabber.org/protocol/connectionmanager"
DOMAINS = ("localhost", "example.com", "example.net")
STARTTLS = '<starttls xmlns="%s"/>' % NS_TLS
HANDSHAKE_FAILED = r"\[info\].*TLS handshake failed"


# ------------------------------------------------------------ certificates
class Certs:
    def __init__(self, d):
        self.dir = d
        self.ca = os.path.join(d, "ca.crt")

    def crt(self, name):
        return os.path.join(self.dir, "%s.crt" % name)

    def key(self, name):
        return os.path.join(self.dir, "%s.key" % name)


def _openssl(*args, cwd):
    p = subprocess.run(["openssl"] + list(args), cwd=cwd,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=60)
    assert p.returncode == 0, "openssl %s failed:\n%s" % (
        " ".join(args), p.stdout.decode("utf-8", "replace"))


@pytest.fixture(scope="session")
def certs():
    if shutil.which("openssl") is None:
        pytest.fail("the openssl CLI is needed to generate test certificates",
                    pytrace=False)
    d = tempfile.mkdtemp(prefix="xmpp-cm-tls-")
    os.chmod(d, 0o755)
    c = Certs(d)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key",
             "-out", "ca.crt", "-days", "30", "-subj",
             "/CN=ngx_stream_xmpp_cm test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    for name in DOMAINS:
        ext = os.path.join(d, "%s.ext" % name)
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\n"
                    "keyUsage=critical,digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage=serverAuth\n"
                    "subjectAltName=DNS:%s\n" % name)
        _openssl("req", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", "%s.key" % name, "-out", "%s.csr" % name,
                 "-subj", "/CN=%s" % name, cwd=d)
        _openssl("x509", "-req", "-in", "%s.csr" % name, "-CA", "ca.crt",
                 "-CAkey", "ca.key", "-CAcreateserial", "-days", "30",
                 "-out", "%s.crt" % name, "-extfile", ext, cwd=d)
    for f in os.listdir(d):
        os.chmod(os.path.join(d, f), 0o644)
    yield c
    shutil.rmtree(d, ignore_errors=True)


def client_ctx(certs, alpn=None):
    """A client context that trusts only the test CA and checks names."""
    ctx = ssl.create_default_context(cafile=certs.ca)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def san_dns(peercert):
    return [v for k, v in peercert.get("subjectAltName", ()) if k == "DNS"]


def subject_cn(peercert):
    for rdn in peercert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    return None


# ------------------------------------------------------------ config
def tls_lines(certs, starttls="optional", name="localhost", more=""):
    """Server lines: xmpp_cm_starttls plus the ssl_* directives."""
    out = []
    if starttls is not None:
        out.append("xmpp_cm_starttls %s;" % starttls)
    if name is not None:
        out.append("ssl_certificate %s;" % certs.crt(name))
        out.append("ssl_certificate_key %s;" % certs.key(name))
    out.append(more)
    return "\n".join(out)


def start_tls_pair(nginx, sb, certs, starttls="optional", domain="localhost",
                   cert_name="localhost", more=""):
    """One nginx with two CM servers sharing a pool: STARTTLS on ngx.port
    and direct TLS (`listen ... ssl`, `ssl_alpn xmpp-client`) on
    ngx.tls_port."""
    port, tls_port = free_port(), free_port()
    upstream = "127.0.0.1:%d" % sb.port
    body = "\n".join([
        server_block(port, upstream, domain=domain,
                     extra=tls_lines(certs, starttls, cert_name, more)),
        server_block(tls_port, upstream, domain=domain, listen_extra=" ssl",
                     extra=tls_lines(certs, None, cert_name,
                                     "ssl_alpn xmpp-client;\n" + more)),
    ])
    ngx = nginx(body, standin=sb, port=port)
    ngx.wait_port(tls_port)
    ngx.tls_port = tls_port
    return ngx


# ------------------------------------------------------------ raw TLS client
class TlsRaw(RawClient):
    """RawClient that can switch to TLS (STARTTLS) or start with it."""

    def __init__(self, port, ctx=None, server_hostname="localhost",
                 direct=False, **kw):
        super().__init__(port, **kw)
        self.tls_error = None
        if direct:
            self.wrap(ctx, server_hostname)

    def wrap(self, ctx, server_hostname):
        self.sock.settimeout(self.timeout)
        self.sock = ctx.wrap_socket(self.sock,
                                    server_hostname=server_hostname)
        return self.sock

    @property
    def is_tls(self):
        return isinstance(self.sock, ssl.SSLSocket)

    def _readable(self, timeout):
        # bytes OpenSSL has already decrypted are not on the socket
        return (self.is_tls and self.sock.pending()) or \
            super()._readable(timeout)

    def _recv(self):
        try:
            return self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            self.reset_by_peer = True
            return b""
        except (ssl.SSLWantReadError, socket.timeout):
            return None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""
        except ssl.SSLError as e:
            self.tls_error = e
            return b""

    def tls_answer(self, timeout=None):
        """The next element in the xmpp-tls namespace (proceed/failure)."""
        return self.next_element(timeout, lambda e: ns_of(e.tag) == NS_TLS,
                                 "xmpp-tls proceed/failure")

    def starttls(self, ctx, server_hostname="localhost", timeout=None):
        """<starttls/>, <proceed/>, TLS handshake.  Returns the SSLSocket."""
        self.send(STARTTLS)
        el = self.tls_answer(timeout)
        assert el.tag == q(NS_TLS, "proceed"), tostr(el)
        assert self.text.rstrip().endswith(
            ("<proceed xmlns=\"%s\"/>" % NS_TLS,
             "<proceed xmlns='%s'/>" % NS_TLS)), \
            "bytes after <proceed/> before the handshake: %r" % \
            self.text[-300:]
        return self.wrap(ctx, server_hostname)


def assert_starttls_login(port, certs, user, password):
    """A new client gets STARTTLS, restarts and logs in."""
    c = TlsRaw(port)
    try:
        c.open()
        c.starttls(client_ctx(certs))
        c.restart()
        assert c.login(user, password, resource="next") == \
            "%s@localhost/next" % user
    finally:
        c.close()


def feature_names(feats):
    return [(ns_of(c.tag), local(c.tag)) for c in feats]


def mechanisms(feats):
    m = feats.find(q(NS_SASL, "mechanisms"))
    if m is None:
        return None
    return [x.text for x in m if local(x.tag) == "mechanism"]


def assert_no_external_or_plus(feats):
    mechs = mechanisms(feats)
    assert mechs is not None, "no <mechanisms/>: %s" % tostr(feats)
    assert "PLAIN" in mechs and "SCRAM-SHA-1" in mechs, mechs
    bad = [m for m in mechs if m == "EXTERNAL" or m.endswith("-PLUS")]
    assert bad == [], "EXTERNAL/*-PLUS offered: %s" % tostr(feats)


def starttls_el(feats):
    return feats.find(q(NS_TLS, "starttls"))


def assert_tls_failure_and_close(c):
    """<failure xmlns=xmpp-tls/>, then </stream:stream>, then close."""
    el = c.tls_answer(5)
    assert el.tag == q(NS_TLS, "failure"), tostr(el)
    c.wait_eof(5)
    assert c.stream_ended(), "no </stream:stream> after <failure/>: %r" % \
        c.text[-500:]
    tail = c.text[c.text.rfind("failure"):]
    assert "</stream:stream>" in tail, c.text[-500:]


def routed(sb, text):
    return [x for x in sb.inbound(r"^\s*<route") if text in x]


# ------------------------------------------------------------ slixmpp
class TlsClient(Client):
    """The slixmpp wrapper, connecting with STARTTLS (mode "starttls") or
    direct TLS (mode "direct"), trusting only the test CA."""

    def __init__(self, jid, password, port, ca, mode="starttls"):
        super().__init__(jid, password, port)
        self.x.ca_certs = Path(ca)
        self.mode = mode
        self.peer_pem = None
        self.x.add_event_handler("ssl_cert", self._on_cert)
        orig = self.x.connect

        def connect(address=None, **kw):
            return orig(address=address, use_ssl=(mode == "direct"),
                        force_starttls=(mode == "starttls"),
                        disable_starttls=(mode == "direct"))
        self.x.connect = connect

    def _on_cert(self, pem):
        self.peer_pem = pem

    def ssl_object(self):
        t = self.x.transport
        return t.get_extra_info("ssl_object") if t is not None else None

    def assert_encrypted(self):
        so = self.ssl_object()
        assert so is not None, "%s: session is not encrypted" % self.jid
        assert so.version() in ("TLSv1.2", "TLSv1.3"), so.version()
        cert = so.getpeercert()
        assert "localhost" in san_dns(cert), cert
        return so


def chat_over_tls(port, ca, mode, sb):
    async def scenario():
        alice = TlsClient("alice@localhost/pc", "alicepw", port, ca, mode)
        bob = TlsClient("bob@localhost/phone", "bobpw", port, ca, mode)
        await alice.login()
        await bob.login()
        try:
            alice.assert_encrypted()
            bob.assert_encrypted()
            if mode == "starttls":
                # slixmpp negotiated STARTTLS itself
                assert "starttls" in alice.x.features, alice.x.features
                assert alice.peer_pem and "BEGIN CERTIFICATE" in \
                    alice.peer_pem
            assert alice.jid == "alice@localhost/pc"
            await alice.wait_presence("bob@localhost", "available")
            alice.send_message("bob@localhost/phone", "secret hello",
                               "tls-m1")
            f, body, mid = await bob.recv()
            assert (f, body, mid) == ("alice@localhost/pc", "secret hello",
                                      "tls-m1")
        finally:
            await alice.close()
            await bob.close()

    run(scenario(), 60)
    # the stand-in saw both sessions authenticate and the message routed
    assert routed(sb, "secret hello"), sb.inbound(r"^\s*<route")
    assert any("<auth" in x for x in sb.inbound(r"^\s*<route"))


# ================================================================ tests
@pytest.mark.parametrize("policy", ["optional", "required"])
def test_slixmpp_starttls_login_and_chat(standin, nginx, certs, policy):
    """slixmpp negotiates STARTTLS (verifying the server certificate against
    the test CA), logs in with SCRAM over TLS, and alice's message reaches
    bob; the stand-in routes it."""
    sb = standin()
    ngx = nginx(standin=sb, extra=tls_lines(certs, policy))
    chat_over_tls(ngx.port, certs.ca, "starttls", sb)


def test_slixmpp_direct_tls_login_and_chat(standin, nginx, certs):
    sb = standin()
    ngx = start_tls_pair(nginx, sb, certs)
    chat_over_tls(ngx.tls_port, certs.ca, "direct", sb)


def test_direct_tls_alpn_xmpp_client(standin, nginx, certs, raw):
    """ALPN xmpp-client is negotiated on the direct TLS port; features have
    no starttls; a PLAIN login works over it."""
    sb = standin()
    ngx = start_tls_pair(nginx, sb, certs)
    c = TlsRaw(ngx.tls_port, client_ctx(certs, ["xmpp-client"]),
               direct=True)
    try:
        assert c.sock.selected_alpn_protocol() == "xmpp-client"
        assert "localhost" in san_dns(c.sock.getpeercert())
        h, feats = c.open()
        assert h.get("from") == "localhost"
        assert starttls_el(feats) is None, tostr(feats)
        assert_no_external_or_plus(feats)
        jid = c.login("alice", "alicepw", resource="alpn")
        assert jid == "alice@localhost/alpn"
        wait_until(lambda: sb.sessions(user="alice", bound=True), 5,
                   what="alice bound at the stand-in")
    finally:
        c.close()


# ------------------------------------------------------------ features
def test_features_plaintext_optional(standin, nginx, certs):
    """optional: starttls (without <required/>) plus the SASL mechanisms
    (without EXTERNAL and *-PLUS, though the stand-in lists them) and
    register."""
    sb = standin()
    ngx = nginx(standin=sb, extra=tls_lines(certs, "optional"))
    c = TlsRaw(ngx.port)
    try:
        _, feats = c.open()
        st = starttls_el(feats)
        assert st is not None, tostr(feats)
        assert st.find(q(NS_TLS, "required")) is None, tostr(feats)
        assert_no_external_or_plus(feats)
        assert feats.find(q(NS_REGISTER, "register")) is not None, \
            tostr(feats)
        # after STARTTLS: mechanisms (still filtered), no starttls
        c.starttls(client_ctx(certs))
        _, feats2 = c.restart()
        assert starttls_el(feats2) is None, tostr(feats2)
        assert_no_external_or_plus(feats2)
    finally:
        c.close()


def test_features_required(standin, nginx, certs):
    """required: only <starttls><required/></starttls> before TLS; the
    mechanisms (filtered) after it, no starttls."""
    sb = standin()
    ngx = nginx(standin=sb, extra=tls_lines(certs, "required"))
    c = TlsRaw(ngx.port)
    try:
        _, feats = c.open()
        assert feature_names(feats) == [(NS_TLS, "starttls")], tostr(feats)
        st = starttls_el(feats)
        assert [x.tag for x in st] == [q(NS_TLS, "required")], tostr(feats)
        c.starttls(client_ctx(certs))
        _, feats2 = c.restart()
        assert starttls_el(feats2) is None, tostr(feats2)
        assert_no_external_or_plus(feats2)
        jid = c.login("alice", "alicepw", resource="req")
        assert jid == "alice@localhost/req"
    finally:
        c.close()


@pytest.mark.parametrize("directive", [None, "off"])
def test_features_starttls_off(standin, nginx, certs, directive):
    """Without xmpp_cm_starttls (or with off, even with a certificate):
    no starttls offered, mechanisms filtered, <starttls/> gets <failure/>
    and the stream is closed."""
    sb = standin()
    ngx = nginx(standin=sb,
                extra=tls_lines(certs, directive,
                                "localhost" if directive else None))
    c = TlsRaw(ngx.port)
    try:
        _, feats = c.open()
        assert starttls_el(feats) is None, tostr(feats)
        assert_no_external_or_plus(feats)
        c.send(STARTTLS)
        assert_tls_failure_and_close(c)
    finally:
        c.close()


def test_openfire_required_upgrades_optional(standin, nginx, certs):
    """Openfire's configuration IQ with <starttls><required/></starttls>
    (xmpp.client.tls.policy=required) turns `optional` into `required`.
    The stand-in has no option for this flag, so the test sends such a
    configuration IQ on the CM's socket through the control channel."""
    sb = standin()
    ngx = nginx(standin=sb, extra=tls_lines(certs, "optional"),
                connections=1)
    cm = sb.cm_sockets("cm1-")[0]["cm"]
    cfg = ('<iq type="set" id="cfg-req"><configuration xmlns="%s">'
           '<starttls xmlns="%s"><required/></starttls>'
           '<mechanisms xmlns="%s"><mechanism>PLAIN</mechanism>'
           '<mechanism>SCRAM-SHA-1</mechanism><mechanism>EXTERNAL'
           '</mechanism><mechanism>SCRAM-SHA-1-PLUS</mechanism>'
           '</mechanisms><register xmlns="http://jabber.org/features/'
           'iq-register"/></configuration></iq>' % (NS_CMP, NS_TLS, NS_SASL))
    sb.call("send_raw", cm=cm, xml=cfg)
    # the CM answers the configuration IQ with a result
    wait_until(lambda: sb.inbound(r"cfg-req"), 5,
               what="the CM's answer to the new configuration IQ")
    c = TlsRaw(ngx.port)
    try:
        _, feats = c.open()
        assert feature_names(feats) == [(NS_TLS, "starttls")], tostr(feats)
        assert starttls_el(feats).find(q(NS_TLS, "required")) is not None
        c.send('<auth xmlns="%s" mechanism="PLAIN">AGFsaWNlAGFsaWNlcHc='
               '</auth>' % NS_SASL)
        f = c.next_element(5)
        assert f.tag == q(NS_SASL, "failure"), tostr(f)
        assert [x.tag for x in f] == [q(NS_SASL, "encryption-required")]
    finally:
        c.close()


# ------------------------------------------------------------ required policy
def test_required_sasl_without_tls(standin, nginx, certs):
    """required, client skips TLS: <auth> gets <failure><encryption-required/>
    </failure>, nothing reaches Openfire, the stream stays open and the
    client can still do STARTTLS and log in."""
    sb = standin()
    ngx = nginx(standin=sb, extra=tls_lines(certs, "required"))
    c = TlsRaw(ngx.port)
    try:
        c.open()
        sid = c.stream_id
        c.send('<auth xmlns="%s" mechanism="PLAIN">AGFsaWNlAGFsaWNlcHc='
               '</auth>' % NS_SASL)
        f = c.next_element(5)
        assert f.tag == q(NS_SASL, "failure"), tostr(f)
        assert [x.tag for x in f] == [q(NS_SASL, "encryption-required")], \
            tostr(f)
        # stream stays open
        c.pump(0.5)
        assert not c.eof and not c.stream_ended(), c.text[-500:]
        assert c.stream_error() is None
        time.sleep(0.3)
        assert routed(sb, "<auth") == [], routed(sb, "<auth")
        assert sb.routes_for(sid) == [], sb.routes_for(sid)
        assert not sb.sessions(user="alice")
        # and TLS + login still work on the same connection
        c.starttls(client_ctx(certs))
        c.restart()
        assert c.login("alice", "alicepw", resource="late") == \
            "alice@localhost/late"
        assert routed(sb, "<auth")
    finally:
        c.close()


@pytest.mark.parametrize("stanza", [
    '<iq type="get" id="r1"><query xmlns="jabber:iq:roster"/></iq>',
    '<iq type="set" id="reg1"><query xmlns="jabber:iq:register">'
    '<username>mallory</username><password>x</password></query></iq>',
    '<message to="bob@localhost"><body>plain leak</body></message>',
    '<presence><status>plain leak</status></presence>',
], ids=["iq", "iq_register", "message", "presence"])
def test_required_stanza_without_tls(standin, nginx, certs, stanza):
    """required, client skips TLS and sends an iq, message or presence:
    stream error not-authorized; Openfire sees nothing of it."""
    sb = standin()
    ngx = nginx(standin=sb, extra=tls_lines(certs, "required"))
    c = TlsRaw(ngx.port)
    try:
        c.open()
        sid = c.stream_id
        c.send(stanza)
        cond = c.expect_stream_error(5)
        assert cond == "not-authorized", (cond, c.text[-500:])
        assert c.stream_ended()
        time.sleep(0.3)
        assert sb.routes_for(sid) == [], sb.routes_for(sid)
        for marker in ("plain leak", "mallory", "jabber:iq:roster"):
            if marker in stanza:
                assert [x for x in sb.inbound() if marker in x] == []
    finally:
        c.close()


# ------------------------------------------------------------ protocol errors
def test_second_starttls_after_tls(standin, nginx, certs):
    """<starttls/> on a stream that is already TLS (after STARTTLS):
    <failure/>, </stream:stream>, close (inside TLS)."""
    sb = standin()
    ngx = nginx(standin=sb, extra=tls_lines(certs, "optional"))
    c = TlsRaw(ngx.port)
    try:
        c.open()
        c.starttls(client_ctx(certs))
        c.restart()
        c.send(STARTTLS)
        assert_tls_failure_and_close(c)
    finally:
        c.close()


def test_starttls_after_sasl(standin, nginx, certs):
    """optional, a client that logged in in plaintext and only then sends
    <starttls/> (not offered after authentication): <failure/>, close."""
    sb = standin()
    ngx = nginx(standin=sb, extra=tls_lines(certs, "optional"))
    c = TlsRaw(ngx.port)
    try:
        c.open()
        assert c.auth_plain("alice", "alicepw").tag == q(NS_SASL, "success")
        _, feats = c.restart()
        assert starttls_el(feats) is None, tostr(feats)
        c.send(STARTTLS)
        assert_tls_failure_and_close(c)
    finally:
        c.close()


def test_starttls_during_sasl(standin, nginx, certs):
    """RFC 6120 5.3.1: TLS comes before SASL.  A <starttls/> while a SASL
    exchange is under way (PLAIN without initial response: Openfire sent
    an empty challenge) gets <failure/> and the stream closes."""
    sb = standin()
    ngx = nginx(standin=sb, extra=tls_lines(certs, "optional"))
    c = TlsRaw(ngx.port)
    try:
        c.open()
        c.send('<auth xmlns="%s" mechanism="PLAIN"/>' % NS_SASL)
        assert c.next_element(5).tag == q(NS_SASL, "challenge")
        c.send(STARTTLS)
        assert_tls_failure_and_close(c)
    finally:
        c.close()


def test_starttls_on_direct_tls(standin, nginx, certs):
    sb = standin()
    ngx = start_tls_pair(nginx, sb, certs)
    c = TlsRaw(ngx.tls_port, client_ctx(certs), direct=True)
    try:
        c.open()
        c.send(STARTTLS)
        assert_tls_failure_and_close(c)
    finally:
        c.close()


def test_starttls_injection_discarded(standin, nginx, certs):
    """Plaintext pipelined after <starttls/> in the same write is discarded:
    the injected message never reaches Openfire, the stream is not closed
    for it, and the client still does TLS and logs in."""
    sb = standin()
    ngx = nginx(standin=sb, extra=tls_lines(certs, "optional"))
    c = TlsRaw(ngx.port)
    try:
        c.open()
        sid = c.stream_id
        c.send(STARTTLS + '<message to="bob@localhost"><body>injected'
               '</body></message>')
        el = c.tls_answer(5)
        assert el.tag == q(NS_TLS, "proceed"), tostr(el)
        assert c.stream_error() is None, c.text
        c.wrap(client_ctx(certs), "localhost")
        _, feats = c.restart()
        assert starttls_el(feats) is None
        assert c.login("alice", "alicepw", resource="inj") == \
            "alice@localhost/inj"
        # a message after TLS does go through
        c.send('<message to="bob@localhost" id="after"><body>after tls'
               '</body></message>')
        wait_until(lambda: routed(sb, "after tls"), 5,
                   what="the post-TLS message at the stand-in")
        assert [e for e in sb.events() if "injected" in e.get("xml", "")] \
            == []
        assert any("<auth" in x for x in sb.routes_for(sid))
    finally:
        c.close()


def test_starttls_injection_in_tls_first_flight(standin, nginx, certs):
    """Injection of a whole fake TLS-era stream header in plaintext (it
    would be parsed as the restarted stream if it were kept): the handshake
    still succeeds and the real restart gets a fresh parser."""
    sb = standin()
    ngx = nginx(standin=sb, extra=tls_lines(certs, "optional"))
    c = TlsRaw(ngx.port)
    try:
        c.open()
        c.send(STARTTLS + '<stream:stream xmlns:stream="http://etherx.'
               'jabber.org/streams" xmlns="jabber:client" to="localhost" '
               'version="1.0">')
        assert c.tls_answer(5).tag == q(NS_TLS, "proceed")
        c.wrap(client_ctx(certs), "localhost")
        h, feats = c.restart()
        assert h.get("from") == "localhost"
        assert_no_external_or_plus(feats)
        assert c.login("bob", "bobpw", resource="inj2") == \
            "bob@localhost/inj2"
    finally:
        c.close()


# ------------------------------------------------------------ handshake errors
def test_handshake_garbage_logged_and_worker_serves(standin, nginx, certs):
    sb = standin()
    ngx = nginx(standin=sb, extra=tls_lines(certs, "optional"))
    c = TlsRaw(ngx.port)
    c.open()
    c.send(STARTTLS)
    assert c.tls_answer(5).tag == q(NS_TLS, "proceed")
    c.send(b"GET / HTTP/1.0\r\nthis is not a TLS ClientHello\r\n\r\n")
    c.wait_eof(10)
    c.close()
    lines = wait_until(lambda: ngx.log_lines(HANDSHAKE_FAILED), 5,
                       what="'TLS handshake failed' at info in error.log")
    assert lines
    # the worker still serves a new client over STARTTLS
    assert_starttls_login(ngx.port, certs, "alice", "alicepw")


def test_handshake_cert_rejected_by_client(standin, nginx, certs):
    """A client that does not trust the certificate aborts the handshake;
    the CM logs it at info and keeps serving."""
    sb = standin()
    ngx = nginx(standin=sb, extra=tls_lines(certs, "optional"))
    c = TlsRaw(ngx.port)
    c.open()
    c.send(STARTTLS)
    assert c.tls_answer(5).tag == q(NS_TLS, "proceed")
    untrusting = ssl.create_default_context()    # system CAs only
    with pytest.raises(ssl.SSLCertVerificationError):
        c.wrap(untrusting, "localhost")
    c.close()
    wait_until(lambda: ngx.log_lines(HANDSHAKE_FAILED), 5,
               what="'TLS handshake failed' at info in error.log")
    assert_starttls_login(ngx.port, certs, "bob", "bobpw")


def test_handshake_timeout(standin, nginx, certs):
    """No ClientHello after <proceed/>: the connection is closed after
    ssl_handshake_timeout."""
    sb = standin()
    ngx = nginx(standin=sb, extra=tls_lines(certs, "optional",
                                             more="ssl_handshake_timeout 1s;"))
    c = TlsRaw(ngx.port)
    try:
        c.open()
        c.send(STARTTLS)
        assert c.tls_answer(5).tag == q(NS_TLS, "proceed")
        t0 = time.monotonic()
        c.wait_eof(6)
        took = time.monotonic() - t0
        assert 0.7 <= took <= 4, "closed after %.2fs" % took
    finally:
        c.close()


# ------------------------------------------------------------ SNI
def test_sni_two_domains_two_certificates(standin, nginx, certs):
    """xmpp_cm_domain example.com example.net with
    ssl_certificate .../$ssl_server_name.crt: SNI picks each domain's
    certificate for direct TLS and for STARTTLS."""
    sb = standin(domain="example.com")
    port, tls_port = free_port(), free_port()
    upstream = "127.0.0.1:%d" % sb.port
    varcert = ("ssl_certificate %s/$ssl_server_name.crt;\n"
               "ssl_certificate_key %s/$ssl_server_name.key;"
               % (certs.dir, certs.dir))
    body = "\n".join([
        server_block(port, upstream, domain="example.com example.net",
                     extra="xmpp_cm_starttls optional;\n" + varcert),
        server_block(tls_port, upstream, domain="example.com example.net",
                     listen_extra=" ssl",
                     extra=varcert + "\nssl_alpn xmpp-client;"),
    ])
    ngx = nginx(body, standin=sb, port=port)
    ngx.wait_port(tls_port)
    ctx = client_ctx(certs, ["xmpp-client"])
    for d in ("example.com", "example.net"):
        # direct TLS
        c = TlsRaw(tls_port, ctx, server_hostname=d, direct=True)
        try:
            cert = c.sock.getpeercert()
            assert san_dns(cert) == [d], (d, cert)
            assert subject_cn(cert) == d
            assert c.sock.selected_alpn_protocol() == "xmpp-client"
            h, feats = c.open(to=d)
            assert h.get("from") == d, h
            assert starttls_el(feats) is None
        finally:
            c.close()
        # STARTTLS
        c = TlsRaw(port)
        try:
            h, feats = c.open(to=d)
            assert h.get("from") == d, h
            assert starttls_el(feats) is not None, tostr(feats)
            c.starttls(ctx, server_hostname=d)
            cert = c.sock.getpeercert()
            assert san_dns(cert) == [d], (d, cert)
            h, feats = c.restart(to=d)
            assert h.get("from") == d, h
            assert_no_external_or_plus(feats)
        finally:
            c.close()
    # and a login through the variable certificate works end to end
    c = TlsRaw(port)
    try:
        c.open(to="example.com")
        c.starttls(ctx, server_hostname="example.com")
        c.restart(to="example.com")
        jid = c.login("alice", "alicepw", resource="sni", to="example.com")
        assert jid == "alice@example.com/sni"
    finally:
        c.close()


# ------------------------------------------------------------ libstrophe
@pytest.fixture(scope="session")
def strophe_login(tmp_path_factory):
    def have():
        return subprocess.run(["pkg-config", "--exists", "libstrophe"]
                              ).returncode == 0
    if shutil.which("pkg-config") is None or not have():
        if os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(["apt-get", "install", "-y", "libstrophe-dev",
                            "pkg-config"],
                           env=dict(os.environ,
                                    DEBIAN_FRONTEND="noninteractive"),
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=600)
        if shutil.which("pkg-config") is None or not have():
            pytest.skip("libstrophe-dev is not installed and could not be "
                        "installed (apt-get install libstrophe-dev)")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libstrophe"],
                           stdout=subprocess.PIPE, check=True
                           ).stdout.decode().split()
    out = str(tmp_path_factory.mktemp("strophe") / "strophe_login")
    src = os.path.join(T_DIR, "clients", "strophe_login.c")
    p = subprocess.run(["cc", "-Wall", "-Wextra", "-Werror", "-o", out, src]
                       + flags, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    assert p.returncode == 0, p.stdout.decode("utf-8", "replace")
    return out


@pytest.mark.parametrize("mode", ["optional", "required", "direct"])
def test_libstrophe_login_and_message(standin, nginx, certs, strophe_login,
                                      mode):
    """libstrophe with XMPP_CONN_FLAG_MANDATORY_TLS (and LEGACY_SSL for
    direct TLS), trusting only the test CA, logs in and sends a message;
    Openfire routes it (bob is offline, so it lands in bob's offline
    store)."""
    sb = standin()
    if mode == "direct":
        ngx = start_tls_pair(nginx, sb, certs)
        port, extra = ngx.tls_port, ["direct"]
    else:
        ngx = nginx(standin=sb, extra=tls_lines(certs, mode))
        port, extra = ngx.port, []
    body = "hello from libstrophe (%s)" % mode
    p = subprocess.run([strophe_login, "127.0.0.1", str(port),
                        "alice@localhost/strophe", "alicepw", certs.ca,
                        "bob@localhost", body] + extra,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=dict(os.environ, STROPHE_DEBUG="1"), timeout=40)
    out = p.stdout.decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 0 and "CONNECTED alice@localhost/strophe" in out, \
        "rc=%d\nstdout: %s\nstderr (tail): %s\nerror.log (tail): %s" % (
            p.returncode, out, err[-4000:], ngx.log()[-3000:])
    assert "SECURED 1" in out, out
    wait_until(lambda: routed(sb, body), 5,
               what="the libstrophe message routed to the stand-in")
    msgs = sb.call("offline", user="bob")["messages"]
    assert any(body in m for m in msgs), msgs


# ------------------------------------------------------------ nginx -t
@pytest.mark.parametrize("policy", ["optional", "required"])
def test_nginx_t_starttls_needs_certificate(nginx_t, policy):
    body = server_block(15222, "127.0.0.1:5262",
                        extra="xmpp_cm_starttls %s;" % policy)
    rc, out = nginx_t(body)
    assert rc != 0, out
    assert re.search(r'\[emerg\] "?xmpp_cm_starttls"? .*ssl_certificate',
                     out), out
    assert "[emerg]" in out, out


def test_nginx_t_starttls_valid(nginx_t, certs):
    for policy in ("off", "optional", "required"):
        body = server_block(15222, "127.0.0.1:5262",
                            extra=tls_lines(certs, policy))
        rc, out = nginx_t(body)
        assert rc == 0, (policy, out)
    # off without certificates is fine as well
    rc, out = nginx_t(server_block(15222, "127.0.0.1:5262",
                                   extra="xmpp_cm_starttls off;"))
    assert rc == 0, out
    # and direct TLS with ALPN
    rc, out = nginx_t(server_block(15222, "127.0.0.1:5262",
                                   listen_extra=" ssl",
                                   extra=tls_lines(certs, None, "localhost",
                                                   "ssl_alpn xmpp-client;")))
    assert rc == 0, out


def test_nginx_t_starttls_bad_value(nginx_t, certs):
    body = server_block(15222, "127.0.0.1:5262",
                        extra=tls_lines(certs, "maybe"))
    rc, out = nginx_t(body)
    assert rc != 0, out
    # nginx's own enum check: 'invalid value "maybe" in FILE:LINE'
    assert 'invalid value "maybe"' in out, out


# ------------------------------------------------------------ one server
def test_one_server_starttls_and_direct_tls(standin, nginx, certs):
    """One server {} with `listen P;` and `listen P2 ssl;`: STARTTLS on the
    plain port, direct TLS on the other, one set of ssl_* directives."""
    sb = standin()
    tls_port = free_port()
    ngx = nginx(standin=sb, listen_extra=";\n    listen 127.0.0.1:%d ssl"
                % tls_port,
                extra=tls_lines(certs, "required",
                                more="ssl_alpn xmpp-client;"))
    ngx.wait_port(tls_port)
    c = TlsRaw(ngx.port)
    try:
        _, feats = c.open()
        assert feature_names(feats) == [(NS_TLS, "starttls")], tostr(feats)
        c.starttls(client_ctx(certs))
        _, feats = c.restart()
        assert starttls_el(feats) is None
        assert c.login("alice", "alicepw", resource="st") == \
            "alice@localhost/st"
        # checked while connected: a client that leaves is closed at once
        wait_until(lambda: sb.sessions(user="alice", bound=True), 5,
                   what="alice bound at the stand-in")
    finally:
        c.close()
    d = TlsRaw(tls_port, client_ctx(certs, ["xmpp-client"]), direct=True)
    try:
        assert d.sock.selected_alpn_protocol() == "xmpp-client"
        _, feats = d.open()
        # direct TLS: no starttls, even under `required`
        assert starttls_el(feats) is None, tostr(feats)
        assert_no_external_or_plus(feats)
        assert d.login("bob", "bobpw", resource="dt") == "bob@localhost/dt"
        wait_until(lambda: sb.sessions(user="bob", bound=True), 5,
                   what="bob bound at the stand-in")
    finally:
        d.close()


def _varcert_body(certs, sb, port, tls_port, cert_var):
    upstream = "127.0.0.1:%d" % sb.port
    varcert = ("ssl_certificate %s/%s.crt;\n"
               "ssl_certificate_key %s/%s.key;"
               % (certs.dir, cert_var, certs.dir, cert_var))
    return "\n".join([
        server_block(port, upstream, domain="example.com example.net",
                     extra="xmpp_cm_starttls optional;\n" + varcert),
        server_block(tls_port, upstream, domain="example.com example.net",
                     listen_extra=" ssl", extra=varcert),
    ])


def _peer_cert_no_check(certs, port, sni, starttls_to=None):
    """Peer certificate (verified against the test CA, name not checked)
    for a client sending SNI `sni` (None: no SNI)."""
    ctx = client_ctx(certs)
    ctx.check_hostname = False
    if starttls_to is None:
        c = TlsRaw(port, ctx, server_hostname=sni, direct=True)
    else:
        c = TlsRaw(port)
        c.open(to=starttls_to)
        c.starttls(ctx, server_hostname=sni)
    try:
        return c.sock.getpeercert()
    finally:
        c.close()


def test_sni_map_with_default(standin, nginx, certs):
    """The docs' recommended form: `map $ssl_server_name $xmpp_cert` with a
    default, so that clients without SNI (or with an unknown name) get the
    default certificate, for direct TLS and for STARTTLS."""
    sb = standin(domain="example.com")
    port, tls_port = free_port(), free_port()
    mp = ("map $ssl_server_name $xmpp_cert {\n"
          "    example.com example.com;\n"
          "    example.net example.net;\n"
          "    default     example.com;\n"
          "}\n")
    ngx = nginx(_varcert_body(certs, sb, port, tls_port, "$xmpp_cert"),
                standin=sb, port=port, stream_extra=mp)
    ngx.wait_port(tls_port)
    for p, to in ((tls_port, None), (port, "example.net")):
        assert san_dns(_peer_cert_no_check(certs, p, "example.net", to)) \
            == ["example.net"]
        assert san_dns(_peer_cert_no_check(certs, p, None, to)) \
            == ["example.com"]
        assert san_dns(_peer_cert_no_check(certs, p, "unknown.example", to)) \
            == ["example.com"]
