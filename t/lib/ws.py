"""A byte-level WebSocket (RFC 6455) client for XMPP over WebSocket
(RFC 7395) tests: the handshake and the frames are written by hand, so
that tests can also break every rule (unmasked frames, binary frames,
reserved bits, fragments, oversize).  Each text message the server sends
is parsed on its own as an XML document: RFC 7395 requires every message
to be one standalone element with its namespace declarations."""
import base64
import hashlib
import os
import socket
import ssl as ssl_mod
import struct
import time
import xml.etree.ElementTree as ET

NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
NS_STREAM = "http://etherx.jabber.org/streams"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_CLIENT = "jabber:client"
NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

TEXT, BINARY, CLOSE, PING, PONG, CONT = 1, 2, 8, 9, 10, 0


def q(ns, local):
    return "{%s}%s" % (ns, local)


def local(tag):
    return tag.rsplit("}", 1)[-1]


def open_el(to="localhost", extra=""):
    return ('<open xmlns="%s" to="%s" version="1.0"%s/>'
            % (NS_FRAMING, to, extra))


def frame(op, payload, fin=True, mask=True, rsv=0, key=None):
    """One frame's bytes, masked as a client's must be unless mask=False."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    b0 = (0x80 if fin else 0) | (rsv << 4) | op
    n = len(payload)
    if n < 126:
        hdr = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
    if not mask:
        return hdr + payload
    key = key or os.urandom(4)
    body = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return hdr + key + body


class HandshakeError(Exception):
    def __init__(self, status, headers, body):
        Exception.__init__(self, "HTTP %s" % status)
        self.status = status
        self.headers = headers
        self.body = body


class WsClient:
    def __init__(self, port, path="/xmpp-websocket", host="127.0.0.1",
                 protocols="xmpp", timeout=5.0, tls=False, key=None,
                 extra_headers=(), version="13", connect_only=False):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            ctx = ssl_mod.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl_mod.CERT_NONE
            self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""
        self.eof = False
        self.messages = []          # text messages received, as str
        self.close_code = None      # of the server's close frame
        self.pings = []
        self.path = path
        self.host = host
        self.port = port
        self.jid = None
        if connect_only:
            return
        self.handshake(protocols=protocols, key=key,
                       extra_headers=extra_headers, version=version)

    # ------------------------------------------------------------ HTTP
    def handshake(self, protocols="xmpp", key=None, extra_headers=(),
                  version="13", method="GET"):
        key = key if key is not None else \
            base64.b64encode(os.urandom(16)).decode()
        lines = ["%s %s HTTP/1.1" % (method, self.path),
                 "Host: localhost:%d" % self.port,
                 "Upgrade: websocket", "Connection: Upgrade",
                 "Sec-WebSocket-Key: %s" % key]
        if version is not None:
            lines.append("Sec-WebSocket-Version: %s" % version)
        if protocols is not None:
            lines.append("Sec-WebSocket-Protocol: %s" % protocols)
        lines.extend(extra_headers)
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status, headers = self._read_response()
        if status != 101:
            raise HandshakeError(status, headers, self.buf)
        want = base64.b64encode(hashlib.sha1(
            (key + GUID).encode()).digest()).decode()
        assert headers.get("sec-websocket-accept") == want, headers
        assert headers.get("upgrade", "").lower() == "websocket", headers
        assert "upgrade" in headers.get("connection", "").lower(), headers
        assert headers.get("sec-websocket-protocol") == "xmpp", headers
        self.headers = headers
        return headers

    def _read_response(self):
        deadline = time.monotonic() + self.timeout
        while b"\r\n\r\n" not in self.buf:
            if time.monotonic() > deadline:
                raise AssertionError("no HTTP response: %r" % self.buf)
            d = self.sock.recv(65536)
            if not d:
                break
            self.buf += d
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        self.buf = rest
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            headers[k.strip().lower()] = v.strip()
        return status, headers

    # ------------------------------------------------------------ frames
    def send_raw(self, data):
        self.sock.sendall(data)

    def send_frame(self, op, payload, **kw):
        self.sock.sendall(frame(op, payload, **kw))

    def send(self, text):
        self.send_frame(TEXT, text)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            d = self.sock.recv(65536)
        except socket.timeout:
            return False
        except (ConnectionResetError, ssl_mod.SSLError):
            d = b""
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def recv_frame(self, timeout=None):
        """(fin, op, payload bytes), or None at EOF or timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None
                                       else timeout)
        while True:
            f = self._parse()
            if f is not None:
                return f
            if self.eof or not self._fill(deadline):
                return None

    def _parse(self):
        b = self.buf
        if len(b) < 2:
            return None
        fin, op = b[0] & 0x80, b[0] & 0x0f
        assert b[0] & 0x70 == 0, "server frame with RSV bits"
        assert not b[1] & 0x80, "server frame masked (RFC 6455 5.1)"
        n, h = b[1] & 0x7f, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, h = struct.unpack("!H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, h = struct.unpack("!Q", b[2:10])[0], 10
        if len(b) < h + n:
            return None
        self.buf = b[h + n:]
        return bool(fin), op, b[h:h + n]

    def next_message(self, timeout=None, what="message"):
        """The next text message (str); pings are answered, a close frame
        is recorded; AssertionError if none comes."""
        deadline = time.monotonic() + (self.timeout if timeout is None
                                       else timeout)
        while True:
            f = self.recv_frame(max(0, deadline - time.monotonic()))
            if f is None:
                raise AssertionError("no %s (eof=%s); got %r" % (
                    what, self.eof, self.messages[-5:]))
            fin, op, payload = f
            assert fin, "the server fragments its messages"
            if op == TEXT:
                m = payload.decode("utf-8")
                self.messages.append(m)
                return m
            if op == PING:
                self.pings.append(payload)
                self.send_frame(PONG, payload)
                continue
            if op == CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] \
                    if len(payload) >= 2 else 1005
                raise AssertionError("close frame %s before %s; got %r" % (
                    self.close_code, what, self.messages[-5:]))
            raise AssertionError("unexpected opcode %d" % op)

    def next_element(self, timeout=None, match=None, what="element"):
        deadline = time.monotonic() + (self.timeout if timeout is None
                                       else timeout)
        while True:
            m = self.next_message(max(0, deadline - time.monotonic()), what)
            el = ET.fromstring(m)   # each message parses on its own
            if match is None or match(el):
                return el

    def until_close(self, timeout=None):
        """Reads to the server's close frame and the end of the
        connection; returns the text messages that came before it."""
        deadline = time.monotonic() + (self.timeout if timeout is None
                                       else timeout)
        got = []
        while True:
            f = self.recv_frame(max(0, deadline - time.monotonic()))
            if f is None:
                raise AssertionError("no close frame (eof=%s); got %r"
                                     % (self.eof, got))
            fin, op, payload = f
            if op == TEXT:
                m = payload.decode("utf-8")
                self.messages.append(m)
                got.append(m)
            elif op == CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] \
                    if len(payload) >= 2 else 1005
                break
        # our answer to the close handshake, then the server's FIN
        try:
            self.send_frame(CLOSE, payload[:2])
        except OSError:
            pass
        while not self.eof and time.monotonic() < deadline:
            self.recv_frame(max(0, deadline - time.monotonic()))
        assert self.eof, "the server did not close the connection"
        return got

    def stream_error(self, msgs):
        """The condition of the <stream:error> among msgs, or None."""
        for m in msgs:
            el = ET.fromstring(m)
            if el.tag == q(NS_STREAM, "error"):
                for c in el:
                    if local(c.tag) != "text":
                        return local(c.tag)
                return ""
        return None

    # ------------------------------------------------------------ XMPP
    def open(self, to="localhost"):
        """<open/>; returns (the <open/> answer, the features)."""
        self.send(open_el(to))
        o = self.next_element(what="<open/>")
        assert o.tag == q(NS_FRAMING, "open"), ET.tostring(o)
        self.stream_id = o.get("id")
        f = self.next_element(what="features")
        assert f.tag == q(NS_STREAM, "features"), ET.tostring(f)
        return o, f

    def auth_plain(self, user, password):
        cred = base64.b64encode(("\0%s\0%s" % (user, password))
                                .encode()).decode()
        self.send('<auth xmlns="%s" mechanism="PLAIN">%s</auth>'
                  % (NS_SASL, cred))
        return self.next_element(
            match=lambda e: e.tag in (q(NS_SASL, "success"),
                                      q(NS_SASL, "failure")),
            what="SASL result")

    def iq(self, body, iq_id, type_="set", to=None):
        self.send('<iq xmlns="jabber:client" type="%s" id="%s"%s>%s</iq>'
                  % (type_, iq_id, ' to="%s"' % to if to else "", body))
        return self.next_element(
            match=lambda e: e.tag == q(NS_CLIENT, "iq")
            and e.get("id") == iq_id, what="iq %s" % iq_id)

    def login(self, user, password, resource="web", to="localhost"):
        """<open/>, PLAIN, restart with a new <open/>, bind, session."""
        self.open(to)
        r = self.auth_plain(user, password)
        assert r.tag == q(NS_SASL, "success"), ET.tostring(r)
        _, feats = self.open(to)
        assert feats.find(q(NS_BIND, "bind")) is not None, ET.tostring(feats)
        res = self.iq('<bind xmlns="%s"><resource>%s</resource></bind>'
                      % (NS_BIND, resource), "bind1")
        assert res.get("type") == "result", ET.tostring(res)
        self.jid = res.find(q(NS_BIND, "bind")).find(q(NS_BIND, "jid")).text
        res = self.iq('<session xmlns="%s"/>' % NS_SESSION, "sess1")
        assert res.get("type") == "result", ET.tostring(res)
        return self.jid

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
