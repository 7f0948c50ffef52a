#!/usr/bin/python3
"""Benchmark orchestrator of ngx_stream_xmpp_cm (called by bench/run.sh).

Targets, each started fresh per scenario, all on 127.0.0.1:
  cm        nginx + the module (1 worker) -> fakeof (fast Openfire stand-in)
  relay     nginx stream proxy_pass (1 worker) -> fakexmpp (the baseline)
  jabberd2  jabberd2 c2s + router + sm, SQLite (the C peer; c2s is measured)

Scenarios:
  scale     for each session count N: log in N clients (login storm: rate,
            CPU per login), RSS of the measured process before/after
            (memory per idle authenticated session), then messages at a
            fixed offered rate (CPU per relayed message)
  ramp      at --lat-sessions, rising offered rates: the peak sustained rate
  latency   at half the CM's peak, the same offered load on every target:
            end-to-end latency p50/p99/max
  nagle     at --nagle-rates, the far ends keep Nagle on as Openfire does
            (xmpp.socket.tcp-nodelay=false): direct (clients straight to
            fakexmpp --nagle, the "directly to Openfire" case), cm-nagle
            (the CM -> fakeof --nagle) and cm (fakeof with TCP_NODELAY, the
            xmpp.socket.tcp-nodelay=true case), in the same run
  confirm   at --confirm-rates, cm (xmpp_cm_confirm on, the default) and
            cm-noconfirm (off) in the same run: CPU per message of the
            worker, end-to-end latency, and from the CM's metrics the
            barriers sent and the mean wait of a barrier's oldest element
            from being queued to Openfire's answer (the ack latency)
"""
import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
NGINX = "/usr/sbin/nginx"
STREAM_SO = "/usr/lib/nginx/modules/ngx_stream_module.so"
MODULE_SO = os.path.join(ROOT, "build", "ngx_stream_xmpp_cm_module.so")
CM_EXTRA = ""
FD_LIMIT = 20000
SECRET = "cmsecret"
DOMAIN = "localhost"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_for(pred, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise RuntimeError("timed out waiting for " + what)


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        st = read("/proc/%s/stat" % d)
        if not st:
            continue
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        if ppid == pid:
            out.append(int(d))
    return out


class Proc:
    """A started process, stopped by its own pid only."""

    def __init__(self, name, cmd, cwd=None, ready=None, stdout_ready=False):
        self.name = name
        self.stdout_path = os.path.join(WORK, "%s-%d.out" % (name, time.time_ns()))
        self.out = open(self.stdout_path, "w+")
        self.p = subprocess.Popen(cmd, cwd=cwd, stdout=self.out,
                                  stderr=subprocess.STDOUT,
                                  start_new_session=True)
        STARTED.append(self)
        self.port = None
        if stdout_ready:
            m = wait_for(lambda: re.search(r"READY (\d+)", read(self.stdout_path)),
                         10, name + " READY")
            self.port = int(m.group(1))

    @property
    def pid(self):
        return self.p.pid

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.p.poll() is None:
            try:
                os.kill(self.p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.p.pid, signal.SIGKILL)
                self.p.wait(5)
        if self in STARTED:
            STARTED.remove(self)
        self.out.flush()
        return read(self.stdout_path)


STARTED = []
WORK = None


def stop_all():
    for p in list(STARTED):
        try:
            p.stop(timeout=5)
        except Exception:
            pass


NGINX_CONF = """\
load_module {stream};
{module}
{http}
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {fds};
error_log {prefix}/error.log notice;
pid {prefix}/nginx.pid;
events {{ worker_connections {fds}; }}
stream {{
    server {{
        listen 127.0.0.1:{port} backlog=4096;
{body}
    }}
}}
"""

# the CM's metrics endpoint (xmpp_cm_metrics): barriers and ack latency
HTTP_METRICS = """\
http {{
    access_log off;
    client_body_temp_path {prefix}/http_body;
    proxy_temp_path {prefix}/http_proxy;
    fastcgi_temp_path {prefix}/http_fastcgi;
    uwsgi_temp_path {prefix}/http_uwsgi;
    scgi_temp_path {prefix}/http_scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /metrics {{ xmpp_cm_metrics; }}
    }}
}}
"""


def scrape(port):
    """The CM's counters, summed over CM names: {name{labels}: value}."""
    import urllib.request
    out = {}
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                timeout=5) as r:
        for line in r.read().decode().splitlines():
            m = re.match(r'^(\w+)\{cm="[^"]*"(?:,(\w+)="([^"]*)")?\} (\S+)$',
                         line)
            if m:
                key = m.group(1) + ("{%s}" % m.group(3) if m.group(2) else "")
                out[key] = out.get(key, 0.0) + float(m.group(4))
    return out


class Target:
    name = ""
    measured = ""       # name of the measured process in the watch list

    def watch(self):
        return []

    def stop(self):
        return {}


