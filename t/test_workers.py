"""Two nginx workers, each with its own CM name and pool."""
import re

from lib.raw import NS_CLIENT, q
from lib.util import wait_until


def test_two_workers(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, workers=2, connections=3,
                listen_extra=" reuseport")
    socks = sb.cm_sockets("cm1-")
    by_name = {}
    for s in socks:
        by_name.setdefault(s["cm"], []).append(s["resource"])
    assert len(by_name) == 2, by_name
    for name, res in by_name.items():
        assert len(res) == 3 and len(set(res)) == 3, by_name
    pids = {int(re.match(r"^cm1-(\d+)-[0-9a-f]{6}$", n).group(1))
            for n in by_name}
    assert pids == set(ngx.worker_pids()), (pids, ngx.worker_pids())

    # connect clients until both users have a session on both workers
    clients = {}                   # (user, cm) -> RawClient
    n = 0
    while len(clients) < 4 or n < 10:
        assert n < 60, "reuseport never spread clients: %r" % list(clients)
        user = ("alice", "bob")[n % 2]
        c = raw(ngx.port)
        c.login(user, user + "pw", resource="r%d" % n)
        s = wait_until(lambda: sb.session(c.stream_id), 5,
                       what="session at stand-in")
        assert s["cm"] in by_name, s
        assert c.stream_id.startswith("w%d-" % int(s["cm"].split("-")[1])), \
            (c.stream_id, s["cm"])
        clients.setdefault((user, s["cm"]), c)
        n += 1
    names = sorted(by_name)
    cms_with_sessions = {s["cm"] for s in sb.state()["sessions"]}
    assert cms_with_sessions == set(names)

    # cross-worker messages, both directions
    for src_cm, dst_cm in ((names[0], names[1]), (names[1], names[0])):
        for src_user, dst_user in (("alice", "bob"), ("bob", "alice")):
            src = clients[(src_user, src_cm)]
            dst = clients[(dst_user, dst_cm)]
            mid = "x-%s-%s" % (src_user, src_cm[-6:])
            src.send('<message to="%s" type="chat" id="%s"><body>%s</body>'
                     '</message>' % (dst.jid, mid, mid))
            el = dst.next_element(5, lambda e: e.get("id") == mid)
            assert el.tag == q(NS_CLIENT, "message")
            assert el.get("from") == src.jid, el.attrib
            assert el.find(q(NS_CLIENT, "body")).text == mid
