"""The module combined with nginx's own stream features: PROXY protocol
with set_real_ip_from (the address Openfire sees in <create>), limit_conn,
and access_log with $xmpp_cm_streamid / $xmpp_cm_jid."""
import os
import re
import socket
import time

from lib.util import wait_until

HEADER = ('<?xml version="1.0"?><stream:stream xmlns="jabber:client" '
          'xmlns:stream="http://etherx.jabber.org/streams" to="localhost" '
          'version="1.0">')


def test_proxy_protocol_address_reaches_openfire(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, listen_extra=" proxy_protocol",
                extra="set_real_ip_from 127.0.0.1;")
    c = raw(ngx.port)
    c.send("PROXY TCP4 203.0.113.7 127.0.0.1 40000 5222\r\n")
    c.login("alice", "alicepw", resource="pp")
    host = sb.session(c.stream_id)["host"]
    assert host == {"name": "203.0.113.7", "address": "203.0.113.7"}, host


def test_limit_conn_applies_before_the_stream(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb,
                stream_extra="limit_conn_zone $binary_remote_addr "
                             "zone=xmpp:1m;",
                extra="limit_conn xmpp 2;")
    first = [raw(ngx.port) for _ in range(2)]
    for i, c in enumerate(first):
        c.login("alice", "alicepw", resource="l%d" % i)
    third = socket.create_connection(("127.0.0.1", ngx.port))
    third.settimeout(5)
    third.sendall(HEADER.encode())
    try:
        got = third.recv(4096)
    except ConnectionResetError:
        got = b""       # closed with our header unread: RST
    assert got == b"", "limit_conn let a third stream in: %r" % got
    third.close()
    # the two admitted sessions still work
    first[0].send('<presence/>')
    assert ngx.log_lines(r"limiting connections by zone \"xmpp\"")
    assert len(sb.sessions(user="alice")) == 2


def test_access_log_names_stream_and_jid(standin, nginx, raw, tmp_path):
    sb = standin()
    log = tmp_path / "xmpp-access.log"
    ngx = nginx(standin=sb,
                stream_extra='log_format xmpp "$remote_addr '
                             '$xmpp_cm_streamid $xmpp_cm_jid '
                             '$bytes_received $bytes_sent";\n'
                             'access_log %s xmpp;' % log)
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="logged")
    sid = c.stream_id
    c.send("</stream:stream>")
    c.wait_eof(5)
    # The CM has written </stream:stream> and lingers until the client
    # closes (or for 5 s): close as a client does, so the session ends and
    # is logged now rather than when the linger timer fires.
    c.close()
    wait_until(lambda: log.exists() and sid in log.read_text(), 5,
               what="access log line")
    line = [l for l in log.read_text().splitlines() if sid in l][0]
    ip, lsid, jid, rcvd, sent = line.split()
    assert (ip, lsid, jid) == ("127.0.0.1", sid, "alice@localhost/logged")
    assert int(rcvd) > 0 and int(sent) > 0
