"""XEP-0198 resumption with worker_processes 4: the new connection lands on
any worker, the stream lives at the worker its id names (w<pid>-...), and
the accepting worker relays the resumed stream to that worker over its
local socket (src/ngx_stream_xmpp_cm_handoff.c; docs/architecture.md).
Which worker accepted a connection is read from the id of its own stream
(its header), so every test knows whether its resumption crossed."""
import os
import re
import signal
import socket
import struct
import time

from lib.nginx import SANITIZED
from lib.raw import NS_CLIENT, q
from test_tls import certs  # noqa: F401 (the fixture)
from lib.util import free_port, wait_until

NS_SM = "urn:xmpp:sm:3"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
EXTRA = "xmpp_cm_reconnect 100ms 1s;"
ENABLE = "<enable xmlns='urn:xmpp:sm:3' resume='true'/>"


def pid_of(stream_id):
    m = re.match(r"^w(\d+)-[0-9a-f]{16}$", stream_id or "")
    assert m, stream_id
    return int(m.group(1))


def start(standin, nginx, extra=EXTRA, stream_extra=""):
    sb = standin()
    ngx = nginx(standin=sb, workers=4, connections=2,
                listen_extra=" reuseport", extra=extra,
                stream_extra=stream_extra)
    return sb, ngx


def authenticated(raw, ngx, user, avoid_pid=None, want_pid=None, tries=80):
    """A new connection through SASL and the restart, on a worker other
    than avoid_pid, or on want_pid (reuseport spreads connections by their
    source port: reconnect until one lands as wanted)."""
    for _ in range(tries):
        c = raw(ngx.port)
        c.open()
        w = pid_of(c.stream_id)
        if (avoid_pid is not None and w == avoid_pid) or \
                (want_pid is not None and w != want_pid):
            c.close()
            continue
        r = c.auth_plain(user, user + "pw")
        assert r.tag.endswith("success"), r.tag
        c.restart()
        return c
    raise AssertionError("no connection landed as wanted (avoid %s, want %s)"
                         % (avoid_pid, want_pid))


def enabled(raw, ngx, user, resource):
    c = raw(ngx.port)
    jid = c.login(user, user + "pw", resource=resource)
    c.send(ENABLE)
    en = c.wait_tag(q(NS_SM, "enabled"))
    assert en.get("id") == c.stream_id and en.get("resume") == "true"
    return c, jid


def drop(c):
    """The TCP connection dies without </stream:stream> (RST)."""
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                      struct.pack("ii", 1, 0))
    c.close()


def resume(c, previd, h=0):
    c.send("<resume xmlns='%s' previd='%s' h='%d'/>" % (NS_SM, previd, h))
    return c.next_element(5, lambda e: e.tag in (q(NS_SM, "resumed"),
                                                 q(NS_SM, "failed")),
                          "resumed or failed")


def bodies(c, n, timeout=10, prefix=None):
    out = []
    for _ in range(n):
        m = c.next_element(timeout, lambda e: e.tag == q(NS_CLIENT, "message")
                           and (prefix is None or (e.findtext(
                               q(NS_CLIENT, "body")) or "").startswith(prefix)),
                           "message %d of %d" % (len(out) + 1, n))
        out.append(m.findtext(q(NS_CLIENT, "body")))
    return out


def worker_uid(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[2])      # effective
    raise AssertionError("no Uid line for %d" % pid)


