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
