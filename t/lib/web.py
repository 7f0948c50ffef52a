"""A real web client in a real browser: Converse.js (npm, t/web/) in
Debian's headless Chromium, driven by t/web/drive.js (playwright-core),
served by the nginx under test; and Debian's Prosody as a known-good
WebSocket/BOSH server for the harness's own check.

  web_block()   main-context http {} serving t/web/index.html and the
                Converse.js package's dist/ at /dist/, plus the given
                locations (the CM's or a proxy's /xmpp-websocket,
                /http-bind)
  Browser       one drive.js process: JSON commands, JSON answers
  Prosody       prosody 0.12 on loopback with mod_websocket and mod_bosh
  missing()     what is not installed (scripts/deps.sh installs it all)
"""
import json
import os
import queue
import shutil
import subprocess
import threading

from .util import free_port, port_accepts, wait_until

T_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEB_DIR = os.path.join(T_DIR, "web")
DIST = os.path.join(WEB_DIR, "node_modules", "converse.js", "dist")
PLAYWRIGHT = os.path.join(WEB_DIR, "node_modules", "playwright-core")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
NODE = shutil.which("node") or shutil.which("nodejs") or "/usr/bin/node"
PROSODY = "/usr/bin/prosody"
MIME_TYPES = "/etc/nginx/mime.types"


def missing(prosody=False):
    """The parts of the browser harness that are not installed, by what
    installs them."""
    out = []
    if not os.access(CHROMIUM, os.X_OK):
        out.append("%s (apt-get install chromium)" % CHROMIUM)
    if not os.access(NODE, os.X_OK):
        out.append("node (apt-get install nodejs npm)")
    for what in (os.path.join(DIST, "converse.min.js"),
                 os.path.join(PLAYWRIGHT, "package.json")):
        if not os.path.exists(what):
            out.append("%s (npm ci in t/web, as scripts/deps.sh does)"
                       % os.path.relpath(what, T_DIR))
    if not os.path.exists(MIME_TYPES):
        out.append("%s (apt-get install nginx)" % MIME_TYPES)
    if prosody and not os.access(PROSODY, os.X_OK):
        out.append("%s (apt-get install prosody)" % PROSODY)
    return out


def web_block(port, locations=""):
    """Main-context http {}: the page at /, Converse.js at /dist/, and
    `locations` (nginx text) on 127.0.0.1:port.  Temporary paths are
    relative to nginx's prefix, as in t/lib/metrics.py.  The files are
    read in place: nginx's workers (nobody when the tests run as root)
    need read access to t/web, which a checkout with umask 022 gives."""
    return """
http {
    include %(mime)s;
    default_type application/octet-stream;
    access_log access.log;
    client_body_temp_path http_body;
    proxy_temp_path http_proxy;
    fastcgi_temp_path http_fastcgi;
    uwsgi_temp_path http_uwsgi;
    scgi_temp_path http_scgi;
    server {
        listen 127.0.0.1:%(port)d;
        location = / {
            root %(web)s;
            try_files /index.html =404;
        }
        location /dist/ {
            alias %(dist)s/;
        }
        # OMEMO's libsignal fetches its wasm relative to the page
        location = /curve25519_compiled.wasm {
            root %(dist)s;
        }
%(locations)s
    }
}
""" % {"mime": MIME_TYPES, "port": port, "web": WEB_DIR, "dist": DIST,
       "locations": "\n".join("        " + l for l in
                              locations.strip().splitlines())}


def page_url(port, transport, jid, password, path=None):
    """The page's URL; loglevel=debug has Converse log every element it
    sends and receives to the console (drive.js writes it to stderr)."""
    q = "transport=%s&jid=%s&password=%s&loglevel=debug" % (
        transport, jid, password)
    if path:
        q += "&path=" + path
    return "http://127.0.0.1:%d/?%s" % (port, q)


class BrowserError(AssertionError):
    pass