class NginxTarget(Target):
    def start_nginx(self, body, module, http=""):
        self.prefix = tempfile.mkdtemp(prefix="ngx-", dir=WORK)
        self.port = free_port()
        if http:
            self.mport = free_port()
            http = HTTP_METRICS.format(prefix=self.prefix, port=self.mport)
        conf = NGINX_CONF.format(stream=STREAM_SO, module=module,
                                 fds=FD_LIMIT, prefix=self.prefix,
                                 port=self.port, body=body, http=http)
        path = os.path.join(self.prefix, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.nginx = Proc("nginx-" + self.name,
                          [NGINX, "-p", self.prefix, "-c", path, "-e",
                           os.path.join(self.prefix, "error.log")])
        self.worker = wait_for(lambda: children(self.nginx.pid), 10,
                               "nginx worker")[0]

    def log_issues(self):
        lines = read(os.path.join(self.prefix, "error.log")).splitlines()
        bad = [l for l in lines if re.search(
            r"\[(alert|crit|emerg)\]|signal \d+|core dumped", l)]
        return bad[:10]


class CmTarget(NginxTarget):
    name = "cm"
    measured = "worker"
    far_args = ()
    extra = ""

    def start(self, n_users):
        self.far = Proc("fakeof", [os.path.join(BENCH, "fakeof"), "--listen",
                                   "127.0.0.1:0", "--domain", DOMAIN,
                                   "--secret", SECRET] + list(self.far_args),
                        stdout_ready=True)
        body = ("        xmpp_cm_pass 127.0.0.1:%d;\n"
                "        xmpp_cm_domain %s;\n"
                "        xmpp_cm_secret %s;\n"
                "        xmpp_cm_name bench;\n") % (self.far.port, DOMAIN, SECRET)
        if CM_EXTRA:
            body += "        %s\n" % CM_EXTRA
        if self.extra:
            body += "        %s\n" % self.extra
        self.start_nginx(body, "load_module %s;" % MODULE_SO, http=True)
        errlog = os.path.join(self.prefix, "error.log")
        wait_for(lambda: read(errlog).count("connected to Openfire") >= 4, 15,
                 "CM pool up")
        return self

    def watch(self):
        return [("worker", self.worker), ("far", self.far.pid)]

    def stop(self):
        issues = self.log_issues()
        try:
            mx = scrape(self.mport)
        except Exception as e:
            mx = {}
            issues.append("metrics: %s" % e)
        self.nginx.stop()
        out = self.far.stop()
        stats = {}
        for line in out.splitlines():
            if line.startswith("{"):
                stats = json.loads(line)
        answers = mx.get("xmpp_cm_upstream_barrier_answers_total", 0)
        confirm = {
            "barriers": mx.get("xmpp_cm_upstream_barriers_total"),
            "answers": answers,
            "resent": mx.get("xmpp_cm_upstream_resent_total"),
            "ack_wait_mean_ms": 1000.0 * mx.get(
                "xmpp_cm_upstream_confirm_wait_seconds_total", 0) / answers
            if answers else None,
        }
        return {"far_stats": stats, "log_issues": issues,
                "confirm": confirm}


class CmNoConfirmTarget(CmTarget):
    """The CM without confirmed delivery (xmpp_cm_confirm off)."""
    name = "cm-noconfirm"
    extra = "xmpp_cm_confirm off;"


class CmNagleTarget(CmTarget):
    """The CM in front of an Openfire that keeps Nagle on (its default)."""
    name = "cm-nagle"
    far_args = ("--nagle",)


class DirectTarget(Target):
    """Clients straight to fakexmpp with Nagle on: "directly to Openfire"."""
    name = "direct"
    measured = "far"

    def start(self, n_users):
        self.far = Proc("fakexmpp-direct", [os.path.join(BENCH, "fakexmpp"),
                                            "--listen", "127.0.0.1:0",
                                            "--domain", DOMAIN, "--nagle"],
                        stdout_ready=True)
        self.port = self.far.port
        return self

    def watch(self):
        return [("far", self.far.pid)]

    def stop(self):
        out = self.far.stop()
        stats = {}
        for line in out.splitlines():
            if line.startswith("{"):
                stats = json.loads(line)
        return {"far_stats": stats}


class RelayTarget(NginxTarget):
    name = "relay"
    measured = "worker"

    def start(self, n_users):
        self.far = Proc("fakexmpp", [os.path.join(BENCH, "fakexmpp"),
                                     "--listen", "127.0.0.1:0", "--domain",
                                     DOMAIN], stdout_ready=True)
        body = "        proxy_pass 127.0.0.1:%d;\n" % self.far.port
        self.start_nginx(body, "")
        return self

    def watch(self):
        return [("worker", self.worker), ("far", self.far.pid)]

    def stop(self):
        issues = self.log_issues()
        self.nginx.stop()
        out = self.far.stop()
        stats = {}
        for line in out.splitlines():
            if line.startswith("{"):
                stats = json.loads(line)
        return {"far_stats": stats, "log_issues": issues}


class Jabberd2Target(Target):
    name = "jabberd2"
    measured = "c2s"
    users_ready = 0

    def start(self, n_users):
        # fresh ports every time: the router does not rebind a port that
        # still has connections in TIME_WAIT
        self.dir = os.path.join(WORK, "jabberd2")
        self.rport = free_port()
        self.port = free_port()
        n_users = max(n_users, Jabberd2Target.users_ready)
        subprocess.run(["bash", os.path.join(BENCH, "jabberd2-setup.sh"),
                        self.dir, str(n_users), str(self.port),
                        str(self.rport)], check=True,
                       stdout=subprocess.DEVNULL, timeout=120)
        Jabberd2Target.users_ready = n_users
        for f in ("c2s.log", "sm.log", "router.log"):
            try:
                os.unlink(os.path.join(self.dir, f))
            except OSError:
                pass
        self.router = Proc("jd-router", ["/usr/sbin/jabberd2-router", "-c",
                                         "router.xml"], cwd=self.dir)
        wait_for(lambda: "listening for" in read(os.path.join(self.dir, "router.log")),
                 10, "jabberd2 router")
        self.sm = Proc("jd-sm", ["/usr/sbin/jabberd2-sm", "-c", "sm.xml"],
                       cwd=self.dir)
        self.c2s = Proc("jd-c2s", ["/usr/sbin/jabberd2-c2s", "-c", "c2s.xml"],
                        cwd=self.dir)
        try:
            wait_for(lambda: "ready for sessions" in read(os.path.join(self.dir, "sm.log"))
                     and "ready for connections" in read(os.path.join(self.dir, "c2s.log")),
                     20, "jabberd2 sm and c2s")
        except RuntimeError as e:
            tails = " | ".join("%s: %s" % (f, " / ".join(read(os.path.join(self.dir, f)).splitlines()[-2:]))
                               for f in ("router.log", "sm.log", "c2s.log"))
            raise RuntimeError("%s (%s)" % (e, tails))
        return self

    def watch(self):
        return [("c2s", self.c2s.pid), ("sm", self.sm.pid),
                ("router", self.router.pid)]

    def stop(self):
        for p in (self.c2s, self.sm, self.router):
            p.stop()
        return {}


def loadgen(target, mode, n, rates=None, duration=1.0, hold=0.5, window=2000):
    procs = max(1, math.ceil(n / 15000))
    cmd = [os.path.join(BENCH, "loadgen"), "--port", str(target.port),
           "--domain", DOMAIN, "--mode", mode, "-n", str(n), "--procs",
           str(procs), "--window", str(min(window, n)), "--duration",
           str(duration), "--hold", str(hold), "--tag", target.name,
           "--login-timeout", "60"]
    if rates:
        cmd += ["--rate", ",".join(str(int(r)) for r in rates)]
    for name, pid in target.watch():
        cmd += ["--watch", "%s=%d" % (name, pid)]
    t = 60 + 60 + (len(rates or []) * (duration + 10))
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=t)
    if p.returncode != 0:
        raise RuntimeError("loadgen rc=%d: %s" % (p.returncode,
                                                  p.stderr.decode()[-500:]))
    return json.loads(p.stdout.decode().strip().splitlines()[-1])


