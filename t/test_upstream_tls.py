"""TLS to Openfire (xmpp_cm_upstream_tls starttls|direct and the
xmpp_cm_upstream_ssl_* directives): STARTTLS on the CM port and the
Direct-TLS listener of the stand-in, certificate checks, a server that
offers no STARTTLS, Openfire's "TLS required" policy, a client certificate,
session reuse, and nginx -t.

The CM must never send its <handshake> digest (sha1(id + secret), open to
an offline guess of the secret) on a link that is not encrypted and, with
verification on, verified: the tests that refuse a server assert that the
stand-in never received a <handshake>.

Certificates are made once per session with the openssl CLI (as in
t/test_tls.py): a test CA; leaves for localhost (the XMPP domain) and for
another name; a rogue CA with its own localhost leaf; a client
certificate for the CM."""
import os
import re
import shutil
import tempfile

import pytest

from conftest import server_block
from lib.util import free_port, wait_until
from lib.xmpp import Client, run
from test_tls import Certs, _openssl


def _leaf(d, name, ca, san, usage="serverAuth"):
    with open(os.path.join(d, "%s.ext" % name), "w") as f:
        f.write("basicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=%s\n"
                "subjectAltName=DNS:%s\n" % (usage, san))
    _openssl("req", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "%s.key" % name, "-out", "%s.csr" % name,
             "-subj", "/CN=%s" % san, cwd=d)
    _openssl("x509", "-req", "-in", "%s.csr" % name, "-CA", "%s.crt" % ca,
             "-CAkey", "%s.key" % ca, "-CAcreateserial", "-days", "30",
             "-out", "%s.crt" % name, "-extfile", "%s.ext" % name, cwd=d)


def _ca(d, name):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             "%s.key" % name, "-out", "%s.crt" % name, "-days", "30",
             "-subj", "/CN=xmpp_cm upstream test %s" % name,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


@pytest.fixture(scope="module")
def ofc():
    if shutil.which("openssl") is None:
        pytest.fail("the openssl CLI is needed to generate test certificates",
                    pytrace=False)
    d = tempfile.mkdtemp(prefix="xmpp-cm-uptls-")
    os.chmod(d, 0o755)
    _ca(d, "ca")
    _ca(d, "rogue")
    _leaf(d, "localhost", "ca", "localhost")
    _leaf(d, "other", "ca", "openfire.example.org")
    _leaf(d, "rogue-localhost", "rogue", "localhost")
    _leaf(d, "cm-client", "ca", "cm.example.org", usage="clientAuth")
    for f in os.listdir(d):
        os.chmod(os.path.join(d, f), 0o644)
    yield Certs(d)
    shutil.rmtree(d, ignore_errors=True)


def tls_standin(standin, ofc, cert="localhost", policy="optional",
                direct=False, version="4.1", client_ca=False):
    args = ["--tls-policy", policy]
    if cert:
        args += ["--tls-cert", ofc.crt(cert), "--tls-key", ofc.key(cert)]
    tls_port = None
    if direct:
        tls_port = free_port()
        args += ["--tls-listen", "127.0.0.1:%d" % tls_port]
    if client_ca:
        args += ["--tls-client-ca", ofc.ca]
    sb = standin(version=version, extra_args=args)
    sb.tls_port = tls_port
    return sb


def upstream_lines(ofc, mode="starttls", verify=True, more=""):
    out = ["xmpp_cm_upstream_tls %s;" % mode]
    if verify:
        out += ["xmpp_cm_upstream_ssl_verify on;",
                "xmpp_cm_upstream_ssl_trusted_certificate %s;" % ofc.ca]
    out.append(more)
    return "\n".join(out)


def handshakes(sb):
    return sb.inbound(r"<handshake")


def per_socket(sb):
    """Events per stand-in socket, in order."""
    socks = {}
    for e in sb.events():
        socks.setdefault(e["sock"], []).append(e)
    return socks


