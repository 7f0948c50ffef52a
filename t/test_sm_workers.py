"""XEP-0198 resumption with worker_processes 4: the new connection lands on
any worker, the stream lives at the worker its id names (w<pid>-...), and
the accepting worker relays the resumed stream to that worker over its
local socket (src/ngx_stream_xmpp_cm_handoff.c).

Until the stream management state is merged, the stream taken over is one
in its close delay (xmpp_cm_close_delay): detached, its Openfire session
open.  What these tests check is the transport between workers: the
resumed stream is the old one at Openfire, stanzas cross the relay both
ways in order, exactly once, under flow control, and every failure gives
<failed/> without a hang.  Counting (h) and the unacknowledged queue are
the stream management tests'."""
import os
import re
import signal
import socket
import struct
import time

from lib.raw import NS_CLIENT, q
from lib.util import wait_until

NS_SM = "urn:xmpp:sm:3"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
EXTRA = "xmpp_cm_close_delay 60s;\nxmpp_cm_reconnect 100ms 1s;"


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


def authenticated(raw, ngx, user, avoid_pid=None, tries=80):
    """A new connection through SASL and the restart, on a worker other
    than avoid_pid (reuseport spreads connections by their source port:
    reconnect until one lands elsewhere)."""
    for _ in range(tries):
        c = raw(ngx.port)
        c.open()
        if avoid_pid is not None and pid_of(c.stream_id) == avoid_pid:
            c.close()
            continue
        r = c.auth_plain(user, user + "pw")
        assert r.tag.endswith("success"), r.tag
        c.restart()
        return c
    raise AssertionError("no connection landed off worker %s" % avoid_pid)


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


def test_resume_crosses_workers(standin, nginx, raw):
    sb, ngx = start(standin, nginx)
    workers = set(ngx.worker_pids())
    assert len(workers) == 4

    bob = raw(ngx.port)
    bob.login("bob", "bobpw", resource="b")

    n = 12
    old = []
    for i in range(n):
        a = raw(ngx.port)
        a.login("alice", "alicepw", resource="r%d" % i)
        assert pid_of(a.stream_id) in workers
        old.append((a.stream_id, a.jid))
        drop(a)

    resumed = []
    for sid, jid in old:
        c = authenticated(raw, ngx, "alice", avoid_pid=pid_of(sid))
        accepted_by = pid_of(c.stream_id)
        assert accepted_by != pid_of(sid)
        el = resume(c, sid)
        assert el.tag == q(NS_SM, "resumed"), el.tag
        assert el.get("previd") == sid
        resumed.append((c, sid, jid, accepted_by))

    # every resumption crossed workers, and the owners say so
    relayed = ngx.log_lines(r"stream w\d+-[0-9a-f]+ relayed to worker")
    for _, sid, _, _ in resumed:
        assert any(("stream %s relayed to worker %d" % (sid, pid_of(sid)))
                   in l for l in relayed), sid
        assert ngx.log_lines(r"resumed stream %s through a relay" % sid)

    # Openfire -> owner -> relay -> client, and back, in order, once each
    k = 20
    for c, sid, jid, _ in resumed:
        for j in range(k):
            bob.send('<message to="%s" type="chat" id="d%d"><body>%s-%d'
                     '</body></message>' % (jid, j, sid, j))
    for c, sid, jid, _ in resumed:
        assert bodies(c, k) == ["%s-%d" % (sid, j) for j in range(k)]
        c.pump(0.2)
        extra = [e for e in c.all_elements()
                 if e.tag == q(NS_CLIENT, "message")]
        assert len(extra) == k, len(extra)

    for c, sid, jid, _ in resumed:
        for j in range(k):
            c.send('<message to="bob@localhost/b" type="chat" id="u%d">'
                   '<body>up-%s-%d</body></message>' % (j, sid, j))
    got = bodies(bob, n * k, prefix="up-")
    for c, sid, jid, _ in resumed:
        mine = [b for b in got if b.startswith("up-%s-" % sid)]
        assert mine == ["up-%s-%d" % (sid, j) for j in range(k)], mine
    # the stanzas went out on the resumed (old) session, from its JID
    for c, sid, jid, _ in resumed:
        assert len([r for r in sb.routes_for(sid) if "up-%s-" % sid in r]) \
            == k

    # a clean close through the relay ends the old stream at Openfire
    c, sid, jid, _ = resumed[0]
    c.send("</stream:stream>")
    c.wait_eof(5)
    assert "</stream:stream>" in c.text


