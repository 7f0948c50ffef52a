"""A byte-level XMPP client for tests.

It never depends on TCP segmentation: every read is appended to a raw log
and fed to an expat parser (namespace aware) that turns each depth-1
element of the server's stream into an ElementTree element.  After a stream
restart (the client sends a new header) a fresh parser takes over.
If the server's bytes are not well-formed the parse error is kept and the
regex-based helpers (stream error detection) still work on the raw log.
"""
import base64
import re
import select
import socket
import time
import xml.etree.ElementTree as ET
import xml.parsers.expat

NS_STREAM = "http://etherx.jabber.org/streams"
NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_CLIENT = "jabber:client"
NS_REGISTER = "http://jabber.org/features/iq-register"
NS_ROSTER = "jabber:iq:roster"

DEFAULT_HEADER = ('<?xml version="1.0"?><stream:stream '
                  'xmlns:stream="http://etherx.jabber.org/streams" '
                  'xmlns="jabber:client" to="{to}" version="1.0">')


def q(ns, local):
    return "{%s}%s" % (ns, local)


def local(tag):
    return tag.rsplit("}", 1)[-1]


def ns_of(tag):
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


class StreamReader:
    """Incremental parser of one server->client XML stream."""

    def __init__(self):
        self.header = None          # dict of root attributes (Clark names)
        self.header_raw_tag = None
        self.stanzas = []           # depth-1 elements, in order
        self.ended = False          # saw </stream:stream>
        self.error = None           # expat error, if any
        self._stack = []
        self._p = xml.parsers.expat.ParserCreate(namespace_separator="}")
        self._p.buffer_text = True
        self._p.StartElementHandler = self._start
        self._p.EndElementHandler = self._end
        self._p.CharacterDataHandler = self._text
        # no reparse deferral: we want elements as soon as they are complete
        if hasattr(self._p, "SetReparseDeferralEnabled"):
            try:
                self._p.SetReparseDeferralEnabled(False)
            except Exception:
                pass

    @staticmethod
    def _name(n):
        return "{" + n if "}" in n else n

    def _start(self, name, attrs):
        name = self._name(name)
        attrs = {self._name(k): v for k, v in attrs.items()}
        if self.header is None and not self._stack:
            self.header = attrs
            self.header_raw_tag = name
            self._stack.append(None)
            return
        parent = self._stack[-1]
        if parent is None:
            el = ET.Element(name, attrs)
        else:
            el = ET.SubElement(parent, name, attrs)
        self._stack.append(el)

    def _end(self, name):
        el = self._stack.pop()
        if el is None:
            self.ended = True
            return
        if len(self._stack) == 1:
            self.stanzas.append(el)

    def _text(self, data):
        if len(self._stack) < 2:
            return
        el = self._stack[-1]
        if len(el):
            last = el[-1]
            last.tail = (last.tail or "") + data
        else:
            el.text = (el.text or "") + data

    def feed(self, data):
        if self.error is not None:
            return
        try:
            self._p.Parse(data, False)
        except xml.parsers.expat.ExpatError as e:
            self.error = e


class StreamClosed(Exception):
    pass


