"""The build, and configuration errors at `nginx -t`."""
import os
import re
import subprocess

import pytest

from conftest import ROOT, server_block

GOOD_PASS = "127.0.0.1:5262"


def body(**kw):
    kw.setdefault("connections", 2)
    extra = kw.pop("extra", "")
    upstream = kw.pop("upstream", GOOD_PASS)
    return server_block(15222, upstream, extra=extra, **kw)


def test_module_builds_without_warnings(module_path):
    """build.sh compiles with -Wall -Wextra -Werror; the make log has no
    warnings for the module's sources and configure found expat."""
    if os.environ.get("XMPP_CM_MODULE"):
        pytest.skip("XMPP_CM_MODULE: a module built elsewhere, not by "
                    "scripts/build.sh")
    assert os.path.exists(module_path)
    with open(os.path.join(ROOT, "build", "nginx", "objs", "Makefile"),
              errors="replace") as f:
        makefile = f.read()
    cflags = re.search(r"^CFLAGS\s*=(.*)$", makefile, re.M).group(1)
    for flag in ("-Wall", "-Wextra", "-Werror"):
        assert flag in cflags, "module not compiled with %s: %s" % (flag,
                                                                   cflags)
    with open(os.path.join(ROOT, "build", "make.log"), errors="replace") as f:
        make_log = f.read()
    warnings = [l for l in make_log.splitlines()
                if "warning:" in l and "xmpp_cm" in l]
    assert warnings == []
    with open(os.path.join(ROOT, "build", "configure.log"),
              errors="replace") as f:
        conf_log = f.read()
    assert re.search(r"checking for expat library \.\.\. found", conf_log), \
        "config addon did not probe expat"


def test_module_loads_into_debian_nginx(nginx_t):
    rc, out = nginx_t(body())
    assert rc == 0, out
    assert "syntax is ok" in out and "test is successful" in out, out


def test_valid_variants_accepted(nginx_t):
    """Positive controls for the error cases below: every directive with a
    sane value, an upstream{} block name, and the largest stanza size."""
    extra = """
        xmpp_cm_keepalive 10s;
        xmpp_cm_upstream_timeout 60s;
        xmpp_cm_connect_timeout 5s;
        xmpp_cm_reconnect 100ms 5s;
        xmpp_cm_auth_timeout 30s;
        xmpp_cm_idle_timeout 5m;
        xmpp_cm_max_stanza_size 1047552;
        xmpp_cm_preauth_max_stanza_size 8k;
        xmpp_cm_max_depth 16;
        xmpp_cm_client_output_limit 2m;
        xmpp_cm_upstream_watermarks 1m 256k;
        xmpp_cm_close_delay 2s;
    """
    b = "upstream openfire { server 127.0.0.1:5262; }\n" + \
        body(upstream="openfire", extra=extra)
    rc, out = nginx_t(b)
    assert rc == 0, out
    # several domains
    rc, out = nginx_t(body(domain="localhost example.com"))
    assert rc == 0, out


BAD = [
    ("missing_domain", dict(domain=None), "xmpp_cm_domain"),
    ("missing_secret", dict(secret=None), "xmpp_cm_secret"),
    ("connections_zero", dict(connections=0), "xmpp_cm_connections"),
    ("stanza_size_over_1mib", dict(extra="xmpp_cm_max_stanza_size 2m;"),
     "xmpp_cm_max_stanza_size"),
    ("stanza_size_just_over", dict(extra="xmpp_cm_max_stanza_size 1047553;"),
     "xmpp_cm_max_stanza_size"),
    ("reconnect_min_gt_max", dict(extra="xmpp_cm_reconnect 10s 1s;"),
     "xmpp_cm_reconnect"),
    ("preauth_size_over_max",
     dict(extra="xmpp_cm_max_stanza_size 4k;\n"
                "xmpp_cm_preauth_max_stanza_size 8k;"),
     "xmpp_cm_preauth_max_stanza_size"),
    ("watermarks_low_gt_high",
     dict(extra="xmpp_cm_upstream_watermarks 256k 1m;"),
     "xmpp_cm_upstream_watermarks"),
    ("resume_timeout_over_a_day",
     dict(extra="xmpp_cm_resume_timeout 25h;"), "xmpp_cm_resume_timeout"),
    ("resume_timeout_not_a_time",
     dict(extra="xmpp_cm_resume_timeout soon;"), "xmpp_cm_resume_timeout"),
    ("stream_management_not_a_flag",
     dict(extra="xmpp_cm_stream_management maybe;"),
     "xmpp_cm_stream_management"),
]


