"""Run Debian's nginx with the module under test."""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from .util import children_of, port_accepts, wait_until

NGINX = "/usr/sbin/nginx"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"

# Switches for the sanitizer runs (scripts/sanitize.sh); unset = Debian's
# nginx with the dynamic module, as before.
#   XMPP_CM_NGINX=/path/to/nginx   another nginx binary
#   XMPP_CM_STATIC=1               the module is compiled in: no load_module
#   XMPP_CM_VALGRIND=1             run nginx under valgrind memcheck
# and for the Debian package (scripts/deb-test.sh):
#   XMPP_CM_MODULES_ENABLED=/etc/nginx/modules-enabled
#                                  load the modules as Debian's nginx.conf
#                                  does, through that directory's snippets
NGINX = os.environ.get("XMPP_CM_NGINX") or NGINX
STATIC = os.environ.get("XMPP_CM_STATIC") == "1"
VALGRIND = os.environ.get("XMPP_CM_VALGRIND") == "1"
MODULES_ENABLED = os.environ.get("XMPP_CM_MODULES_ENABLED")
# nginx under a sanitizer or valgrind: its RSS is not the module's memory
SANITIZED = VALGRIND or os.environ.get("XMPP_CM_SANITIZED") == "1"
SUPP_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "fuzz")

# error.log lines that mean the test must fail (crash / corruption)
BAD_LOG = re.compile(r"\[(alert|emerg|crit)\]|signal 11|core dumped|"
                     r"exited on signal")

CONF_TEMPLATE = """\
{load_modules}
daemon off;
master_process on;
worker_processes {workers};
error_log {prefix}/error.log {log_level};
pid {prefix}/nginx.pid;
{main_extra}
events {{ worker_connections {worker_connections}; }}

stream {{
{body}
}}
"""


def load_modules(prefix, module):
    """The load_module lines, or with XMPP_CM_MODULES_ENABLED the include
    of the packages' snippets.  Those say `load_module modules/X.so;`,
    relative to nginx's prefix: Debian's is /usr/share/nginx, whose
    modules/ is a link to /usr/lib/nginx/modules; PREFIX gets the same."""
    if STATIC:
        return ""
    if not MODULES_ENABLED:
        return "load_module %s;\nload_module %s;" % (STREAM_MODULE, module)
    os.makedirs(prefix, exist_ok=True)
    link = os.path.join(prefix, "modules")
    if not os.path.lexists(link):
        os.symlink(os.path.dirname(STREAM_MODULE), link)
    return "include %s/*.conf;" % MODULES_ENABLED


def make_conf(prefix, module, body, workers=1, log_level="debug",
              main_extra="", worker_connections=4096):
    conf = CONF_TEMPLATE.format(load_modules=load_modules(prefix, module),
                                workers=workers, prefix=prefix,
                                log_level=log_level, main_extra=main_extra,
                                worker_connections=worker_connections,
                                body=body)
    if STATIC:
        conf = "\n".join(l for l in conf.split("\n")
                         if not l.startswith("load_module "))
    return conf


def sanitizer_env(logdir, leaks=True):
    """Environment for nginx: ASan/UBSan/LSan reports go to files in
    logdir (harmless for a binary without sanitizers).  leaks=False for
    `nginx -t`: a failed configuration test exits without freeing nginx's
    own init pool (nginx.c main), which is not a run-time leak."""
    env = dict(os.environ)
    lsan = os.path.join(SUPP_DIR, "lsan.supp")
    ubsan = os.path.join(SUPP_DIR, "ubsan.supp")
    env["ASAN_OPTIONS"] = ("detect_leaks=%d:abort_on_error=0:"
                           "log_path=%s/asan" % (1 if leaks else 0, logdir))
    env["LSAN_OPTIONS"] = "suppressions=%s:print_suppressions=0" % lsan
    env["UBSAN_OPTIONS"] = ("print_stacktrace=1:log_path=%s/ubsan:"
                            "suppressions=%s" % (logdir, ubsan))
    return env


def sanitizer_reports(logdir):
    """The ASan/UBSan/LSan reports and valgrind errors left in logdir."""
    out = []
    if not logdir or not os.path.isdir(logdir):
        return out
    for f in sorted(os.listdir(logdir)):
        path = os.path.join(logdir, f)
        try:
            with open(path, "rb") as fh:
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            continue
        if f.startswith("valgrind"):
            if not valgrind_bad(text):
                continue
        elif not text.strip():
            continue
        out.append("%s:\n    %s" % (f, "\n    ".join(
            text.splitlines()[:60])))
    return out


def valgrind_bad(text):
    """A valgrind log with memory errors, or leaks with a module frame."""
    m = re.search(r"ERROR SUMMARY: (\d+) errors", text)
    if m and int(m.group(1)) > 0:
        # leaks count as errors with --errors-for-leak-kinds; keep only
        # the ones the module is in
        for block in re.split(r"\n==\d+== \n", text):
            if re.search(r"(Invalid|uninitialised|Mismatched|overlap|"
                         r"Syscall param)", block) or \
                    ("definitely lost" in block and "xmpp_cm" in block):
                return True
    return False


def command(prefix, args, logdir, leaks=True):
    """nginx's command line, under valgrind if XMPP_CM_VALGRIND=1 (leaks:
    see sanitizer_env)."""
    cmd = [NGINX] + args
    if VALGRIND:
        cmd = ["valgrind", "--tool=memcheck",
               "--leak-check=%s" % ("full" if leaks else "no"),
               "--show-leak-kinds=definite", "--errors-for-leak-kinds=definite",
               "--keep-debuginfo=yes", "--num-callers=30",
               "--error-exitcode=99", "--child-silent-after-fork=no",
               "--log-file=%s/valgrind.%%p.log" % logdir] + cmd
    return cmd


