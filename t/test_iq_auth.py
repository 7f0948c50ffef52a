"""Legacy authentication (XEP-0078) through the CM, against a stand-in
that offers iq-auth as Openfire does with the Non-SASL Authentication
plugin: the CM recognises the result of the client's jabber:iq:auth set
by its id, and the stream is then authenticated and bound (no restart)."""
import hashlib

import pytest

from lib.raw import NS_CLIENT, q, tostr

NS_AUTH = "jabber:iq:auth"
NS_FEATURE = "http://jabber.org/features/iq-auth"


def auth_query(user, resource, password=None, digest=None):
    body = "<username>%s</username>" % user
    if password is not None:
        body += "<password>%s</password>" % password
    if digest is not None:
        body += "<digest>%s</digest>" % digest
    if resource is not None:
        body += "<resource>%s</resource>" % resource
    return '<query xmlns="%s">%s</query>' % (NS_AUTH, body)


def legacy_login(c, user, password, resource, use_digest=False):
    _, feats = c.open()
    assert feats.find(q(NS_FEATURE, "auth")) is not None, tostr(feats)
    r = c.iq('<query xmlns="%s"><username>%s</username></query>'
             % (NS_AUTH, user), "ag1", type_="get", to="localhost")
    assert r.get("type") == "result", tostr(r)
    fields = r.find(q(NS_AUTH, "query"))
    assert fields is not None, tostr(r)
    assert fields.findtext(q(NS_AUTH, "username")) == user, tostr(r)
    for f in ("password", "digest", "resource"):
        assert fields.find(q(NS_AUTH, f)) is not None, tostr(r)
    if use_digest:
        d = hashlib.sha1((c.stream_id + password).encode()).hexdigest()
        body = auth_query(user, resource, digest=d)
    else:
        body = auth_query(user, resource, password=password)
    r = c.iq(body, "as1", to="localhost")
    assert r.get("type") == "result", tostr(r)
    return r


@pytest.mark.parametrize("use_digest", [False, True],
                         ids=["plaintext", "digest"])
def test_iq_auth_login_then_chat(standin, nginx, raw, use_digest):
    sb = standin(iq_auth=True)
    ngx = nginx(standin=sb)
    bob = raw(ngx.port)
    bob.login("bob", "bobpw", resource="b")
    bob.send("<presence/>")

    a = raw(ngx.port)
    legacy_login(a, "alice", "alicepw", "legacy", use_digest)
    st = sb.session(a.stream_id)
    assert st["jid"] == "alice@localhost/legacy", st

    # authenticated and bound: presence and messages go through
    a.send("<presence/>")
    a.send('<message to="bob@localhost/b" type="chat" id="m1">'
           '<body>hello bob</body></message>')
    m = bob.next_element(5, lambda e: e.tag == q(NS_CLIENT, "message"),
                         "message from the legacy client")
    assert m.get("from") == "alice@localhost/legacy", tostr(m)
    assert m.findtext(q(NS_CLIENT, "body")) == "hello bob"

    bob.send('<message to="alice@localhost/legacy" type="chat" id="m2">'
             '<body>hello alice</body></message>')
    m = a.next_element(5, lambda e: e.tag == q(NS_CLIENT, "message"),
                       "message to the legacy client")
    assert m.findtext(q(NS_CLIENT, "body")) == "hello alice"
    assert a.stream_error() is None, a.text
    assert a.reader.error is None, a.text


def test_iq_auth_failure_stays_unauthenticated(standin, nginx, raw):
    """A refused jabber:iq:auth set leaves the stream unauthenticated; a
    later correct one works."""
    sb = standin(iq_auth=True)
    ngx = nginx(standin=sb)
    a = raw(ngx.port)
    a.open()
    r = a.iq(auth_query("alice", "x", password="wrong"), "bad1")
    assert r.get("type") == "error", tostr(r)
    r = a.iq(auth_query("alice", None, password="alicepw"), "bad2")
    assert r.get("type") == "error", tostr(r)
    r = a.iq(auth_query("alice", "x", password="alicepw"), "good1")
    assert r.get("type") == "result", tostr(r)
    r = a.iq('<query xmlns="jabber:iq:roster"/>', "ro1", type_="get")
    assert r.get("type") == "result", tostr(r)
    a.send("<presence/>")
    a.send('<message to="alice@localhost/x" id="self1"><body>me</body>'
           '</message>')
    m = a.next_element(5, lambda e: e.tag == q(NS_CLIENT, "message"),
                       "message to self")
    assert m.get("id") == "self1", tostr(m)
    assert a.stream_error() is None, a.text


def test_iq_auth_refused_then_stanza_not_authorized(standin, nginx, raw):
    sb = standin(iq_auth=True)
    ngx = nginx(standin=sb)
    a = raw(ngx.port)
    a.open()
    r = a.iq(auth_query("alice", "x", password="wrong"), "bad1")
    assert r.get("type") == "error", tostr(r)
    a.send("<presence/>")
    assert a.expect_stream_error(5) == "not-authorized", a.text
