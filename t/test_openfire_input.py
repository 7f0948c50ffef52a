"""What Openfire sends must never break a client's stream: escaped-text
routes (Openfire >= 4.8) are written only when they are complete elements,
and a SASL <success/> counts only during SASL negotiation."""
import pytest

from lib.raw import NS_CLIENT, NS_SASL, q, tostr


def login(standin, nginx, raw, version="4.8"):
    sb = standin(version=version)
    ngx = nginx(standin=sb)
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="r")
    return sb, ngx, c, sb.session(c.stream_id)["cm"]


def still_works(c, ping_id):
    r = c.iq('<ping xmlns="urn:xmpp:ping"/>', ping_id, type_="get",
             to="localhost")
    assert r.get("type") == "result", tostr(r)
    assert c.reader.error is None, (c.reader.error, c.text)
    assert c.stream_error() is None, c.text


@pytest.mark.parametrize("text", [
    '<message from="bob@localhost/b" id="u1"><body>unclosed',
    '<message from="bob@localhost/b" id="u2"><body>x</body></message><a>',
    'just text',
    '<a/>trailing text',
    '</message>',
    '<a></b>',
    '<!-- comment --><a/>',
], ids=["unclosed", "complete-then-open", "text", "elem-then-text",
        "end-tag", "mismatched", "comment"])
def test_broken_escaped_text_not_written(standin, nginx, raw, text):
    sb, ngx, c, cm = login(standin, nginx, raw)
    sid = c.stream_id
    sb.call("send_route", cm=cm, streamid=sid, payload=text, escaped=True)
    sb.call("send_route", cm=cm, streamid=sid, escaped=True,
            payload='<message from="bob@localhost/b" id="ok1">'
                    '<body>fine</body></message>')
    m = c.next_element(5, lambda e: e.tag == q(NS_CLIENT, "message")
                       and e.get("id") == "ok1", "the next routed message")
    assert m.findtext(q(NS_CLIENT, "body")) == "fine"
    still_works(c, "p1")
    assert ngx.log_lines(r"\[error\].*not complete elements"), ngx.log()


def test_several_complete_elements_in_escaped_text(standin, nginx, raw):
    sb, ngx, c, cm = login(standin, nginx, raw)
    sb.call("send_route", cm=cm, streamid=c.stream_id, escaped=True,
            payload=' <message id="t1"><body>a</body></message>\n'
                    '<message id="t2"><body>b</body></message> ')
    ids = [c.next_element(5, lambda e: e.tag == q(NS_CLIENT, "message"),
                          "message").get("id") for _ in range(2)]
    assert ids == ["t1", "t2"]
    still_works(c, "p2")


@pytest.mark.parametrize("version,escaped", [("4.1", False), ("4.8", True)],
                         ids=["inline", "escaped"])
def test_stray_success_after_bind_ignored(standin, nginx, raw, version,
                                          escaped):
    sb, ngx, c, cm = login(standin, nginx, raw, version)
    sb.call("send_route", cm=cm, streamid=c.stream_id, escaped=escaped,
            payload='<success xmlns="%s"/>' % NS_SASL)
    still_works(c, "p3")
    assert not any(e.tag == q(NS_SASL, "success")
                   for e in c.reader.stanzas), c.text
    assert ngx.log_lines(r"\[error\].*success"), ngx.log()


@pytest.mark.parametrize("version,escaped", [("4.1", False), ("4.8", True)],
                         ids=["inline", "escaped"])
def test_stray_success_after_sasl_failure_ignored(standin, nginx, raw,
                                                  version, escaped):
    """After a SASL <failure/> the negotiation is over: a <success/> that
    follows without a new <auth/> is not the client's, and a later
    correct login still works."""
    sb = standin(version=version)
    ngx = nginx(standin=sb)
    c = raw(ngx.port)
    c.open()
    r = c.auth_plain("alice", "wrong")
    assert r.tag == q(NS_SASL, "failure"), tostr(r)
    sb.call("send_route", cm=sb.session(c.stream_id)["cm"],
            streamid=c.stream_id, escaped=escaped,
            payload='<success xmlns="%s"/>' % NS_SASL)
    assert c.login("alice", "alicepw", resource="r2") == "alice@localhost/r2"
    assert len([e for e in c.all_elements()
                if e.tag == q(NS_SASL, "success")]) == 1, c.text
    assert ngx.log_lines(r"\[error\].*success"), ngx.log()