def assert_handshake_only_after_tls(sb, direct=False):
    """Every <handshake> a socket received came after its TLS handshake
    (STARTTLS: after <starttls/> and the stand-in's "tls" event)."""
    seen = 0
    for sock, evs in per_socket(sb).items():
        kinds = []
        for e in evs:
            if e["dir"] == "tls":
                kinds.append("tls")
            elif e["dir"] == "in" and "<handshake" in e["xml"]:
                kinds.append("handshake")
            elif e["dir"] == "in" and "<starttls" in e["xml"]:
                kinds.append("starttls")
        if "handshake" not in kinds:
            continue
        seen += 1
        if direct:
            assert "starttls" not in kinds and "tls" not in kinds, kinds
        else:
            assert kinds[:3] == ["starttls", "tls", "handshake"], kinds
    assert seen >= 1


def chat(port, tag):
    async def scenario():
        alice = Client("alice@localhost/pc", "alicepw", port)
        bob = Client("bob@localhost/phone", "bobpw", port)
        await alice.login()
        await bob.login()
        try:
            alice.send_message("bob@localhost/phone", "over tls " + tag,
                               "m-" + tag)
            f, body, mid = await bob.recv()
            assert (f, body, mid) == ("alice@localhost/pc",
                                      "over tls " + tag, "m-" + tag)
            bob.send_message("alice@localhost/pc", "back " + tag)
            f, body, _ = await alice.recv()
            assert (f, body) == ("bob@localhost/phone", "back " + tag)
        finally:
            await alice.close()
            await bob.close()

    run(scenario(), 60)


def wait_log(ngx, pattern, what, count=1, timeout=15):
    wait_until(lambda: len(ngx.log_lines(pattern)) >= count, timeout,
               what=what)


# ============================================================== success
@pytest.mark.parametrize("version", ["4.1", "4.8"])
def test_starttls_verified_and_chat(standin, nginx, ofc, version):
    """STARTTLS on the CM port, the certificate verified against the CA
    for the XMPP domain (the default name): every socket authenticates
    over TLS, the handshake only after it, and two clients chat through
    the encrypted link."""
    sb = tls_standin(standin, ofc, version=version)
    ngx = nginx(standin=sb, extra=upstream_lines(ofc))
    socks = sb.cm_sockets("cm1-")
    assert socks and all(s["tls"] and not s["direct"] for s in socks), socks
    assert_handshake_only_after_tls(sb)
    chat(ngx.port, "starttls")
    routes = sb.inbound(r"^\s*<route")
    assert any("over tls starttls" in x for x in routes), routes
    assert ngx.log_lines(r"\[info\].*TLS to Openfire .*TLSv1\.[23]")


def test_direct_tls_verified_and_chat(standin, nginx, ofc):
    """Direct TLS to the stand-in's Direct-TLS listener (Openfire's 5263):
    no <starttls/> is sent even though the listener advertises it."""
    sb = tls_standin(standin, ofc, direct=True)
    ngx = nginx(standin=sb, upstream="127.0.0.1:%d" % sb.tls_port,
                extra=upstream_lines(ofc, "direct"))
    socks = sb.cm_sockets("cm1-")
    assert socks and all(s["tls"] and s["direct"] for s in socks), socks
    assert_handshake_only_after_tls(sb, direct=True)
    assert not sb.inbound(r"<starttls")
    chat(ngx.port, "direct")


def test_starttls_session_reused_after_reconnect(standin, nginx, ofc):
    """xmpp_cm_upstream_ssl_session_reuse (default on): a socket that
    reconnects resumes its TLS session."""
    sb = tls_standin(standin, ofc)
    ngx = nginx(standin=sb, connections=1,
                extra=upstream_lines(ofc, more="xmpp_cm_reconnect 50ms 100ms;"))
    assert not ngx.log_lines(r"TLS to Openfire .*reused")
    sb.call("drop_sockets")
    wait_log(ngx, r"\[info\].*TLS to Openfire .*, reused",
             "a resumed TLS session after the reconnect")
    wait_until(lambda: len(sb.cm_sockets("cm1-")) >= 1, 10,
               what="the socket authenticated again")