def skip_reason(tname, n, args, have_jd):
    if tname == "relay" and 2 * n + 100 > FD_LIMIT:
        return ("proxy_pass needs 2 descriptors per session: %d > %d "
                "open-files limit of one worker" % (2 * n + 100, FD_LIMIT))
    if tname == "jabberd2":
        if not have_jd:
            return have_jd_reason
        if n > args.jabberd2_max:
            return "above --jabberd2-max %d (login storm too slow for the time budget)" % args.jabberd2_max
    return None


def per(v, d, scale=1.0):
    return v / d * scale if d else None


PIN = False


def start_target(tcls, n):
    """Start a target; with --pin, its measured process gets CPU 1 to
    itself (everything else, this script, the load generator and the far
    end, runs on CPU 0), so that its latency is not its neighbours'
    scheduling."""
    t = tcls().start(n)
    if PIN:
        for name, pid in t.watch():
            if name == t.measured:
                os.sched_setaffinity(pid, {1})
    return t


def scale_run(tcls, n, args):
    t = start_target(tcls, n)
    try:
        r = loadgen(t, "msg", n, [args.rate], args.duration, window=args.window)
    finally:
        extra = t.stop()
    m = t.measured
    lg = r["login"]
    st = r["steps"][0]
    out = {
        "target": t.name, "sessions": n, "measured": m,
        "logins_ok": lg["ok"], "logins_failed": lg["failed"],
        "login_rate": lg["rate"],
        "login_time_p99_us": lg["time_p99_us"],
        "cpu_per_login_us": per(lg["cpu_s"][m], lg["ok"], 1e6),
        "rss_kb_before": lg["rss_kb_before"][m],
        "rss_kb_after_login": lg["rss_kb_after"][m],
        "mem_per_session_b": per((lg["rss_kb_after"][m] - lg["rss_kb_before"][m]) * 1024,
                                 lg["ok"]),
        "msg_rate_offered": st["rate"], "msg_sent": st["sent"],
        "msg_received": st["received"],
        "cpu_per_msg_us": per(st["cpu_s"][m], st["received"], 1e6),
        "cpu_per_msg_sched_us": per(st["sched_s"][m], st["received"], 1e6),
        "far_cpu_per_msg_us": per(st["cpu_s"].get("far", 0), st["received"], 1e6)
        if "far" in st["cpu_s"] else None,
        "loadgen_cpu_per_msg_us": per(st["loadgen_cpu_s"], st["received"], 1e6),
        "loadgen_cpu_login_s": lg["loadgen_cpu_s"],
        "lat_p50_us": st["lat_p50_us"], "lat_p99_us": st["lat_p99_us"],
        "dropped": r.get("dropped"), "loadgen": r,
    }
    out.update(extra)
    return out


