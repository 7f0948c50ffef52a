"""Client side of the Openfire stand-in's control channel (JSON lines over
TCP), plus helpers to start and stop the stand-in process.

    from control import start_standin, StandinControl, stop
    proc, port, cport = start_standin(version="4.8", heartbeat=0)
    ctl = StandinControl("127.0.0.1", cport)
    ctl.state()["sockets"]
    ctl.call("kick", jid="alice@localhost/pc", condition="conflict")
    stop(proc)
"""
import json
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "openfire_standin.py")
PYTHON = "/usr/bin/python3"


class StandinError(Exception):
    """The stand-in answered {"ok": false, ...}."""


class StandinControl:
    """One control connection; call() is synchronous, one request at a
    time."""

    def __init__(self, host="127.0.0.1", port=None, timeout=10):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock = None
        self.file = None

    def _connect(self):
        self.sock = socket.create_connection((self.host, self.port),
                                             self.timeout)
        self.sock.settimeout(self.timeout)
        self.file = self.sock.makefile("rb")

    def call(self, cmd, **kw):
        """Send {"cmd": cmd, **kw}; return the response dict; raise
        StandinError when it says ok: false."""
        req = dict(kw, cmd=cmd)
        line = (json.dumps(req) + "\n").encode()
        for attempt in (0, 1):
            try:
                if self.sock is None:
                    self._connect()
                self.sock.sendall(line)
                resp = self.file.readline()
                if not resp:
                    raise ConnectionError("control connection closed")
                break
            except (OSError, ConnectionError):
                self.close()
                if attempt or cmd == "shutdown":
                    raise
        r = json.loads(resp)
        if not r.get("ok"):
            raise StandinError("%s: %s" % (cmd, r.get("error")))
        return r

    def state(self):
        return self.call("state")

    def events(self, since=0):
        return self.call("events", since=since)

    def wait_for(self, predicate, timeout=5, interval=0.05):
        """Poll predicate() until it returns something truthy; return that.
        Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            v = predicate()
            if v:
                return v
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met within %ss" % timeout)
            time.sleep(interval)

    def close(self):
        for x in (self.file, self.sock):
            try:
                if x is not None:
                    x.close()
            except OSError:
                pass
        self.sock = self.file = None

    # convenience: kill the process behind this control port
    def stop(self):
        try:
            self.call("shutdown")
        except (OSError, ConnectionError, StandinError, ValueError):
            pass
        self.close()


def start_standin(port=0, control_port=0, host="127.0.0.1",
                  domain="localhost", secret="cmsecret",
                  users="alice:alicepw,bob:bobpw", version="4.1",
                  mechanisms=None, register=True, iq_auth=False,
                  heartbeat=None, idle=None, rosters=None, verbose=False,
                  extra_args=(), timeout=10, stderr=None):
    """Launch the stand-in (port 0 = any free port) and wait for its READY
    line.  Returns (proc, port, control_port)."""
    if isinstance(users, dict):
        users = ",".join("%s:%s" % kv for kv in users.items())
    if mechanisms is not None and not isinstance(mechanisms, str):
        mechanisms = ",".join(mechanisms)
    cmd = [PYTHON, SCRIPT,
           "--listen", "%s:%d" % (host, port),
           "--control", "%s:%d" % (host, control_port),
           "--domain", domain, "--secret", secret, "--users", users,
           "--version", str(version)]
    if mechanisms is not None:
        cmd += ["--mechanisms", mechanisms]
    if not register:
        cmd.append("--no-register")
    if iq_auth:
        cmd.append("--iq-auth")
    if heartbeat is not None:
        cmd += ["--heartbeat", str(heartbeat)]
    if idle is not None:
        cmd += ["--idle", str(idle)]
    if rosters is not None:
        cmd += ["--rosters", rosters]
    if verbose:
        cmd.append("--verbose")
    cmd += list(extra_args)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=stderr)
    deadline = time.monotonic() + timeout
    line = b""
    # the READY line is the only thing the stand-in prints on stdout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(b"READY ") or not line:
            break
    if not line.startswith(b"READY "):
        stop(proc)
        raise RuntimeError("stand-in did not start (rc=%s, got %r)" % (
            proc.returncode, line))
    _, p, cp = line.split()
    return proc, int(p), int(cp)


def stop(proc, timeout=5):
    """SIGTERM (the stand-in sends system-shutdown and exits), then
    SIGKILL if needed.  Returns the exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    if proc.stdout:
        proc.stdout.close()
    return proc.returncode


if __name__ == "__main__":
    # tiny CLI: control.py PORT CMD [json-kwargs]
    c = StandinControl("127.0.0.1", int(sys.argv[1]))
    kw = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    print(json.dumps(c.call(sys.argv[2], **kw), indent=1))
