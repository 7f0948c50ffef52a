#!/usr/bin/python3
"""Openfire connection-manager (multiplexer) stand-in for the
ngx_stream_xmpp_cm test suite.

It plays the server side of Openfire's CM protocol (port 5262) the way a
real Openfire 4.1.6 does (version "4.1", byte for byte where the recorded
transcripts show bytes) or the way the 4.8+ source reads (version "4.8").
Specification: docs/openfire-protocol.md ("section N" and "row N" here are
its sections and the rows of its section 7).  See README.md here for the
command line and the JSON control channel.

Single process, asyncio, Python 3.11 standard library only.
"""

import argparse
import asyncio
import base64
import binascii
import codecs
import collections
import copy
import datetime
import hashlib
import hmac
import itertools
import json
import logging
import random
import re
import secrets
import signal
import socket
import ssl
import sys
import time
import uuid
import xml.etree.ElementTree as ET

log = logging.getLogger("standin")

# ----------------------------------------------------------------- names
NS_STREAM = "http://etherx.jabber.org/streams"
NS_CM = "jabber:connectionmanager"
NS_CMP = "http://jabber.org/protocol/connectionmanager"
NS_CMP_ERR = NS_CMP + "#errors"
NS_STREAMS = "urn:ietf:params:xml:ns:xmpp-streams"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_ROSTER = "jabber:iq:roster"
NS_PING = "urn:xmpp:ping"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_REGISTER = "jabber:iq:register"
NS_IQAUTH = "jabber:iq:auth"
# RoutingTableImpl.getShowValue: lower is preferred
SHOW_ORDER = {"chat": 1, None: 2, "away": 3, "xa": 4, "dnd": 5}
NS_DELAY = "urn:xmpp:delay"
NS_XML = "http://www.w3.org/XML/1998/namespace"

# Default namespaces that Openfire's XMPPPacketReader drops from stanzas.
IGNORED_NS = frozenset(("jabber:client", "jabber:server", NS_CM,
                        "jabber:component:accept",
                        "http://jabber.org/protocol/httpbind"))

MAX_FRAGMENT = 1048576          # xmpp.parser.buffer.size
SASL_RETRIES = 3                # xmpp.auth.retries
SCRAM_ITERATIONS = 4096
DEFAULT_MECHANISMS = ["PLAIN", "SCRAM-SHA-1", "EXTERNAL", "SCRAM-SHA-1-PLUS"]
IMPLEMENTED_MECHANISMS = ("PLAIN", "SCRAM-SHA-1", "DIGEST-MD5", "ANONYMOUS")

# Tinder's legacy error codes: condition -> (code, type)
STANZA_ERRORS = {
    "bad-request": ("400", "modify"),
    "conflict": ("409", "cancel"),
    "feature-not-implemented": ("501", "cancel"),
    "forbidden": ("403", "auth"),
    "internal-server-error": ("500", "wait"),
    "item-not-found": ("404", "cancel"),
    "not-acceptable": ("406", "modify"),
    "not-allowed": ("405", "cancel"),
    "not-authorized": ("401", "auth"),
    "service-unavailable": ("503", "cancel"),
}

# Characters Openfire's lightweight parser rejects.
INVALID_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
WS_RE = re.compile(r"[ \t\r\n]*")


