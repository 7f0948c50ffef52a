"""XEP-0352 savings, measured (not a timed assertion): an inactive client
with a 200-contact roster whose contacts each change presence 5 times.
The contacts' presences are routed by the stand-in to the client's stream
(send_route, one route per change, as Openfire routes a broadcast), so the
CM sees exactly what it would for 200 real contacts; the same run is made
with the client active and inactive (then <active/>).  Counted: bytes the
client received, stanzas, and the writev() calls nginx made on the
client's connection (the debug log's "writev:" lines of that connection:
one per send_chain that wrote).  The figures are printed; the test asserts
only what must hold: the inactive client gets exactly the latest presence
of each contact, in the order of those latest changes."""
import re
import time

from lib.raw import NS_CLIENT, q

CONTACTS = 200
ROUNDS = 5


def run(standin, nginx, raw, inactive):
    sb = standin()
    ngx = nginx(standin=sb, extra="xmpp_cm_close_delay 100ms;")
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="csi")
    cm = sb.session(c.stream_id)["cm"]
    if inactive:
        c.send('<inactive xmlns="urn:xmpp:csi:0"/>')
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        c.pump(0.05)
    n0 = len(c.all_elements())
    b0 = len(c.received)
    for r in range(ROUNDS):
        for i in range(CONTACTS):
            sb.call("send_route", cm=cm, streamid=c.stream_id,
                    payload='<presence from="contact%d@localhost/phone" '
                            'to="alice@localhost/csi"><show>%s</show>'
                            '<status>round %d</status></presence>'
                            % (i, ("away", "xa", "dnd", "chat", "away")[r], r))
            c.pump(0)
    if inactive:
        # <active/> after the CM has taken every route (each logs "csi
        # held"): else it may overtake routes still on their way and the
        # figures would count them as written while active
        log_path = (ngx.error_log if hasattr(ngx, "error_log")
                    else ngx.prefix + "/error.log")
        deadline = time.monotonic() + 20
        held = 0
        while held < CONTACTS * ROUNDS and time.monotonic() < deadline:
            c.pump(0.05)
            held = len(re.findall(r"xmpp_cm: csi held ",
                                  open(log_path).read()))
        assert held == CONTACTS * ROUNDS
        c.send('<active xmlns="urn:xmpp:csi:0"/>')
    want = CONTACTS if inactive else CONTACTS * ROUNDS
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        c.pump(0.05)
        if len(c.all_elements()) - n0 >= want:
            break
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        c.pump(0.05)
    got = [e for e in c.all_elements()[n0:] if e.tag == q(NS_CLIENT,
                                                            "presence")]
    nbytes = len(c.received) - b0
    c.close()
    time.sleep(0.2)
    log = open(ngx.error_log if hasattr(ngx, "error_log")
               else ngx.prefix + "/error.log").read()
    m = re.search(r"\*(\d+) xmpp_cm: client stream \S+ bound as "
                  r"alice@localhost/csi", log)
    conn = m.group(1)
    # from the login's end on: the burst (and the flush) only
    start = log.index(m.group(0))
    writes = len(re.findall(r"\*%s writev: \d+ of" % conn, log[start:]))
    return got, nbytes, writes


def test_csi_savings(standin, nginx, raw, capsys):
    a_got, a_bytes, a_writes = run(standin, nginx, raw, False)
    i_got, i_bytes, i_writes = run(standin, nginx, raw, True)
    assert len(a_got) == CONTACTS * ROUNDS
    assert [(e.get("from"), e.findtext(q(NS_CLIENT, "status")))
            for e in i_got] == [("contact%d@localhost/phone" % i,
                                 "round %d" % (ROUNDS - 1))
                                for i in range(CONTACTS)]
    with capsys.disabled():
        print("\nCSI, %d contacts x %d presence changes: active %d stanzas "
              "%d bytes %d writev; inactive then <active/> %d stanzas "
              "%d bytes %d writev; saved %d bytes (%.0f%%), %d writev"
              % (CONTACTS, ROUNDS, len(a_got), a_bytes, a_writes,
                 len(i_got), i_bytes, i_writes, a_bytes - i_bytes,
                 100.0 * (a_bytes - i_bytes) / a_bytes,
                 a_writes - i_writes))