def foreign_request(owner, request, as_uid):
    """Connect to the owner worker's local socket from a child process
    (with as_uid as its uid if given), send request, return (all that
    came back until the close, the child's pid)."""
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rd)
            if as_uid is not None:
                os.setgid(as_uid)
                os.setuid(as_uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(b"\0ngx_xmpp_cm/%d" % owner)
            try:
                s.sendall(request)
            except (BrokenPipeError, ConnectionResetError):
                pass             # closed at once: the peer check
            data = b""
            while True:
                try:
                    chunk = s.recv(100)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
            os.write(wr, b"ok:" + data)
        except BaseException as e:
            os.write(wr, b"error:" + repr(e).encode())
        finally:
            os._exit(0)
    os.close(wr)
    out = b""
    while True:
        chunk = os.read(rd, 4096)
        if not chunk:
            break
        out += chunk
    os.close(rd)
    os.waitpid(pid, 0)
    assert out.startswith(b"ok:"), out
    return out[3:], pid


def chat(bob, jid, body):
    bob.send('<message to="%s" type="chat"><body>%s</body></message>'
             % (jid, body))


def test_resume_crosses_workers(standin, nginx, raw):
    """Clients resume at another worker and at their own: what they had
    not acknowledged, then what came in the gap, exactly once, in order;
    then traffic both ways on the resumed stream."""
    sb, ngx = start(standin, nginx)
    workers = set(ngx.worker_pids())
    assert len(workers) == 4

    bob = raw(ngx.port)
    bob.login("bob", "bobpw", resource="b")

    n, k1, k2 = 16, 4, 3
    held = []
    for i in range(n):
        a, jid = enabled(raw, ngx, "alice", "r%d" % i)
        for j in range(k1):
            chat(bob, jid, "%s-before-%d" % (a.stream_id, j))
        assert bodies(a, k1) == ["%s-before-%d" % (a.stream_id, j)
                                 for j in range(k1)]
        # even clients acknowledged two of the four, odd ones none
        acked = 2 if i % 2 == 0 else 0
        if acked:
            a.send("<a xmlns='%s' h='%d'/>" % (NS_SM, acked))
            a.send("<r xmlns='%s'/>" % NS_SM)
            a.wait_tag(q(NS_SM, "a"))
        held.append((a.stream_id, jid, acked))
        drop(a)

    for sid, jid, _ in held:
        for j in range(k2):
            chat(bob, jid, "%s-gap-%d" % (sid, j))
    bob.pump(0.2)

    resumed = []
    for i, (sid, jid, acked) in enumerate(held):
        owner = pid_of(sid)
        # three of four cross workers, every fourth stays local
        if i % 4 == 3:
            c = authenticated(raw, ngx, "alice", want_pid=owner)
        else:
            c = authenticated(raw, ngx, "alice", avoid_pid=owner)
        el = resume(c, sid, acked)
        assert el.tag == q(NS_SM, "resumed"), el.tag
        assert el.get("previd") == sid
        resumed.append((c, sid, jid, acked, pid_of(c.stream_id) != owner))

    crossed = [r for r in resumed if r[4]]
    assert len(crossed) == 12 and len(resumed) - len(crossed) == 4
    for c, sid, _, _, cross in resumed:
        lines = ngx.log_lines(r"stream %s relayed to worker %d"
                              % (sid, pid_of(sid)))
        assert bool(lines) == cross, (sid, cross, lines)

    for c, sid, jid, acked, _ in resumed:
        want = ["%s-before-%d" % (sid, j) for j in range(acked, k1)] + \
               ["%s-gap-%d" % (sid, j) for j in range(k2)]
        assert bodies(c, len(want)) == want

    # then both ways over the resumed streams, in order, once each
    k = 10
    for c, sid, jid, _, _ in resumed:
        for j in range(k):
            chat(bob, jid, "%s-after-%d" % (sid, j))
            c.send('<message to="bob@localhost/b" type="chat">'
                   '<body>up-%s-%d</body></message>' % (sid, j))
    for c, sid, jid, acked, _ in resumed:
        assert bodies(c, k, prefix="%s-after" % sid) == \
            ["%s-after-%d" % (sid, j) for j in range(k)]
        c.pump(0.1)
        assert len([e for e in c.all_elements()
                    if e.tag == q(NS_CLIENT, "message")]) == \
            k1 - acked + k2 + k, sid
    got = bodies(bob, n * k, prefix="up-")
    for c, sid, jid, _, _ in resumed:
        assert [b for b in got if b.startswith("up-%s-" % sid)] == \
            ["up-%s-%d" % (sid, j) for j in range(k)]
        # routed on the resumed (old) session at Openfire
        assert len([r for r in sb.routes_for(sid) if "up-%s-" % sid in r]) \
            == k

    # a clean close through the relay ends the stream
    c, sid = crossed[0][0], crossed[0][1]
    c.send("</stream:stream>")
    c.wait_eof(5)
    assert c.text.endswith("</stream:stream>")


def test_owner_refusals_come_through(standin, nginx, raw):
    """The owner's <failed/> reaches the client as the owner wrote it, the
    held stream stays resumable, and the accepting worker's own session
    goes on (the client binds on it)."""
    sb, ngx = start(standin, nginx)
    a, jid = enabled(raw, ngx, "alice", "held")
    sid = a.stream_id
    owner = pid_of(sid)
    drop(a)

    # another account
    c = authenticated(raw, ngx, "bob", avoid_pid=owner)
    el = resume(c, sid)
    assert el.tag == q(NS_SM, "failed")
    assert el.find(q(NS_STANZAS, "item-not-found")) is not None
    res = c.iq('<bind xmlns="urn:ietf:params:xml:ns:xmpp-bind">'
               '<resource>after</resource></bind>', "b1")
    assert res.get("type") == "result"

    # h past what was sent: the owner's own condition
    c = authenticated(raw, ngx, "alice", avoid_pid=owner)
    el = resume(c, sid, 5)
    assert el.tag == q(NS_SM, "failed")
    assert el.find(q(NS_STANZAS, "unexpected-request")) is not None
    assert ngx.log_lines(r"worker %d refused the resumption of %s"
                         % (owner, sid))

    # an id the owner never gave out
    c = authenticated(raw, ngx, "alice", avoid_pid=owner)
    el = resume(c, "w%d-0123456789abcdef" % owner)
    assert el.tag == q(NS_SM, "failed")
    assert el.find(q(NS_STANZAS, "item-not-found")) is not None

    # a pid with no worker (1 is init, never ours): at once
    c = authenticated(raw, ngx, "alice")
    t0 = time.monotonic()
    el = resume(c, "w1-0123456789abcdef")
    assert el.tag == q(NS_SM, "failed")
    assert el.find(q(NS_STANZAS, "item-not-found")) is not None
    assert time.monotonic() - t0 < 2

    # after all that, the held stream is untouched
    c = authenticated(raw, ngx, "alice", avoid_pid=owner)
    assert resume(c, sid).tag == q(NS_SM, "resumed")


def test_owner_gone_after_reload(standin, nginx, raw):
    sb, ngx = start(standin, nginx)
    a, _ = enabled(raw, ngx, "alice", "gone")
    sid = a.stream_id
    drop(a)
    old_workers = set(ngx.worker_pids())
    ngx.signal(signal.SIGHUP)
    # the old generation exits: its held streams are closed at Openfire
    wait_until(lambda: not (set(ngx.worker_pids()) & old_workers)
               and len(ngx.worker_pids()) == 4, 20,
               what="the old workers gone, four new ones")
    wait_until(lambda: len(sb.cm_sockets("cm1-")) >= 8, 15,
               what="the new workers' sockets")
    c = authenticated(raw, ngx, "alice")
    t0 = time.monotonic()
    el = resume(c, sid)
    assert el.tag == q(NS_SM, "failed")
    assert el.find(q(NS_STANZAS, "item-not-found")) is not None
    assert time.monotonic() - t0 < 2


def test_foreign_process_refused(standin, nginx, raw):
    sb, ngx = start(standin, nginx)
    a, jid = enabled(raw, ngx, "alice", "held")
    sid = a.stream_id
    drop(a)
    owner = pid_of(sid)

    # a process that is not a worker of that nginx, first as this test
    # (root: another uid than the workers'), then as the workers' own uid:
    # a request naming the held stream gets no answer, only the close
    fields = [b"alice@localhost", sid.encode(), b"127.0.0.1", b"en"]
    rest = b"".join(fields)
    request = (b"XCM1" + struct.pack("!II", len(rest), 0)
               + struct.pack("!HHHH", *map(len, fields)) + rest)
    uid = worker_uid(owner)
    for as_uid in (None, uid):
        answer, pid = foreign_request(owner, request, as_uid)
        assert answer == b"", answer
        wait_until(lambda: ngx.log_lines(r"refused peer pid %d uid %d"
                                         % (pid, os.getuid()
                                            if as_uid is None else as_uid)),
                   5, what="the refusal of pid %d logged" % pid)

    # the held stream is untouched: a worker of this nginx resumes it
    c = authenticated(raw, ngx, "alice", avoid_pid=owner)
    el = resume(c, sid)
    assert el.tag == q(NS_SM, "resumed")


def sid_of(header_bytes):
    m = re.search(rb'id="(w\d+-[0-9a-f]{16})"', header_bytes)
    assert m, header_bytes
    return m.group(1).decode()


def test_relay_compressed_flow_control_and_drop_again(standin, nginx, raw,
                                                      tmp_path):
    from test_compression import HEADER, ZClient
    log = tmp_path / "access.log"
    sb, ngx = start(standin, nginx, extra=EXTRA + "\nxmpp_cm_compression on;",
                    stream_extra='log_format x "$pid|$remote_addr|'
                                 '$remote_port|$server_addr|$server_port|'
                                 '$xmpp_cm_streamid|$bytes_received|'
                                 '$bytes_sent";\naccess_log %s x;' % log)
    bob = raw(ngx.port)
    bob.login("bob", "bobpw", resource="b")
    a, jid = enabled(raw, ngx, "alice", "z")
    sid = a.stream_id
    owner = pid_of(sid)
    drop(a)

    # XEP-0138 at the accepting worker: it inflates and deflates, the
    # relay carries plain XML
    for _ in range(80):
        z = ZClient(ngx.port)
        z.login(b"alice", b"alicepw")
        z.start_zlib()
        z.send(HEADER)
        feats = z.until(rb"</stream:features>")
        if pid_of(sid_of(feats)) != owner:
            break
        z.s.close()
    else:
        raise AssertionError("no compressed connection off the owner")
    z.send(b"<resume xmlns='urn:xmpp:sm:3' previd='%s' h='0'/>"
           % sid.encode())
    assert b"previd=\"%s\"" % sid.encode() in z.until(rb"<resumed[^>]*/>")

    # the client reads nothing while 300 stanzas of 2 KiB come: the relay
    # stops reading the owner over its mark; then all arrive, in order
    pad = "x" * 2048
    n = 300
    for i in range(n):
        bob.send('<message to="%s" type="chat"><body>d%d %s</body>'
                 '</message>' % (jid, i, pad))
    bob.pump(0.5)
    got = z.until(rb"<body>d%d " % (n - 1), timeout=20)
    assert re.findall(rb"<body>d(\d+) ", got) == \
        [b"%d" % i for i in range(n)]

    # and the other way, written as fast as the socket takes it
    for i in range(n):
        z.send(b'<message to="bob@localhost/b" type="chat"><body>u%d %s'
               b'</body></message>' % (i, pad.encode()))
    assert bodies(bob, n, timeout=20, prefix="u") == \
        ["u%d %s" % (i, pad) for i in range(n)]

    # the relayed connection dies too: the owner holds the stream again,
    # and a third connection, at any other worker, resumes it
    z.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                   struct.pack("ii", 1, 0))
    z.s.close()
    # the owner logs the relayed session like any: the client's address,
    # the held stream's id, the bytes it took and gave
    # (the first line of the stream is its first connection's)
    def owner_lines():
        out = [line.split("|") for line in
               (log.read_text().splitlines() if log.exists() else [])]
        out = [f for f in out if f[0] == str(owner) and f[5] == sid]
        return out if len(out) == 2 else None
    f = wait_until(owner_lines, 10, what="the owner's access log lines")[1]
    assert f[1] == "127.0.0.1" and int(f[6]) > n * 2048 \
        and int(f[7]) > n * 2048, f
    # the relayed connection's own ends are the local socket's
    assert f[3] == "unix:", f
    # (the client acknowledges what it had: h counts the 300 and none of
    # the owner's <r/> it never answered)
    c = authenticated(raw, ngx, "alice", avoid_pid=owner)
    el = resume(c, sid, n)
    assert el.tag == q(NS_SM, "resumed"), el.tag
    bob.send('<message to="%s" type="chat" id="again"><body>again</body>'
             '</message>' % jid)
    assert bodies(c, 1) == ["again"]


