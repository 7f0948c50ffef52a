#!/usr/bin/env python3
"""Write the seed corpus of the fuzz targets into t/fuzz/corpus/<target>/.

client:   hand-written client streams (slixmpp-like: SASL PLAIN / SCRAM,
          restart, bind, session, roster, presence, messages with CDATA,
          single quotes, '>' and '"' in values, prefixes, xml:lang).
upstream: what Openfire 4.1.6 sent on each CM socket, taken from the
          recorded exchanges (a markdown file named by XMPP_CM_TRANSCRIPTS,
          not in the repository: every "S<" line of a socket, in order;
          the seeds made from it are committed), plus Openfire 4.8+ forms
          (escaped-text payloads, stream errors in routes and close IQs).
route:    single stanzas from the client seeds.
Each file starts with the target's control bytes (see the targets).
"""
import hashlib
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TRANSCRIPTS = os.environ.get("XMPP_CM_TRANSCRIPTS")

HDR = ("<?xml version='1.0'?><stream:stream to='localhost' "
       "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
       " version='1.0' xml:lang='en'>")
HDR_DQ = ('<stream:stream xmlns:stream="http://etherx.jabber.org/streams" '
          'xmlns="jabber:client" to="localhost" version="1.0">')
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"

PRE = [
    "<auth xmlns='%s' mechanism='PLAIN'>AGFsaWNlAGFsaWNlcHc=</auth>" % SASL,
    "<auth xmlns='%s' mechanism='SCRAM-SHA-1'>biwsbj1hbGljZSxyPWZ5a28rZDJsYmJGZ09OUnY5cWt4ZGF3TA==</auth>" % SASL,
    "<response xmlns='%s'>Yz1iaXdzLHI9ZnlrbytkMmxiYkZnT05Sdjlxa3hkYXdMM3JmY05IWUpZMVpWdldWczdqLHA9djBYOHYzQnoyVDBDSkdiSlF5RjBYK0hJNFRzPQ==</response>" % SASL,
    "<iq type='get' id='reg1'><query xmlns='jabber:iq:register'/></iq>",
    "<abort xmlns='%s'/>" % SASL,
]
POST = [
    "<iq type='set' id='bind_1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>slixmpp</resource></bind></iq>",
    "<iq type='set' id='sess_1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
    "<iq type='get' id='roster_1'><query xmlns='jabber:iq:roster'/></iq>",
    "<iq type='set' id='r2'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' name=\"Bob's &amp; co\"><group>Friends</group></item></query></iq>",
    "<presence><priority>1</priority><status>it's me</status><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='http://slixmpp.com/ver/1.8' ver='abc='/></presence>",
    "<presence to='bob@localhost' type='subscribe'/>",
    "<message to='bob@localhost' type='chat' id='m1'><body>hello bob</body></message>",
    "<message to='bob@localhost' type='chat' id='a\"b>c' xml:lang='de'><body>x &gt; y &amp;&amp; 'q' \"dq\"</body></message>",
    "<message to='bob@localhost'><body><![CDATA[<b>bold</b> ]] ]]]> & <x/>]]></body><html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'><p style='font-weight:bold'>hi</p></body></html></message>",
    "<message\n to = 'bob@localhost'\ttype=\"chat\"><body>line1\r\nline2\rline3</body><x:data xmlns:x='urn:x' x:a='1'/></message>",
    "<m:message xmlns:m='jabber:client' to='bob@localhost'><m:body>prefixed</m:body></m:message>",
    "<iq type='get' id='ping1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
    "<message to='bob@localhost'><body>\u00e9\u4e2d\U0001F600 &#x263A; &#9731;</body></message>",
    # what jid.c checks: malformed JIDs, types, <show/>, folding
    "<message to='a@b@localhost' id='j1'><body>x</body></message>",
    "<iq to='@localhost' type='error' id='j2'/>",
    "<presence xmlns:x='urn:x' to='x@@[::1]' x:a='&lt;'><x:y/></presence>",
    "<message to='BOB@LocalHost./R' from = \"Al&#73;ce@b\u00fccher.example.\"><body/></message>",
    "<presence><show/><status>s</status></presence>",
    "<presence><show>away</show><show>dnd</show></presence>",
    "<presence type='bogus'><show>bogus</show></presence>",
    "<iq id='t'><ping xmlns='urn:xmpp:ping'/></iq>",
    "<message to='n@[2001:db8::1]/\u00e9@/x' type='headline'/>",
]
END = "</stream:stream>"


def client_streams():
    out = []
    s = HDR + "".join(PRE[:1]) + HDR + "".join(POST) + END
    out.append((0x59, s))                     # restarts, 16k, depth 32
    out.append((0x7a, HDR + PRE[0] + HDR + "".join(POST) + END))
    out.append((0x09, HDR + "".join(PRE) + END))   # one read... 16k
    out.append((0x39, HDR_DQ + "\n".join(PRE[1:3]) + "\n" + HDR_DQ
                + "\n  ".join(POST[5:]) + END))
    out.append((0x0a, HDR + PRE[3] + "<message><body>early</body></message>"))
    out.append((0x49, HDR + PRE[0] + HDR + POST[8] + POST[9] + POST[10]))
    out.append((0x59, HDR + PRE[0] + HDR + POST[7] * 3 + END))
    return out


