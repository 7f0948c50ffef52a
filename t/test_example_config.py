"""docs/example-config.md: its nginx.conf passes `nginx -t` with the
module under test, so the example cannot rot."""
import os
import re
import shutil
import subprocess

import pytest

from lib import nginx as nginx_lib

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "docs", "example-config.md")
LOADS = ("load_module modules/ngx_stream_module.so;",
         "load_module modules/ngx_stream_xmpp_cm_module.so;")


def example():
    with open(DOC) as f:
        text = f.read()
    m = re.search(r"<!-- example-config:begin -->\s*```nginx\n(.*?)```\s*"
                  r"<!-- example-config:end -->", text, re.S)
    assert m, "no example block in %s" % DOC
    return m.group(1)


def make_certs(d):
    if shutil.which("openssl") is None:
        pytest.fail("the openssl CLI is needed", pytrace=False)
    p = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
         "-subj", "/CN=example.org", "-keyout", "example.org.key",
         "-out", "example.org.crt"], cwd=d, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    assert p.returncode == 0, p.stdout
    shutil.copy(os.path.join(d, "example.org.crt"),
                os.path.join(d, "openfire-ca.crt"))


def test_example_config_passes_nginx_t(tmp_path, module_path):
    conf = example()
    for line in LOADS:
        assert line in conf, "the example should load the modules: %s" % line
        conf = conf.replace(line, "")
    for directive in ("xmpp_cm_starttls required", "listen 5223 ssl",
                      "xmpp_cm_upstream_tls", "limit_conn ",
                      "xmpp_cm_metrics;"):
        assert directive in conf, directive
    certs = tmp_path / "ssl"
    certs.mkdir()
    make_certs(str(certs))
    conf = conf.replace("/etc/ssl/xmpp/", str(certs) + "/") \
               .replace("/var/log/nginx/", str(tmp_path) + "/") \
               .replace("/run/nginx.pid", str(tmp_path / "nginx.pid"))
    if not nginx_lib.STATIC:
        conf = nginx_lib.load_modules(str(tmp_path), module_path) + "\n" \
            + conf
    # nginx -t with an http {} block: keep its temporary paths here
    conf = conf.replace("http {\n", "http {\n    client_body_temp_path "
                        "http_body;\n    proxy_temp_path http_proxy;\n"
                        "    fastcgi_temp_path http_fastcgi;\n"
                        "    uwsgi_temp_path http_uwsgi;\n"
                        "    scgi_temp_path http_scgi;\n", 1)
    rc, out = nginx_lib.nginx_t(str(tmp_path), conf)
    assert rc == 0 and "test is successful" in out, out
    assert "[emerg]" not in out and "[alert]" not in out, out


README = os.path.join(os.path.dirname(DOC), os.pardir, "README")


def readme_config():
    """The README's nginx side: the indented block from its load_module
    lines to the end of its stream {} block."""
    with open(README) as f:
        text = f.read()
    m = re.search(r"\n((?:    load_module .*\n)+(?:    .*\n|\n)*?    }\n)",
                  text)
    assert m, "no nginx configuration in the README"
    return "\n".join(line[4:] for line in m.group(1).splitlines())


def test_readme_config_passes_nginx_t(tmp_path, module_path):
    conf = readme_config()
    loads = [line for line in conf.splitlines()
             if line.startswith("load_module ")]
    assert len(loads) == 2, loads
    for line in loads:
        conf = conf.replace(line, "")
    for directive in ("xmpp_cm_pass", "xmpp_cm_secret", "listen 5223 ssl",
                      "xmpp_cm_starttls    required", "limit_conn "):
        assert directive in conf, directive
    certs = tmp_path / "ssl"
    certs.mkdir()
    make_certs(str(certs))
    conf = conf.replace("/etc/ssl/xmpp/", str(certs) + "/") \
               .replace("/var/log/nginx/", str(tmp_path) + "/") \
               .replace("10.0.0.10:5262", "127.0.0.1:5262")
    # the README leaves the pid file at the build's default
    conf = "pid %s;\n" % (tmp_path / "nginx.pid") + conf
    if not nginx_lib.STATIC:
        conf = nginx_lib.load_modules(str(tmp_path), module_path) + "\n" \
            + conf
    rc, out = nginx_lib.nginx_t(str(tmp_path), conf)
    assert rc == 0 and "test is successful" in out, out
    assert "[emerg]" not in out and "[alert]" not in out, out
