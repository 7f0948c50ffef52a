"""Thousands of raw XMPP clients in one process, on one epoll loop.

The fault tests need more clients than threads or slixmpp instances can
carry.  Each Client here is a non-blocking socket with its own expat
reader (lib.raw.StreamReader) and a small login state machine: stream
header, SASL PLAIN, restart, bind, session.  Once ready, a client sends
messages with unique ids and records what comes back, so a test can
account for every message: delivered to its recipient, returned to its
sender as an error, or sent before the sender's stream ended with a
stream error (the sender was told its session is gone).
"""
import base64
import errno
import selectors
import socket
import time

from lib.raw import (NS_BIND, NS_CLIENT, NS_SASL, NS_SESSION, NS_STREAM,
                     NS_STREAMS_ERR, StreamReader, q)

HEADER = ("<?xml version='1.0'?><stream:stream to='%s' xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")

T_MESSAGE = q(NS_CLIENT, "message")
T_IQ = q(NS_CLIENT, "iq")
T_FEATURES = q(NS_STREAM, "features")
T_ERROR = q(NS_STREAM, "error")
T_SUCCESS = q(NS_SASL, "success")
T_FAILURE = q(NS_SASL, "failure")


class Client:
    """One connection.  state: connect, features, auth, features2, bind,
    session, ready, failed (SASL or IQ error), closed (EOF or reset)."""

    def __init__(self, swarm, idx, user, password, resource, port,
                 host="127.0.0.1", domain="localhost"):
        self.sw = swarm
        self.idx = idx
        self.user = user
        self.password = password
        self.resource = resource
        self.domain = domain
        self.state = "connect"
        self.out = bytearray()
        self.reader = StreamReader()
        self.seen = 0               # stanzas of self.reader handled
        self.jid = None
        self.sent = {}              # message id -> time it was queued
        self.received = []          # ids of messages delivered to us
        self.bounced = []           # ids of our messages returned as errors
        self.stream_error = None    # condition of the stream error, if any
        self.eof_at = None
        self.ready_at = None
        self.t0 = time.monotonic()
        self.seq = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = self.sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            self._closed()
            return
        self.write(HEADER % domain)         # sent once connected
        self.state = "features"

    # ------------------------------------------------------------ I/O
    def write(self, data):
        if self.state == "closed":
            return
        self.out += data.encode() if isinstance(data, str) else data
        if self.state != "connect":
            self.sw.want_write(self)

    def flush(self):
        while self.out:
            try:
                n = self.sock.send(self.out)
            except BlockingIOError:
                return False
            except OSError:
                self._closed()
                return True
            del self.out[:n]
        return True

    def on_readable(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError:
                self._closed()
                return
            if not data:
                self._closed()
                return
            self.reader.feed(data)
            self._handle()
            if self.state == "closed":
                return
            if len(data) < 65536:
                break

    def _closed(self):
        if self.state == "closed":
            return
        self.state = "closed"
        self.eof_at = time.monotonic()
        self.sw.forget(self)
        try:
            self.sock.close()
        except OSError:
            pass

    # ------------------------------------------------------------ protocol
    def _handle(self):
        r = self.reader
        while self.seen < len(r.stanzas):
            el = r.stanzas[self.seen]
            self.seen += 1
            self._stanza(el)
            if self.reader is not r:        # restarted
                return
        r.stanzas.clear()           # handled: keep memory flat
        self.seen = 0

    def _stanza(self, el):
        tag = el.tag
        if tag == T_MESSAGE:
            mid = el.get("id")
            if el.get("type") == "error":
                self.bounced.append(mid)
            else:
                self.received.append(mid)
            return
        if tag == T_ERROR:
            for ch in el:
                if ch.tag.startswith("{%s}" % NS_STREAMS_ERR) and \
                        not ch.tag.endswith("}text"):
                    self.stream_error = ch.tag.split("}", 1)[1]
                    break
            return
        st = self.state
        if st == "features" and tag == T_FEATURES:
            cred = base64.b64encode(("\0%s\0%s" % (
                self.user, self.password)).encode()).decode()
            self.write('<auth xmlns="%s" mechanism="PLAIN">%s</auth>'
                       % (NS_SASL, cred))
            self.state = "auth"
        elif st == "auth" and tag == T_SUCCESS:
            self.reader = StreamReader()
            self.seen = 0
            self.write(HEADER % self.domain)
            self.state = "features2"
        elif st == "auth" and tag == T_FAILURE:
            self.state = "failed"
        elif st == "features2" and tag == T_FEATURES:
            self.write('<iq type="set" id="b"><bind xmlns="%s"><resource>%s'
                       '</resource></bind></iq>' % (NS_BIND, self.resource))
            self.state = "bind"
        elif st == "bind" and tag == T_IQ and el.get("id") == "b":
            if el.get("type") != "result":
                self.state = "failed"
                return
            self.jid = el.find(q(NS_BIND, "bind")).find(q(NS_BIND, "jid")).text
            self.write('<iq type="set" id="s"><session xmlns="%s"/></iq>'
                       % NS_SESSION)
            self.state = "session"
        elif st == "session" and tag == T_IQ and el.get("id") == "s":
            if el.get("type") != "result":
                self.state = "failed"
                return
            self.state = "ready"
            self.ready_at = time.monotonic()

    # ------------------------------------------------------------ traffic
    def message(self, to_jid, body="x"):
        """Queue one chat message with a unique id; returns the id."""
        self.seq += 1
        mid = "m%d-%d" % (self.idx, self.seq)
        self.sent[mid] = time.monotonic()
        self.write('<message to="%s" type="chat" id="%s"><body>%s</body>'
                   '</message>' % (to_jid, mid, body))
        return mid

    def end_stream(self):
        self.write("</stream:stream>")


class Swarm:
    def __init__(self, port, host="127.0.0.1"):
        self.port = port
        self.host = host
        self.sel = selectors.DefaultSelector()
        self.clients = []
        self._writing = set()

    # -------------------------------------------------------------- setup
    def add(self, n, user="alice", password="alicepw", prefix="r",
            users=None):
        """Open n more connections (logging in as user, or as users[i %
        len(users)] = (user, password)), resources prefix+index."""
        out = []
        for _ in range(n):
            i = len(self.clients)
            u, pw = users[i % len(users)] if users else (user, password)
            c = Client(self, i, u, pw, "%s%d" % (prefix, i), self.port,
                       self.host)
            self.clients.append(c)
            if c.state != "closed":
                # the stream header is queued: wait for the connect
                self.sel.register(c.sock, selectors.EVENT_READ |
                                  selectors.EVENT_WRITE, c)
                self._writing.add(c)
            out.append(c)
        return out

    def want_write(self, c):
        if c in self._writing or c.state == "closed":
            return
        self._writing.add(c)
        try:
            self.sel.modify(c.sock, selectors.EVENT_READ |
                            selectors.EVENT_WRITE, c)
        except (KeyError, ValueError):
            pass

    def forget(self, c):
        self._writing.discard(c)
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass

    # -------------------------------------------------------------- loop
    def poll(self, timeout=0.05):
        for key, ev in self.sel.select(timeout):
            c = key.data
            if ev & selectors.EVENT_WRITE and c.state != "closed":
                if c.flush() and c.state != "closed":
                    self._writing.discard(c)
                    try:
                        self.sel.modify(c.sock, selectors.EVENT_READ, c)
                    except (KeyError, ValueError):
                        pass
            if ev & selectors.EVENT_READ and c.state != "closed":
                c.on_readable()

    def run_until(self, pred, timeout, what="condition", tick=None):
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError("timed out after %.1fs waiting for %s "
                                     "(%s)" % (timeout, what, self.summary()))
            self.poll()
            if tick is not None:
                tick()
        return True

    def run_for(self, seconds, tick=None):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.poll(min(0.05, max(0.0, end - time.monotonic())))
            if tick is not None:
                tick()

    def settle(self, clients, timeout, tick=None):
        """Drive until every message these clients sent has reached one
        of them (for traffic among them, with nothing expected to fail)."""
        self.run_until(lambda: sum(len(c.received) for c in clients) ==
                       sum(len(c.sent) for c in clients), timeout,
                       "every message", tick)

    # -------------------------------------------------------------- views
    def states(self, clients=None):
        out = {}
        for c in clients or self.clients:
            out[c.state] = out.get(c.state, 0) + 1
        return out

    def summary(self):
        return ", ".join("%s=%d" % kv for kv in sorted(self.states().items()))

    def ready(self, clients=None):
        return [c for c in clients or self.clients if c.state == "ready"]

    def login(self, clients, timeout):
        """Drive clients until each is ready (or fails: AssertionError)."""
        self.run_until(lambda: all(c.state in ("ready", "failed", "closed")
                                   for c in clients), timeout,
                       "%d logins" % len(clients))
        bad = [c for c in clients if c.state != "ready"]
        assert not bad, "%d of %d logins failed (%s; first: #%d %s %s)" % (
            len(bad), len(clients), self.states(clients), bad[0].idx,
            bad[0].state, bad[0].stream_error)

    def close_all(self):
        for c in self.clients:
            if c.state != "closed":
                c._closed()
        self.sel.close()


def account(clients, offline=()):
    """Every message a client queued ends in exactly one of: delivered (a
    recipient got it), bounced (returned to its sender as an error),
    offline (stored by Openfire: ids in `offline`), told (not delivered,
    and the sender's stream then ended with a stream error, so the
    sender knows its in-flight stanzas are unaccounted for), or lost.

    Returns a dict of counts plus 'lost' and 'dup' (ids delivered more
    than once) as lists."""
    delivered = {}
    for c in clients:
        for mid in c.received:
            delivered[mid] = delivered.get(mid, 0) + 1
    offline = set(offline)
    res = {"sent": 0, "delivered": 0, "bounced": 0, "offline": 0,
           "told": 0, "lost": [], "dup": [m for m, n in delivered.items()
                                          if n > 1]}
    for c in clients:
        bounced = set(c.bounced)
        for mid, t in c.sent.items():
            res["sent"] += 1
            if mid in delivered:
                res["delivered"] += 1
            elif mid in bounced:
                res["bounced"] += 1
            elif mid in offline:
                res["offline"] += 1
            elif c.stream_error is not None and c.eof_at is not None \
                    and t <= c.eof_at:
                res["told"] += 1
            else:
                res["lost"].append(mid)
    return res
