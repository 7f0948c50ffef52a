"""Fixtures for the ngx_stream_xmpp_cm end-to-end tests.

  module_path   session: builds the module once (scripts/build.sh), or
                XMPP_CM_MODULE=/path/to/ngx_stream_xmpp_cm_module.so:
                that module, not built (e.g. the Debian package's)
  standin       factory: start the Openfire stand-in (t/standin)
  nginx         factory: write nginx.conf, start nginx, wait until ready;
                at teardown stop it and fail on crashes / [alert] etc.
  nginx_t       factory: run `nginx -t` on a stream {} body
  raw           factory: byte-level XMPP client (t/lib/raw.py)
"""
import os
import re
import subprocess
import sys
import time

import pytest

T_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(T_DIR)
sys.path.insert(0, T_DIR)
sys.path.insert(0, os.path.join(T_DIR, "standin"))

from lib import nginx as nginx_lib          # noqa: E402
from lib.raw import RawClient              # noqa: E402
from lib.util import free_port, wait_until  # noqa: E402

DEFAULT_SECRET = "cmsecret"
DEFAULT_NAME = "cm1"
DEFAULT_DOMAIN = "localhost"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slow test (still run by default)")


# --------------------------------------------------------------- build
@pytest.fixture(scope="session")
def module_path():
    given = os.environ.get("XMPP_CM_MODULE")
    if given:
        if not os.path.isfile(given):
            pytest.fail("XMPP_CM_MODULE=%s: no such file" % given,
                        pytrace=False)
        return given
    so = os.path.join(ROOT, "build", "ngx_stream_xmpp_cm_module.so")
    if os.environ.get("XMPP_CM_SKIP_BUILD") and os.path.exists(so):
        return so
    p = subprocess.run(["bash", os.path.join(ROOT, "scripts", "build.sh")],
                       cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=900)
    if p.returncode != 0:
        pytest.fail("scripts/build.sh failed (rc=%d):\n%s" % (
            p.returncode, p.stdout.decode("utf-8", "replace")[-5000:]),
            pytrace=False)
    assert os.path.exists(so), so
    return so


# --------------------------------------------------------------- stand-in
def _control():
    try:
        import control  # t/standin/control.py
    except ImportError as e:
        pytest.fail("t/standin/control.py not importable: %s" % e,
                    pytrace=False)
    return control


class Standin:
    """A running Openfire stand-in plus its control client."""

    def __init__(self, opts):
        self.control = _control()
        self.opts = dict(opts)
        self.proc = None
        self.port = None
        self.control_port = None
        self.ctl = None
        self._events = []
        self._next = 0
        self.start()

    def start(self, port=None):
        opts = dict(self.opts)
        if port is not None:
            opts["port"] = port
        self.proc, self.port, self.control_port = \
            self.control.start_standin(**opts)
        self.ctl = self.control.StandinControl("127.0.0.1", self.control_port)
        self._events = []
        self._next = 0
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return
        self.control.stop(self.proc)
        if self.ctl is not None:
            self.ctl.close()
        # the listening port must be closed now
        self.proc = None

    def restart(self):
        port = self.port
        self.stop()
        # the port is ours again as soon as the process is gone
        return self.start(port=port)

    # ---- control shortcuts
    def call(self, cmd, **kw):
        return self.ctl.call(cmd, **kw)

    def state(self):
        return self.ctl.call("state")

    def events(self):
        """All events seen so far (cached, fetched incrementally)."""
        r = self.ctl.call("events", since=self._next)
        evs = r.get("events", [])
        self._events.extend(evs)
        self._next = r.get("next", self._next + len(evs))
        return self._events

    def cm_sockets(self, prefix=None, authenticated=True):
        out = []
        for s in self.state().get("sockets", []):
            if authenticated and not s.get("authenticated"):
                continue
            if prefix and not str(s.get("cm", "")).startswith(prefix):
                continue
            out.append(s)
        return out

    def sessions(self, **match):
        out = []
        for s in self.state().get("sessions", []):
            if all(s.get(k) == v for k, v in match.items()):
                out.append(s)
        return out

    def session(self, streamid):
        for s in self.state().get("sessions", []):
            if s.get("streamid") == streamid:
                return s
        return None

    def wait(self, pred, timeout=10, what="stand-in condition"):
        return wait_until(pred, timeout, what=what)

    def inbound(self, pattern=None, streamid=None):
        """xml fragments the stand-in received from the CM (dir "in"),
        optionally filtered by a regex and/or a streamid attribute."""
        out = []
        rx = re.compile(pattern, re.S) if pattern else None
        for e in self.events():
            if e.get("dir") != "in":
                continue
            x = e.get("xml", "")
            if streamid is not None and not re.search(
                    r"""(?:streamid|id)\s*=\s*["']%s["']""" % re.escape(streamid), x):
                continue
            if rx and not rx.search(x):
                continue
            out.append(x)
        return out

    def routes_for(self, streamid):
        return [x for x in self.inbound(r"^\s*<route\b", streamid)]

    def close_iqs_for(self, streamid):
        return [x for x in self.inbound(r"<close\s*/>|<close>", streamid)
                if "<iq" in x]


