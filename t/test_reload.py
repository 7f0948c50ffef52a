"""nginx -s reload with live sessions, and ghost-session cleanup: every
worker generation uses its own CM name, old workers keep serving their
clients, nothing crosses between the names, and sessions that were live
when the pool went down are closed on Openfire once it is back."""
import re
import signal
import time

from lib.raw import NS_CLIENT, q
from lib.util import wait_until

FAST = "xmpp_cm_reconnect 100ms 1s;\nxmpp_cm_close_delay 300ms;"


def names(sb):
    return {s["cm"] for s in sb.cm_sockets("cm1-")}


def recv_body(c, timeout=5):
    m = c.next_element(timeout, lambda e: e.tag == q(NS_CLIENT, "message"),
                       "message")
    return m.get("from"), m.findtext(q(NS_CLIENT, "body"))


def test_reload_keeps_sessions_under_old_name(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST)
    old_names = names(sb)
    assert len(old_names) == 1, old_names

    a = raw(ngx.port)
    a.login("alice", "alicepw", resource="before")
    old_sid = a.stream_id
    assert sb.session(old_sid)["cm"] in old_names

    ngx.signal(signal.SIGHUP)
    wait_until(lambda: len(names(sb) - old_names) == 1, 10,
               what="a new worker generation under a new CM name")
    new_name = (names(sb) - old_names).pop()
    # the old worker stops accepting once it has taken the quit signal
    wait_until(lambda: ngx.log_lines(r"gracefully shutting down"), 10,
               what="old worker shutting down")
    # the old generation still holds its sockets: its client is live
    assert old_names <= names(sb), names(sb)

    b = raw(ngx.port)
    b.login("bob", "bobpw", resource="after")
    assert sb.session(b.stream_id)["cm"] == new_name

    # traffic between the generations goes through Openfire both ways
    a.send('<message to="bob@localhost/after" type="chat" id="r1">'
           '<body>from the old worker</body></message>')
    assert recv_body(b) == ("alice@localhost/before", "from the old worker")
    b.send('<message to="alice@localhost/before" type="chat" id="r2">'
           '<body>from the new worker</body></message>')
    assert recv_body(a) == ("bob@localhost/after", "from the new worker")

    # when its last client leaves, the old worker closes the session on
    # Openfire and its CM name disappears
    a.send("</stream:stream>")
    a.wait_eof(5)
    wait_until(lambda: sb.close_iqs_for(old_sid), 5,
               what="close IQ from the old worker")
    wait_until(lambda: not (old_names & names(sb)), 15,
               what="old worker's sockets gone")
    assert names(sb) == {new_name}


def test_ghosts_closed_after_upstream_returns(standin, nginx, raw):
    """Sessions alive when the last socket went are closed on Openfire
    once the pool is up again (Openfire 5.x may still hold them)."""
    sb = standin()
    ngx = nginx(standin=sb, extra=FAST)
    a = raw(ngx.port)
    a.login("alice", "alicepw", resource="g")
    sid = a.stream_id
    old = {s["resource"] for s in sb.cm_sockets("cm1-")}

    sb.call("drop_sockets", cm=None)
    assert a.expect_stream_error(5) == "remote-connection-failed", a.text
    wait_until(lambda: len({s["resource"] for s in sb.cm_sockets("cm1-")}
                           - old) == 2, 10, what="CM reconnect")
    wait_until(lambda: sb.close_iqs_for(sid), 5,
               what="close IQ for the session that was live at the drop")
    assert len(sb.close_iqs_for(sid)) == 1
    assert ngx.log_lines(r"closed 1 sessions Openfire may still hold")