def ramp_run(tcls, n, args, half_rate=None):
    t = start_target(tcls, n)
    res = {"target": t.name, "sessions": n}
    try:
        if half_rate is None:
            r = loadgen(t, "msg", n, args.ramp, args.ramp_duration,
                        window=args.window)
            res["ramp"] = r
            peak, bound = 0.0, True
            for s in r["steps"]:
                ok = s["sent"] and s["received"] >= 0.97 * s["sent"] and \
                    s["achieved_rate"] >= 0.95 * s["rate"]
                if ok:
                    peak = max(peak, s["achieved_rate"])
                else:
                    bound = False
                    peak = max(peak, s["achieved_rate"]) if peak == 0 else peak
            res["peak_rate"] = peak
            res["peak_is_lower_bound"] = bound
        else:
            r = loadgen(t, "msg", n, [half_rate], args.lat_duration,
                        window=args.window)
            s = r["steps"][0]
            m = t.measured
            res.update({"rate": half_rate, "sent": s["sent"],
                        "received": s["received"],
                        "lat_p50_us": s["lat_p50_us"],
                        "lat_p90_us": s["lat_p90_us"],
                        "lat_p99_us": s["lat_p99_us"],
                        "lat_max_us": s["lat_max_us"],
                        "cpu_per_msg_us": per(s["cpu_s"][m], s["received"], 1e6),
                        "loadgen_cpu_s": s["loadgen_cpu_s"],
                        "loadgen": r})
    finally:
        res.update(t.stop())
    return res


def fmt(v, f="%.1f"):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f % v


