"""The cost of XEP-0198 at the CM, printed, not asserted: the nginx
worker's CPU time (utime + stime) for N messages from bob to alice and N
from alice to bob through the CM, alice with stream management enabled
(acknowledging every <r/> of the CM, asking for an ack every 10 of hers)
against the same run without it; and the latency of an <r/> answered
after Openfire's confirmation.  Asserts only that every message arrived,
in order, once."""
import os
import time

from lib.raw import NS_CLIENT, q

SM = "urn:xmpp:sm:3"
N = 5000


def cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def run(standin, nginx, raw, sm):
    sb = standin()
    ngx = nginx(standin=sb, log_level="info")
    a = raw(ngx.port)
    a.login("alice", "alicepw", resource="m")
    b = raw(ngx.port)
    b.login("bob", "bobpw", resource="m")
    if sm:
        a.send('<enable xmlns="urn:xmpp:sm:3" resume="true"/>')
        a.wait_tag(q(SM, "enabled"))
    worker = ngx.worker_pids()[0]
    c0 = cpu(worker)
    t0 = time.monotonic()
    acked = 0
    seen_r = 0
    for i in range(N):
        b.send('<message to="alice@localhost/m" id="b%d"><body>%d</body>'
               '</message>' % (i, i))
        a.send('<message to="bob@localhost/m" id="a%d"><body>%d</body>'
               '</message>' % (i, i))
        if sm and i % 10 == 9:
            a.send('<r xmlns="urn:xmpp:sm:3"/>')
        if i % 50 == 49:
            a.pump(0)
            b.pump(0)
            if sm:
                rs = [e for e in a.all_elements() if e.tag == q(SM, "r")]
                if len(rs) > seen_r:
                    seen_r = len(rs)
                    got = len([e for e in a.all_elements()
                               if e.tag == q(NS_CLIENT, "message")])
                    a.send('<a xmlns="urn:xmpp:sm:3" h="%d"/>' % got)
                    acked = got

    def count(c, prefix):
        return [e.get("id") for e in c.all_elements()
                if e.tag == q(NS_CLIENT, "message")
                and (e.get("id") or "").startswith(prefix)]

    a.wait_for(lambda: len(count(a, "b")) == N, 60, "all of bob's")
    b.wait_for(lambda: len(count(b, "a")) == N, 60, "all of alice's")
    elapsed = time.monotonic() - t0
    used = cpu(worker) - c0
    assert count(a, "b") == ["b%d" % i for i in range(N)]
    assert count(b, "a") == ["a%d" % i for i in range(N)]
    lat = None
    if sm:
        samples = []
        for _ in range(20):
            n0 = len([e for e in a.all_elements() if e.tag == q(SM, "a")])
            t = time.monotonic()
            a.send('<message to="bob@localhost/m"><body>x</body></message>'
                   '<r xmlns="urn:xmpp:sm:3"/>')
            a.wait_for(lambda: len([e for e in a.all_elements()
                                    if e.tag == q(SM, "a")]) > n0, 5, "a")
            samples.append(time.monotonic() - t)
        samples.sort()
        lat = samples[len(samples) // 2]
        assert a.stream_error() is None
    return used, elapsed, lat


def test_sm_cost(standin, nginx, raw, capsys):
    off = run(standin, nginx, raw, False)
    on = run(standin, nginx, raw, True)
    with capsys.disabled():
        print("\nXEP-0198, %d messages each way: worker CPU %.3f s without "
              "SM, %.3f s with (%+.0f%%, %.1f us/stanza more); wall %.1f / "
              "%.1f s; <r/> -> <a/> after a routed stanza, median %.2f ms"
              % (N, off[0], on[0],
                 100.0 * (on[0] - off[0]) / max(off[0], 1e-9),
                 1e6 * (on[0] - off[0]) / (2 * N), off[1], on[1],
                 1000 * on[2]))
