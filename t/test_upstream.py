"""The per-worker upstream pool (Openfire CM sockets)."""
import hashlib
import html
import re
import time

from lib.util import attr, wait_until

NAME_RE = re.compile(r"^cm1-(\d+)-([0-9a-f]{6})$")
RES_RE = re.compile(r"^s(\d+)-(\d+)$")


def socket_events(standin, sock_id):
    return [e for e in standin.events() if e.get("sock") == sock_id]


def test_pool_names_header_handshake_configuration(standin, nginx):
    sb = standin()
    ngx = nginx(standin=sb, connections=3)
    socks = sb.cm_sockets("cm1-")
    assert len(socks) == 3, socks
    names = {s["cm"] for s in socks}
    assert len(names) == 1, names
    name = names.pop()
    m = NAME_RE.match(name)
    assert m, "CM name %r is not NAME-PID-RANDOM6" % name
    assert int(m.group(1)) in ngx.worker_pids(), (name, ngx.worker_pids())
    resources = [s["resource"] for s in socks]
    assert len(set(resources)) == 3, resources
    for r in resources:
        assert RES_RE.match(r), "socket resource %r is not s<i>-<gen>" % r

    for sock in socks:
        res = sock["resource"]
        evs = socket_events(sb, sock["id"])
        ins = [e["xml"] for e in evs if e["dir"] == "in"]
        outs = [e["xml"] for e in evs if e["dir"] == "out"]
        assert ins and outs, evs
        # 1. stream header: stream: prefix, double quotes, CM namespace
        hdr = ins[0]
        assert "<stream:stream" in hdr, hdr
        tag = hdr[hdr.index("<stream:stream"):]
        tag = tag[:tag.index(">") + 1]
        assert "'" not in tag, "single quotes in CM header: " + tag
        assert 'xmlns="jabber:connectionmanager"' in tag, tag
        assert 'xmlns:stream="http://etherx.jabber.org/streams"' in tag, tag
        assert 'to="%s/%s"' % (name, res) in tag, tag
        # 2. handshake digest = sha1(stream id + secret)
        sid = None
        for o in outs:
            if "<stream:stream" in o:
                sid = attr(o[o.index("<stream:stream"):], "id")
                break
        assert sid, outs[:3]
        hs = [x for x in ins if "<handshake" in x]
        assert len(hs) == 1, ins
        digest = re.search(r"<handshake>([0-9a-f]{40})</handshake>", hs[0])
        assert digest, hs[0]
        assert digest.group(1) == hashlib.sha1(
            (sid + "cmsecret").encode()).hexdigest()
        # 3. configuration IQ answered with a result of the same id
        conf = [o for o in outs if "<configuration" in o]
        assert conf, outs
        iq_id = attr(conf[0], "id")
        results = [x for x in ins if x.lstrip().startswith("<iq")
                   and attr(x, "id") == iq_id]
        assert results, "configuration IQ %s not answered: %r" % (iq_id, ins)
        assert attr(results[0], "type") == "result", results[0]


def test_wrong_secret_logged(standin, nginx):
    sb = standin()
    ngx = nginx(standin=sb, secret="wrongsecret", wait_sockets=False,
                extra="xmpp_cm_reconnect 200ms 1s;")
    lines = wait_until(lambda: ngx.log_lines(r"\[error\].*not-authorized"),
                       10, what="[error] line about not-authorized")
    line = lines[0]
    assert "xmpp_cm_secret" in line, line
    assert "xmpp.multiplex.defaultSecret" in line, line
    assert sb.cm_sockets("cm1-") == []