def main():
    global WORK, have_jd_reason, PIN, MODULE_SO, CM_EXTRA
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-pin", action="store_true",
                    help="do not give the measured process CPU 1 to itself "
                         "(the rest runs on CPU 0); pinning needs 2 CPUs")
    ap.add_argument("--sessions", default="100,1000,5000,19000")
    ap.add_argument("--rate", type=float, default=10000,
                    help="fixed offered msg/s for CPU per stanza")
    ap.add_argument("--duration", type=float, default=3)
    ap.add_argument("--ramp", default="5000,10000,20000,40000,60000")
    ap.add_argument("--ramp-duration", type=float, default=2)
    ap.add_argument("--lat-sessions", type=int, default=1000)
    ap.add_argument("--lat-duration", type=float, default=4)
    ap.add_argument("--lat-rates", default="5000",
                    help="fixed offered rates (msg/s) of extra latency rows "
                         "for cm and relay, comma-separated; '' for none")
    ap.add_argument("--nagle-rates", default="1000,5000",
                    help="offered rates (msg/s) of the Nagle rows: direct, "
                         "cm-nagle and cm at --lat-sessions; '' for none")
    ap.add_argument("--confirm-rates", default="5000,20000",
                    help="offered rates (msg/s) of the confirm rows: cm "
                         "(xmpp_cm_confirm on) and cm-noconfirm at "
                         "--lat-sessions; '' for none")
    ap.add_argument("--module", default=MODULE_SO,
                    help="the module to load (e.g. one built from another "
                         "commit, for a before/after)")
    ap.add_argument("--cm-extra", default="",
                    help="directives added to the CM's server block, e.g. "
                         "'xmpp_cm_limit_rate 1m;'")
    ap.add_argument("--window", type=int, default=2000)
    ap.add_argument("--targets", default="cm,relay,jabberd2")
    ap.add_argument("--jabberd2-max", type=int, default=5000)
    ap.add_argument("--outdir", default=os.path.join(BENCH, "results"))
    args = ap.parse_args()
    if args.quick:
        args.sessions = "20,200"
        args.rate = 2000
        args.duration = 0.5
        args.ramp = "2000,6000"
        args.ramp_duration = 0.5
        args.lat_sessions = 100
        args.lat_duration = 0.5
        args.lat_rates = ""
        if "--nagle-rates" not in sys.argv:
            args.nagle_rates = "1000"
        if "--confirm-rates" not in sys.argv:
            args.confirm_rates = "2000"
        if "--targets" not in sys.argv:
            args.targets = "cm,relay"
    args.ramp = [float(x) for x in args.ramp.split(",") if x]
    args.lat_rates = [float(x) for x in args.lat_rates.split(",") if x]
    args.nagle_rates = [float(x) for x in args.nagle_rates.split(",") if x]
    args.confirm_rates = [float(x) for x in args.confirm_rates.split(",")
                          if x]
    MODULE_SO = os.path.abspath(args.module)
    CM_EXTRA = args.cm_extra
    PIN = not args.no_pin and len(os.sched_getaffinity(0)) >= 2 and \
        {0, 1} <= os.sched_getaffinity(0)
    if PIN:
        os.sched_setaffinity(0, {0})    # inherited by everything started
    sessions = [int(x) for x in args.sessions.split(",") if x]
    targets = [x for x in args.targets.split(",") if x]

    WORK = tempfile.mkdtemp(prefix="xmpp-cm-bench-")
    os.chmod(WORK, 0o755)
    have_jd = os.path.exists("/usr/sbin/jabberd2-c2s")
    have_jd_reason = None if have_jd else \
        "jabberd2 is not installed (apt-get install jabberd2 failed or was skipped)"
    classes = {"cm": CmTarget, "relay": RelayTarget, "jabberd2": Jabberd2Target}
    started = time.time()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    res = {
        "timestamp": stamp,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "cpu": next((l.split(":", 1)[1].strip() for l in
                                 read("/proc/cpuinfo").splitlines()
                                 if l.startswith("model name")), "?"),
                    "nginx": subprocess.run([NGINX, "-v"], stderr=subprocess.PIPE)
                    .stderr.decode().strip(),
                    "fd_limit": FD_LIMIT},
        "git": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              stdout=subprocess.PIPE).stdout.decode().strip(),
        "params": {"sessions": sessions, "rate": args.rate,
                   "duration": args.duration, "ramp": args.ramp,
                   "ramp_duration": args.ramp_duration,
                   "lat_sessions": args.lat_sessions,
                   "lat_duration": args.lat_duration, "window": args.window,
                   "nagle_rates": args.nagle_rates,
                   "confirm_rates": args.confirm_rates, "module": MODULE_SO,
                   "cm_extra": CM_EXTRA,
                   "pinned": PIN,
                   "targets": targets},
        "scale": [], "skipped": [], "ramp": {}, "latency": {},
        "latency_at": {}, "nagle": {}, "confirm": {}, "errors": [],
    }
    if "jabberd2" in targets and not have_jd:
        res["jabberd2_unavailable"] = have_jd_reason
    try:
        for n in sessions:
            for tn in targets:
                why = skip_reason(tn, n, args, have_jd)
                if why:
                    res["skipped"].append({"target": tn, "sessions": n,
                                           "reason": why})
                    continue
                log("bench: %s N=%d" % (tn, n))
                try:
                    res["scale"].append(scale_run(classes[tn], n, args))
                except Exception as e:
                    res["errors"].append("%s N=%d: %s" % (tn, n, e))
                    log("bench: error: %s N=%d: %s" % (tn, n, e))
                    stop_all()
        # peak and latency at half the CM's peak
        for tn in [t for t in ("cm", "relay")
                   if t in targets and args.ramp]:
            log("bench: ramp %s" % tn)
            try:
                res["ramp"][tn] = ramp_run(classes[tn], args.lat_sessions, args)
            except Exception as e:
                res["errors"].append("ramp %s: %s" % (tn, e))
                stop_all()
        peak = res["ramp"].get("cm", {}).get("peak_rate")
        if peak:
            half = max(100, int(peak / 2))
            res["half_peak_rate"] = half
            for tn in targets:
                if skip_reason(tn, args.lat_sessions, args, have_jd):
                    continue
                log("bench: latency %s at %d msg/s" % (tn, half))
                try:
                    res["latency"][tn] = ramp_run(classes[tn], args.lat_sessions,
                                                  args, half_rate=half)
                except Exception as e:
                    res["errors"].append("latency %s: %s" % (tn, e))
                    stop_all()
        # latency at fixed, lighter rates: at half the peak the load
        # generator and the far end saturate the CPU they share, and their
        # queueing, not the relay's, makes the tail
        for rate in args.lat_rates:
            row = res["latency_at"].setdefault(str(int(rate)), {})
            for tn in [t for t in ("cm", "relay") if t in targets]:
                log("bench: latency %s at %d msg/s" % (tn, rate))
                try:
                    row[tn] = ramp_run(classes[tn], args.lat_sessions, args,
                                       half_rate=rate)
                except Exception as e:
                    res["errors"].append("latency %s at %d: %s"
                                         % (tn, rate, e))
                    stop_all()
        # Openfire's Nagle against direct clients, in the same run
        nagle = {"direct": DirectTarget, "cm-nagle": CmNagleTarget,
                 "cm": CmTarget}
        for rate in args.nagle_rates if "cm" in targets else ():
            row = res["nagle"].setdefault(str(int(rate)), {})
            for tn, tcls in nagle.items():
                log("bench: nagle latency %s at %d msg/s" % (tn, rate))
                try:
                    row[tn] = ramp_run(tcls, args.lat_sessions, args,
                                       half_rate=rate)
                except Exception as e:
                    res["errors"].append("nagle %s at %d: %s" % (tn, rate, e))
                    stop_all()
        # confirmed delivery on and off, in the same run
        confirm = {"cm": CmTarget, "cm-noconfirm": CmNoConfirmTarget}
        for rate in args.confirm_rates if "cm" in targets else ():
            row = res["confirm"].setdefault(str(int(rate)), {})
            for tn, tcls in confirm.items():
                log("bench: confirm %s at %d msg/s" % (tn, rate))
                try:
                    row[tn] = ramp_run(tcls, args.lat_sessions, args,
                                       half_rate=rate)
                except Exception as e:
                    res["errors"].append("confirm %s at %d: %s"
                                         % (tn, rate, e))
                    stop_all()
    finally:
        stop_all()
    res["elapsed_s"] = round(time.time() - started, 1)
    summarize(res, targets)
    os.makedirs(args.outdir, exist_ok=True)
    jpath = os.path.join(args.outdir, stamp + ".json")
    with open(jpath, "w") as f:
        json.dump(res, f, indent=1)
    png = plot(res, os.path.join(args.outdir, stamp + ".png"))
    print_table(res)
    print("\nJSON: %s" % jpath)
    print("PNG:  %s" % (png or "not written (gnuplot missing)"))
    shutil.rmtree(WORK, ignore_errors=True)
    return 0 if not res["errors"] else 1


