"""Routed stanzas from Openfire reach the client as jabber:client
stanzas whatever namespace the payload carried."""
import pytest

from lib.raw import NS_CLIENT, q


@pytest.mark.parametrize("ns", ["jabber:server", "jabber:connectionmanager",
                                "jabber:component:accept"])
def test_server_namespace_payload_becomes_client(standin, nginx, raw, ns):
    sb = standin()
    ngx = nginx(standin=sb)
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="ns")
    cm = sb.session(c.stream_id)["cm"]
    sb.call("send_route", cm=cm, streamid=c.stream_id,
            payload='<message xmlns="%s" from="bob@localhost/b" '
                    'to="alice@localhost/ns" id="n1"><body>hi</body>'
                    '</message>' % ns)
    m = c.next_element(5, lambda e: e.tag == q(NS_CLIENT, "message"),
                       "message in jabber:client")
    assert m.get("id") == "n1"
    assert m.findtext(q(NS_CLIENT, "body")) == "hi"
    assert ('xmlns="%s"' % ns) not in c.text


def test_client_namespace_payload_kept(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb)
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="ns")
    cm = sb.session(c.stream_id)["cm"]
    sb.call("send_route", cm=cm, streamid=c.stream_id,
            payload='<message xmlns="jabber:client" from="bob@localhost/b" '
                    'id="n2"><body>kept</body></message>')
    m = c.next_element(5, lambda e: e.tag == q(NS_CLIENT, "message"),
                       "message")
    assert m.findtext(q(NS_CLIENT, "body")) == "kept"


# the declaration to remove is not the first attribute, and other values
# hold its text, a '>' or the other quote
TRICKY = [
    ("quoted_in_id",
     '<message id="m xmlns=&quot;jabber:server&quot; 1" xmlns="jabber:server"'
     ' from="bob@localhost/b" to="alice@localhost/ns">'
     '<body>say xmlns="jabber:server" here</body></message>',
     'm xmlns="jabber:server" 1', 'say xmlns="jabber:server" here'),
    ("apostrophes",
     "<message id='q xmlns=\"jabber:server\" 2' xmlns='jabber:server'"
     " from='bob@localhost/b'><body>b2</body></message>",
     'q xmlns="jabber:server" 2', "b2"),
    ("gt_in_id",
     '<message id="a>b xmlns=\'jabber:server\'" xmlns="jabber:server"'
     ' from="bob@localhost/b"><body>b3</body></message>',
     "a>b xmlns='jabber:server'", "b3"),
    ("spaces_around_eq",
     '<message\n id="s xmlns" xmlns\t=\n"jabber:server" from="bob@localhost/b">'
     '<body>b4</body></message>',
     "s xmlns", "b4"),
]


@pytest.mark.parametrize("case,payload,msg_id,body", TRICKY,
                         ids=[t[0] for t in TRICKY])
def test_server_namespace_removed_from_the_start_tag_only(
        standin, nginx, raw, case, payload, msg_id, body):
    """Only the start tag's own xmlns declaration is removed: attribute
    values and text that contain the same characters reach the client
    unchanged (the id was once rewritten)."""
    sb = standin()
    ngx = nginx(standin=sb)
    c = raw(ngx.port)
    c.login("alice", "alicepw", resource="ns")
    cm = sb.session(c.stream_id)["cm"]
    sb.call("send_route", cm=cm, streamid=c.stream_id, payload=payload)
    m = c.next_element(5, lambda e: e.tag.endswith("}message"),
                       "routed message")
    assert m.tag == q(NS_CLIENT, "message"), (m.tag, c.text)
    assert m.get("id") == msg_id, c.text
    assert m.get("from") == "bob@localhost/b", c.text
    assert m.findtext(q(NS_CLIENT, "body")) == body, c.text