def test_client_certificate(standin, nginx, ofc):
    """Openfire asks for a client certificate (xmpp.multiplex.cert.policy
    needed): xmpp_cm_upstream_ssl_certificate presents one."""
    sb = tls_standin(standin, ofc, client_ca=True)
    more = ("xmpp_cm_upstream_ssl_certificate %s;\n"
            "xmpp_cm_upstream_ssl_certificate_key %s;" % (
                ofc.crt("cm-client"), ofc.key("cm-client")))
    ngx = nginx(standin=sb, extra=upstream_lines(ofc, more=more))
    assert all(s["tls"] for s in sb.cm_sockets("cm1-"))
    chat(ngx.port, "client-cert")


def test_no_client_certificate_refused(standin, nginx, ofc):
    sb = tls_standin(standin, ofc, client_ca=True)
    ngx = nginx(standin=sb, extra=upstream_lines(ofc), wait_sockets=False)
    # TLS 1.3: the client's handshake is done before the server checks
    # its certificate, so the refusal shows as a close right after TLS
    wait_log(ngx, r"\[error\].*(TLS handshake with Openfire .*failed|"
             r"closed by Openfire right after TLS).*"
             r"xmpp_cm_upstream_ssl_certificate", "the refusal and its fix")
    assert not handshakes(sb)


# ============================================================== refusals
@pytest.mark.parametrize("mode", ["starttls", "direct"])
def test_name_mismatch_refused(standin, nginx, ofc, mode):
    """Openfire's certificate is for another name: the CM refuses it,
    says which name it wanted and how to fix it, backs off and retries,
    and never sends the handshake."""
    sb = tls_standin(standin, ofc, cert="other", direct=(mode == "direct"))
    up = "127.0.0.1:%d" % (sb.tls_port if mode == "direct" else sb.port)
    ngx = nginx(standin=sb, upstream=up, wait_sockets=False,
                extra=upstream_lines(ofc, mode,
                                     more="xmpp_cm_reconnect 100ms 200ms;"))
    wait_log(ngx, r"\[error\].*certificate does not match \"localhost\"; "
             r"set \"xmpp_cm_upstream_ssl_name\"",
             "the name mismatch logged twice (a retry)", count=3)
    assert not handshakes(sb)
    assert not sb.cm_sockets("cm1-")


def test_name_set_by_directive(standin, nginx, ofc):
    """xmpp_cm_upstream_ssl_name (with SNI on) accepts the other name."""
    sb = tls_standin(standin, ofc, cert="other")
    ngx = nginx(standin=sb, extra=upstream_lines(
        ofc, more="xmpp_cm_upstream_ssl_name openfire.example.org;\n"
                  "xmpp_cm_upstream_ssl_server_name on;"))
    assert all(s["tls"] for s in sb.cm_sockets("cm1-"))
    chat(ngx.port, "named")


@pytest.mark.parametrize("mode", ["starttls", "direct"])
def test_untrusted_ca_refused(standin, nginx, ofc, mode):
    sb = tls_standin(standin, ofc, cert="rogue-localhost",
                     direct=(mode == "direct"))
    up = "127.0.0.1:%d" % (sb.tls_port if mode == "direct" else sb.port)
    ngx = nginx(standin=sb, upstream=up, wait_sockets=False,
                extra=upstream_lines(ofc, mode))
    wait_log(ngx, r"\[error\].*certificate did not verify: \(\d+:.*\); put "
             r"the CA that signed it in "
             r"\"xmpp_cm_upstream_ssl_trusted_certificate\"",
             "the verification failure")
    assert not handshakes(sb)


def test_untrusted_ca_accepted_with_verify_off(standin, nginx, ofc):
    """proxy_ssl_verify's default: off (encrypted, not authenticated)."""
    sb = tls_standin(standin, ofc, cert="rogue-localhost")
    nginx(standin=sb, extra=upstream_lines(ofc, verify=False))
    assert all(s["tls"] for s in sb.cm_sockets("cm1-"))