def rss_kb(pid, field="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def test_backpressure_both_ways(standin, nginx, raw):
    """A relayed client that does not read: the accepting worker stops
    reading the owner at its mark and holds no more than that (its RSS
    does not grow with what is sent), the rest waits at the owner; when
    the client reads, all of it arrives, in order."""
    sb, ngx = start(standin, nginx, extra=EXTRA + "\n"
                    "xmpp_cm_client_output_limit 16m;")
    bob = raw(ngx.port)
    bob.login("bob", "bobpw", resource="b")
    a, jid = enabled(raw, ngx, "alice", "slow")
    sid = a.stream_id
    owner = pid_of(sid)
    drop(a)
    c = None
    for _ in range(80):
        c = raw(ngx.port, rcvbuf=4096, timeout=30)
        c.open()
        if pid_of(c.stream_id) != owner:
            break
        c.close()
    relay = pid_of(c.stream_id)
    assert c.auth_plain("alice", "alicepw").tag.endswith("success")
    c.restart()
    assert resume(c, sid).tag == q(NS_SM, "resumed")
    before = rss_kb(relay)
    pad = "y" * 4000
    n = 1500                                # 6 MB, not read for now
    for i in range(n):
        bob.send('<message to="%s" type="chat"><body>%d %s</body>'
                 '</message>' % (jid, i, pad))
        if i % 100 == 0:
            bob.pump(0.01)
    wait_until(lambda: ngx.log_lines(r"\[debug\] %d#.*relay: client "
                                     r"output over the mark" % relay), 10,
               what="the accepting worker to stop reading the owner")
    got = []
    while len(got) < n:
        m = c.next_element(20, lambda e: e.tag == q(NS_CLIENT, "message"))
        got.append(int(m.findtext(q(NS_CLIENT, "body")).split()[0]))
    assert got == list(range(n))
    # the 6 MB never piled up at the accepting worker: its peak RSS over
    # the whole transfer stayed within a few marks of where it started
    if not SANITIZED:       # ASan's or valgrind's own memory would count
        grown = rss_kb(relay, "VmHWM") - before
        assert grown < 2048, "accepting worker peaked %d KiB higher" % grown


def test_tls_at_the_accepting_worker(standin, nginx, certs):
    """Direct TLS: the accepting worker decrypts and encrypts, the relay
    and the owner see the plain stream."""
    from conftest import server_block
    from test_tls import TlsRaw, client_ctx, tls_lines
    sb = standin()
    port = free_port()
    body = server_block(port, "127.0.0.1:%d" % sb.port, connections=2,
                        listen_extra=" ssl reuseport",
                        extra=EXTRA + "\n" + tls_lines(certs, None))
    ngx = nginx(body, standin=sb, port=port, workers=4)
    ctx = client_ctx(certs)

    def tls():
        return TlsRaw(port, ctx=ctx, direct=True)

    bob = tls()
    bob.login("bob", "bobpw", resource="b")
    a = tls()
    jid = a.login("alice", "alicepw", resource="t")
    a.send(ENABLE)
    a.wait_tag(q(NS_SM, "enabled"))
    sid = a.stream_id
    owner = pid_of(sid)
    for j in range(3):
        chat(bob, jid, "before-%d" % j)
    assert bodies(a, 3) == ["before-%d" % j for j in range(3)]
    drop(a)
    for j in range(3):
        chat(bob, jid, "gap-%d" % j)

    for _ in range(80):
        c = tls()
        c.open()
        if pid_of(c.stream_id) != owner:
            break
        c.close()
    assert c.auth_plain("alice", "alicepw").tag.endswith("success")
    c.restart()
    el = resume(c, sid, 1)
    assert el.tag == q(NS_SM, "resumed")
    assert bodies(c, 5) == ["before-1", "before-2", "gap-0", "gap-1",
                            "gap-2"]
    assert ngx.log_lines(r"stream %s relayed to worker %d" % (sid, owner))
    c.send('<message to="bob@localhost/b" type="chat"><body>over tls'
           '</body></message>')
    assert bodies(bob, 1) == ["over tls"]


def test_fifty_resume_at_once(standin, nginx, raw):
    """50 held streams, 50 new connections on whichever worker, the 50
    <resume/> written before any answer is read."""
    sb, ngx = start(standin, nginx)
    bob = raw(ngx.port)
    bob.login("bob", "bobpw", resource="b")
    n = 50
    held = []
    for i in range(n):
        a, jid = enabled(raw, ngx, "alice", "f%d" % i)
        held.append((a.stream_id, jid))
        drop(a)
    for sid, jid in held:
        chat(bob, jid, "gap-%s" % sid)
    conns = [authenticated(raw, ngx, "alice") for _ in range(n)]
    for c, (sid, _) in zip(conns, held):
        c.send("<resume xmlns='%s' previd='%s' h='0'/>" % (NS_SM, sid))
    crossed = 0
    for c, (sid, jid) in zip(conns, held):
        el = c.next_element(10, lambda e: e.tag in (q(NS_SM, "resumed"),
                                                    q(NS_SM, "failed")))
        assert el.tag == q(NS_SM, "resumed") and el.get("previd") == sid
        assert bodies(c, 1) == ["gap-%s" % sid]
        crossed += pid_of(c.stream_id) != pid_of(sid)
    # with four workers about three in four cross; all 50 staying local
    # has a chance of 4^-50
    assert crossed > 0
    assert len(ngx.log_lines(r"relayed to worker")) == crossed