# ----------------------------------------------------------------- helpers
def esc_text(s):
    """dom4j text escaping."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def esc_attr(s):
    """dom4j attribute escaping (double-quoted attributes)."""
    return esc_text(s).replace('"', "&quot;")


def java_hash(s):
    """java.lang.String.hashCode() (over UTF-16 code units), signed 32 bit."""
    h = 0
    b = s.encode("utf-16-be")
    for i in range(0, len(b), 2):
        h = (31 * h + ((b[i] << 8) | b[i + 1])) & 0xFFFFFFFF
    return h - 0x100000000 if h & 0x80000000 else h


def new_stream_id():
    """BasicStreamIDFactory: 50 random bits in base 36 (up to 10 chars)."""
    n = secrets.randbits(50)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def utc_stamp():
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (
        now.microsecond // 1000)


def split_tag(tag):
    """'{ns}local' -> (ns, local); 'local' -> ('', local)."""
    if tag[0] == "{":
        ns, local = tag[1:].split("}", 1)
        return ns, local
    return "", tag


def local(el):
    return split_tag(el.tag)[1]


def ns_of(el):
    return split_tag(el.tag)[0]


def first_child(el):
    return next(iter(el), None)


def child_named(el, name):
    for c in el:
        if local(c) == name:
            return c
    return None


def split_jid(j, fold=True):
    """'node@domain/res' -> (node|None, domain, res|None), node and domain
    lower-cased.  fold=False keeps them as they are: Openfire routes a
    stanza from a CM without stringprep (skipJIDValidation, section 8),
    so 'BOB@LocalHost.' is not bob@localhost there."""
    res = None
    if "/" in j:
        j, res = j.split("/", 1)
    node = None
    if "@" in j:
        node, j = j.split("@", 1)
        if fold:
            node = node.lower()
    return node, j.lower() if fold else j, res


def stream_error_xml(cond, text=None):
    """A stream error as Openfire serialises it (xmlns:stream on the
    element, no legacy code)."""
    t = ""
    if text:
        t = '<text xmlns="%s">%s</text>' % (NS_STREAMS, esc_text(text))
    return ('<stream:error xmlns:stream="%s"><%s xmlns="%s"/>%s'
            '</stream:error>' % (NS_STREAM, cond, NS_STREAMS, t))


# stanza types Tinder's enums know (anything else throws in Openfire)
CM_STANZA_TYPES = {
    "message": ("normal", "chat", "groupchat", "headline", "error"),
    "presence": ("unavailable", "subscribe", "subscribed", "unsubscribe",
                 "unsubscribed", "probe", "error"),
    "iq": ("get", "set", "result", "error"),
}

# Presence.Show values; anything else (even empty) throws in getShow()
SHOW_VALUES = ("chat", "away", "xa", "dnd")


def error_el(cond, app=None):
    """<error code type><cond xmlns=stanzas/>[<app xmlns=cm#errors/>]</error>"""
    code, typ = STANZA_ERRORS[cond]
    e = ET.Element("error", {"code": code, "type": typ})
    ET.SubElement(e, "{%s}%s" % (NS_STANZAS, cond))
    if app:
        ET.SubElement(e, "{%s}%s" % (NS_CMP_ERR, app))
    return e


def bad_show(presence):
    if presence is None:
        return False
    show = child_named(presence, "show")
    return show is not None and (show.text or "") not in SHOW_VALUES


def iq_reply(iq, typ, child=None):
    """Tinder IQ.createResultIQ: type, id, from=request.to, to=request.from,
    plus an optional copy of a child element."""
    attrs = {"type": typ}
    for src, dst in (("id", "id"), ("to", "from"), ("from", "to")):
        v = iq.get(src)
        if v is not None:
            attrs[dst] = v
    r = ET.Element("iq", attrs)
    if child is not None:
        r.append(copy.deepcopy(child))
    return r


# ----------------------------------------------------------------- XML
def serialize(el):
    """Serialise an ElementTree element the way dom4j does: namespace
    declaration first, double-quoted escaped attributes, `<x/>` for empty
    elements, xmlns only where the namespace changes (including
    xmlns="" for a namespace-less element inside a namespaced one)."""
    out = []
    _ser(el, "", {}, out)
    return "".join(out)


def _ser(el, dns, pfx, out):
    ns, name = split_tag(el.tag)
    head = []
    if ns == NS_STREAM:
        name = "stream:" + name
        if pfx.get("stream") != NS_STREAM:
            head.append(' xmlns:stream="%s"' % NS_STREAM)
            pfx = dict(pfx, stream=NS_STREAM)
        cdns = dns
    else:
        if ns != dns:
            head.append(' xmlns="%s"' % esc_attr(ns))
        cdns = ns
    for k, v in el.attrib.items():
        if k[0] == "{":
            ans, alocal = split_tag(k)
            if ans == NS_XML:
                k = "xml:" + alocal
            else:
                p = next((p for p, u in pfx.items() if u == ans), None)
                if p is None:
                    p = "ns%d" % len(pfx)
                    pfx = dict(pfx)
                    pfx[p] = ans
                    head.append(' xmlns:%s="%s"' % (p, esc_attr(ans)))
                k = "%s:%s" % (p, alocal)
        head.append(' %s="%s"' % (k, esc_attr(v)))
    out.append("<" + name)
    out.extend(head)
    if el.text is None and len(el) == 0:
        out.append("/>")
        return
    out.append(">")
    if el.text:
        out.append(esc_text(el.text))
    for c in el:
        _ser(c, cdns, pfx, out)
        if c.tail:
            out.append(esc_text(c.tail))
    out.append("</%s>" % name)


def strip_namespaces(el, everywhere):
    """XMPPPacketReader: drop IGNORED_NS from elements.  4.1.6 dropped them
    everywhere (the <failed> echo shows xmlns=""); the 4.8+ reader only as
    long as no ancestor is in a different namespace."""
    _strip(el, True, everywhere)


def _strip(el, allowed, everywhere):
    tag = el.tag
    child_allowed = allowed
    if tag[0] == "{":
        ns, loc = split_tag(tag)
        if ns in IGNORED_NS:
            if allowed:
                el.tag = loc
        elif not everywhere:
            child_allowed = False
    for c in el:
        _strip(c, child_allowed, everywhere)


class Splitter:
    """Openfire's XMLLightweightParser, roughly: cut the character stream
    into complete top-level fragments without parsing them.  Tracks
    depth and double-quoted attribute values only (like Openfire).

    feed(text) -> (fragments, error) where fragments are (kind, text)
    with kind 'header' (<stream:stream ...>, with any <?xml?> before it),
    'end' (</stream:stream>), 'element' or 'ws' (whitespace between
    fragments); error is None, 'policy-violation' or
    'internal-server-error'."""

    def __init__(self, limit=MAX_FRAGMENT):
        self.limit = limit
        self.buf = ""
        self.pos = 0        # scan position in buf
        self.depth = 0
        self.start = -1     # start of the pending fragment in buf, or -1

    def feed(self, text):
        buf = self.buf + text if self.buf else text
        i, depth, start = self.pos, self.depth, self.start
        n = len(buf)
        out = []
        err = None
        while i < n:
            if start < 0:
                j = WS_RE.match(buf, i).end()
                if j > i:
                    out.append(("ws", buf[i:j]))
                i = j
                if i >= n:
                    break
                if buf[i] != "<":
                    err = "internal-server-error"
                    break
                start = i
            if buf[i] != "<":                   # character data
                j = buf.find("<", i)
                if j < 0:
                    i = n
                    break
                i = j
            tag_start = i
            if buf.startswith("<!", i):          # CDATA / comment / decl
                if n - i < 9:
                    break
                if buf.startswith("<![CDATA[", i):
                    term = "]]>"
                elif buf.startswith("<!--", i):
                    term = "-->"
                else:
                    term = ">"
                j = buf.find(term, i + 2)
                if j < 0:
                    break
                i = j + len(term)
                if depth == 0 and term == "-->":
                    start = -1
                continue
            if buf.startswith("<?", i):          # xml declaration / PI
                j = buf.find("?>", i + 2)
                if j < 0:
                    break
                i = j + 2
                continue
            # an ordinary tag: find its '>' outside double quotes
            k = i + 1
            end = -1
            while True:
                gt = buf.find(">", k)
                if gt < 0:
                    break
                q = buf.find('"', k, gt)
                if q < 0:
                    end = gt
                    break
                q2 = buf.find('"', q + 1)
                if q2 < 0:
                    break
                k = q2 + 1
            if end < 0:
                break                            # incomplete tag
            i = end + 1
            frag = None
            if buf[tag_start + 1] == "/":
                if depth == 0:
                    frag = buf[start:i]
                    if frag.strip() != "</stream:stream>":
                        err = "internal-server-error"
                        break
                    out.append(("end", frag))
                    start = -1
                    continue
                depth -= 1
                if depth == 0:
                    frag = ("element", buf[start:i])
            elif buf[i - 2] == "/":
                if depth == 0:
                    frag = ("element", buf[start:i])
            elif depth == 0 and buf.startswith("<stream:stream", tag_start) \
                    and buf[tag_start + 14] in " \t\r\n>":
                frag = ("header", buf[start:i])
            else:
                depth += 1
            if frag is not None:
                if len(frag[1]) > self.limit:
                    err = "policy-violation"
                    break
                out.append(frag)
                start = -1
        if err is None and start >= 0 and n - start > self.limit:
            err = "policy-violation"
        if start >= 0:
            self.buf, self.pos, self.start = buf[start:], i - start, 0
        else:
            self.buf, self.pos, self.start = buf[i:], 0, -1
        self.depth = depth
        return out, err


class Crash(Exception):
    """Input that makes Openfire's handler throw: the CM socket is closed
    without a word (rows 15, 16, 18 of the 4.1.6 observations)."""


# ----------------------------------------------------------------- model
class ClientSession:
    """Openfire's LocalClientSession for one CM-hosted client."""

    _avail_seq = itertools.count(1)
    _activity = itertools.count(1)

    def __init__(self, cm, streamid, host, prebind):
        self.cm = cm
        self.streamid = streamid
        self.jhash = java_hash(streamid)
        self.host = host                 # {"name":..,"address":..} or None
        self.prebind = prebind           # DOMAIN/STREAMID (4.1), /UUID (4.8)
        self.authenticated = False       # SASL (or iq:auth) succeeded
        self.user = None
        self.resource = None
        self.jid = None                  # full JID once bound
        self.available = False
        self.avail_seq = 0
        self.priority = 0
        self.show = None                 # <show> of the last presence
        self.last_active = 0             # order of the last client stanza
        self.presence = None             # last available presence (no 'to')
        self.offline_done = False
        self.sasl = None                 # SASL exchange in progress
        self.sasl_failures = 0
        self.closed = False

    @property
    def bound(self):
        return self.jid is not None

    @property
    def address(self):
        return self.jid or self.prebind

    def info(self):
        return {"streamid": self.streamid, "cm": self.cm, "host": self.host,
                "authenticated": self.authenticated, "user": self.user,
                "jid": self.jid, "bound": self.bound,
                "available": self.available, "address": self.address}


class CMConnection(asyncio.Protocol):
    """One TCP connection from a connection manager."""

    _ids = itertools.count(1)

    def __init__(self, server, direct=False):
        self.server = server
        self.direct = direct         # the Direct-TLS listener (5263)
        self.tls = direct            # TLS is up
        self.tls_pending = False     # <proceed/> sent, handshake to come
        self.restarted = False       # the stream restarts after STARTTLS
        self.early = []              # decrypted before start_tls returned
        self.nodelay = None          # TCP_NODELAY as the socket has it
        self.id = next(self._ids)
        self.transport = None
        self.peer = ""
        self.splitter = Splitter()
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.opened = False          # stream header received
        self.cm = None               # CM name (JID domain of 'to')
        self.resource = None
        self.address = None          # name/resource, the registration key
        self.stream_id = None
        self.authenticated = False   # <handshake> accepted
        self.closed = False
        self.wrap_open = None        # prefix used to parse fragments
        self.last_read = time.monotonic()
        self.idle_mark = self.last_read
        self.idle_flag = False

    # asyncio callbacks
    def connection_made(self, transport):
        self.transport = transport
        p = transport.get_extra_info("peername") or ("?", 0)
        self.peer = "%s:%s" % (p[0], p[1])
        # asyncio turns Nagle off; Openfire leaves it on for CM sockets
        # (xmpp.socket.tcp-nodelay defaults to false)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET,
                                                socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY,
                            1 if self.server.nodelay else 0)
            self.nodelay = bool(sock.getsockopt(socket.IPPROTO_TCP,
                                                socket.TCP_NODELAY))
        self.server.on_connect(self)

    def data_received(self, data):
        self.server.on_data(self, data)

    def connection_lost(self, exc):
        self.server.on_closed(self)

    # output
    def send(self, *frags):
        """Write fragments in one write, logging each one."""
        if self.closed:
            return
        self.transport.write("".join(frags).encode("utf-8"))
        for f in frags:
            self.server.event(self, "out", f)

    def info(self):
        return {"id": self.id, "cm": self.cm, "resource": self.resource,
                "authenticated": self.authenticated, "peer": self.peer,
                "registered": self.server.registry.get(self.address) is self,
                "stream_id": self.stream_id, "tls": self.tls,
                "direct": self.direct, "nodelay": self.nodelay}