@pytest.mark.parametrize("case,kw,directive", BAD, ids=[b[0] for b in BAD])
def test_config_error(nginx_t, case, kw, directive):
    rc, out = nginx_t(body(**kw))
    assert rc != 0, "nginx -t accepted a bad config (%s):\n%s" % (case, out)
    assert directive in out, out
    assert "[emerg]" in out, out
    assert re.search(r"nginx-t\.conf:\d+", out), \
        "error does not name file:line: " + out


def test_config_error_unknown_upstream(nginx_t):
    rc, out = nginx_t(body(upstream="nosuchupstream"))
    assert rc != 0, out
    assert "nosuchupstream" in out, out
    assert re.search(r"nginx-t\.conf:\d+", out), out

def two_servers(second=None, first="", **kw2):
    """Two servers with the same xmpp_cm_name (cm1): one CM, one group of
    Openfire sockets.  'first' and 'second' are extra lines of each."""
    kw1 = {"connections": 2, "extra": first}
    kw2.setdefault("connections", 2)
    kw2["extra"] = second or ""
    return "\n".join([server_block(15222, kw1.pop("upstream", GOOD_PASS),
                                   **kw1),
                      server_block(15223, kw2.pop("upstream", GOOD_PASS),
                                   **kw2)])


# (id, first server's lines, second server's lines or kwargs, directive,
#  the two values as the message shows them)
SHARED_DIFFER = [
    ("keepalive", "", "xmpp_cm_keepalive 10s;",
     "xmpp_cm_keepalive", ("30s", "10s")),
    ("upstream_timeout", "", "xmpp_cm_upstream_timeout 1500ms;",
     "xmpp_cm_upstream_timeout", ("120s", "1500ms")),
    ("connect_timeout", "xmpp_cm_connect_timeout 5s;", "",
     "xmpp_cm_connect_timeout", ("5s", "10s")),
    ("reconnect", "", "xmpp_cm_reconnect 100ms 5s;",
     "xmpp_cm_reconnect", ("1s 60s", "100ms 5s")),
    ("watermarks", "", "xmpp_cm_upstream_watermarks 2m 512k;",
     "xmpp_cm_upstream_watermarks", ("1m 256k", "2m 512k")),
    ("close_delay", "", "xmpp_cm_close_delay 2s;",
     "xmpp_cm_close_delay", ("0", "2s")),
    ("first_domain", "", dict(domain="example.com localhost"),
     "xmpp_cm_domain", ("localhost", "example.com")),
    ("connections", "", dict(connections=3),
     "xmpp_cm_connections", ("2", "3")),
    ("pass", "", dict(upstream="127.0.0.1:5263"),
     "xmpp_cm_pass", ("127.0.0.1:5262", "127.0.0.1:5263")),
    ("upstream_ssl_verify_depth",
     "xmpp_cm_upstream_tls starttls;",
     "xmpp_cm_upstream_tls starttls;\nxmpp_cm_upstream_ssl_verify_depth 3;",
     "xmpp_cm_upstream_ssl_verify_depth", ("1", "3")),
    ("upstream_ssl_protocols",
     "xmpp_cm_upstream_tls direct;",
     "xmpp_cm_upstream_tls direct;\n"
     "xmpp_cm_upstream_ssl_protocols TLSv1.3;",
     "xmpp_cm_upstream_ssl_protocols", ("TLSv1.2 TLSv1.3", "TLSv1.3")),
    ("upstream_ssl_name",
     "xmpp_cm_upstream_tls direct;",
     "xmpp_cm_upstream_tls direct;\n"
     "xmpp_cm_upstream_ssl_name openfire.example;",
     "xmpp_cm_upstream_ssl_name", ("localhost", "openfire.example")),
]


@pytest.mark.parametrize("case,first,second,directive,values", SHARED_DIFFER,
                         ids=[c[0] for c in SHARED_DIFFER])
