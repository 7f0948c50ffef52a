"""XEP-0478 stream limits: the features carry the limits the CM enforces
(docs/directives.md, "Stream limits advertised"), checked against the
configured directives and against what the framer refuses."""
import time

from lib.raw import NS_SASL, q
from lib.util import wait_until

NS_LIMITS = "urn:xmpp:stream-limits:0"
EXTRA = "xmpp_cm_close_delay 100ms;"


def limits(features):
    """(max-bytes, idle-seconds or None) of a features element."""
    el = features.find(q(NS_LIMITS, "limits"))
    assert el is not None, "no <limits/> in the features"
    mb = el.find(q(NS_LIMITS, "max-bytes"))
    idle = el.find(q(NS_LIMITS, "idle-seconds"))
    assert mb is not None
    return int(mb.text), (int(idle.text) if idle is not None else None)


def both(ngx, raw):
    """The limits before and after authentication on one stream."""
    c = raw(ngx.port)
    _, f = c.open()
    pre = limits(f)
    r = c.auth_plain("alice", "alicepw")
    assert r.tag == q(NS_SASL, "success")
    _, f = c.restart()
    post = limits(f)
    return c, pre, post


def test_limits_defaults(standin, nginx, raw):
    ngx = nginx(standin=standin(), extra=EXTRA)
    c, pre, post = both(ngx, raw)
    # xmpp_cm_preauth_max_stanza_size 16k; the 60 s authentication
    # deadline, seconds left of it (it does not move with traffic)
    assert pre[0] == 16384
    assert 55 <= pre[1] <= 60, pre
    # xmpp_cm_max_stanza_size 256k, xmpp_cm_idle_timeout 10m
    assert post == (262144, 600)


def test_limits_configured(standin, nginx, raw):
    ngx = nginx(standin=standin(), extra=EXTRA + """
        xmpp_cm_max_stanza_size 4k;
        xmpp_cm_preauth_max_stanza_size 2k;
        xmpp_cm_auth_timeout 20s;
        xmpp_cm_idle_timeout 90s;""")
    c, pre, post = both(ngx, raw)
    assert pre[0] == 2048
    assert 15 <= pre[1] <= 20, pre
    assert post == (4096, 90)


def test_no_idle_seconds_without_idle_timeout(standin, nginx, raw):
    ngx = nginx(standin=standin(), extra=EXTRA + "xmpp_cm_idle_timeout 0;")
    c, pre, post = both(ngx, raw)
    assert post == (262144, None)


def message_of(size, mark):
    head = '<message to="bob@localhost"><body>%s' % mark
    tail = '</body></message>'
    pad = size - len(head) - len(tail)
    assert pad > 0
    s = head + "z" * pad + tail
    assert len(s.encode()) == size
    return s


def test_max_bytes_enforced(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, extra=EXTRA + """
        xmpp_cm_max_stanza_size 4k;
        xmpp_cm_preauth_max_stanza_size 2k;""")
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    # the value advertised to this very stream
    feats = [e for e in c.all_elements() if e.tag.endswith("}features")]
    mb, _ = limits(feats[-1])
    assert mb == 4096
    c.send(message_of(mb, "GOODMARK"))
    wait_until(lambda: sb.inbound("GOODMARK"), 5, what="max-bytes routed")
    assert not c.eof
    c.send(message_of(mb + 1, "BADMARK"))
    assert c.expect_stream_error(5) == "policy-violation"
    time.sleep(0.3)
    assert sb.inbound("BADMARK") == []


def test_preauth_max_bytes_enforced(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, extra=EXTRA + """
        xmpp_cm_max_stanza_size 4k;
        xmpp_cm_preauth_max_stanza_size 2k;""")

    def iq_of(size, mark):
        head = '<iq type="get" id="x" to="localhost"><query xmlns="urn:t">'
        tail = '</query></iq>'
        return head + mark + "z" * (size - len(head + tail) - len(mark)) \
            + tail

    c = raw(ngx.port)
    _, f = c.open()
    mb, _ = limits(f)
    assert mb == 2048
    c.send(iq_of(mb, "GOODMARK"))
    wait_until(lambda: sb.inbound("GOODMARK"), 5, what="max-bytes routed")
    c2 = raw(ngx.port)
    c2.open()
    c2.send(iq_of(mb + 1, "BADMARK"))
    assert c2.expect_stream_error(5) == "policy-violation"
    time.sleep(0.3)
    assert sb.inbound("BADMARK") == []
