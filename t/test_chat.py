"""A real client library (slixmpp) through the CM."""
import asyncio
import base64
import time

import pytest

from lib.raw import NS_SASL, q, tostr
from lib.util import wait_until
from lib.xmpp import Client, run


@pytest.mark.parametrize("version", ["4.1", "4.8"])
def test_login_roster_presence_messages(standin, nginx, version):
    """alice and bob log in with SCRAM (inline SASL payloads on 4.1,
    escaped-text payloads on 4.8), bind, get their rosters, see each
    other's presence and exchange messages both ways."""
    sb = standin(version=version)
    ngx = nginx(standin=sb)

    async def scenario():
        alice = Client("alice@localhost/pc", "alicepw", ngx.port)
        bob = Client("bob@localhost/phone", "bobpw", ngx.port)
        await alice.login()
        await bob.login()
        try:
            assert alice.jid == "alice@localhost/pc"
            assert bob.jid == "bob@localhost/phone"
            assert "bob@localhost" in alice.x.client_roster.keys()
            assert "alice@localhost" in bob.x.client_roster.keys()
            await alice.wait_presence("bob@localhost", "available")
            await bob.wait_presence("alice@localhost", "available")
            alice.send_message("bob@localhost", "hello bob", "m-a1")
            f, body, mid = await bob.recv()
            assert (f, body, mid) == ("alice@localhost/pc", "hello bob",
                                      "m-a1")
            bob.send_message("alice@localhost/pc", "hi alice \u00e9", "m-b1")
            f, body, mid = await alice.recv()
            assert (f, body, mid) == ("bob@localhost/phone",
                                      "hi alice \u00e9", "m-b1")
        finally:
            await alice.close()
            await bob.close()

    run(scenario(), 60)
    # what the server side saw: two authenticated sessions via the CM
    evs = [e["xml"] for e in sb.events() if e["dir"] == "in"]
    assert any("<route" in x and "hello bob" in x for x in evs)
    assert any("<route" in x and "m-b1" in x for x in evs)
    # SCRAM went through the CM as routed SASL
    assert any("<route" in x and "<auth" in x and
               'xmlns="urn:ietf:params:xml:ns:xmpp-sasl"' in x for x in evs)


@pytest.mark.slow
def test_1000_messages_in_order(standin, nginx):
    sb = standin()
    ngx = nginx(standin=sb, log_level="info")
    N = 1000

    async def scenario():
        alice = Client("alice@localhost/pc", "alicepw", ngx.port)
        bob = Client("bob@localhost/phone", "bobpw", ngx.port)
        await alice.login()
        await bob.login()
        try:
            for i in range(N):
                alice.send_message("bob@localhost/phone", "msg %d" % i,
                                   "k%d" % i)
            got = []
            while len(got) < N:
                f, body, mid = await bob.recv(timeout=20)
                if mid.startswith("k"):
                    got.append(body)
            assert got == ["msg %d" % i for i in range(N)]
        finally:
            await alice.close()
            await bob.close()

    run(scenario(), 120)


def test_wrong_password(standin, nginx):
    sb = standin()
    ngx = nginx(standin=sb)

    async def scenario():
        c = Client("alice@localhost/pc", "wrongpw", ngx.port)
        r = await c.try_login(timeout=15)
        await c.close()
        return r

    assert run(scenario(), 30) == "auth_failed"
    # the stand-in saw SASL traffic but no session got authenticated
    assert [s for s in sb.state()["sessions"] if s.get("authenticated")] \
        == []
    assert any("<auth" in x for x in sb.inbound(r"^\s*<route"))


def test_sasl_abort_answered_by_cm(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb)
    c = raw(ngx.port)
    c.open()
    sid = c.stream_id
    first = base64.b64encode(b"n,,n=alice,r=fyko+d2lbbFgONRv9qkxdawL").decode()
    c.send('<auth xmlns="%s" mechanism="SCRAM-SHA-1">%s</auth>' % (NS_SASL,
                                                                   first))
    ch = c.next_element(5, lambda e: e.tag in (q(NS_SASL, "challenge"),
                                               q(NS_SASL, "failure")))
    assert ch.tag == q(NS_SASL, "challenge"), tostr(ch)
    c.send('<abort xmlns="%s"/>' % NS_SASL)
    f = c.next_element(5)
    assert f.tag == q(NS_SASL, "failure"), tostr(f)
    assert [x.tag for x in f] == [q(NS_SASL, "aborted")], tostr(f)
    time.sleep(0.3)
    assert [r for r in sb.routes_for(sid) if "abort" in r] == []
    # the stream is still usable: a fresh PLAIN login succeeds
    r = c.auth_plain("alice", "alicepw")
    assert r.tag == q(NS_SASL, "success"), tostr(r)