def summarize(res, targets):
    """The figures the issue's targets are stated in."""
    s = {}
    by = {}
    for r in res["scale"]:
        by.setdefault(r["target"], {})[r["sessions"]] = r
    s["by_target"] = {}
    for tn, rows in by.items():
        ns = sorted(rows)
        d = {"cpu_per_msg_us": {str(n): rows[n]["cpu_per_msg_us"] for n in ns},
             "mem_per_session_b": {str(n): rows[n]["mem_per_session_b"] for n in ns},
             "login_rate": {str(n): rows[n]["login_rate"] for n in ns},
             "max_sessions_ok": max(rows[n]["logins_ok"] for n in ns)}
        # marginal memory: slope between the two largest session counts
        if len(ns) >= 2:
            a, b = rows[ns[-2]], rows[ns[-1]]
            dn = b["logins_ok"] - a["logins_ok"]
            d["mem_per_session_slope_b"] = per(
                (b["rss_kb_after_login"] - b["rss_kb_before"]
                 - a["rss_kb_after_login"] + a["rss_kb_before"]) * 1024, dn)
        s["by_target"][tn] = d
    # ratios at each N where both exist
    def ratio(t1, t2):
        out = {}
        for n, r in by.get(t1, {}).items():
            o = by.get(t2, {}).get(n)
            if o and r["cpu_per_msg_us"] and o["cpu_per_msg_us"]:
                out[str(n)] = r["cpu_per_msg_us"] / o["cpu_per_msg_us"]
        return out
    s["cpu_ratio_cm_relay"] = ratio("cm", "relay")
    s["cpu_ratio_cm_jabberd2"] = ratio("cm", "jabberd2")
    lat = res.get("latency", {})
    if "cm" in lat and "relay" in lat:
        s["added_p99_us"] = lat["cm"]["lat_p99_us"] - lat["relay"]["lat_p99_us"]
    s["nagle_ratio_cm_direct"] = {}
    for rate, row in res.get("nagle", {}).items():
        d, c = row.get("direct"), row.get("cm-nagle")
        if d and c and d["lat_p50_us"] and d["lat_p99_us"]:
            s["nagle_ratio_cm_direct"][rate] = {
                "p50": c["lat_p50_us"] / d["lat_p50_us"],
                "p99": c["lat_p99_us"] / d["lat_p99_us"]}
    cm = by.get("cm", {})
    if cm:
        big = max(cm)
        s["cm_max_sessions"] = {"offered": big, "ok": cm[big]["logins_ok"]}
        s["cm_login_rate"] = cm[big]["login_rate"]
    res["summary"] = s


