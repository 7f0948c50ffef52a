"""XEP-0198 through the CM with a real client library: slixmpp's xep_0198
plugin enables stream management, answers and asks for acks, and resumes
its stream after its TCP connection is dropped, getting what was sent
while it was away exactly once, in order."""
import asyncio

from lib import xmpp


def sm_client(jid, pw, port):
    c = xmpp.Client(jid, pw, port)
    c.x.register_plugin("xep_0198")
    loop = asyncio.get_event_loop()
    c.sm_enabled = loop.create_future()
    c.resumed = loop.create_future()
    c.sm_failed = []
    c.x.add_event_handler("sm_enabled",
                          lambda e: c._set(c.sm_enabled, e))
    c.x.add_event_handler("session_resumed",
                          lambda e: c._set(c.resumed, e))
    c.x.add_event_handler("sm_failed", lambda e: c.sm_failed.append(e))
    return c


async def sync(b):
    """bob's earlier messages are through Openfire once its IQ returns
    (Openfire handles a socket's input in order)."""
    await asyncio.wait_for(b.x.get_roster(), 10)


def test_slixmpp_resumes_with_messages_from_the_gap(standin, nginx):
    sb = standin()
    ngx = nginx(standin=sb)

    async def go():
        a = sm_client("alice@localhost/sli", "alicepw", ngx.port)
        await a.login()
        en = await asyncio.wait_for(a.sm_enabled, 10)
        assert en["id"] and en["resume"]
        b = xmpp.Client("bob@localhost/b", "bobpw", ngx.port)
        await b.login()
        for i in range(3):
            b.send_message("alice@localhost/sli", "pre%d" % i)
        for i in range(3):
            await a.recv()
        # alice's own stanzas are acknowledged by the CM
        sm = a.x.plugin["xep_0198"]
        a.send_message("bob@localhost/b", "from-alice")
        await b.recv()
        sm.request_ack()
        for _ in range(100):
            if not sm.unacked_queue:
                break
            await asyncio.sleep(0.05)
        assert not sm.unacked_queue, list(sm.unacked_queue)

        a.abort()
        await a.wait_disconnected()
        for i in range(3):
            b.send_message("alice@localhost/sli", "gap%d" % i)
        await sync(b)

        a.disconnected = asyncio.get_event_loop().create_future()
        a.x.connect(address=a.addr, force_starttls=False,
                    disable_starttls=True)
        await asyncio.wait_for(a.resumed, 10)
        for i in range(3):
            await a.recv()
        b.send_message("alice@localhost/sli", "after")
        await a.recv()
        bodies = [m[1] for m in a.message_list]
        assert bodies == ["pre0", "pre1", "pre2", "gap0", "gap1", "gap2",
                          "after"], bodies
        assert not a.sm_failed
        await a.close()
        await b.close()

    xmpp.run(go(), 60)