@pytest.mark.parametrize("how", ["no-certificate-4.8", "policy-disabled"])
def test_no_starttls_offered_no_digest(standin, nginx, ofc, how):
    """STARTTLS is required by the CM, the server offers none (4.8+
    without a certificate, or xmpp.multiplex.tls.policy=disabled): the CM
    logs the fix at error, never sends the handshake digest, and backs
    off."""
    if how == "policy-disabled":
        sb = tls_standin(standin, ofc, policy="disabled")
    else:
        sb = tls_standin(standin, ofc, cert=None, version="4.8")
    ngx = nginx(standin=sb, wait_sockets=False,
                extra=upstream_lines(ofc, more="xmpp_cm_reconnect 100ms 200ms;"))
    wait_log(ngx, r"\[error\].*offers no STARTTLS on its connection-manager "
             r"port.*xmpp.multiplex.tls.policy", "the missing STARTTLS",
             count=3)
    assert not handshakes(sb)
    assert not sb.inbound(r"<starttls")
    assert not sb.cm_sockets("cm1-")


def test_openfire_requires_tls_plain_cm_told(standin, nginx, ofc):
    """Openfire's xmpp.multiplex.tls.policy=required and a CM without TLS:
    Openfire closes on the handshake with not-authorized ("TLS is
    mandatory"), and the CM says to turn TLS on (not "wrong secret")."""
    sb = tls_standin(standin, ofc, policy="required")
    ngx = nginx(standin=sb, wait_sockets=False)
    wait_log(ngx, r"\[error\].*requires TLS on the connection-manager link.*"
             r"xmpp_cm_upstream_tls starttls", "the TLS-required hint")
    assert not ngx.log_lines(r"xmpp_cm_secret .* does not match")
    # and with TLS on, the same server accepts the CM
    ngx2 = nginx(standin=sb, extra=upstream_lines(ofc), name="cm2")
    assert all(s["tls"] for s in sb.cm_sockets("cm2-"))
    chat(ngx2.port, "required")


# ============================================================== nginx -t
def test_nginx_t_verify_needs_trusted_certificate(nginx_t):
    body = server_block(15222, "127.0.0.1:5262", extra=(
        "xmpp_cm_upstream_tls starttls;\nxmpp_cm_upstream_ssl_verify on;"))
    rc, out = nginx_t(body)
    assert rc != 0, out
    assert re.search(r'\[emerg\] no "xmpp_cm_upstream_ssl_trusted_'
                     r'certificate" for "xmpp_cm_upstream_ssl_verify"', out), out


def test_nginx_t_upstream_tls_values(nginx_t, ofc):
    for mode in ("off", "starttls", "direct"):
        rc, out = nginx_t(server_block(15222, "127.0.0.1:5262", extra=(
            upstream_lines(ofc, mode, more=(
                "xmpp_cm_upstream_ssl_protocols TLSv1.2 TLSv1.3;\n"
                "xmpp_cm_upstream_ssl_ciphers HIGH:!aNULL;\n"
                "xmpp_cm_upstream_ssl_verify_depth 2;\n"
                "xmpp_cm_upstream_ssl_session_reuse off;")))))
        assert rc == 0, (mode, out)
    rc, out = nginx_t(server_block(15222, "127.0.0.1:5262",
                                   extra="xmpp_cm_upstream_tls optional;"))
    assert rc != 0 and "invalid value" in out, out
    rc, out = nginx_t(server_block(15222, "127.0.0.1:5262", extra=(
        "xmpp_cm_upstream_tls direct;\n"
        "xmpp_cm_upstream_ssl_certificate %s;" % ofc.crt("cm-client"))))
    assert rc != 0 and 'no "xmpp_cm_upstream_ssl_certificate_key"' in out, out


def test_nginx_t_shared_name_must_agree_on_upstream_tls(nginx_t, ofc):
    body = "\n".join([
        server_block(15222, "127.0.0.1:5262",
                     extra=upstream_lines(ofc, "starttls")),
        server_block(15223, "127.0.0.1:5262")])
    rc, out = nginx_t(body)
    assert rc != 0, out
    assert re.search(r'\[emerg\] "xmpp_cm_name" "cm1" is used in .* with a '
                     r'different .*"xmpp_cm_upstream_tls"; give each its own '
                     r'name', out), out
