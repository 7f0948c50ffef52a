"""The metrics endpoint (xmpp_cm_metrics) in tests: an http {} block for
nginx.conf, a scrape, a parser for the text exposition format and
`promtool check metrics`."""
import re
import shutil
import subprocess
import urllib.request

PROMTOOL = "/usr/bin/promtool"

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def http_block(port, location="/metrics"):
    """Main-context http {} with the metrics location on 127.0.0.1:port.
    Temporary paths are relative to nginx's prefix (-p), so that Debian's
    compiled-in /var/lib/nginx is not needed."""
    return """
http {
    access_log off;
    client_body_temp_path http_body;
    proxy_temp_path http_proxy;
    fastcgi_temp_path http_fastcgi;
    uwsgi_temp_path http_uwsgi;
    scgi_temp_path http_scgi;
    server {
        listen 127.0.0.1:%d;
        location = %s { xmpp_cm_metrics; }
    }
}
""" % (port, location)


def scrape(port, path="/metrics", method="GET"):
    """(status, content type, body text)"""
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path),
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return (r.status, r.headers.get("Content-Type"),
                    r.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), ""


def parse(text):
    """{(name, ((label, value), ...)): float}, labels sorted"""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        labels = tuple(sorted(LABEL.findall(m.group(2) or "")))
        key = (m.group(1), labels)
        assert key not in out, "duplicate series %r" % (key,)
        out[key] = float(m.group(3))
    return out


class Metrics:
    """A scraped endpoint: value(name, **labels) sums the matching series
    (cm= included when given)."""

    def __init__(self, port):
        self.port = port
        self.samples = {}
        self.text = ""

    def fetch(self):
        status, ctype, text = scrape(self.port)
        assert status == 200, status
        assert ctype.startswith("text/plain; version=0.0.4"), ctype
        self.text = text
        self.samples = parse(text)
        return self

    def value(self, name, **labels):
        total = 0.0
        found = False
        for (n, ls), v in self.samples.items():
            d = dict(ls)
            if n == name and all(d.get(k) == v2 for k, v2 in labels.items()):
                total += v
                found = True
        assert found, "no series %s%r in:\n%s" % (name, labels, self.text)
        return total

    def get(self, name, **labels):
        """fetch, then value"""
        return self.fetch().value(name, **labels)


def promtool_check(text):
    """(rc, output) of `promtool check metrics` on text; promtool must be
    there (Debian package prometheus, installed by scripts/test.sh)."""
    tool = PROMTOOL if shutil.which(PROMTOOL) else shutil.which("promtool")
    assert tool, ("promtool not found: apt-get install prometheus "
                  "(scripts/test.sh installs it)")
    p = subprocess.run([tool, "check", "metrics"], input=text.encode(),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=60)
    return p.returncode, p.stdout.decode("utf-8", "replace")