class Browser:
    """t/web/drive.js in a child process: call(cmd, **args) sends one
    JSON command and returns its answer, or raises BrowserError with
    drive.js's error, its report and its stderr."""

    def __init__(self, out_dir, timeout_ms=20000):
        self.stderr_path = os.path.join(str(out_dir), "drive.stderr")
        self._err = open(self.stderr_path, "wb")
        env = dict(os.environ, CHROMIUM=CHROMIUM,
                   DRIVE_TIMEOUT_MS=str(timeout_ms))
        self.timeout = timeout_ms / 1000.0
        self.proc = subprocess.Popen(
            [NODE, os.path.join(WEB_DIR, "drive.js")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
            env=env, cwd=WEB_DIR)
        self._lines = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self._lines.put(line.decode("utf-8", "replace"))
        self._lines.put(None)

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "%s (last 6000 characters):\n%s" % (self.stderr_path,
                                                   text[-6000:])

    def call(self, cmd, timeout=None, **args):
        """One command; the answer's dict.  The deadline is drive.js's
        own per-wait timeout plus a margin, so that its error (with the
        page's report) comes first."""
        args["cmd"] = cmd
        self.proc.stdin.write((json.dumps(args) + "\n").encode())
        self.proc.stdin.flush()
        wait = timeout or (self.timeout * 2 + 30)
        try:
            line = self._lines.get(timeout=wait)
        except queue.Empty:
            raise BrowserError("drive.js: no answer to %s within %ss\n%s"
                               % (cmd, wait, self.stderr_text()))
        if line is None:
            raise BrowserError("drive.js exited (rc=%s) during %s:\n%s" % (
                self.proc.wait(5), cmd, self.stderr_text()))
        r = json.loads(line)
        if not r.get("ok"):
            raise BrowserError("drive.js %s failed: %s\nreport: %s\n%s" % (
                cmd, r.get("error"), json.dumps(r.get("report"), indent=1),
                self.stderr_text()))
        return r

    def close(self):
        if self.proc.poll() is None:
            try:
                self.call("close", timeout=20)
            except Exception:
                pass
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._err.close()


def check_png(path):
    """A non-empty PNG with its dimensions: (width, height)."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "%s is not a PNG" % path
    assert os.path.getsize(path) > 10000, \
        "%s: %d bytes, too small for a chat" % (path, os.path.getsize(path))
    w = int.from_bytes(head[16:20], "big")
    h = int.from_bytes(head[20:24], "big")
    return w, h


# ------------------------------------------------------------- Prosody
PROSODY_CONF = """\
-- written by t/lib/web.py: the browser harness's self-check
run_as_root = true
pidfile = "%(dir)s/prosody.pid"
data_path = "%(dir)s/data"
certificates = "%(dir)s/certs"
plugin_paths = {}
log = { { levels = { min = "info" }, to = "file",
          filename = "%(dir)s/prosody.log" } }
interfaces = { "127.0.0.1" }
c2s_ports = { %(c2s)d }
s2s_ports = { }
component_ports = { }
http_ports = { %(http)d }
http_interfaces = { "127.0.0.1" }
https_ports = { }
modules_enabled = { "roster"; "saslauth"; "disco"; "ping"; "posix";
                    "websocket"; "bosh" }
modules_disabled = { "s2s"; "tls"; "offline"; "c2s_csi" }
authentication = "internal_plain"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
consider_websocket_secure = true
consider_bosh_secure = true
VirtualHost "%(domain)s"
"""


def _lua_str(s):
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')


class Prosody:
    """Debian's prosody on loopback: users with mutual 'both' rosters,
    as the stand-in's --rosters mutual gives."""

    def __init__(self, work_dir, users, domain="localhost"):
        self.dir = os.path.join(str(work_dir), "prosody")
        self.domain = domain
        self.c2s_port = free_port()
        self.http_port = free_port()
        host = os.path.join(self.dir, "data", domain.replace(".", "%2e"))
        os.makedirs(os.path.join(host, "accounts"))
        os.makedirs(os.path.join(host, "roster"))
        os.makedirs(os.path.join(self.dir, "certs"))
        for user, pw in users.items():
            with open(os.path.join(host, "accounts", user + ".dat"),
                      "w") as f:
                f.write("return { [\"password\"] = %s; };\n" % _lua_str(pw))
            items = "".join(
                "  [%s] = { [\"subscription\"] = \"both\"; "
                "[\"groups\"] = {}; };\n" % _lua_str("%s@%s" % (u, domain))
                for u in users if u != user)
            with open(os.path.join(host, "roster", user + ".dat"),
                      "w") as f:
                f.write("return {\n  [false] = { [\"version\"] = 1; };\n%s"
                        "};\n" % items)
        self.conf = os.path.join(self.dir, "prosody.cfg.lua")
        with open(self.conf, "w") as f:
            f.write(PROSODY_CONF % {"dir": self.dir, "c2s": self.c2s_port,
                                    "http": self.http_port,
                                    "domain": domain})
        self.log_path = os.path.join(self.dir, "prosody.log")
        out = open(os.path.join(self.dir, "stdout.log"), "wb")
        self.proc = subprocess.Popen(
            [PROSODY, "-F", "--config", self.conf], stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT)
        out.close()
        try:
            wait_until(lambda: self.proc.poll() is not None or
                       (port_accepts(self.c2s_port) and
                        port_accepts(self.http_port)), 20,
                       what="prosody listening")
        except AssertionError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise AssertionError("prosody exited (rc=%s):\n%s" % (
                self.proc.returncode, self.log()))

    def log(self):
        text = ""
        for f in ("stdout.log", "prosody.log"):
            try:
                with open(os.path.join(self.dir, f), "rb") as fh:
                    text += fh.read().decode("utf-8", "replace")[-3000:]
            except OSError:
                pass
        return text

    def proxy_locations(self):
        """nginx locations that pass /xmpp-websocket and /http-bind to
        this prosody, as a deployment in front of a server does."""
        up = "http://127.0.0.1:%d" % self.http_port
        return """
location = /xmpp-websocket {
    proxy_pass %(up)s/xmpp-websocket;
    proxy_http_version 1.1;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection "upgrade";
    proxy_set_header Host $host;
    proxy_read_timeout 120s;
}
location = /http-bind {
    proxy_pass %(up)s/http-bind;
    proxy_http_version 1.1;
    proxy_buffering off;
    proxy_read_timeout 120s;
}
""" % {"up": up}

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