def test_keepalive_keeps_idle_sockets(standin, nginx):
    """The stand-in closes CM sockets that send nothing for 2 s; with a 500ms
    keepalive the same sockets survive 5 s."""
    sb = standin(idle=2, heartbeat=0)
    nginx(standin=sb, extra="xmpp_cm_keepalive 500ms;")
    before = {(s["cm"], s["resource"]) for s in sb.cm_sockets("cm1-")}
    assert len(before) == 2
    time.sleep(5)
    after = {(s["cm"], s["resource"]) for s in sb.cm_sockets("cm1-")}
    assert after == before, "sockets were replaced: %r -> %r" % (before,
                                                                 after)
    ids = {s["id"] for s in sb.cm_sockets("cm1-")}
    closes = [e for e in sb.events() if e["dir"] == "close"]
    assert closes == [], closes
    # the keepalive really is whitespace read by the stand-in
    ws = [e for e in sb.events() if e["dir"] == "in" and e["sock"] in ids
          and e.get("xml", "x").strip() == ""]
    assert ws, "no whitespace keepalive seen by the stand-in"


def test_idle_without_keepalive_is_dropped_and_reconnects(standin, nginx):
    """Control for the keepalive test: with a 30 s keepalive the stand-in's
    2 s idle limit closes the sockets, and the CM reconnects with fresh
    resources (generation bumped)."""
    sb = standin(idle=2, heartbeat=0)
    nginx(standin=sb, extra="xmpp_cm_keepalive 30s;\n"
                            "xmpp_cm_reconnect 100ms 1s;")
    before = {s["resource"] for s in sb.cm_sockets("cm1-")}

    def replaced():
        now = {s["resource"] for s in sb.cm_sockets("cm1-")}
        return len(now) == 2 and not (now & before)
    wait_until(replaced, 10, what="sockets replaced after idle close")


def test_reconnect_after_drop(standin, nginx):
    sb = standin()
    nginx(standin=sb, connections=2,
          extra="xmpp_cm_reconnect 100ms 2s;")
    socks = sb.cm_sockets("cm1-")
    name = socks[0]["cm"]
    before = {s["resource"] for s in socks}
    t0 = time.monotonic()
    sb.call("drop_sockets", cm=None)

    def back():
        now = sb.cm_sockets("cm1-")
        res = {s["resource"] for s in now}
        return len(now) == 2 and not (res & before) and res
    res = wait_until(back, 10, what="CM reconnected with fresh resources")
    elapsed = time.monotonic() - t0
    assert elapsed < 5, elapsed
    assert {s["cm"] for s in sb.cm_sockets("cm1-")} == {name}
    gens_before = {int(RES_RE.match(r).group(2)) for r in before}
    for r in res:
        m = RES_RE.match(r)
        assert m, r
        assert int(m.group(2)) > max(gens_before), (before, res)


def test_reconnect_backoff(standin, nginx):
    """While Openfire refuses connections the CM retries with exponential
    backoff (bounded by xmpp_cm_reconnect max), not in a tight loop, and
    without giving up."""
    sb = standin()
    nginx(standin=sb, connections=2, extra="xmpp_cm_reconnect 100ms 800ms;")
    sb.call("set", key="accept", value=False)
    sb.call("drop_sockets", cm=None)
    t0 = time.time()
    time.sleep(4.5)
    conns = [e["t"] - t0 for e in sb.events()
             if e["dir"] == "conn" and e["t"] >= t0]
    # fixed 100ms retries would give ~80 attempts; backoff 100,200,400,
    # 800,800,... gives ~8 per socket
    print("reconnect attempts in 4.5s: %d at %r" % (len(conns), conns))
    assert 4 <= len(conns) <= 30, conns
    late = [t for t in conns if t > 3.0]
    assert late, "CM stopped retrying: %r" % conns
    sb.call("set", key="accept", value=True)
    wait_until(lambda: len(sb.cm_sockets("cm1-")) == 2, 5,
               what="reconnected once Openfire accepts again")


