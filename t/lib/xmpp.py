"""slixmpp wrappers: a real client library over plain TCP, with timeouts on
every wait.  Use `run(coro, timeout)` from a (synchronous) test."""
import asyncio
import logging

import slixmpp

log = logging.getLogger("t.xmpp")


def run(coro, timeout=60):
    """Run a coroutine on a fresh event loop with an overall timeout."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, timeout))
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(
                    asyncio.wait(pending, timeout=2))
        except Exception:
            pass
        loop.close()
        asyncio.set_event_loop(None)


class LoginFailed(Exception):
    pass


class Client:
    """One slixmpp ClientXMPP with recorded events."""

    def __init__(self, jid, password, port, host="127.0.0.1"):
        self.addr = (host, port)
        self.x = slixmpp.ClientXMPP(jid, password)
        self.x.register_plugin("xep_0030")
        self.x.register_plugin("xep_0199")
        # no automatic reconnects in tests
        self.x.auto_reconnect = False
        self.messages = asyncio.Queue()
        self.message_list = []
        self.presences = []
        self.stream_errors = []
        self.loop = asyncio.get_event_loop()
        self.session_started = self.loop.create_future()
        self.auth_failed = self.loop.create_future()
        self.disconnected = self.loop.create_future()
        self.x.add_event_handler("session_start", self._on_session_start)
        self.x.add_event_handler("failed_auth", self._on_failed_auth)
        self.x.add_event_handler("no_auth", self._on_failed_auth)
        self.x.add_event_handler("connection_failed", self._on_conn_failed)
        self.x.add_event_handler("disconnected", self._on_disconnected)
        self.x.add_event_handler("stream_error", self._on_stream_error)
        self.x.add_event_handler("message", self._on_message)
        self.x.add_event_handler("presence", self._on_presence)

    # ---- handlers
    def _set(self, fut, val):
        if not fut.done():
            fut.set_result(val)

    def _on_session_start(self, ev):
        self._set(self.session_started, True)

    def _on_failed_auth(self, ev=None):
        self._set(self.auth_failed, True)

    def _on_conn_failed(self, ev=None):
        self._set(self.disconnected, "connection_failed: %r" % (ev,))

    def _on_disconnected(self, reason=None):
        self._set(self.disconnected, reason)
        self._set(self.session_started, False)

    def _on_stream_error(self, err):
        self.stream_errors.append(err["condition"])

    def _on_message(self, msg):
        if msg["type"] in ("chat", "normal"):
            item = (str(msg["from"]), msg["body"], msg["id"])
            self.message_list.append(item)
            self.messages.put_nowait(item)

    def _on_presence(self, pres):
        self.presences.append((str(pres["from"]), pres["type"]))

    # ---- actions
    @property
    def jid(self):
        return str(self.x.boundjid)

    async def login(self, timeout=15, roster=True, presence=True):
        self.x.connect(address=self.addr, force_starttls=False,
                       disable_starttls=True)
        done, _ = await asyncio.wait(
            [self.session_started, self.auth_failed, self.disconnected],
            timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if self.auth_failed.done():
            raise LoginFailed("authentication failed")
        if not self.session_started.done() or not self.session_started.result():
            raise LoginFailed("no session_start within %ss (disconnected: %r,"
                              " stream errors %r)" % (
                                  timeout,
                                  self.disconnected.result()
                                  if self.disconnected.done() else None,
                                  self.stream_errors))
        if roster:
            await asyncio.wait_for(self.x.get_roster(), timeout)
        if presence:
            self.x.send_presence()
        return self

    async def try_login(self, timeout=15):
        """Returns 'ok', 'auth_failed' or 'disconnected'."""
        try:
            await self.login(timeout, roster=False, presence=False)
            return "ok"
        except LoginFailed:
            if self.auth_failed.done():
                return "auth_failed"
            return "disconnected"

    def send_message(self, to, body, mid=None):
        m = self.x.make_message(mto=to, mbody=body, mtype="chat")
        if mid:
            m["id"] = mid
        m.send()

    async def recv(self, timeout=10):
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def wait_presence(self, from_bare, type_="available", timeout=10):
        async def poll():
            while True:
                for f, t in self.presences:
                    if f.split("/")[0] == from_bare and t == type_:
                        return f
                await asyncio.sleep(0.05)
        return await asyncio.wait_for(poll(), timeout)

    async def wait_disconnected(self, timeout=10):
        return await asyncio.wait_for(asyncio.shield(self.disconnected),
                                      timeout)

    async def close(self, timeout=5):
        if self.disconnected.done():
            return
        try:
            self.x.disconnect(wait=1)
            await asyncio.wait_for(asyncio.shield(self.disconnected), timeout)
        except Exception:
            self.x.abort()

    def abort(self):
        """Drop the TCP connection without a stream close."""
        if self.x.transport:
            self.x.transport.abort()