# ----------------------------------------------------------------- server
class Openfire:
    def __init__(self, args):
        self.domain = args.domain.lower()
        self.secret = args.secret
        self.users = {}
        for item in filter(None, args.users.split(",")):
            u, _, pw = item.partition(":")
            self.users[u.strip().lower()] = pw
        self.version = "4.1"
        self.set_version(args.version)
        self.mechanisms = self.parse_list(args.mechanisms)
        self.register = not args.no_register
        self.iq_auth = args.iq_auth
        self.heartbeat = float(args.heartbeat)
        self.idle = float(args.idle)
        self.rosters = args.rosters
        self.accept = True
        self.read_paused = False
        self.blocked_ips = set()
        self.socket_order = args.socket_order
        self.chm_size = 16
        self.nodelay = args.nodelay
        self.tls_policy = args.tls_policy
        self.tls_ctx = None
        if args.tls_cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(args.tls_cert, args.tls_key or None)
            if args.tls_client_ca:
                # xmpp.multiplex.cert.policy needed
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(args.tls_client_ca)
            self.tls_ctx = ctx

        self.conns = set()           # every open CM connection
        self.registry = {}           # "name/resource" -> CMConnection
        self.by_name = {}            # name -> [CMConnection] (registry order)
        self.sessions = {}           # (cm name, streamid) -> ClientSession
        self.resources = {}          # user -> {resource: ClientSession}
        self.offline = collections.defaultdict(list)  # user -> [(el, stamp)]
        self.scram_cache = {}
        self.iq_seq = itertools.count(1)
        self.events = collections.deque(maxlen=200000)
        self.seq = 0
        self.stopped = asyncio.Event()
        self.hb_task = None
        self.idle_task = None

    # ---------------------------------------------------------- settings
    @staticmethod
    def parse_list(v):
        if isinstance(v, str):
            return [m.strip() for m in v.split(",") if m.strip()]
        return [str(m) for m in v]

    def set_version(self, v):
        v = str(v)
        major, minor = (int(x) for x in (v.split(".") + ["0"])[:2])
        self.version = v
        self.old = (major, minor) < (4, 8)   # 4.1.6 behaviour

    def tinder_id(self):
        return "%d-%d" % (random.randrange(1000), next(self.iq_seq))

    # ---------------------------------------------------------- events
    def event(self, conn, direction, xml):
        self.events.append({"seq": self.seq, "t": time.time(),
                            "cm": conn.cm, "resource": conn.resource,
                            "sock": conn.id, "dir": direction, "xml": xml})
        self.seq += 1

    # ---------------------------------------------------------- sockets
    def on_connect(self, conn):
        self.conns.add(conn)
        self.event(conn, "conn", "")
        if not self.accept:
            self.close_conn(conn)
            return
        if self.read_paused:
            # asyncio adds the reader only after connection_made returns:
            # pausing here would be undone, so pause on the next turn
            asyncio.get_event_loop().call_soon(self.pause_new, conn)

    def pause_new(self, conn):
        if self.read_paused and not conn.closed and \
                not conn.transport.is_closing():
            conn.transport.pause_reading()

    def rebuild_names(self):
        """Per-name socket lists, in registration order, or (socket_order
        "chm") in the iteration order of Openfire's ConcurrentHashMap of
        addresses: bucket of the spread String hash, then insertion."""
        conns = list(self.registry.values())
        if self.socket_order == "chm":
            while len(conns) >= self.chm_size * 3 // 4:
                self.chm_size *= 2
            seq = {c: i for i, c in enumerate(conns)}

            def bucket(c):
                h = java_hash(c.address) & 0xFFFFFFFF
                return ((h ^ (h >> 16)) & (self.chm_size - 1), seq[c])
            conns.sort(key=bucket)
        self.by_name = {}
        for c in conns:
            self.by_name.setdefault(c.cm, []).append(c)

    def close_conn(self, conn):
        """Close a CM socket (after flushing) and do Openfire's clean-up."""
        if conn.closed:
            return
        self.cleanup(conn)
        conn.transport.close()

    def on_closed(self, conn):
        self.cleanup(conn)

    def cleanup(self, conn):
        if conn.closed:
            return
        conn.closed = True
        self.conns.discard(conn)
        self.event(conn, "close", "")
        # Row 6: the address is removed whichever socket of that address
        # closes (even an orphaned one replaced by a newer socket).
        if conn.address is not None and conn.address in self.registry:
            del self.registry[conn.address]
            self.rebuild_names()
            if not self.by_name.get(conn.cm):
                # last socket of this CM name: its sessions go (row 35)
                for s in [s for s in self.sessions.values()
                          if s.cm == conn.cm]:
                    self.remove_session(s)

    def fail(self, conn, cond, text=None, end=True):
        """Stream error, optional </stream:stream>, close."""
        frags = [stream_error_xml(cond, text)]
        if end:
            frags.append("</stream:stream>")
        conn.send(*frags)
        self.close_conn(conn)

    def on_data(self, conn, data):
        if conn.closed:
            return
        if conn.tls_pending:
            # only TLS application data gets here: the plaintext reader
            # was paused at <proceed/>
            conn.early.append(data)
            return
        conn.last_read = time.monotonic()
        try:
            text = conn.decoder.decode(data)
        except UnicodeDecodeError:
            self.fail(conn, "internal-server-error")
            return
        if INVALID_CHARS.search(text):
            self.fail(conn, "internal-server-error")
            return
        frags, err = conn.splitter.feed(text)
        for kind, frag in frags:
            if conn.closed or conn.tls_pending:
                # what follows <starttls/> in the same read is dropped
                return
            self.event(conn, "in", frag)
            if kind == "ws":
                continue
            try:
                self.on_fragment(conn, kind, frag)
            except Crash as e:
                log.info("socket %s closed: %s", conn.id, e)
                self.close_conn(conn)
            except Exception:
                log.exception("error processing %r", frag[:200])
                self.close_conn(conn)
        if err and not conn.closed:
            text = "Maximum stanza length exceeded" \
                if err == "policy-violation" else None
            self.fail(conn, err, text)

    def on_fragment(self, conn, kind, frag):
        if kind == "header":
            return self.on_header(conn, frag)
        if not conn.opened:
            raise Crash("data before the stream header")
        if kind == "end":
            raise Crash("</stream:stream> from the CM")     # row 19
        try:
            el = ET.fromstring(conn.wrap_open + frag + "</stream:stream>")[0]
        except ET.ParseError:
            self.fail(conn, "internal-server-error")
            return
        conn.idle_flag = False
        strip_namespaces(el, self.old)
        ns, name = split_tag(el.tag)
        if ns == NS_STREAM:
            raise Crash("stream error from the CM")          # row 19
        if self.tls_policy == "required" and not conn.tls and \
                not (name == "starttls" and ns == NS_TLS):
            # StanzaHandler.process -> closeNeverEncryptedConnection
            self.fail(conn, "not-authorized",
                      "TLS is mandatory, but was not established.",
                      end=not self.old)
            return
        if name == "handshake":
            self.on_handshake(conn, el)
        elif name == "iq":
            self.on_cm_iq(conn, el)
        elif name == "route":
            self.on_route(conn, el)
        elif name == "starttls" and ns == NS_TLS:
            self.on_starttls(conn)
        elif name == "compress":
            conn.send("<failure xmlns='http://jabber.org/protocol/compress'>"
                      "<setup-failed/></failure>")
        else:
            raise Crash("top-level <%s>" % name)              # row 18

    # ---------------------------------------------------------- TLS
    def starttls_feature(self, conn):
        """<starttls/> in the CM stream's features: policy not disabled
        and (4.8+, OF-2632) a certificate in the identity store.  The
        Direct-TLS listener advertises it too (its policy is directTLS)."""
        if self.tls_policy == "disabled" or \
                (not self.old and self.tls_ctx is None):
            return ""
        req = "<required/>" if self.tls_policy == "required" and \
            not conn.direct else ""
        return '<starttls xmlns="%s">%s</starttls>' % (NS_TLS, req)

    def on_starttls(self, conn):
        if self.tls_policy == "disabled" or conn.tls:
            self.fail(conn, "not-authorized", end=not self.old)
            return
        if self.tls_ctx is None:
            # no certificate: as if the handshake failed
            conn.send('<failure xmlns="%s"/>' % NS_TLS)
            self.close_conn(conn)
            return
        conn.send('<proceed xmlns="%s"/>' % NS_TLS)
        conn.tls_pending = True
        conn.transport.pause_reading()
        asyncio.ensure_future(self.upgrade(conn))

    async def upgrade(self, conn):
        loop = asyncio.get_running_loop()
        try:
            tr = await loop.start_tls(conn.transport, conn, self.tls_ctx,
                                      server_side=True,
                                      ssl_handshake_timeout=10)
        except (OSError, ssl.SSLError, ConnectionError,
                asyncio.TimeoutError) as e:
            log.info("socket %s: TLS handshake failed: %s", conn.id, e)
            self.event(conn, "tls-failed", str(e))
            conn.transport.abort()
            self.cleanup(conn)
            return
        if conn.closed:
            tr.abort()
            return
        conn.transport = tr
        conn.tls = True
        conn.tls_pending = False
        # a new stream: the CM sends a new header (section 3.4)
        conn.opened = False
        conn.restarted = True
        conn.splitter = Splitter()
        conn.decoder = codecs.getincrementaldecoder("utf-8")()
        self.event(conn, "tls", "")
        early, conn.early = conn.early, []
        for data in early:
            self.on_data(conn, data)

    def on_restart(self, conn, frag):
        """The header after STARTTLS: getStreamHeader(), from the XMPP
        domain, the same id, with xml:lang; features list only compression
        (never enabled here)."""
        conn.opened = True
        conn.send("<?xml version='1.0' encoding='UTF-8'?><stream:stream "
                  'xmlns:stream="%s" xmlns="%s" from="%s" id="%s" '
                  'xml:lang="en" version="1.0">' % (
                      NS_STREAM, NS_CM, esc_attr(self.domain),
                      conn.stream_id))
        conn.send("<stream:features></stream:features>")

    # ---------------------------------------------------------- stream open
    def on_header(self, conn, frag):
        if conn.restarted and not conn.opened:
            return self.on_restart(conn, frag)
        if conn.opened:
            return          # stream restarts (zlib) are not supported
        try:
            parser = ET.XMLPullParser(events=("start-ns", "start"))
            parser.feed(frag + "</stream:stream>")
            parser.close()
        except ET.ParseError:
            self.fail(conn, "internal-server-error")
            return
        decls, root = [], None
        for ev, val in parser.read_events():
            if ev == "start-ns":
                decls.append(val)
            elif root is None:
                root = val
        conn.opened = True
        to = root.get("to") or None
        default_ns = dict(decls).get("", "")
        sid = new_stream_id()
        if default_ns != NS_CM or ns_of(root) != NS_STREAM:
            hdr = ("<?xml version='1.0' encoding='UTF-8'?><stream:stream "
                   'from="%s" id="%s" xmlns="%s" xmlns:stream="%s" '
                   'version="1.0">' % (esc_attr(to or "null"), sid,
                                       esc_attr(default_ns), NS_STREAM))
            conn.send(hdr, stream_error_xml("invalid-namespace"))
            self.close_conn(conn)
            return
        if to is None or not self.secret:
            cond = "bad-format" if to is None else "internal-server-error"
            if self.old:
                conn.send("<?xml version='1.0' encoding='UTF-8'?>"
                          '<stream:stream xmlns:stream="%s" xmlns="%s" '
                          'from="%s" version="1.0">' % (
                              NS_STREAM, NS_CM, esc_attr(to or "null")),
                          stream_error_xml(cond))
            else:
                fr = ' from="%s"' % esc_attr(to) if to else ""
                conn.send('<?xml version="1.0" encoding="UTF-8"?>'
                          '<stream:stream xmlns:stream="%s" xmlns="%s" '
                          'version="1.0"%s>' % (NS_STREAM, NS_CM, fr))
            self.close_conn(conn)
            return
        node, name, res = split_jid(to)
        conn.cm = name
        conn.resource = res
        conn.address = name + ("/" + res if res is not None else "")
        conn.stream_id = sid
        prefixes = "".join(' xmlns:%s="%s"' % (p, esc_attr(u))
                           for p, u in decls if p and p != "stream")
        conn.wrap_open = '<stream:stream xmlns:stream="%s" xmlns="%s"%s>' % (
            NS_STREAM, NS_CM, prefixes)
        # registered at stream open, replacing any socket of that address
        self.registry[conn.address] = conn
        self.rebuild_names()
        if self.old:
            conn.send("<?xml version='1.0' encoding='UTF-8'?><stream:stream "
                      'xmlns:stream="%s" xmlns="%s" from="%s" id="%s" '
                      'version="1.0" >' % (NS_STREAM, NS_CM, esc_attr(to),
                                           sid))
            conn.send("<stream:features>%s</stream:features>"
                      % self.starttls_feature(conn))
        else:
            feat = self.starttls_feature(conn)
            conn.send('<?xml version="1.0" encoding="UTF-8"?><stream:stream '
                      'xmlns:stream="%s" xmlns="%s" version="1.0" from="%s" '
                      'id="%s">' % (NS_STREAM, NS_CM, esc_attr(to), sid),
                      "<stream:features>%s</stream:features>" % feat
                      if feat else "<stream:features/>")

    def on_handshake(self, conn, el):
        digest = (el.text or "").strip()
        want = hashlib.sha1((conn.stream_id + self.secret).encode()).hexdigest()
        if digest.lower() != want:
            # 4.1.6: no </stream:stream>; 4.8+ NettyConnection.close adds it
            self.fail(conn, "not-authorized", end=not self.old)
            return
        conn.authenticated = True
        conn.send("<handshake></handshake>")
        conn.send(self.configuration_iq())

    def configuration_iq(self):
        p = ['<iq type="set" id="%s"><configuration xmlns="%s">' % (
            self.tinder_id(), NS_CMP),
            '<starttls xmlns="%s"/>' % NS_TLS]
        if self.mechanisms:
            p.append('<mechanisms xmlns="%s">' % NS_SASL)
            p.extend("<mechanism>%s</mechanism>" % esc_text(m)
                     for m in self.mechanisms)
            p.append("</mechanisms>")
        p.append('<compression xmlns="http://jabber.org/features/compress">'
                 "<method>zlib</method></compression>")
        if self.iq_auth:
            p.append('<auth xmlns="http://jabber.org/features/iq-auth"/>')
        if self.register:
            p.append('<register xmlns="http://jabber.org/features/'
                     'iq-register"/>')
        p.append("</configuration></iq>")
        return "".join(p)

    # ---------------------------------------------------------- socket choice
    def random_socket(self, cm):
        socks = self.by_name.get(cm)
        return random.choice(socks) if socks else None

    def hash_socket(self, cm, jhash):
        """ConnectionMultiplexerManager.getMultiplexerSession(domain, id)."""
        socks = self.by_name.get(cm)
        if not socks:
            return None
        return socks[abs(jhash) % len(socks)]

    def send_random(self, cm, xml):
        c = self.random_socket(cm)
        if c is not None:
            c.send(xml)

    def deliver(self, s, el):
        """Route a stanza to a client session (element payload)."""
        c = self.hash_socket(s.cm, s.jhash)
        if c is not None:
            c.send('<route streamid="%s" from="%s" to="%s">%s</route>' % (
                esc_attr(s.streamid), self.domain, esc_attr(s.cm),
                serialize(el)))

    def deliver_raw(self, s, text):
        """Session.deliverRawText: inline on 4.1, escaped text on 4.8+."""
        c = self.hash_socket(s.cm, s.jhash)
        if c is not None:
            c.send('<route from="%s" to="%s" streamid="%s">%s</route>' % (
                self.domain, esc_attr(s.cm), esc_attr(s.streamid),
                text if self.old else esc_text(text)))

    def send_close_iq(self, s, error=None):
        """Server-initiated <session><close/></session> (section 5.3)."""
        c = self.hash_socket(s.cm, s.jhash)
        if c is not None:
            err = stream_error_xml(error) if error and not self.old else ""
            c.send('<iq type="set" id="%s" from="%s" to="%s"><session '
                   'xmlns="%s" id="%s"><close/>%s</session></iq>' % (
                       self.tinder_id(), self.domain, esc_attr(s.cm), NS_CMP,
                       esc_attr(s.streamid), err))

    # ---------------------------------------------------------- CM-level IQs
    def on_cm_iq(self, conn, iq):
        child = first_child(iq)
        if not conn.authenticated:
            if child is None:
                raise Crash("IQ without child before handshake")
            r = iq_reply(iq, "error", child)
            r.append(error_el("not-authorized"))
            conn.send(serialize(r))
            return
        typ = iq.get("type")
        if typ == "result":
            return
        if typ == "error":
            log.warning("IQ error from CM %s: %s", conn.cm, serialize(iq))
            return
        if child is None:
            raise Crash("IQ without child")

        def reply(cond=None, app=None):
            r = iq_reply(iq, "error" if cond else "result", child)
            if cond:
                r.append(error_el(cond, app))
            self.send_random(conn.cm, serialize(r))

        if typ != "set":
            return reply("bad-request")
        sid = child.get("id")
        if sid is None:
            return reply("bad-request", "id-required")
        if sid == "":
            raise Crash("empty stream id")
        if local(child) != "session":
            return reply("bad-request")
        create = child_named(child, "create")
        if create is not None:
            host = child_named(create, "host")
            if host is not None:
                host = {"name": host.get("name"),
                        "address": host.get("address")}
                if host["address"] in self.blocked_ips:
                    return reply("not-allowed")
            old = self.sessions.get((conn.cm, sid))
            if old is not None:
                self.remove_session(old, broadcast=False)
            prebind = "%s/%s" % (self.domain,
                                 sid if self.old else uuid.uuid4())
            self.sessions[(conn.cm, sid)] = ClientSession(conn.cm, sid, host,
                                                          prebind)
            return reply()
        s = self.sessions.get((conn.cm, sid))
        if s is None:
            return reply("item-not-found")
        if child_named(child, "close") is not None:
            if s.available:
                self.deliver(s, self.unavailable(s, s.jid))
            self.remove_session(s)
            return reply()
        failed = child_named(child, "failed")
        if failed is not None:
            kids = list(failed)
            if len(kids) != 1:
                return reply("bad-request", "invalid-payload")
            if local(kids[0]) != "message":
                return reply("bad-request", "unknown-stanza")
            self.store_offline(kids[0])
            return reply()
        return reply("bad-request")

    # ---------------------------------------------------------- routes
    def route_error(self, route, cond, app=None, to_first=False):
        attrs = {"streamid": route.get("streamid")}
        if attrs["streamid"] is None:
            del attrs["streamid"]
        if route.get("id") is not None:
            attrs["id"] = route.get("id")
        pairs = [("to", route.get("from")), ("from", route.get("to"))]
        if not to_first:
            pairs.reverse()
        for k, v in pairs:
            if v is not None:
                attrs[k] = v
        attrs["type"] = "error"
        r = ET.Element("route", attrs)
        r.append(error_el(cond, app))
        return serialize(r)

    def on_route(self, conn, route):
        if not conn.authenticated:
            conn.send(self.route_error(route, "not-authorized",
                                       to_first=True))
            return
        sid = route.get("streamid")
        if not sid:
            raise Crash("route without streamid")             # row 15
        s = self.sessions.get((conn.cm, sid))
        if s is None:
            self.send_random(conn.cm, self.route_error(route,
                                                       "item-not-found"))
            return
        payload = first_child(route)
        if payload is None:
            raise Crash("route without child element")        # row 16
        name = local(payload)
        if name in ("auth", "response"):
            self.on_sasl(s, payload)
        elif name in ("iq", "message", "presence"):
            if not self.cm_stanza_fault(conn, route, s, payload):
                self.on_client_stanza(s, payload)
        else:                                                 # row 17
            self.send_random(conn.cm, self.route_error(
                route, "bad-request", "unknown-stanza"))

    def cm_stanza_fault(self, conn, route, s, el):
        """What Openfire 4.1.6 does with a routed stanza its own client
        reader would have cleaned or refused (section 8), where that is
        not simply a lost stanza: a 'to' or 'from' with an empty localpart
        throws (route error internal-server-error), so does a message or
        IQ type it does not know; an unknown presence type closes the
        session.  True when the stanza went no further."""
        name = local(el)
        for a in ("to", "from"):
            v = el.get(a)
            if v is not None and v.startswith("@"):
                self.send_random(conn.cm, self.route_error(
                    route, "internal-server-error"))
                return True
        typ = el.get("type")
        if typ is None or typ in CM_STANZA_TYPES[name]:
            return False
        if name == "presence":
            self.server_close(s)
        else:
            self.send_random(conn.cm, self.route_error(
                route, "internal-server-error"))
        return True

    # ---------------------------------------------------------- SASL
    def on_sasl(self, s, el):
        if ns_of(el) != NS_SASL:
            return self.sasl_fail(s, "not-authorized")
        data = (el.text or "").strip()
        if local(el) == "auth":
            mech = el.get("mechanism") or ""
            s.sasl = None
            if s.authenticated:
                return self.sasl_fail(s, "not-authorized")
            if mech not in self.mechanisms:
                return self.sasl_fail(s, "invalid-mechanism")
            if mech not in IMPLEMENTED_MECHANISMS:
                # EXTERNAL, *-PLUS: no certificate / channel binding here
                return self.sasl_fail(s, "not-authorized")
            if mech == "DIGEST-MD5":
                # RFC 2831 2.1: the server speaks first (Java's SaslServer)
                return self.digest_challenge(s)
            if mech == "ANONYMOUS":
                # offered only with xmpp.auth.anonymous: a random node
                return self.sasl_success(s, secrets.token_hex(5))
            if data == "":
                s.sasl = (mech, "start")
                return self.deliver_raw(s, '<challenge xmlns="%s"/>' % NS_SASL)
            step = "start"
        else:
            if s.sasl is None:
                return self.sasl_fail(s, "not-authorized")
            mech, step = s.sasl
        try:
            raw = b"" if data in ("", "=") else \
                base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return self.sasl_fail(s, "incorrect-encoding")
        if mech == "PLAIN":
            return self.sasl_plain(s, raw)
        if mech == "DIGEST-MD5":
            return self.digest_response(s, raw, step)
        if step == "start":
            return self.scram_first(s, raw)
        return self.scram_final(s, raw)

    def sasl_fail(self, s, cond):
        s.sasl = None
        self.deliver_raw(s, '<failure xmlns="%s"><%s/></failure>' % (
            NS_SASL, cond))
        s.sasl_failures += 1
        if s.sasl_failures >= SASL_RETRIES:
            # the session is closed for the client, but (row 22) it stays
            # registered in the multiplexer manager
            s.sasl_failures = 0
            self.send_close_iq(s)

    def sasl_success(self, s, user, extra=None):
        s.sasl = None
        s.sasl_failures = 0
        s.authenticated = True
        s.user = user
        if extra is None:
            self.deliver_raw(s, '<success xmlns="%s"/>' % NS_SASL)
        else:
            self.deliver_raw(s, '<success xmlns="%s">%s</success>' % (
                NS_SASL, base64.b64encode(extra).decode()))

    def sasl_plain(self, s, raw):
        parts = raw.split(b"\0")
        if len(parts) != 3:
            return self.sasl_fail(s, "not-authorized")
        try:
            authzid, user, pw = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            return self.sasl_fail(s, "not-authorized")
        user = user.lower()
        if self.users.get(user) != pw or not pw or \
                authzid not in ("", user, "%s@%s" % (user, self.domain)):
            return self.sasl_fail(s, "not-authorized")
        self.sasl_success(s, user)

    def digest_challenge(self, s):
        """DIGEST-MD5 as Openfire offers it through Java's SaslServer
        (RFC 2831): realm = the XMPP domain, qop auth, md5-sess."""
        nonce = base64.b64encode(secrets.token_bytes(24)).decode()
        s.sasl = ("DIGEST-MD5", {"nonce": nonce})
        ch = ('realm="%s",nonce="%s",qop="auth",charset=utf-8,'
              'algorithm=md5-sess' % (self.domain, nonce))
        self.deliver_raw(s, '<challenge xmlns="%s">%s</challenge>' % (
            NS_SASL, base64.b64encode(ch.encode()).decode()))

    @staticmethod
    def digest_directives(text):
        out = {}
        for m in re.finditer(r'\s*([A-Za-z-]+)=("((?:[^"\\]|\\.)*)"|'
                             r'[^,]*)\s*,?', text):
            v = m.group(3) if m.group(3) is not None else m.group(2)
            out[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", v)
        return out

    def digest_response(self, s, raw, st):
        """The client's response: checked as RFC 2831 2.1.2.1 computes it;
        Openfire answers a good one with <success> carrying rspauth."""
        try:
            d = self.digest_directives(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return self.sasl_fail(s, "not-authorized")
        user = d.get("username", "").lower()
        realm = d.get("realm", self.domain)
        pw = self.users.get(user)
        if pw is None or d.get("nonce") != st["nonce"] or \
                d.get("qop", "auth") != "auth" or \
                realm != self.domain or \
                d.get("digest-uri") != "xmpp/%s" % self.domain:
            return self.sasl_fail(s, "not-authorized")
        authzid = d.get("authzid")

        def h(b):
            return hashlib.md5(b).digest()

        def hx(b):
            return hashlib.md5(b).hexdigest()

        a1 = h(("%s:%s:%s" % (d["username"], realm, pw)).encode()) + \
            (":%s:%s" % (d["nonce"], d.get("cnonce", ""))).encode()
        if authzid:
            a1 += (":" + authzid).encode()

        def kd(a2):
            return hx(("%s:%s:%s:%s:auth:%s" % (
                hx(a1), d["nonce"], d.get("nc", ""), d.get("cnonce", ""),
                hx(a2.encode()))).encode())

        if d.get("response") != kd("AUTHENTICATE:" + d["digest-uri"]):
            return self.sasl_fail(s, "not-authorized")
        if authzid not in (None, "", user, "%s@%s" % (user, self.domain)):
            return self.sasl_fail(s, "not-authorized")
        self.sasl_success(s, user,
                          ("rspauth=" + kd(":" + d["digest-uri"])).encode())

    def scram_keys(self, user):
        """(salt, SaltedPassword) with a fixed per-user salt."""
        pw = self.users[user]
        key = (user, pw)
        if key not in self.scram_cache:
            salt = hashlib.sha1(("standin-salt:" + user).encode()).digest()[:16]
            salted = hashlib.pbkdf2_hmac("sha1", pw.encode("utf-8"), salt,
                                         SCRAM_ITERATIONS)
            self.scram_cache[key] = (salt, salted)
        return self.scram_cache[key]

    def scram_first(self, s, raw):
        try:
            msg = raw.decode("utf-8")
            cbind, authz, bare = msg.split(",", 2)
            attrs = dict(a.split("=", 1) for a in bare.split(","))
            user = attrs["n"].replace("=2C", ",").replace("=3D", "=").lower()
            cnonce = attrs["r"]
        except (UnicodeDecodeError, ValueError, KeyError):
            return self.sasl_fail(s, "not-authorized")
        if cbind not in ("n", "y") or user not in self.users:
            return self.sasl_fail(s, "not-authorized")
        salt, _ = self.scram_keys(user)
        nonce = cnonce + base64.b64encode(secrets.token_bytes(18)).decode()
        server_first = "r=%s,s=%s,i=%d" % (
            nonce, base64.b64encode(salt).decode(), SCRAM_ITERATIONS)
        s.sasl = ("SCRAM-SHA-1", {"user": user, "nonce": nonce,
                                  "gs2": cbind + "," + authz + ",",
                                  "auth": bare + "," + server_first})
        self.deliver_raw(s, '<challenge xmlns="%s">%s</challenge>' % (
            NS_SASL, base64.b64encode(server_first.encode()).decode()))

    def scram_final(self, s, raw):
        st = s.sasl[1]
        try:
            msg = raw.decode("utf-8")
            without_proof, proof = msg.rsplit(",p=", 1)
            attrs = dict(a.split("=", 1) for a in without_proof.split(","))
            proof = base64.b64decode(proof, validate=True)
            cb = base64.b64decode(attrs["c"], validate=True).decode()
        except (UnicodeDecodeError, ValueError, KeyError, binascii.Error):
            return self.sasl_fail(s, "not-authorized")
        if attrs.get("r") != st["nonce"] or cb != st["gs2"]:
            return self.sasl_fail(s, "not-authorized")
        _, salted = self.scram_keys(st["user"])
        auth_msg = (st["auth"] + "," + without_proof).encode()
        client_key = hmac.new(salted, b"Client Key", "sha1").digest()
        stored = hashlib.sha1(client_key).digest()
        sig = hmac.new(stored, auth_msg, "sha1").digest()
        if len(proof) != len(sig) or \
                bytes(a ^ b for a, b in zip(proof, sig)) != client_key:
            return self.sasl_fail(s, "not-authorized")
        server_key = hmac.new(salted, b"Server Key", "sha1").digest()
        v = hmac.new(server_key, auth_msg, "sha1").digest()
        self.sasl_success(s, st["user"],
                          b"v=" + base64.b64encode(v))

    # ---------------------------------------------------------- stanzas
    def on_client_stanza(self, s, el):
        name = local(el)
        el.set("from", s.address)       # anti-spoofing overwrite
        # LocalSession.incrementClientPacketCount: the last active date
        s.last_active = next(ClientSession._activity)
        if not s.bound:
            if name == "iq":
                return self.preauth_iq(s, el)
            # RFC 6120 7.1: raw stream error, session not closed
            return self.deliver_raw(s, stream_error_xml("not-authorized"))
        if name == "iq":
            self.route_iq(s, el)
        elif name == "message":
            self.route_message(s, el)
        else:
            self.route_presence(s, el)

    def iq_error(self, s, iq, cond, child=None):
        if iq.get("type") in ("result", "error"):
            return
        if child is None:
            child = first_child(iq)
        r = iq_reply(iq, "error", child)
        r.append(error_el(cond))
        self.deliver(s, r)

    def to_server(self, to, s=None):
        """True for no 'to', the domain, or (bound) the user's bare JID."""
        if to is None:
            return True
        node, dom, res = split_jid(to, False)
        if dom != self.domain or res is not None:
            return False
        return node is None or (s is not None and s.bound and node == s.user)

    def preauth_iq(self, s, iq):
        typ = iq.get("type")
        if typ in ("result", "error"):
            return
        child = first_child(iq)
        if child is None:
            return self.iq_error(s, iq, "bad-request")
        cns = ns_of(child)
        to_server = self.to_server(iq.get("to"))
        if cns == NS_BIND:
            return self.do_bind(s, iq, child)
        if cns in (NS_IQAUTH, NS_REGISTER) and to_server:
            if cns == NS_IQAUTH:
                return self.iq_auth_handler(s, iq, child)
            return self.register_handler(s, iq, child)
        if not to_server:
            return self.server_close(s, "not-authorized")
        return self.iq_error(s, iq, "not-authorized", child)

    def bind(self, s, user, resource):
        old = self.resources.get(user, {}).get(resource)
        if old is not None and old is not s:
            self.server_close(old, "conflict")               # row 33
        s.user = user
        s.resource = resource
        s.jid = "%s@%s/%s" % (user, self.domain, resource)
        self.resources.setdefault(user, {})[resource] = s

    def do_bind(self, s, iq, child):
        if iq.get("type") != "set":
            return self.iq_error(s, iq, "bad-request", child)
        if not s.authenticated or s.bound:
            return self.iq_error(s, iq, "not-authorized", child)
        res_el = child_named(child, "resource")
        res = (res_el.text or "").strip() if res_el is not None else ""
        self.bind(s, s.user, res or s.streamid)
        r = iq_reply(iq, "result")       # to = the pre-bind address (row 23)
        b = ET.SubElement(r, "{%s}bind" % NS_BIND)
        ET.SubElement(b, "{%s}jid" % NS_BIND).text = s.jid
        self.deliver(s, r)

    def iq_auth_handler(self, s, iq, child):
        """XEP-0078 as the Non-SASL Authentication plugin's IQAuthHandler
        does it (only with --iq-auth: the plugin registers the handler).
        get: the fields (username echoed; password and digest, as the
        default provider supports both; resource), no 'to' before auth.
        set: plaintext password or digest = hex(sha1(streamid+password));
        no resource: not-acceptable; bad credentials: not-authorized
        (both with the query copied); success: the session is
        authenticated and bound at once (a conflicting session is kicked)
        and the result goes to the new full JID."""
        if not self.iq_auth:
            return self.iq_error(s, iq, "feature-not-implemented", child)
        if iq.get("type") == "get":
            r = iq_reply(iq, "result")
            r.attrib.pop("to", None)
            q = ET.SubElement(r, "{%s}query" % NS_IQAUTH)
            u = ET.SubElement(q, "{%s}username" % NS_IQAUTH)
            u.text = (child.findtext("{%s}username" % NS_IQAUTH) or None)
            for f in ("password", "digest", "resource"):
                ET.SubElement(q, "{%s}%s" % (NS_IQAUTH, f))
            return self.deliver(s, r)
        vals = {local(c): (c.text or "").strip() for c in child}
        user = vals.get("username", "").lower()
        if s.authenticated or not user:
            return self.iq_error(s, iq, "not-authorized", child)
        if not vals.get("resource"):
            return self.iq_error(s, iq, "not-acceptable", child)
        pw = self.users.get(user)
        if pw is None:
            ok = False
        elif "password" in vals:
            ok = vals["password"] == pw
        elif "digest" in vals:
            ok = vals["digest"].lower() == hashlib.sha1(
                (s.streamid + pw).encode()).hexdigest()
        else:
            ok = False
        if not ok:
            return self.iq_error(s, iq, "not-authorized", child)
        s.authenticated = True
        self.bind(s, user, vals["resource"])
        iq.set("from", s.jid)
        self.deliver(s, iq_reply(iq, "result"))

    def register_handler(self, s, iq, child):
        """XEP-0077 before authentication (creates users)."""
        if not self.register:
            return self.iq_error(s, iq, "not-allowed", child)
        if iq.get("type") == "get":
            r = iq_reply(iq, "result")
            q = ET.SubElement(r, "{%s}query" % NS_REGISTER)
            for f in ("username", "password"):
                ET.SubElement(q, "{%s}%s" % (NS_REGISTER, f))
            return self.deliver(s, r)
        vals = {local(c): (c.text or "").strip() for c in child}
        user = vals.get("username", "").lower()
        if "remove" in vals or not user or not vals.get("password"):
            return self.iq_error(s, iq, "not-acceptable", child)
        if user in self.users:
            return self.iq_error(s, iq, "conflict", child)
        self.users[user] = vals["password"]
        self.deliver(s, iq_reply(iq, "result"))

    def route_iq(self, s, iq):
        to = iq.get("to")
        typ = iq.get("type")
        if self.to_server(to, s):
            return self.server_iq(s, iq)
        node, dom, res = split_jid(to, False)
        if dom == self.domain and node is not None and res is not None:
            t = self.resources.get(node, {}).get(res)
            if t is not None:
                return self.deliver(t, iq)
        if typ in ("get", "set"):
            self.iq_error(s, iq, "service-unavailable")

    def server_iq(self, s, iq):
        typ = iq.get("type")
        child = first_child(iq)
        if typ not in ("get", "set"):
            return
        if child is None:
            return self.iq_error(s, iq, "bad-request")
        cns = ns_of(child)
        r = None
        if cns in (NS_SESSION, NS_PING):
            r = iq_reply(iq, "result")
        elif cns == NS_ROSTER:
            r = iq_reply(iq, "result")
            if typ == "get":
                q = ET.SubElement(r, "{%s}query" % NS_ROSTER)
                for c in self.contacts(s.user):
                    ET.SubElement(q, "{%s}item" % NS_ROSTER, {
                        "jid": "%s@%s" % (c, self.domain),
                        "subscription": "both"})
        elif cns == NS_DISCO_INFO and typ == "get":
            r = iq_reply(iq, "result")
            q = ET.SubElement(r, "{%s}query" % NS_DISCO_INFO)
            ET.SubElement(q, "{%s}identity" % NS_DISCO_INFO, {
                "category": "server", "name": "Openfire Server",
                "type": "im"})
            for f in (NS_DISCO_INFO, NS_DISCO_ITEMS, NS_PING, NS_ROSTER):
                ET.SubElement(q, "{%s}feature" % NS_DISCO_INFO, {"var": f})
        elif cns == NS_DISCO_ITEMS and typ == "get":
            r = iq_reply(iq, "result")
            ET.SubElement(r, "{%s}query" % NS_DISCO_ITEMS)
        elif cns in (NS_BIND, NS_REGISTER, NS_IQAUTH):
            return self.iq_error(s, iq, "not-allowed")
        else:
            return self.iq_error(s, iq, "feature-not-implemented")   # row 26
        self.deliver(s, r)

    # ---------------------------------------------------------- messages
    def available_sessions(self, user):
        return [t for t in self.resources.get(user, {}).values()
                if t.available]

    def route_message(self, s, msg):
        to = msg.get("to")
        if not to:
            return
        node, dom, res = split_jid(to, False)
        if dom != self.domain or node is None or node not in self.users:
            return                                  # row 31: dropped
        typ = msg.get("type") or "normal"
        if res is not None:
            t = self.resources.get(node, {}).get(res)
            if t is not None:
                return self.deliver(t, msg)
        if typ not in ("chat", "normal"):
            return
        targets = [t for t in self.available_sessions(node)
                   if t.priority >= 0]
        if any(bad_show(t.presence) for t in targets):
            # routeToBareJID: IllegalArgumentException "No enum constant
            # ...Presence.Show", caught: the message is stored offline
            log.warning("invalid <show> of a %s resource: message stored "
                        "offline", node)
            return self.store_offline(msg)
        if targets:
            # RoutingTableImpl.routeToBareJID (4.1.6): highest priority,
            # then show (chat, none, away, xa, dnd), then the most recent
            # activity, which is usually a resource that has just left
            top = max(t.priority for t in targets)
            targets = [t for t in targets if t.priority == top]
            best_show = min(SHOW_ORDER.get(t.show, 5) for t in targets)
            targets = [t for t in targets
                       if SHOW_ORDER.get(t.show, 5) == best_show]
            best = max(targets, key=lambda t: t.last_active)
            self.deliver(best, msg)
        else:
            self.store_offline(msg)                 # row 30

    def store_offline(self, msg):
        to = msg.get("to") or ""
        node, dom, _ = split_jid(to, False)
        if dom != self.domain or node not in self.users:
            return
        if (msg.get("type") or "normal") not in ("chat", "normal"):
            return
        self.offline[node].append((copy.deepcopy(msg), utc_stamp()))

    # ---------------------------------------------------------- presence
    def contacts(self, user):
        """Roster of a user: everyone else (mutual, subscription both)."""
        if self.rosters != "mutual" or user is None:
            return []
        return [u for u in self.users if u != user]

    def unavailable(self, s, to=None):
        attrs = {"type": "unavailable", "from": s.jid}
        if to is not None:
            attrs["to"] = to
        return ET.Element("presence", attrs)

    def broadcast_presence(self, s, pres):
        """To every available resource of every contact (to = bare JID)
        and to the user's own other available resources (to = full)."""
        for c in self.contacts(s.user):
            targets = self.available_sessions(c)
            if targets:
                p = copy.deepcopy(pres)
                p.set("to", "%s@%s" % (c, self.domain))
                for t in targets:
                    self.deliver(t, p)
        for t in self.available_sessions(s.user):
            if t is not s:
                p = copy.deepcopy(pres)
                p.set("to", t.jid)
                self.deliver(t, p)

    def route_presence(self, s, pres):
        to = pres.get("to")
        typ = pres.get("type")
        if to is None:
            if typ is None:
                initial = not s.available
                s.available = True
                if initial:
                    s.avail_seq = next(ClientSession._avail_seq)
                sh = child_named(pres, "show")
                s.show = (sh.text or "").strip() if sh is not None else None
                pr = child_named(pres, "priority")
                try:
                    s.priority = int((pr.text or "0").strip()) if pr is not \
                        None else 0
                except ValueError:
                    s.priority = 0
                s.presence = copy.deepcopy(pres)
                if initial and not s.offline_done:
                    s.offline_done = True
                    self.deliver_offline(s)
                self.broadcast_presence(s, pres)
                if initial:
                    self.send_probes(s)
            elif typ == "unavailable" and s.available:
                s.available = False
                s.presence = None
                self.broadcast_presence(s, pres)
            return
        node, dom, res = split_jid(to, False)
        if dom != self.domain or node not in self.users:
            return
        if typ == "probe":
            if node in self.contacts(s.user) or node == s.user:
                for t in self.available_sessions(node):
                    p = copy.deepcopy(t.presence)
                    p.set("to", s.jid)
                    self.deliver(s, p)
            return
        if res is not None:
            t = self.resources.get(node, {}).get(res)
            targets = [t] if t is not None else []
        else:
            targets = self.available_sessions(node)
        for t in targets:
            self.deliver(t, pres)

    def send_probes(self, s):
        """Current presence of available contacts (and own resources)."""
        for c in self.contacts(s.user) + [s.user]:
            for t in self.available_sessions(c):
                if t is not s and t.presence is not None:
                    p = copy.deepcopy(t.presence)
                    p.set("to", s.jid)
                    self.deliver(s, p)

    def deliver_offline(self, s):
        msgs = self.offline.pop(s.user, [])
        for msg, stamp in msgs:
            m = copy.deepcopy(msg)
            ET.SubElement(m, "{%s}delay" % NS_DELAY,
                          {"from": self.domain, "stamp": stamp})
            self.deliver(s, m)

    # ---------------------------------------------------------- session end
    def remove_session(self, s, broadcast=True):
        if s.closed:
            return
        s.closed = True
        if self.sessions.get((s.cm, s.streamid)) is s:
            del self.sessions[(s.cm, s.streamid)]
        if s.bound and self.resources.get(s.user, {}).get(s.resource) is s:
            del self.resources[s.user][s.resource]
        if s.available:
            s.available = False
            if broadcast:
                self.broadcast_presence(s, self.unavailable(s))

    def server_close(self, s, condition=None, close_iq=None):
        """Openfire closes a CM-hosted session (kick, conflict, ...):
        raw stream error route, close IQ (4.1: always; 4.8+: unbound
        sessions only, carrying the error), own unavailable presence."""
        if condition:
            self.deliver_raw(s, stream_error_xml(condition))
        if close_iq is None:
            close_iq = self.old or not s.bound
        if close_iq:
            self.send_close_iq(s, condition)
        if s.available:
            self.deliver(s, self.unavailable(s, s.jid))
        self.remove_session(s)

    # ---------------------------------------------------------- timers
    async def heartbeat_loop(self):
        """One space on every registered CM socket, on a global timer."""
        while True:
            hb = self.heartbeat
            await asyncio.sleep(hb if hb > 0 else 3600)
            if hb > 0:
                for c in list(self.registry.values()):
                    if not c.closed:
                        c.transport.write(b" ")

    def restart_heartbeat(self):
        if self.hb_task is not None:
            self.hb_task.cancel()
        self.hb_task = asyncio.ensure_future(self.heartbeat_loop())

    async def idle_loop(self):
        """xmpp.multiplex.idle: a reader-idle event after idle/2 without
        input sets a flag; a second consecutive one closes the socket."""
        while True:
            await asyncio.sleep(0.1 if 0 < self.idle < 10 else 1)
            if self.idle <= 0:
                continue
            half = self.idle / 2
            now = time.monotonic()
            for c in list(self.conns):
                if c.closed or now - max(c.last_read, c.idle_mark) < half:
                    continue
                c.idle_mark = now
                if c.idle_flag:
                    self.fail(c, "connection-timeout",
                              "Connection has been idle.")
                else:
                    c.idle_flag = True

    # ---------------------------------------------------------- control
    async def control_client(self, reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                if not line.strip():
                    continue
                req = {}
                try:
                    req = json.loads(line)
                    handler = getattr(self, "ctl_" + str(req.get("cmd")), None)
                    if handler is None:
                        raise ValueError("unknown cmd %r" % req.get("cmd"))
                    kw = {k: v for k, v in req.items() if k != "cmd"}
                    resp = handler(**kw)
                    resp["ok"] = True
                except Exception as e:
                    resp = {"ok": False, "error": "%s: %s" % (
                        type(e).__name__, e)}
                writer.write((json.dumps(resp) + "\n").encode())
                await writer.drain()
                if req.get("cmd") == "shutdown" and resp.get("ok"):
                    await self.shutdown()
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def ctl_ping(self):
        return {}

    def ctl_state(self):
        return {"sockets": [c.info() for c in sorted(self.conns,
                                                     key=lambda c: c.id)],
                "sessions": [s.info() for s in self.sessions.values()],
                "version": self.version}

    def ctl_events(self, since=0, limit=None):
        first = self.seq - len(self.events)
        start = max(0, int(since) - first)
        evs = list(itertools.islice(self.events, start, None))
        if limit is not None:
            evs = evs[:int(limit)]
        nxt = evs[-1]["seq"] + 1 if evs else max(int(since), first)
        return {"events": evs, "next": nxt}

    def ctl_offline(self, user, clear=False):
        msgs = self.offline.get(user.lower(), [])
        if clear:
            self.offline.pop(user.lower(), None)
        return {"messages": [serialize(m) for m, _ in msgs]}

    def find_sessions(self, jid):
        node, dom, res = split_jid(jid)
        out = []
        for r, s in self.resources.get(node, {}).items():
            if res is None or r == res:
                out.append(s)
        return out

    def ctl_kick(self, jid, condition=None):
        found = self.find_sessions(jid)
        for s in found:
            self.server_close(s, condition)
        return {"kicked": [s.streamid for s in found]}

    def ctl_close_session(self, streamid, error=None, cm=None):
        s = next((s for s in self.sessions.values()
                  if s.streamid == streamid and (cm is None or s.cm == cm)),
                 None)
        if s is None:
            if cm is None:
                raise ValueError("no session %r (give cm=)" % streamid)
            s = ClientSession(cm.lower(), streamid, None, None)
            s.closed = True
        c = self.hash_socket(s.cm, s.jhash)
        if c is not None:
            err = stream_error_xml(error) if error else ""
            c.send('<iq type="set" id="%s" from="%s" to="%s"><session '
                   'xmlns="%s" id="%s"><close/>%s</session></iq>' % (
                       self.tinder_id(), self.domain, esc_attr(s.cm), NS_CMP,
                       esc_attr(s.streamid), err))
        self.remove_session(s)
        return {"sent": c is not None}

    def ctl_send_route(self, cm, streamid, payload, escaped=False):
        cm = cm.lower()
        c = self.hash_socket(cm, java_hash(streamid))
        if c is None:
            raise ValueError("no socket for %r" % cm)
        if escaped:
            c.send('<route from="%s" to="%s" streamid="%s">%s</route>' % (
                self.domain, esc_attr(cm), esc_attr(streamid),
                esc_text(payload)))
        else:
            c.send('<route streamid="%s" from="%s" to="%s">%s</route>' % (
                esc_attr(streamid), self.domain, esc_attr(cm), payload))
        return {"sock": c.id}

    def ctl_send_raw(self, cm, xml):
        socks = self.by_name.get(cm.lower())
        if not socks:
            raise ValueError("no socket for %r" % cm)
        socks[0].send(xml)
        return {"sock": socks[0].id}

    def ctl_drop_sockets(self, cm=None, abort=False, count=None):
        victims = [c for c in list(self.conns)
                   if cm is None or c.cm == cm.lower()]
        if count is not None:
            victims = victims[:int(count)]
        for c in victims:
            if abort:
                self.cleanup(c)
                c.transport.abort()
            else:
                self.close_conn(c)
        return {"dropped": len(victims)}

    def ctl_set(self, key, value):
        if key == "version":
            self.set_version(value)
        elif key == "mechanisms":
            self.mechanisms = self.parse_list(value)
        elif key == "secret":
            self.secret = str(value)
        elif key == "accept":
            self.accept = bool(value)
        elif key == "read_paused":
            self.read_paused = bool(value)
            for c in self.conns:
                if self.read_paused:
                    c.transport.pause_reading()
                else:
                    c.transport.resume_reading()
        elif key == "heartbeat":
            self.heartbeat = float(value)
            self.restart_heartbeat()
        elif key == "idle":
            self.idle = float(value)
        elif key == "rosters":
            if value not in ("mutual", "empty"):
                raise ValueError("rosters: mutual|empty")
            self.rosters = value
        elif key == "register":
            self.register = bool(value)
        elif key == "iq_auth":
            self.iq_auth = bool(value)
        elif key == "blocked_ips":
            self.blocked_ips = set(self.parse_list(value or []))
        elif key == "socket_order":
            if value not in ("registration", "chm"):
                raise ValueError("socket_order: registration|chm")
            self.socket_order = value
            self.rebuild_names()
        elif key == "tls_policy":
            if value not in ("disabled", "optional", "required"):
                raise ValueError("tls_policy: disabled|optional|required")
            self.tls_policy = value
        elif key == "nodelay":
            self.nodelay = bool(value)
        elif key == "users":
            for u, pw in dict(value).items():
                self.users[u.lower()] = pw
        else:
            raise ValueError("unknown key %r" % key)
        return {}

    def ctl_shutdown(self):
        return {}

    async def shutdown(self):
        """Openfire stopping: system-shutdown on every CM socket."""
        for c in list(self.conns):
            if not c.closed:
                self.fail(c, "system-shutdown")
        self.stopped.set()


# ----------------------------------------------------------------- main
def hostport(s):
    host, _, port = s.rpartition(":")
    return host or "127.0.0.1", int(port)


async def amain(args):
    loop = asyncio.get_running_loop()
    of = Openfire(args)
    host, port = hostport(args.listen)
    chost, cport = hostport(args.control)
    srv = await loop.create_server(lambda: CMConnection(of), host, port,
                                   reuse_address=True)
    tls_srv = None
    if args.tls_listen:
        if of.tls_ctx is None:
            raise SystemExit("--tls-listen needs --tls-cert")
        thost, tport = hostport(args.tls_listen)
        tls_srv = await loop.create_server(
            lambda: CMConnection(of, direct=True), thost, tport,
            ssl=of.tls_ctx, reuse_address=True)
    ctl = await asyncio.start_server(of.control_client, chost, cport,
                                     limit=64 * 1024 * 1024,
                                     reuse_address=True)
    port = srv.sockets[0].getsockname()[1]
    cport = ctl.sockets[0].getsockname()[1]
    of.restart_heartbeat()
    of.idle_task = asyncio.ensure_future(of.idle_loop())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(
            sig, lambda: asyncio.ensure_future(of.shutdown()))
    print("READY %d %d" % (port, cport), flush=True)
    await of.stopped.wait()
    srv.close()
    ctl.close()
    if tls_srv is not None:
        tls_srv.close()
    # let the final writes drain
    deadline = time.monotonic() + 1.0
    while any(not c.transport.is_closing() for c in list(of.conns)) and \
            time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:5262")
    ap.add_argument("--control", default="127.0.0.1:0")
    ap.add_argument("--domain", default="localhost")
    ap.add_argument("--secret", default="cmsecret")
    ap.add_argument("--users", default="alice:alicepw,bob:bobpw")
    ap.add_argument("--version", default="4.1")
    ap.add_argument("--mechanisms", default=",".join(DEFAULT_MECHANISMS))
    ap.add_argument("--no-register", action="store_true")
    ap.add_argument("--iq-auth", action="store_true")
    ap.add_argument("--heartbeat", type=float, default=30.0)
    ap.add_argument("--idle", type=float, default=300.0)
    ap.add_argument("--rosters", choices=("mutual", "empty"),
                    default="mutual")
    ap.add_argument("--socket-order", choices=("registration", "chm"),
                    default="registration")
    ap.add_argument("--tls-cert", help="PEM certificate (chain): STARTTLS "
                    "on the CM port (xmpp.multiplex.tls.*)")
    ap.add_argument("--tls-key", help="PEM key of --tls-cert")
    ap.add_argument("--tls-policy", choices=("disabled", "optional",
                                             "required"),
                    default="optional", help="xmpp.multiplex.tls.policy")
    ap.add_argument("--tls-listen", help="HOST:PORT of a Direct-TLS CM "
                    "listener (xmpp.multiplex.ssl.port, 5263)")
    ap.add_argument("--tls-client-ca", help="require a client certificate "
                    "signed by this CA (xmpp.multiplex.cert.policy needed)")
    ap.add_argument("--nodelay", action="store_true",
                    help="TCP_NODELAY on CM sockets (xmpp.socket.tcp-nodelay"
                    "=true); Openfire's default, and this one's, is Nagle on")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(stream=sys.stderr,
                        level=logging.DEBUG if args.verbose else
                        logging.WARNING,
                        format="standin: %(levelname)s %(message)s")
    asyncio.run(amain(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