def transcripts():
    if not TRANSCRIPTS:
        print("make_corpus: XMPP_CM_TRANSCRIPTS not set: the committed "
              "transcript seeds stay as they are", file=sys.stderr)
        return []
    try:
        text = open(TRANSCRIPTS, encoding="utf-8").read()
    except OSError:
        print("make_corpus: %s not found: no transcript seeds" % TRANSCRIPTS,
              file=sys.stderr)
        return []
    out = []
    for block in re.findall(r"```\n(.*?)```", text, re.S):
        data = []
        for line in block.splitlines():
            m = re.match(r"\s*[0-9.]+ S< (.*)$", line)
            if m and m.group(1) != "[EOF]":
                data.append(m.group(1))
        if data:
            out.append("".join(data))
    return out


UP_HDR = ("<?xml version='1.0' encoding='UTF-8'?><stream:stream "
          "xmlns:stream=\"http://etherx.jabber.org/streams\" "
          "xmlns=\"jabber:connectionmanager\" from=\"cm1-4242-a1b2c3/s0-1\" "
          "id=\"6eec06d07n\" version=\"1.0\" >")
UP_48 = [
    # Openfire 4.8+: SASL results and stream errors as escaped text
    '<handshake/><route streamid="r1s" from="localhost" to="cm1">&lt;success xmlns="urn:ietf:params:xml:ns:xmpp-sasl"/&gt;</route>'
    '<route streamid="r1s" from="localhost" to="cm1">&lt;failure xmlns="urn:ietf:params:xml:ns:xmpp-sasl"&gt;&lt;not-authorized/&gt;&lt;/failure&gt;</route>',
    '<handshake/><route streamid="r1a"><message xmlns="jabber:server" from="bob@localhost/x" to="alice@localhost/y" type="chat"><body>hi \'there\' &gt; &amp;</body></message></route>'
    '<route streamid="r1b"><iq xmlns="jabber:client" type="get" id="q\'1" from="bob@localhost" to="alice@localhost"><query xmlns="jabber:iq:version"/></iq></route>'
    '<route streamid="unknown-id"><message to="x"><body><![CDATA[<a>]]></body></message><presence type="unavailable"/></route>',
    '<handshake/><iq type="set" id="5-1" from="localhost" to="cm1"><session xmlns="http://jabber.org/protocol/connectionmanager" id="r1c"><close><stream:error xmlns:stream="http://etherx.jabber.org/streams"><conflict xmlns="urn:ietf:params:xml:ns:xmpp-streams"/></stream:error></close></session></iq>'
    '<route streamid="r1d" type="error"><error type="cancel"><item-not-found xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></error></route>'
    '<iq type="error" id="c1"><session xmlns="http://jabber.org/protocol/connectionmanager" id="r1e"><create/></session><error type="cancel"><not-allowed xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></error></iq>'
    '<iq type="error" id="c2"><session xmlns="http://jabber.org/protocol/connectionmanager" id="r1f"><failed/></session></iq>'
    '<stream:error><system-shutdown xmlns="urn:ietf:params:xml:ns:xmpp-streams"/></stream:error>',
    '<handshake/><iq type="set" id="cfg"><configuration xmlns="http://jabber.org/protocol/connectionmanager"><starttls xmlns="urn:ietf:params:xml:ns:xmpp-tls"><required/></starttls><mechanisms xmlns="urn:ietf:params:xml:ns:xmpp-sasl"><mechanism>PLAIN</mechanism><mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>&lt;X&amp;"</mechanism></mechanisms><auth xmlns="http://jabber.org/features/iq-auth"/><compression/></configuration></iq>'
    '<route streamid="r1s"><iq type="result" id="bind1"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"><jid>alice@localhost/res</jid></bind></iq></route></stream:stream>',
    # a configuration IQ whose id escapes to six times its length (issue 9,
    # item 15: overflowed a 256-byte stack buffer in the IQ result)
    '<iq type="set" id="%s"><configuration xmlns="http://jabber.org/protocol/connectionmanager"><mechanisms xmlns="urn:ietf:params:xml:ns:xmpp-sasl"><mechanism>PLAIN</mechanism></mechanisms></configuration></iq>'
    % ("&quot;" * 63),
    # server namespace after other attributes whose values hold its text,
    # a '>' or the other quote (issue 9, item 20)
    '<handshake/><route streamid="r1a"><message id="m xmlns=&quot;jabber:server&quot; 1" xmlns="jabber:server" to="alice@localhost/y"><body>xmlns="jabber:server"</body></message></route>'
    "<route streamid='r1b'><message id='q xmlns=\"jabber:server\"' xmlns = 'jabber:server'/></route>"
    '<route streamid="r1c"><presence id="a>b" xmlns="jabber:server"/></route>',
]


def main():
    corpus = os.path.join(HERE, "corpus")
    seeds = {"client": [], "upstream": [], "route": []}
    for flags, s in client_streams():
        seeds["client"].append(bytes([flags, 0x12, 0x34]) + s.encode())
    for i, st in enumerate(PRE + POST):
        seeds["route"].append(bytes([(i * 37) % 256]) + st.encode())
    seeds["route"].append(b"\x80" + "".join(POST).encode())
    for i, t in enumerate(transcripts()):
        seeds["upstream"].append(bytes([i % 4, 0x21, 0x43]) + t.encode())
    for i, t in enumerate(UP_48):
        seeds["upstream"].append(bytes([(i % 4) | 0x04, 0x55, 0x66])
                                 + (UP_HDR + t).encode())
    for name, items in seeds.items():
        d = os.path.join(corpus, name)
        os.makedirs(d, exist_ok=True)
        for b in items:
            h = hashlib.sha1(b).hexdigest()[:16]
            with open(os.path.join(d, "seed-" + h), "wb") as f:
                f.write(b)
        print("%s: %d seeds" % (name, len(items)))


if __name__ == "__main__":
    main()