def print_table(res):
    print("\nngx_stream_xmpp_cm benchmark %s (git %s, %s, %d CPUs)%s" % (
        res["date"], res["git"], res["machine"]["nginx"],
        res["machine"]["cpus"], (" [quick]" if res["quick"] else "") +
        (" [measured process pinned to CPU 1, the rest to CPU 0]"
         if res["params"].get("pinned") else "")))
    print("offered %.0f msg/s for %.1f s per scale row; CPU = utime+stime of "
          "the measured process per message relayed" % (
              res["params"]["rate"], res["params"]["duration"]))
    hdr = ("target", "sessions", "ok", "login/s", "us/login", "B/session",
           "us/msg", "sched us/msg", "far us/msg", "loadgen us/msg", "p99 us")
    fmt_row = "%-9s %8s %6s %8s %8s %9s %7s %12s %10s %14s %8s"
    print(fmt_row % hdr)
    for r in sorted(res["scale"], key=lambda r: (r["sessions"], r["target"])):
        print(fmt_row % (r["target"], r["sessions"], r["logins_ok"],
                         fmt(r["login_rate"], "%.0f"),
                         fmt(r["cpu_per_login_us"], "%.0f"),
                         fmt(r["mem_per_session_b"], "%.0f"),
                         fmt(r["cpu_per_msg_us"]),
                         fmt(r["cpu_per_msg_sched_us"]),
                         fmt(r["far_cpu_per_msg_us"]),
                         fmt(r["loadgen_cpu_per_msg_us"]),
                         fmt(r["lat_p99_us"], "%.0f")))
    for s in res["skipped"]:
        print("%-9s %8s   skipped: %s" % (s["target"], s["sessions"], s["reason"]))
    for tn, r in res["ramp"].items():
        if "ramp" in r:
            steps = ", ".join("%.0f->%.0f" % (s["rate"], s["achieved_rate"])
                              for s in r["ramp"]["steps"])
            print("ramp %-8s offered->delivered msg/s: %s; peak %s%.0f" % (
                tn, steps, ">=" if r.get("peak_is_lower_bound") else "",
                r["peak_rate"]))
    if res.get("half_peak_rate"):
        print("latency at half the CM's peak (%d msg/s, %d sessions):" % (
            res["half_peak_rate"], res["params"]["lat_sessions"]))
        for tn, r in res["latency"].items():
            print("  %-9s p50 %s us  p90 %s us  p99 %s us  max %s us  "
                  "(%d/%d delivered, %s us CPU/msg)" % (
                      tn, fmt(r["lat_p50_us"], "%.0f"), fmt(r["lat_p90_us"], "%.0f"),
                      fmt(r["lat_p99_us"], "%.0f"), fmt(r["lat_max_us"], "%.0f"),
                      r["received"], r["sent"], fmt(r["cpu_per_msg_us"])))
    for rate, row in sorted(res.get("latency_at", {}).items(),
                            key=lambda x: int(x[0])):
        print("latency at %s msg/s (%d sessions):" % (
            rate, res["params"]["lat_sessions"]))
        for tn, r in row.items():
            print("  %-9s p50 %s us  p90 %s us  p99 %s us  max %s us  "
                  "(%d/%d delivered, %s us CPU/msg)" % (
                      tn, fmt(r["lat_p50_us"], "%.0f"),
                      fmt(r["lat_p90_us"], "%.0f"),
                      fmt(r["lat_p99_us"], "%.0f"),
                      fmt(r["lat_max_us"], "%.0f"),
                      r["received"], r["sent"], fmt(r["cpu_per_msg_us"])))
        if "cm" in row and "relay" in row:
            print("  CM added latency: p50 %s us, p99 %s us" % (
                fmt(row["cm"]["lat_p50_us"] - row["relay"]["lat_p50_us"],
                    "%.0f"),
                fmt(row["cm"]["lat_p99_us"] - row["relay"]["lat_p99_us"],
                    "%.0f")))
    for rate, row in sorted(res.get("nagle", {}).items(),
                            key=lambda x: int(x[0])):
        print("latency at %s msg/s (%d sessions), Nagle on at the far end "
              "unless noted:" % (rate, res["params"]["lat_sessions"]))
        for tn, r in row.items():
            print("  %-9s p50 %s us  p90 %s us  p99 %s us  max %s us  "
                  "(%d/%d delivered)%s" % (
                      tn, fmt(r["lat_p50_us"], "%.0f"),
                      fmt(r["lat_p90_us"], "%.0f"),
                      fmt(r["lat_p99_us"], "%.0f"),
                      fmt(r["lat_max_us"], "%.0f"), r["received"], r["sent"],
                      "  [fakeof TCP_NODELAY]" if tn == "cm" else ""))
        q = res.get("summary", {}).get("nagle_ratio_cm_direct", {}).get(rate)
        if q:
            print("  cm-nagle / direct: p50 %.2f, p99 %.2f" % (q["p50"],
                                                               q["p99"]))
    for rate, row in sorted(res.get("confirm", {}).items(),
                            key=lambda x: int(x[0])):
        print("confirmed delivery at %s msg/s (%d sessions):"
              % (rate, res["params"]["lat_sessions"]))
        for tn, r in row.items():
            c = r.get("confirm") or {}
            print("  %-12s CPU/msg %s us  p50 %s us  p99 %s us  "
                  "(%d/%d delivered)  barriers %s (%s per 1000 msg)  "
                  "ack wait mean %s ms" % (
                      tn, fmt(r["cpu_per_msg_us"], "%.2f"),
                      fmt(r["lat_p50_us"], "%.0f"),
                      fmt(r["lat_p99_us"], "%.0f"), r["received"], r["sent"],
                      fmt(c.get("barriers"), "%.0f"),
                      fmt(1000.0 * c["barriers"] / r["received"]
                          if c.get("barriers") is not None and r["received"]
                          else None, "%.1f"),
                      fmt(c.get("ack_wait_mean_ms"), "%.1f")))
        if "cm" in row and "cm-noconfirm" in row \
                and row["cm-noconfirm"]["cpu_per_msg_us"]:
            print("  CPU/msg on / off: %.3f" % (
                row["cm"]["cpu_per_msg_us"]
                / row["cm-noconfirm"]["cpu_per_msg_us"]))
    s = res.get("summary", {})
    print("targets (goals, not assertions):")
    for n, v in sorted(s.get("cpu_ratio_cm_relay", {}).items(), key=lambda x: int(x[0])):
        print("  CPU/msg CM / proxy_pass   N=%-6s %.2f   (goal <= 1.0)" % (n, v))
    for n, v in sorted(s.get("cpu_ratio_cm_jabberd2", {}).items(), key=lambda x: int(x[0])):
        print("  CPU/msg CM / jabberd2 c2s N=%-6s %.2f   (goal <= 0.5)" % (n, v))
    cm = s.get("by_target", {}).get("cm", {})
    if cm:
        print("  CM memory per idle session: %s B (RSS delta / N at largest N), "
              "marginal %s B   (goal <= 2048 plaintext)" % (
                  fmt(list(cm["mem_per_session_b"].values())[-1], "%.0f"),
                  fmt(cm.get("mem_per_session_slope_b"), "%.0f")))
    if "cm_max_sessions" in s:
        print("  CM sessions on one worker: %d of %d   (goal >= 19000)" % (
            s["cm_max_sessions"]["ok"], s["cm_max_sessions"]["offered"]))
        print("  CM login storm: %.0f logins/s   (goal >= 5000)" % s["cm_login_rate"])
    if "added_p99_us" in s:
        print("  CM added p99 latency vs proxy_pass: %.0f us   (goal <= 200)" %
              s["added_p99_us"])
    for e in res["errors"]:
        print("ERROR: " + e)
    for r in res["scale"]:
        for l in r.get("log_issues", []):
            print("nginx log (%s N=%d): %s" % (r["target"], r["sessions"], l))