def test_shared_cm_settings_must_agree(nginx_t, case, first, second,
                                       directive, values):
    """Servers with the same xmpp_cm_name share one CM (one group of
    Openfire sockets per worker): every setting of that group must be the
    same in each, or nginx -t names the directive, both servers and both
    values (only the first server's was used, silently)."""
    if isinstance(second, dict):
        body_ = two_servers(first=first, **second)
    else:
        body_ = two_servers(second, first=first)
    rc, out = nginx_t(body_)
    assert rc != 0, "nginx -t accepted %s:\n%s" % (case, out)
    m = re.search(r'\[emerg\] "xmpp_cm_name" "cm1" is used in '
                  r'\S*nginx-t\.conf:(\d+) and \S*nginx-t\.conf:(\d+) with a '
                  r'different (?:first name in )?"%s"; give each its own '
                  r'name or the same value \("([^"]*)" and "([^"]*)"\)'
                  % directive, out)
    assert m, out
    assert int(m.group(1)) < int(m.group(2)), out
    assert (m.group(3), m.group(4)) == values, out


def test_shared_cm_secret_values_not_logged(nginx_t):
    rc, out = nginx_t(two_servers(secret="othersecret"))
    assert rc != 0, out
    assert re.search(r'\[emerg\] "xmpp_cm_name" "cm1" is used in .* with a '
                     r'different "xmpp_cm_secret"; give each its own name',
                     out), out
    assert "othersecret" not in out and "cmsecret" not in out, out


def test_shared_cm_settings_that_agree(nginx_t):
    """Positive controls: the CM's settings once in stream {}, or the same
    in each server; the client-side settings may differ per server; the
    xmpp_cm_upstream_ssl_* settings do not matter while
    xmpp_cm_upstream_tls is off; two names may share an upstream."""
    shared = ("xmpp_cm_keepalive 10s;\n"
              "xmpp_cm_upstream_timeout 60s;\n"
              "xmpp_cm_connect_timeout 5s;\n"
              "xmpp_cm_reconnect 100ms 5s;\n"
              "xmpp_cm_upstream_watermarks 2m 512k;\n"
              "xmpp_cm_close_delay 2s;\n")
    client_side = ("xmpp_cm_idle_timeout 1m;\n"
                   "xmpp_cm_auth_timeout 10s;\n"
                   "xmpp_cm_max_stanza_size 64k;\n"
                   "xmpp_cm_limit_rate 10k burst=20k;\n"
                   "xmpp_cm_compression on;\n"
                   "xmpp_cm_upstream_ssl_verify_depth 4;\n")
    rc, out = nginx_t(shared + two_servers(client_side))
    assert rc == 0, out
    rc, out = nginx_t(two_servers(shared + client_side, first=shared,
                                  domain="localhost example.com"))
    assert rc == 0, out
    rc, out = nginx_t("\n".join([
        server_block(15222, GOOD_PASS, name="cm1", extra=shared),
        server_block(15223, GOOD_PASS, name="cm2",
                     extra="xmpp_cm_keepalive 5s;")]))
    assert rc == 0, out