@pytest.fixture
def standin():
    started = []

    def factory(**opts):
        s = Standin(opts)
        started.append(s)
        return s

    yield factory
    for s in started:
        try:
            s.stop()
        except Exception:
            pass


# --------------------------------------------------------------- nginx
def server_block(port, upstream, name=DEFAULT_NAME, secret=DEFAULT_SECRET,
                 domain=DEFAULT_DOMAIN, connections=2, extra="",
                 listen_extra=""):
    lines = ["server {",
             "    listen 127.0.0.1:%d%s;" % (port, listen_extra),
             "    xmpp_cm_pass %s;" % upstream]
    if domain is not None:
        lines.append("    xmpp_cm_domain %s;" % domain)
    if name is not None:
        lines.append("    xmpp_cm_name %s;" % name)
    if secret is not None:
        lines.append("    xmpp_cm_secret %s;" % secret)
    if connections is not None:
        lines.append("    xmpp_cm_connections %s;" % connections)
    for l in extra.strip().splitlines():
        lines.append("    " + l.strip())
    lines.append("}")
    return "\n".join(lines)


@pytest.fixture
def nginx(tmp_path, module_path, request):
    started = []

    def factory(body=None, *, standin=None, upstream=None, extra="",
                connections=2, workers=1, name=DEFAULT_NAME,
                secret=DEFAULT_SECRET, domain=DEFAULT_DOMAIN,
                listen_extra="", stream_extra="", main_extra="",
                log_level="debug", wait_sockets=True, port=None,
                ready_timeout=15, worker_connections=4096):
        port = port or free_port()
        if upstream is None:
            upstream = "127.0.0.1:%d" % (standin.port if standin
                                         else free_port())
        if body is None:
            body = server_block(port, upstream, name=name, secret=secret,
                                domain=domain, connections=connections,
                                extra=extra, listen_extra=listen_extra)
        else:
            body = body.replace("@PORT@", str(port)) \
                       .replace("@UPSTREAM@", upstream)
        body = stream_extra + "\n" + body
        prefix = tmp_path / ("nginx%d" % len(started))
        n = nginx_lib.Nginx(prefix, module_path, body, workers=workers,
                            log_level=log_level, main_extra=main_extra,
                            worker_connections=worker_connections)
        n.port = port
        n.standin = standin
        n.name = name
        n.workers = workers
        n.connections = connections
        started.append(n)
        n.start()
        n.wait_port(port, timeout=ready_timeout)
        if standin is not None and wait_sockets:
            want = workers * (connections or 4)
            wait_until(lambda: len(standin.cm_sockets(
                (name or "nginx-cm") + "-")) >= want,
                ready_timeout,
                what="%d authenticated CM sockets at the stand-in" % want)
        return n

    yield factory

    problems = []
    for n in started:
        was_running = n.running()
        n.quit()
        if was_running and n.forced:
            problems.append("nginx did not exit on SIGQUIT within 8s "
                            "(needed %s)" % n.forced)
        if n.proc is not None and n.proc.returncode not in (0, None) and \
                not getattr(n, "allow_nonzero_exit", False):
            problems.append("nginx exited with rc=%s" % n.proc.returncode)
        bad = n.bad_log_lines()
        if bad:
            problems.append("error.log of %s:\n  %s" % (
                n.prefix, "\n  ".join(bad[:30])))
            bts = n.crash_report()
            if bts:
                problems.append("backtraces:\n  " + "\n  ".join(bts))
        san = n.sanitizer_reports()
        if san:
            problems.append("sanitizer reports of %s:\n  %s" % (
                n.prefix, "\n  ".join(san)))
        n.cleanup()
    if problems:
        pytest.fail("nginx teardown check failed:\n" + "\n".join(problems),
                    pytrace=False)


@pytest.fixture
def nginx_t(tmp_path, module_path):
    def run(body, workers=1):
        conf = nginx_lib.make_conf(str(tmp_path), module_path, body,
                                   workers=workers, log_level="info")
        rc, out = nginx_lib.nginx_t(str(tmp_path), conf)
        san = nginx_lib.sanitizer_reports(
            os.path.join(str(tmp_path), "sanitizer-t"))
        if san:
            pytest.fail("sanitizer reports of nginx -t:\n  %s"
                        % "\n  ".join(san), pytrace=False)
        return rc, out
    return run


# --------------------------------------------------------------- clients
@pytest.fixture
def raw():
    clients = []

    def factory(port, **kw):
        c = RawClient(port, **kw)
        clients.append(c)
        return c

    yield factory
    for c in clients:
        c.close()