class RawClient:
    def __init__(self, port, host="127.0.0.1", timeout=5.0, nodelay=True,
                 rcvbuf=None, sndbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        if nodelay:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.received = b""
        self.readers = [StreamReader()]
        self.eof = False
        self.reset_by_peer = False
        self._consumed = 0          # index into current reader's stanzas
        self.timeout = timeout
        self.stream_id = None
        self.jid = None

    # ------------------------------------------------------------ I/O
    @property
    def reader(self):
        return self.readers[-1]

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def send_bytewise(self, data, delay=0.002):
        if isinstance(data, str):
            data = data.encode("utf-8")
        for i in range(len(data)):
            self.sock.sendall(data[i:i + 1])
            if delay:
                time.sleep(delay)

    def send_nonblocking(self, data, max_wait=0.0):
        """Send as much of data as the socket accepts without blocking
        (waiting at most max_wait seconds for writability). Returns bytes
        sent."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        sent = 0
        self.sock.setblocking(False)
        try:
            while sent < len(data):
                try:
                    n = self.sock.send(data[sent:])
                    sent += n
                except BlockingIOError:
                    if max_wait <= 0:
                        break
                    _, w, _ = select.select([], [self.sock], [], max_wait)
                    if not w:
                        break
        finally:
            self.sock.setblocking(True)
            self.sock.settimeout(self.timeout)
        return sent

    def _readable(self, timeout):
        r, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        return bool(r)

    def _recv(self):
        """One recv(): the bytes, b"" at EOF, None if nothing came."""
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:
            self.reset_by_peer = True
            return b""
        except socket.timeout:
            return None

    def pump(self, timeout=0.1):
        """Read whatever is available within timeout; return True if some
        bytes arrived, False otherwise (EOF sets self.eof)."""
        if self.eof or not self._readable(timeout):
            return False
        data = self._recv()
        if data is None:
            return False
        if not data:
            self.eof = True
            return False
        self.received += data
        self.reader.feed(data)
        return True

    def wait_for(self, pred, timeout=None, what="condition"):
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            if v:
                return v
            if self.eof:
                v = pred()
                if v:
                    return v
                raise StreamClosed("connection closed while waiting for %s; "
                                   "received: %r" % (what, self.text[-2000:]))
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    "timed out (%.1fs) waiting for %s; parsed %s (consumed "
                    "%d, parse error %s); received: %r" % (
                        timeout, what,
                        [local(e.tag) for e in self.reader.stanzas],
                        self._consumed, self.reader.error,
                        self.text[-2000:]))
            self.pump(min(left, 0.2))

    @property
    def text(self):
        return self.received.decode("utf-8", "replace")

    # ------------------------------------------------------------ stanzas
    def next_element(self, timeout=None, match=None, what=None):
        """Next depth-1 element (optionally the next one satisfying
        match(el)); elements skipped by match are consumed."""
        def pred():
            st = self.reader.stanzas
            while self._consumed < len(st):
                el = st[self._consumed]
                self._consumed += 1
                if match is None or match(el):
                    return [el]     # (an Element without children is falsy)
            return None
        return self.wait_for(pred, timeout, what or "next element")[0]

    def wait_tag(self, tag, timeout=None):
        return self.next_element(timeout, lambda e: e.tag == tag, tag)

    def all_elements(self):
        out = []
        for r in self.readers:
            out.extend(r.stanzas)
        return out

    def wait_header(self, timeout=None):
        self.wait_for(lambda: self.reader.header is not None, timeout,
                      "stream header")
        return self.reader.header

    def wait_features(self, timeout=None):
        return self.wait_tag(q(NS_STREAM, "features"), timeout)

    def open(self, to="localhost", header=None, timeout=None):
        """Send a stream header; return (header attrs, features element)."""
        self.send(header if header is not None else DEFAULT_HEADER.format(to=to))
        h = self.wait_header(timeout)
        self.stream_id = h.get("id")
        f = self.wait_features(timeout)
        return h, f

    def restart(self, to="localhost", timeout=None):
        self.readers.append(StreamReader())
        self._consumed = 0
        return self.open(to=to, timeout=timeout)

    # ------------------------------------------------------------ errors
    def stream_error(self):
        """Condition of the first stream error received, or None."""
        for el in self.all_elements():
            if el.tag == q(NS_STREAM, "error"):
                for c in el:
                    if ns_of(c.tag) == NS_STREAMS_ERR and local(c.tag) != "text":
                        return local(c.tag)
                return ""
        # fallback for output the parser could not handle
        m = re.search(r"<stream:error[^>]*>\s*<([A-Za-z][\w-]*)", self.text)
        if m:
            return m.group(1)
        return None

    def wait_eof(self, timeout=None):
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("connection not closed within %.1fs; "
                                     "received: %r" % (timeout,
                                                       self.text[-2000:]))
            self.pump(min(left, 0.2))
        return True

    def expect_stream_error(self, timeout=None):
        """Wait for the server to close the connection; return the stream
        error condition it sent (None when there was none)."""
        self.wait_eof(timeout)
        return self.stream_error()

    def stream_ended(self):
        return any(r.ended for r in self.readers) or \
            "</stream:stream>" in self.text

    # ------------------------------------------------------------ login
    def auth_plain(self, user, password, timeout=None):
        cred = base64.b64encode(("\0%s\0%s" % (user, password)).encode()).decode()
        self.send('<auth xmlns="%s" mechanism="PLAIN">%s</auth>' % (NS_SASL, cred))
        return self.next_element(
            timeout,
            lambda e: e.tag in (q(NS_SASL, "success"), q(NS_SASL, "failure"),
                                q(NS_SASL, "challenge")),
            "SASL result")

    def iq(self, xml_body, iq_id, type_="set", to=None, timeout=None):
        self.send('<iq type="%s" id="%s"%s>%s</iq>' % (
            type_, iq_id, ' to="%s"' % to if to else "", xml_body))
        return self.next_element(
            timeout,
            lambda e: e.tag == q(NS_CLIENT, "iq") and e.get("id") == iq_id,
            "iq reply %s" % iq_id)

    def login(self, user, password, resource="raw", to="localhost",
              timeout=None):
        """Full login: open, PLAIN, restart, bind, session.  Returns the
        bound JID."""
        if self.reader.header is None:
            self.open(to=to, timeout=timeout)
        r = self.auth_plain(user, password, timeout)
        assert r.tag == q(NS_SASL, "success"), \
            "SASL failed: %s" % ET.tostring(r)
        _, feats = self.restart(to=to, timeout=timeout)
        assert feats.find(q(NS_BIND, "bind")) is not None, ET.tostring(feats)
        res = self.iq('<bind xmlns="%s"><resource>%s</resource></bind>'
                      % (NS_BIND, resource), "bind1", timeout=timeout)
        assert res.get("type") == "result", ET.tostring(res)
        self.jid = res.find(q(NS_BIND, "bind")).find(q(NS_BIND, "jid")).text
        res = self.iq('<session xmlns="%s"/>' % NS_SESSION, "sess1",
                      timeout=timeout)
        assert res.get("type") == "result", ET.tostring(res)
        return self.jid

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def tostr(el):
    return ET.tostring(el, encoding="unicode")
