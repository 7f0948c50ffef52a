"""A raw BOSH (XEP-0124/XEP-0206) client for tests: every request is an
HTTP POST written by http.client on a connection of its own choosing, so
that requests can be held open side by side (hold, rid windows), and
every response body is parsed on its own as an XML document."""
import base64
import http.client
import xml.etree.ElementTree as ET
from xml.sax.saxutils import quoteattr

NS_HTTPBIND = "http://jabber.org/protocol/httpbind"
NS_XBOSH = "urn:xmpp:xbosh"
NS_STREAM = "http://etherx.jabber.org/streams"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_CLIENT = "jabber:client"
NS_XSTREAMS = "urn:ietf:params:xml:ns:xmpp-streams"


def q(ns, local):
    return "{%s}%s" % (ns, local)


class Response:
    def __init__(self, status, headers, raw):
        self.status = status
        self.headers = headers
        self.raw = raw
        xml = headers.get("Content-Type", "").startswith("text/xml")
        self.body = ET.fromstring(raw) if raw and xml else None

    def get(self, name, default=None):
        return self.body.get(name, default)

    @property
    def children(self):
        return list(self.body) if self.body is not None else []

    @property
    def terminate(self):
        return self.body is not None and self.body.get("type") == "terminate"

    @property
    def condition(self):
        return self.body.get("condition")


class Pending:
    """A request sent and not read yet."""

    def __init__(self, conn, rid):
        self.conn = conn
        self.rid = rid

    def wait(self, timeout=None):
        if timeout is not None:
            self.conn.sock.settimeout(timeout)
        r = self.conn.getresponse()
        raw = r.read()
        return Response(r.status, dict(r.getheaders()), raw)


class Bosh:
    def __init__(self, port, path="/http-bind", host="127.0.0.1",
                 timeout=30, origin=None):
        self.port = port
        self.path = path
        self.host = host
        self.timeout = timeout
        self.origin = origin
        self.sid = None
        self.rid = 1000
        self.conns = []

    def conn(self, i=0):
        while len(self.conns) <= i:
            self.conns.append(http.client.HTTPConnection(
                self.host, self.port, timeout=self.timeout))
        return self.conns[i]

    def body(self, children="", rid=None, sid=True, **attrs):
        if rid is None:
            self.rid += 1
            rid = self.rid
        a = {"rid": str(rid), "xmlns": NS_HTTPBIND}
        if sid and self.sid:
            a["sid"] = self.sid
        a.update(attrs)
        s = "<body" + "".join(" %s=%s" % (k, quoteattr(v))
                              for k, v in a.items())
        if children:
            return s + ">" + children + "</body>", rid
        return s + "/>", rid

    def start(self, raw_body, conn=0, rid=None, headers=None):
        c = self.conn(conn)
        h = {"Content-Type": "text/xml; charset=utf-8"}
        if self.origin:
            h["Origin"] = self.origin
        h.update(headers or {})
        c.request("POST", self.path, body=raw_body.encode(), headers=h)
        return Pending(c, rid)

    def post(self, children="", conn=0, **attrs):
        b, rid = self.body(children, **attrs)
        return self.start(b, conn, rid)

    def request(self, children="", conn=0, timeout=None, **attrs):
        return self.post(children, conn, **attrs).wait(timeout)

    def create(self, to="localhost", wait="60", hold="1", **attrs):
        attrs.setdefault("xmlns:xmpp", NS_XBOSH)
        attrs.setdefault("xmpp:version", "1.0")
        b, rid = self.body("", to=to, wait=wait, hold=hold, ver="1.6",
                           **{"xml:lang": "en", **attrs})
        r = self.start(b, 0, rid).wait()
        if r.body is not None and r.get("sid"):
            self.sid = r.get("sid")
        return r

    def until(self, pred, conn=0, tries=20, timeout=None):
        """Empty polls until a response has a child matching pred."""
        got = []
        for _ in range(tries):
            r = self.request("", conn=conn, timeout=timeout)
            if r.terminate:
                raise AssertionError("session terminated: %r" % r.raw)
            for ch in r.children:
                got.append(ch)
                if pred(ch):
                    return ch, got
        raise AssertionError("no matching element in %r" % got)

    def login(self, user, password, resource="web", to="localhost",
              wait="60"):
        r = self.create(to=to, wait=wait)
        assert r.status == 200 and not r.terminate, r.raw
        feats = r.body.find(q(NS_STREAM, "features"))
        if feats is None:
            feats, _ = self.until(lambda e: e.tag == q(NS_STREAM, "features"))
        creds = base64.b64encode(
            ("\0%s\0%s" % (user, password)).encode()).decode()
        res = self.request('<auth xmlns="%s" mechanism="PLAIN">%s</auth>'
                           % (NS_SASL, creds))
        ok = [e for e in res.children if e.tag == q(NS_SASL, "success")]
        if not ok:
            ok, _ = self.until(lambda e: e.tag in (q(NS_SASL, "success"),
                                                   q(NS_SASL, "failure")))
            ok = [ok]
        assert ok[0].tag == q(NS_SASL, "success"), res.raw
        res = self.request("", **{"xmpp:restart": "true",
                                  "xmlns:xmpp": NS_XBOSH, "to": to})
        feats = res.body.find(q(NS_STREAM, "features"))
        assert feats is not None and feats.find(q(NS_BIND, "bind")) \
            is not None, res.raw
        res = self.request('<iq xmlns="jabber:client" type="set" id="bind1">'
                           '<bind xmlns="%s"><resource>%s</resource></bind>'
                           '</iq>' % (NS_BIND, resource))
        iqs = [e for e in res.children if e.tag == q(NS_CLIENT, "iq")]
        if not iqs:
            iq, _ = self.until(lambda e: e.tag == q(NS_CLIENT, "iq"))
            iqs = [iq]
        assert iqs[0].get("type") == "result", res.raw
        return iqs[0].find(q(NS_BIND, "bind")).find(q(NS_BIND, "jid")).text

    def close(self):
        for c in self.conns:
            c.close()