def test_failed_when_previd_unknown_or_worker_gone(standin, nginx, raw):
    sb, ngx = start(standin, nginx)
    a = raw(ngx.port)
    a.login("alice", "alicepw", resource="x")
    me = pid_of(a.stream_id)
    other = next(p for p in ngx.worker_pids() if p != me)

    # another live worker, an id it never gave out
    c = authenticated(raw, ngx, "bob")
    t0 = time.monotonic()
    el = resume(c, "w%d-0123456789abcdef" % other)
    assert el.tag == q(NS_SM, "failed")
    assert el.find(q(NS_STANZAS, "item-not-found")) is not None
    # the stream goes on: the client binds on its own session
    res = c.iq('<bind xmlns="urn:ietf:params:xml:ns:xmpp-bind">'
               '<resource>after</resource></bind>', "b1")
    assert res.get("type") == "result"

    # a pid with no worker (pid 1 is init, never ours)
    c = authenticated(raw, ngx, "bob")
    el = resume(c, "w1-0123456789abcdef")
    assert el.tag == q(NS_SM, "failed")
    assert el.find(q(NS_STANZAS, "item-not-found")) is not None
    assert time.monotonic() - t0 < 4


def test_owner_gone_after_reload(standin, nginx, raw):
    sb, ngx = start(standin, nginx)
    a = raw(ngx.port)
    a.login("alice", "alicepw", resource="gone")
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
    a = raw(ngx.port)
    a.login("alice", "alicepw", resource="held")
    sid, jid = a.stream_id, a.jid
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
    a = raw(ngx.port)
    jid = a.login("alice", "alicepw", resource="z")
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
    c = None
    for _ in range(20):
        c = authenticated(raw, ngx, "alice", avoid_pid=owner)
        el = resume(c, sid)
        if el.tag == q(NS_SM, "resumed"):
            break
        # the owner has not seen the drop yet: a live connection is not
        # taken over by this hook; try again
        time.sleep(0.1)
    assert el.tag == q(NS_SM, "resumed"), el.tag
    bob.send('<message to="%s" type="chat" id="again"><body>again</body>'
             '</message>' % jid)
    assert bodies(c, 1) == ["again"]


def test_backpressure_reaches_the_owner(standin, nginx, raw):
    """A relayed client that does not read: the accepting worker holds at
    most its mark, so the owner's xmpp_cm_client_output_limit is what cuts
    the stream, at the owner, as for a local client."""
    sb, ngx = start(standin, nginx, extra=EXTRA + "\n"
                    "xmpp_cm_client_output_limit 256k;")
    bob = raw(ngx.port)
    bob.login("bob", "bobpw", resource="b")
    a = raw(ngx.port)
    jid = a.login("alice", "alicepw", resource="slow")
    sid = a.stream_id
    owner = pid_of(sid)
    drop(a)
    for _ in range(80):
        c = raw(ngx.port, rcvbuf=4096)
        c.open()
        if pid_of(c.stream_id) != owner:
            break
        c.close()
    assert c.auth_plain("alice", "alicepw").tag.endswith("success")
    c.restart()
    assert resume(c, sid).tag == q(NS_SM, "resumed")
    pad = "y" * 4000
    for i in range(1500):                  # 6 MB, the client reads none
        bob.send('<message to="%s" type="chat"><body>%d %s</body>'
                 '</message>' % (jid, i, pad))
        if i % 100 == 0:
            bob.pump(0.01)
    wait_until(lambda: ngx.log_lines(r"\[info\] %d#.*client is not reading"
                                     % owner), 20,
               what="the owner worker cutting the relayed client")
    assert not ngx.log_lines(r"\[info\] (?!%d#)\d+#.*client is not reading"
                             % owner)