def nginx_t(prefix, conf_text):
    """Write conf_text to PREFIX/nginx-t.conf and run `nginx -t` on it.
    Returns (rc, combined output)."""
    # an http{} without access_log opens the binary's default: Debian's
    # is /var/log/nginx, a source build's is PREFIX/logs
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    path = os.path.join(prefix, "nginx-t.conf")
    with open(path, "w") as f:
        f.write(conf_text)
    sandir = os.path.join(str(prefix), "sanitizer-t")
    os.makedirs(sandir, exist_ok=True)
    p = subprocess.run(command(prefix, ["-t", "-p", str(prefix), "-c", path,
                                        "-e", os.path.join(str(prefix),
                                                           "error-t.log")],
                               sandir, leaks=False),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=120 if VALGRIND else 30,
                       env=sanitizer_env(sandir, leaks=False))
    return p.returncode, p.stdout.decode("utf-8", "replace")


def core_dir():
    """A directory every worker can write core files to (workers run as
    nobody when the tests run as root, and pytest's tmp dirs are 0700)."""
    d = tempfile.mkdtemp(prefix="xmpp-cm-cores-")
    os.chmod(d, 0o1777)
    return d


def backtraces(cores_dir, limit=2):
    """gdb backtraces of the core files in cores_dir (best effort)."""
    out = []
    if not cores_dir or not os.path.isdir(cores_dir) or \
            not shutil.which("gdb"):
        return out
    for f in sorted(os.listdir(cores_dir))[:limit]:
        path = os.path.join(cores_dir, f)
        try:
            p = subprocess.run(["gdb", "-batch", "-nx", "-ex", "bt",
                                NGINX, path], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=60)
            lines = [l for l in p.stdout.decode("utf-8", "replace")
                     .splitlines() if l.startswith("#")]
            out.append("%s:\n    %s" % (f, "\n    ".join(lines[:25])))
        except Exception as e:      # diagnostics only
            out.append("%s: gdb failed: %r" % (f, e))
    return out


class Nginx:
    def __init__(self, prefix, module, body, workers=1, log_level="debug",
                 main_extra="", worker_connections=4096):
        self.prefix = str(prefix)
        os.makedirs(self.prefix, exist_ok=True)
        self.conf_path = os.path.join(self.prefix, "nginx.conf")
        self.log_path = os.path.join(self.prefix, "error.log")
        self.cores = core_dir()
        self.sanlog = core_dir()    # sanitizer / valgrind reports
        main_extra = ("worker_rlimit_core 2g;\nworking_directory %s;\n"
                      % self.cores) + main_extra
        self.conf = make_conf(self.prefix, module, body, workers, log_level,
                              main_extra, worker_connections)
        with open(self.conf_path, "w") as f:
            f.write(self.conf)
        self.proc = None
        self.allowed_bad = []       # regexes for BAD_LOG lines a test expects
        self.stopped = False
        self.forced = None

    def start(self):
        out = open(os.path.join(self.prefix, "stderr.log"), "wb")
        self.proc = subprocess.Popen(
            command(self.prefix, ["-p", self.prefix, "-c", self.conf_path,
                                  "-e", self.log_path], self.sanlog),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=sanitizer_env(self.sanlog))
        out.close()
        return self

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stderr_text(self):
        try:
            with open(os.path.join(self.prefix, "stderr.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_lines(self, pattern):
        rx = re.compile(pattern)
        return [l for l in self.log().splitlines() if rx.search(l)]

    def worker_pids(self):
        if not self.running():
            return []
        # only nginx's own children: a sanitizer build may also have an
        # llvm-symbolizer child (UBSan suppressions symbolize)
        out = []
        for pid in children_of(self.proc.pid):
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    cmd = f.read()
                if not (cmd.startswith(b"nginx: ") or b"valgrind" in cmd):
                    continue
            except OSError:
                continue
            out.append(pid)
        return out

    def wait_port(self, port, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            if not self.running():
                raise AssertionError(
                    "nginx exited (rc=%s): %s\n%s" % (
                        self.proc.returncode, self.stderr_text()[-3000:],
                        self.log()[-3000:]))
            if port_accepts(port):
                return
            if time.monotonic() > deadline:
                raise AssertionError("nginx not listening on %d after %ss"
                                     % (port, timeout))
            time.sleep(0.05)

    def signal(self, sig):
        if self.running():
            os.kill(self.proc.pid, sig)

    def quit(self, timeout=8):
        """Graceful shutdown (SIGQUIT); TERM then KILL if it does not exit.
        self.forced names the signal that finally ended it when QUIT did
        not (None when QUIT worked)."""
        if self.proc is None or self.stopped:
            return self.proc.returncode if self.proc else None
        self.stopped = True
        self.forced = None
        workers = self.worker_pids()
        for sig, wait in ((signal.SIGQUIT, timeout), (signal.SIGTERM, 5),
                          (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            if sig != signal.SIGQUIT:
                self.forced = sig.name
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        # kill leftover workers, if any (children of our nginx master)
        for w in workers:
            try:
                with open("/proc/%d/cmdline" % w, "rb") as f:
                    if b"nginx" not in f.read():
                        continue
                os.kill(w, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        return self.proc.returncode

    def bad_log_lines(self):
        out = []
        for line in self.log().splitlines() + self.stderr_text().splitlines():
            if BAD_LOG.search(line) and not any(
                    re.search(a, line) for a in self.allowed_bad):
                out.append(line)
        return out

    def crash_report(self):
        return backtraces(self.cores)

    def sanitizer_reports(self):
        return sanitizer_reports(self.sanlog)

    def cleanup(self):
        shutil.rmtree(self.cores, ignore_errors=True)
        shutil.rmtree(self.sanlog, ignore_errors=True)