def test_pass_to_upstream_block(standin, nginx):
    """xmpp_cm_pass names a stream upstream{} block."""
    sb = standin()
    body = """
upstream openfire { server @UPSTREAM@; }
server {
    listen 127.0.0.1:@PORT@;
    xmpp_cm_pass openfire;
    xmpp_cm_domain localhost;
    xmpp_cm_name cm1;
    xmpp_cm_secret cmsecret;
    xmpp_cm_connections 2;
}
"""
    nginx(body, standin=sb)
    socks = sb.cm_sockets("cm1-")
    assert len(socks) == 2 and all(s["authenticated"] for s in socks), socks


def test_silent_upstream_detected_and_replaced(standin, nginx, raw):
    """A half-open Openfire link (no heartbeat, no traffic) is declared
    dead after xmpp_cm_upstream_timeout; its clients are told, and the CM
    reconnects with fresh resources and serves logins again."""
    sb = standin(heartbeat=0)
    ngx = nginx(standin=sb, extra="xmpp_cm_upstream_timeout 1500ms;\n"
                                  "xmpp_cm_keepalive 10s;\n"
                                  "xmpp_cm_reconnect 100ms 1s;")
    before = {s["resource"] for s in sb.cm_sockets("cm1-")}
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="h")
    assert c.expect_stream_error(5) == "remote-connection-failed", c.text
    assert ngx.log_lines(r"no data from Openfire within "
                         r"xmpp_cm_upstream_timeout")
    wait_until(lambda: {s["resource"] for s in sb.cm_sockets("cm1-")}
               - before, 5, what="fresh sockets")
    d = raw(ngx.port)
    d.login("bob", "bobpw", resource="after")


def test_configuration_iq_id_escaping_to_six_times_its_length(standin, nginx,
                                                              raw):
    """A configuration IQ whose 63-byte id is all double quotes: the CM's
    result carries the id escaped (378 bytes, once a 256-byte stack
    buffer), the worker lives on and still logs clients in."""
    sb = standin()
    ngx = nginx(standin=sb, connections=1)
    name = sb.cm_sockets("cm1-")[0]["cm"]
    iq_id = '"' * 63
    sb.call("send_raw", cm=name, xml=(
        '<iq type="set" id="%s"><configuration xmlns="http://jabber.org/'
        'protocol/connectionmanager"><mechanisms xmlns="urn:ietf:params:'
        'xml:ns:xmpp-sasl"><mechanism>PLAIN</mechanism></mechanisms>'
        '</configuration></iq>' % ("&quot;" * 63)))
    results = wait_until(
        lambda: [x for x in sb.inbound(r"^\s*<iq\b")
                 if html.unescape(attr(x, "id") or "") == iq_id], 5,
        what="result of the configuration IQ with the quoted id")
    assert attr(results[0], "type") == "result", results[0]
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    assert ngx.running()


def test_longest_domain_and_name_log_in(standin, nginx, raw):
    """The longest xmpp_cm_domain (200) and xmpp_cm_name (100) that nginx -t
    accepts: session create IQ, features, bind and a message round trip
    all stay well-formed (the create IQ was cut by a 512-byte buffer)."""
    domain = ".".join(["d" * 49, "e" * 50, "f" * 49, "g" * 49])
    name = ".".join(["n" * 49, "m" * 50])
    assert len(domain) == 200 and len(name) == 100
    sb = standin(domain=domain)
    ngx = nginx(standin=sb, domain=domain, name=name, connections=1)
    a = raw(ngx.port)
    jid = a.login("alice", "alicepw", resource="long", to=domain)
    assert jid == "alice@%s/long" % domain, jid
    creates = [x for x in sb.inbound(r"<create\b") if "<iq" in x]
    assert creates, sb.inbound()
    assert creates[0].rstrip().endswith("</session></iq>"), creates[0]
    b = raw(ngx.port)
    b.login("bob", "bobpw", resource="long", to=domain)
    b.send("<message to='alice@%s/long' id='l1'><body>over a long "
           "domain</body></message>" % domain)
    m = a.next_element(match=lambda e: e.tag.endswith("message"),
                       what="message over the long domain")
    assert m.get("id") == "l1"