@pytest.mark.slow
def test_static_build(tmp_path):
    """scripts/build.sh --static builds an nginx binary with the module
    compiled in, and that binary accepts a config using the directives."""
    p = subprocess.run(["bash", os.path.join(ROOT, "scripts", "build.sh"),
                        "--static"], cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=1200)
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, out[-5000:]
    binary = os.path.join(ROOT, "build", "nginx-static", "objs", "nginx")
    assert os.access(binary, os.X_OK), out
    conf = tmp_path / "static.conf"
    conf.write_text("pid %s;\nevents {}\nstream {\n%s\n}\n"
                    % (tmp_path / "nginx.pid", body()))
    p = subprocess.run([binary, "-t", "-p", str(tmp_path), "-c", str(conf),
                        "-e", str(tmp_path / "err.log")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=30)
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, out


@pytest.mark.parametrize("cert_cb", ["with", "without"])
def test_tls_compiles_without_cert_cb_error(tmp_path, module_path, cert_cb):
    """ngx_stream_xmpp_cm_tls.c compiles with -Wall -Wextra -Werror both
    where OpenSSL has SSL_R_CERT_CB_ERROR (certificates with variables)
    and where it has not: a wrapper <openssl/ssl.h> found first includes
    the real one and undefines the macro."""
    ngx = os.path.join(ROOT, "build", "nginx")
    with open(os.path.join(ngx, "objs", "Makefile"), errors="replace") as f:
        makefile = f.read()
    cflags = re.search(r"^CFLAGS\s*=(.*)$", makefile, re.M).group(1).split()
    incs = re.search(r"^ALL_INCS\s*=((?:.*\\\n)*.*)$", makefile, re.M)
    incs = incs.group(1).replace("\\\n", " ").split()
    wrap = tmp_path / "openssl"
    wrap.mkdir()
    (wrap / "ssl.h").write_text("#include_next <openssl/ssl.h>\n"
                                "#undef SSL_R_CERT_CB_ERROR\n")
    cmd = ["cc", "-fsyntax-only"] + cflags
    if cert_cb == "without":
        cmd += ["-I", str(tmp_path)]
    cmd += incs + ["-I", os.path.join(ROOT, "src"),
                   os.path.join(ROOT, "src", "ngx_stream_xmpp_cm_tls.c")]
    p = subprocess.run(cmd, cwd=ngx, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=120)
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, out
    # the wrapper really took the other branch
    p = subprocess.run(cmd[:1] + ["-E", "-dM"] + cmd[2:], cwd=ngx,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=120)
    defined = b"#define SSL_R_CERT_CB_ERROR" in p.stdout
    assert defined == (cert_cb == "with"), p.stdout[-2000:]


@pytest.mark.slow
def test_static_analysis_clean():
    """scripts/analyze.sh (cppcheck, scan-build, the buffer rules) has no
    finding that scripts/analyze.supp does not list with a reason."""
    p = subprocess.run(["bash", os.path.join(ROOT, "scripts", "analyze.sh")],
                       cwd=ROOT, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=900)
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, out[-6000:]
    assert re.search(r"^analyze: \d+ findings, \d+ suppressed, 0 not",
                     out, re.M), out[-3000:]


def test_buffer_rules_catch_issue9_defects(tmp_path):
    """The project's rules in scripts/analyze.py flag the two defects of
    issue 9 (items 15-16) as they were: a fixed stack buffer filled with
    escaped text, an unchecked snprintf into 512 bytes, a length counted
    by hand; the counted and allocated forms pass."""
    src = tmp_path / "defects.c"
    src.write_text(r'''
static ngx_int_t
ngx_xmpp_cm_sock_element(void *data, ngx_xmpp_cm_elem_t *e)
{
    u_char  buf[256], *p;

    p = ngx_cpymem(buf, "<iq type=\"result\" id=\"", 22);
    p += ngx_xmpp_cm_escape(p, id->data, id->len);
}


ngx_int_t
ngx_xmpp_cm_route_session_iq(ngx_xmpp_cm_pool_t *pool)
{
    u_char  *p, buf[512];

    p = ngx_snprintf(buf, sizeof(buf) - 200, "<iq ...>");
}


static void
ngx_xmpp_cm_bounce(ngx_xmpp_cm_pool_t *pool)
{
    len = 256 + (iqid ? iqid->len * 6 : 0);
}


static void
ngx_xmpp_cm_counted(ngx_xmpp_cm_pool_t *pool)
{
    u_char  *p;
    size_t   len;

    len = sizeof("<iq id=\"\"/>") - 1 + ngx_xmpp_cm_escape(NULL, s, n);
    p = ngx_pnalloc(pool, len);
}
''')
    empty = tmp_path / "empty.xml"
    empty.write_text("<results><errors/></results>")
    supp = tmp_path / "supp"
    supp.write_text("")
    p = subprocess.run(["/usr/bin/python3",
                        os.path.join(ROOT, "scripts", "analyze.py"),
                        str(supp), str(empty), str(tmp_path / "none"),
                        str(src)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=60)
    out = p.stdout.decode()
    assert p.returncode == 1, out
    found = sorted(re.findall(r"^FINDING .*\((lint:\w+):[^:]*:(\w+)", out,
                              re.M))
    assert found == [("lint:buffer", "ngx_xmpp_cm_route_session_iq"),
                     ("lint:buffer", "ngx_xmpp_cm_sock_element"),
                     ("lint:count", "ngx_xmpp_cm_bounce")], out
