"""How sessions end between the CM and Openfire: Openfire's close IQ is
answered, a client that leaves is closed on Openfire at once (so that
bare-JID messages go to the user's other resources), and nothing routed
to a stream the CM is ending is lost without Openfire being told."""
import re

from lib.raw import NS_CLIENT, q, tostr
from lib.util import wait_until


def cm_of(sb, sid):
    return sb.session(sid)["cm"]


def test_openfire_close_iq_answered(standin, nginx, raw):
    """RFC 6120 8.2.3: the <session><close/></session> set gets a result
    (Openfire ignores it)."""
    sb = standin()
    ngx = nginx(standin=sb)
    c = raw(ngx.port)
    c.login("alice", "alicepw")
    sid = c.stream_id
    sb.call("close_session", streamid=sid)
    c.wait_eof(5)
    out = [e["xml"] for e in sb.events() if e["dir"] == "out"
           and "<close/>" in e["xml"] and sid in e["xml"]]
    assert len(out) == 1, out
    iq_id = re.search(r'<iq [^>]*id="([^"]+)"', out[0]).group(1)
    res = wait_until(
        lambda: sb.inbound(r'<iq\b[^>]*\btype="result"[^>]*>|'
                           r'<iq\b[^>]*\btype="result"[^>]*/>'), 5,
        what="a result for the close IQ %s" % iq_id)
    mine = [x for x in res if re.search(r'\bid="%s"' % re.escape(iq_id), x)]
    assert len(mine) == 1, res
    assert 'to="localhost"' in mine[0], mine[0]