def plot(res, png):
    gp = shutil.which("gnuplot")
    if not gp:
        return None
    base = png[:-4]
    by = {}
    for r in res["scale"]:
        by.setdefault(r["target"], []).append(r)
    files = {}
    for tn, rows in by.items():
        fn = "%s-%s.dat" % (base, tn)
        with open(fn, "w") as f:
            f.write("# sessions cpu_us_per_msg bytes_per_session\n")
            for r in sorted(rows, key=lambda r: r["sessions"]):
                f.write("%d %s %s\n" % (
                    r["sessions"],
                    "%.3f" % r["cpu_per_msg_us"] if r["cpu_per_msg_us"] else "NaN",
                    "%.1f" % r["mem_per_session_b"] if r["mem_per_session_b"] else "NaN"))
        files[tn] = fn
    if not files:
        return None
    titles = {"cm": "nginx xmpp_cm worker", "relay": "nginx proxy_pass worker",
              "jabberd2": "jabberd2 c2s"}
    p1 = ", ".join("'%s' using 1:2 with linespoints title '%s'" % (f, titles[t])
                   for t, f in files.items())
    p2 = ", ".join("'%s' using 1:3 with linespoints title '%s'" % (f, titles[t])
                   for t, f in files.items())
    script = """
set terminal pngcairo size 1200,500 noenhanced
set output '%s'
set multiplot layout 1,2 title 'ngx_stream_xmpp_cm benchmark %s (%d msg/s offered, 1 worker, %d CPUs)'
set logscale x
set grid
set key below
set xlabel 'sessions'
set ylabel 'CPU us per relayed message'
set yrange [0:*]
plot %s
set ylabel 'RSS bytes per idle session'
plot %s
unset multiplot
""" % (png, res["date"], res["params"]["rate"], res["machine"]["cpus"], p1, p2)
    sp = base + ".gp"
    with open(sp, "w") as f:
        f.write(script)
    p = subprocess.run([gp, sp], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        # pngcairo may be missing in gnuplot-nox: fall back to png
        script = script.replace("pngcairo", "png")
        with open(sp, "w") as f:
            f.write(script)
        p = subprocess.run([gp, sp], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if p.returncode != 0:
            log("gnuplot failed: " + p.stdout.decode()[-300:])
            return None
    return png


have_jd_reason = None

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: (stop_all(), sys.exit(1)))
    try:
        sys.exit(main())
    finally:
        stop_all()
