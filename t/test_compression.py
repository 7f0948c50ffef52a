"""XEP-0138 stream compression: negotiated after authentication when
xmpp_cm_compression is on and Openfire offers it; both directions are
zlib with a sync flush per stanza; failures as the XEP prescribes."""
import base64
import re
import socket
import time
import zlib

from lib.raw import NS_CLIENT, q
from lib.util import wait_until

HEADER = (b'<?xml version="1.0"?><stream:stream xmlns="jabber:client" '
          b'xmlns:stream="http://etherx.jabber.org/streams" to="localhost" '
          b'version="1.0">')
ZLIB_FEATURE = (b'<compression xmlns="http://jabber.org/features/compress">'
                b'<method>zlib</method></compression>')
COMPRESS = (b'<compress xmlns="http://jabber.org/protocol/compress">'
            b'<method>%s</method></compress>')


class ZClient:
    """A client of its own: the suite's raw client does not inflate."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.settimeout(5)
        self.buf = b""
        self.inflate = None
        self.deflate = None

    def send(self, data):
        if self.deflate:
            data = self.deflate.compress(data) + \
                self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.s.sendall(data)

    def until(self, pattern, timeout=5):
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.buf):
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for %r; got %r"
                                     % (pattern, self.buf[-500:]))
            d = self.s.recv(65536)
            if not d:
                raise AssertionError("EOF waiting for %r; got %r"
                                     % (pattern, self.buf[-500:]))
            self.buf += self.inflate.decompress(d) if self.inflate else d
        m = re.search(pattern, self.buf)
        out, self.buf = self.buf[:m.end()], self.buf[m.end():]
        return out

    def login(self, user, pw):
        self.send(HEADER)
        self.until(rb"</stream:features>")
        self.send(b'<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" '
                  b'mechanism="PLAIN">' +
                  base64.b64encode(b"\0" + user + b"\0" + pw) + b"</auth>")
        self.until(rb"<success[^>]*/>")
        self.send(HEADER)
        return self.until(rb"</stream:features>")

    def start_zlib(self):
        self.send(COMPRESS % b"zlib")
        self.until(rb'<compressed xmlns="http://jabber.org/protocol/'
                   rb'compress"/>')
        assert self.buf == b"", self.buf   # nothing uncompressed after it
        self.inflate = zlib.decompressobj()
        self.deflate = zlib.compressobj()

    def bind(self, resource):
        self.send(b'<iq type="set" id="b1"><bind xmlns="urn:ietf:params:'
                  b'xml:ns:xmpp-bind"><resource>' + resource +
                  b'</resource></bind></iq>')
        return self.until(rb"</iq>")


def test_compressed_session_chats_both_ways(standin, nginx, raw):
    sb = standin()
    ngx = nginx(standin=sb, extra="xmpp_cm_compression on;")
    z = ZClient(ngx.port)
    feats = z.login(b"alice", b"alicepw")
    assert ZLIB_FEATURE in feats, feats
    z.start_zlib()
    z.send(HEADER)
    feats = z.until(rb"</stream:features>")
    assert b'<bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"/>' in feats
    assert ZLIB_FEATURE not in feats, "offered twice: %r" % feats
    assert b"<jid>alice@localhost/z</jid>" in z.bind(b"z")
    z.send(b'<presence/>')

    b = raw(ngx.port)
    b.login("bob", "bobpw", resource="b")
    b.send('<presence/>')

    # one stanza per sync flush, both ways, in order
    for i in range(20):
        z.send(b'<message to="bob@localhost/b" id="z%d"><body>to bob %d'
               b'</body></message>' % (i, i))
    for i in range(20):
        m = b.next_element(5, lambda e: e.tag == q(NS_CLIENT, "message"))
        assert m.findtext(q(NS_CLIENT, "body")) == "to bob %d" % i
    b.send('<message to="alice@localhost/z" id="back"><body>to alice'
           '</body></message>')
    got = z.until(rb"<body>to alice</body></message>")
    assert b'from="bob@localhost/b"' in got
    # the stand-in saw plain, wrapped routes of the compressed client
    assert sb.routes_for(z_sid(sb, "alice"))


def z_sid(sb, user):
    for s in sb.state()["sessions"]:
        if s.get("user") == user:
            return s["streamid"]
    raise AssertionError("no session for %s" % user)


def test_not_offered_when_off(standin, nginx):
    sb = standin()
    ngx = nginx(standin=sb)
    z = ZClient(ngx.port)
    feats = z.login(b"alice", b"alicepw")
    assert ZLIB_FEATURE not in feats
    z.send(COMPRESS % b"zlib")
    assert b"<setup-failed/>" in z.until(rb"</failure>")
    # the stream goes on, uncompressed
    assert b"<jid>" in z.bind(b"nz")


def test_unsupported_method(standin, nginx):
    sb = standin()
    ngx = nginx(standin=sb, extra="xmpp_cm_compression on;")
    z = ZClient(ngx.port)
    z.login(b"alice", b"alicepw")
    z.send(COMPRESS % b"lzw")
    assert b"<unsupported-method/>" in z.until(rb"</failure>")
    assert b"<jid>" in z.bind(b"lzw")


def test_method_in_any_xml_white_space(standin, nginx):
    """<method> may hold the name between any XML white space, \r too
    (the raw-byte check left \r out once: unsupported-method)."""
    sb = standin()
    ngx = nginx(standin=sb, extra="xmpp_cm_compression on;")
    z = ZClient(ngx.port)
    z.login(b"alice", b"alicepw")
    z.send(COMPRESS % b"\r\n\tzlib\r\n")
    z.until(rb'<compressed xmlns="http://jabber.org/protocol/compress"/>')
    assert z.buf == b"", z.buf
    z.inflate = zlib.decompressobj()
    z.deflate = zlib.compressobj()
    z.send(HEADER)
    z.until(rb"</stream:features>")
    assert b"<jid>alice@localhost/cr</jid>" in z.bind(b"cr")


def test_not_before_authentication(standin, nginx):
    sb = standin()
    ngx = nginx(standin=sb, extra="xmpp_cm_compression on;")
    z = ZClient(ngx.port)
    z.send(HEADER)
    feats = z.until(rb"</stream:features>")
    assert ZLIB_FEATURE not in feats
    z.send(COMPRESS % b"zlib")
    assert b"<setup-failed/>" in z.until(rb"</failure>")


def test_broken_compressed_data_ends_stream(standin, nginx):
    sb = standin()
    ngx = nginx(standin=sb, extra="xmpp_cm_compression on;")
    z = ZClient(ngx.port)
    z.login(b"alice", b"alicepw")
    z.start_zlib()
    z.deflate = None
    z.s.sendall(b"\xff\xff\xff\xff not zlib at all")
    got = z.until(rb"</stream:stream>")
    assert b"<undefined-condition" in got, got
    assert b"processing-failed" in got, got
    assert ngx.log_lines(r"bad compressed data")
