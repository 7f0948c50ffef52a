
/*
 * The route codec (src/ngx_stream_xmpp_cm_route.c): what a client stanza
 * becomes inside <route>, the session IQs, escaping, and the server
 * namespace taken off Openfire's payloads.
 *
 * Openfire's CM stream splitter tracks double quotes only, so a route must
 * hold no '-quoted attribute, no '>' in text or values, no CDATA, and be
 * exactly one fragment (docs/architecture.md, "the route codec").
 */

#include "unit.h"


static fuzz_upstream_t  ur_fp;


/* the fake pool's names (t/fuzz/fuzz_common.c): domain, CM, resource */

#define UR_ROUTE(id)                                                         \
    "<route to=\"localhost\" from=\"cm1-4242-a1b2c3\" streamid=\"" id "\">"

#define UR_IQ(n)                                                             \
    "<iq type=\"set\" id=\"c" n "\" to=\"localhost\" "                        \
    "from=\"cm1-4242-a1b2c3/s0-1\">"                                         \
    "<session xmlns=\"http://jabber.org/protocol/connectionmanager\" "       \
    "id=\"w7-ab\">"


/*
 * The route a single stanza gets (xmlns added as route_client does), the
 * same whether it comes in one read or in reads of 1 or 7 bytes (then the
 * sanitizer reads the bytes kept from earlier reads and the new ones).
 */

static void
ur_route(const char *stanza, const char *want, const char *file, int line)
{
    size_t          step;
    unit_stanzas_t  us;

    for (step = 0; step <= 7; step += step ? 6 : 1) {
        unit_framer_open(&us, 0, 0);

        if (unit_framer_feed(&us, stanza, step) != NGX_OK || us.n != 1) {
            unit_fail(file, line, "the framer accepts one stanza");

        } else if (us.s[0].route_len != strlen(want)
                   || memcmp(us.s[0].route, want, us.s[0].route_len) != 0)
        {
            unit_fail_str(file, line, stanza, want, strlen(want),
                          (u_char *) us.s[0].route, us.s[0].route_len);

        } else if (strcmp(us.s[0].raw, stanza) != 0) {
            unit_fail_str(file, line, "the stanza's bytes", stanza,
                          strlen(stanza), (u_char *) us.s[0].raw,
                          strlen(us.s[0].raw));
        }

        unit_framer_close(&us);
    }
}

#define CHECK_ROUTE(stanza, want)  ur_route(stanza, want, __FILE__, __LINE__)


UNIT_TEST(sanitize_single_quotes_become_double)
{
    CHECK_ROUTE("<message to='juliet@example.com' type='chat'>"
                "<body>hi</body></message>",
                "<message xmlns=\"jabber:client\" to=\"juliet@example.com\" "
                "type=\"chat\"><body>hi</body></message>");
}


UNIT_TEST(sanitize_keeps_other_bytes)
{
    /* layout, entity references, UTF-8, child namespaces: as sent */

    CHECK_ROUTE("<message xmlns=\"jabber:client\" to=\"a@b\">\n"
                "  <body>x &lt; y &amp;&apos; Gr\xc3\xbc\xc3\x9f" "e</body>\n"
                "  <x xmlns=\"urn:x\" a = \"1\"/></message>",
                "<message xmlns=\"jabber:client\" to=\"a@b\">\n"
                "  <body>x &lt; y &amp;&apos; Gr\xc3\xbc\xc3\x9f" "e</body>\n"
                "  <x xmlns=\"urn:x\" a = \"1\"/></message>");
}


UNIT_TEST(sanitize_adds_xmlns_to_the_stanza_only)
{
    CHECK_ROUTE("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/>"
                "</iq>",
                "<iq xmlns=\"jabber:client\" type=\"get\" id=\"r1\">"
                "<query xmlns=\"jabber:iq:roster\"/></iq>");

    CHECK_ROUTE("<presence/>", "<presence xmlns=\"jabber:client\"/>");

    CHECK_ROUTE("<presence\n/>", "<presence xmlns=\"jabber:client\"\n/>");

    /* its own default namespace: nothing added */

    CHECK_ROUTE("<presence xmlns='jabber:client'/>",
                "<presence xmlns=\"jabber:client\"/>");
}


UNIT_TEST(sanitize_escapes_what_the_splitter_would_misread)
{
    /* '"' and '>' in a '-quoted value, '>' in a "-quoted one and in text */

    CHECK_ROUTE("<message id='say \"hi\" >' to=\"a>b\" xml:lang=\"it's\">"
                "<body>1 > 0</body></message>",
                "<message xmlns=\"jabber:client\" "
                "id=\"say &quot;hi&quot; &gt;\" to=\"a&gt;b\" "
                "xml:lang=\"it's\"><body>1 &gt; 0</body></message>");
}


UNIT_TEST(sanitize_cdata_becomes_text)
{
    CHECK_ROUTE("<message><body><![CDATA[<b>&x]]]></body></message>",
                "<message xmlns=\"jabber:client\">"
                "<body>&lt;b&gt;&amp;x]</body></message>");

    CHECK_ROUTE("<message><body>a<![CDATA[]]>b<![CDATA[]]]]>c</body>"
                "</message>",
                "<message xmlns=\"jabber:client\"><body>ab]]c</body>"
                "</message>");
}


UNIT_TEST(sanitize_mixed)
{
    CHECK_ROUTE("<message to='a@b' id='q\"1'><body><![CDATA[x>y]]> &amp; z"
                "</body></message>",
                "<message xmlns=\"jabber:client\" to=\"a@b\" id=\"q&quot;1\">"
                "<body>x&gt;y &amp; z</body></message>");
}


/* ------------------------------------------------------------ routes */

typedef struct {
    ngx_xmpp_cm_stream_t   stream;
    ngx_int_t              rc;
} ur_client_t;


static void
ur_session(ur_client_t *uc, char *id)
{
    fuzz_upstream_init(&ur_fp);

    ngx_memzero(uc, sizeof(ur_client_t));
    uc->stream.up = &ur_fp.up;
    uc->stream.sock = &ur_fp.socks[0];
    uc->stream.node.str.data = (u_char *) id;
    uc->stream.node.str.len = strlen(id);
}


static ngx_int_t
ur_route_client(unit_stanzas_t *us, ngx_xmpp_cm_elem_t *e)
{
    ur_client_t  *uc = us->ctx;

    uc->rc = ngx_xmpp_cm_route_client(&uc->stream, us->x, e, NULL);

    return NGX_OK;
}


UNIT_TEST(route_client_is_one_fragment)
{
    char            *out;
    size_t           len;
    ngx_uint_t       nfrag;
    ur_client_t      uc;
    unit_stanzas_t   us;

    ur_session(&uc, "w42-00ff");
    unit_framer_open(&us, 0, 0);
    us.hook = ur_route_client;
    us.ctx = &uc;

    CHECK_INT(unit_framer_feed(&us,
                  "<message to='juliet@example.com' type='chat'>"
                  "<body>a > b, \"c\"<![CDATA[ <d/> ]]></body></message>"
                  "<presence/>", 0),
              NGX_OK);
    CHECK_INT(us.n, 2);
    CHECK_INT(uc.rc, NGX_OK);

    out = (char *) fuzz_queue_take(&ur_fp.socks[0].out, &len);

    CHECK_CSTR(out,
               UR_ROUTE("w42-00ff")
               "<message xmlns=\"jabber:client\" to=\"juliet@example.com\" "
               "type=\"chat\"><body>a &gt; b, \"c\" &lt;d/&gt; </body>"
               "</message></route>"
               UR_ROUTE("w42-00ff")
               "<presence xmlns=\"jabber:client\"/></route>");

    /* as Openfire's double-quote-only splitter sees it: two fragments */

    CHECK_CSTR(fuzz_splitter_check((u_char *) out, len, &nfrag), NULL);
    CHECK_INT(nfrag, 2);
    CHECK_CSTR(fuzz_wellformed((u_char *) out, len, 1), NULL);

    free(out);
    unit_framer_close(&us);
}


UNIT_TEST(route_client_refuses_what_openfire_cannot_take)
{
    char            *stanza, *p, *out;
    size_t           head, fit, len, n;
    ur_client_t      uc;
    unit_stanzas_t   us;

    static const char  open[] = "<message xmlns=\"jabber:client\"><body>";
    static const char  close[] = "</body></message>";

    /*
     * The largest route is NGX_XMPP_CM_FRAGMENT_MAX bytes: the stanza
     * that makes exactly that is routed, one byte more is DECLINED (the
     * client gets policy-violation) and nothing is queued.
     */

    fuzz_upstream_init(&ur_fp);
    head = sizeof("<route to=\"\" from=\"\" streamid=\"w1-1\">") - 1
           + ur_fp.up.domain.len + ur_fp.up.name.len;
    fit = NGX_XMPP_CM_FRAGMENT_MAX - head - (sizeof("</route>") - 1);

    stanza = malloc(fit + 2);

    for (len = fit; len <= fit + 1; len++) {
        p = (char *) ngx_cpymem(stanza, open, sizeof(open) - 1);
        ngx_memset(p, 'a', len - (sizeof(open) - 1) - (sizeof(close) - 1));
        p += len - (sizeof(open) - 1) - (sizeof(close) - 1);
        (void) ngx_cpymem(p, close, sizeof(close));

        ur_session(&uc, "w1-1");
        unit_framer_open(&us, 2 * NGX_XMPP_CM_OPENFIRE_MAX, 0);
        us.hook = ur_route_client;
        us.ctx = &uc;

        CHECK_INT(unit_framer_feed(&us, stanza, 65536), NGX_OK);
        CHECK_INT(uc.rc, len == fit ? NGX_OK : NGX_DECLINED);
        CHECK_INT(ur_fp.socks[0].out.size,
                  len == fit ? NGX_XMPP_CM_FRAGMENT_MAX : 0);

        out = (char *) fuzz_queue_take(&ur_fp.socks[0].out, &n);
        free(out);
        unit_framer_close(&us);
    }

    free(stanza);
}


UNIT_TEST(route_raw_wraps_only_safe_ids)
{
    char       *out;
    size_t      len;
    ngx_str_t   id;

    fuzz_upstream_init(&ur_fp);

    ngx_str_set(&id, "w7-ab");
    CHECK_INT(ngx_xmpp_cm_route_raw(&ur_fp.up, &ur_fp.socks[1], &id,
                                    (u_char *) "<presence/>", 11),
              NGX_OK);

    /* an id that could break the shared stream, or nothing to route */

    ngx_str_set(&id, "w7\"/><x");
    CHECK_INT(ngx_xmpp_cm_route_raw(&ur_fp.up, &ur_fp.socks[1], &id,
                                    (u_char *) "<presence/>", 11),
              NGX_DECLINED);

    ngx_str_set(&id, "w7-ab");
    CHECK_INT(ngx_xmpp_cm_route_raw(&ur_fp.up, &ur_fp.socks[1], &id,
                                    (u_char *) "", 0),
              NGX_DECLINED);

    out = (char *) fuzz_queue_take(&ur_fp.socks[1].out, &len);
    CHECK_CSTR(out, UR_ROUTE("w7-ab") "<presence/></route>");
    free(out);
}


UNIT_TEST(session_iqs)
{
    char       *out;
    size_t      len;
    ngx_str_t   id, addr;

    fuzz_upstream_init(&ur_fp);

    ngx_str_set(&id, "w7-ab");
    ngx_str_set(&addr, "192.0.2.1");

    CHECK_INT(ngx_xmpp_cm_route_session_iq(&ur_fp.up, &ur_fp.socks[0],
                                           &id, NGX_XMPP_CM_IQ_CREATE, &addr,
                                           NULL, 0),
              NGX_OK);
    CHECK_INT(ngx_xmpp_cm_route_session_iq(&ur_fp.up, &ur_fp.socks[0],
                                           &id, NGX_XMPP_CM_IQ_CREATE, NULL,
                                           NULL, 0),
              NGX_OK);
    CHECK_INT(ngx_xmpp_cm_route_session_iq(&ur_fp.up, &ur_fp.socks[0],
                                           &id, NGX_XMPP_CM_IQ_FAILED, NULL,
                                           (u_char *) "<message/>", 10),
              NGX_OK);
    CHECK_INT(ngx_xmpp_cm_route_session_iq(&ur_fp.up, &ur_fp.socks[0],
                                           &id, NGX_XMPP_CM_IQ_CLOSE, NULL,
                                           NULL, 0),
              NGX_OK);

    out = (char *) fuzz_queue_take(&ur_fp.socks[0].out, &len);
    CHECK_CSTR(out,
        UR_IQ("1") "<create><host name=\"192.0.2.1\" address=\"192.0.2.1\"/>"
        "</create></session></iq>"
        UR_IQ("2") "<create/></session></iq>"
        UR_IQ("3") "<failed><message/></failed></session></iq>"
        UR_IQ("4") "<close/></session></iq>");
    free(out);

    /* an empty or odd id would kill the shared socket: nothing is sent */

    ngx_str_set(&id, "");
    CHECK_INT(ngx_xmpp_cm_route_session_iq(&ur_fp.up, &ur_fp.socks[0],
                                           &id, NGX_XMPP_CM_IQ_CLOSE, NULL,
                                           NULL, 0),
              NGX_ERROR);
    ngx_str_set(&id, "a b");
    CHECK_INT(ngx_xmpp_cm_route_session_iq(&ur_fp.up, &ur_fp.socks[0],
                                           &id, NGX_XMPP_CM_IQ_CLOSE, NULL,
                                           NULL, 0),
              NGX_ERROR);

    /* <failed> without a payload */

    ngx_str_set(&id, "w7-ab");
    CHECK_INT(ngx_xmpp_cm_route_session_iq(&ur_fp.up, &ur_fp.socks[0],
                                           &id, NGX_XMPP_CM_IQ_FAILED, NULL,
                                           NULL, 0),
              NGX_ERROR);
    CHECK_INT(ur_fp.socks[0].out.size, 0);
}


/* ------------------------------------------------------------ escape */

static void
ur_escape(const char *in, const char *want, const char *file, int line)
{
    u_char  buf[256];
    size_t  n, len;

    len = strlen(in);
    n = ngx_xmpp_cm_escape(NULL, (u_char *) in, len);

    if (n != strlen(want) || n > sizeof(buf)) {
        unit_fail_int(file, line, "ngx_xmpp_cm_escape(NULL): counted",
                      strlen(want), n);
        return;
    }

    n = ngx_xmpp_cm_escape(buf, (u_char *) in, len);

    if (n != strlen(want) || memcmp(buf, want, n) != 0) {
        unit_fail_str(file, line, in, want, strlen(want), buf, n);
    }
}

#define CHECK_ESCAPE(in, want)  ur_escape(in, want, __FILE__, __LINE__)


UNIT_TEST(escape_markup)
{
    /* safe as text and inside a "-quoted value; ' needs no escaping there */

    CHECK_ESCAPE("<>&\"'", "&lt;&gt;&amp;&quot;'");
    CHECK_ESCAPE("a&amp;b", "a&amp;amp;b");
    CHECK_ESCAPE("", "");
    CHECK_ESCAPE("plain \xc3\xa9t\xc3\xa9\n\t", "plain \xc3\xa9t\xc3\xa9\n\t");
}


/* ------------------------------------------------------ server xmlns */

typedef struct {
    const char  *in;
    u_char      *out;
    size_t       len;
    size_t       counted;
} ur_strip_t;


static ngx_int_t
ur_strip_element(void *data, ngx_xmpp_cm_elem_t *e)
{
    ur_strip_t  *us = data;
    size_t       len;

    len = strlen(us->in);
    us->counted = ngx_xmpp_cm_strip_server_ns(NULL, (u_char *) us->in, len,
                                              e->root);
    us->out = malloc(len);
    us->len = ngx_xmpp_cm_strip_server_ns(us->out, (u_char *) us->in, len,
                                          e->root);
    return NGX_OK;
}


static void
ur_strip(const char *in, const char *want, const char *file, int line)
{
    ngx_int_t   rc;
    ur_strip_t  us;

    ngx_memzero(&us, sizeof(ur_strip_t));
    us.in = in;

    /* one element as Openfire sends it, parsed in tree mode */

    rc = ngx_xmpp_cm_xml_fragment(&fuzz_log, fuzz_worker->parking,
                                  (u_char *) in, strlen(in), 1,
                                  NGX_XMPP_CM_UPSTREAM_MAX_STANZA,
                                  NGX_XMPP_CM_UPSTREAM_MAX_DEPTH,
                                  ur_strip_element, &us);
    if (rc != NGX_OK || us.out == NULL) {
        unit_fail_int(file, line, "ngx_xmpp_cm_xml_fragment()", NGX_OK, rc);

    } else if (us.counted != us.len || us.len != strlen(want)
               || memcmp(us.out, want, us.len) != 0)
    {
        unit_fail_str(file, line, in, want, strlen(want), us.out, us.len);
    }

    free(us.out);
}

#define CHECK_STRIP(in, want)  ur_strip(in, want, __FILE__, __LINE__)


UNIT_TEST(strip_server_namespace)
{
    CHECK_STRIP("<message xmlns=\"jabber:server\" from=\"a@b/r\" to=\"c@d\">"
                "<body>x</body></message>",
                "<message from=\"a@b/r\" to=\"c@d\"><body>x</body></message>");
    CHECK_STRIP("<iq type='result' xmlns = 'jabber:connectionmanager'/>",
                "<iq type='result'/>");

    /* only the attribute, never a value that looks like one */

    CHECK_STRIP("<message id='x xmlns=\"jabber:server\"' "
                "xmlns=\"jabber:server\"/>",
                "<message id='x xmlns=\"jabber:server\"'/>");

    /* no server namespace on the start tag: as is */

    CHECK_STRIP("<message xmlns=\"jabber:client\" to=\"c@d\"/>",
                "<message xmlns=\"jabber:client\" to=\"c@d\"/>");
    CHECK_STRIP("<message to=\"c@d\"><x xmlns=\"jabber:server\"/></message>",
                "<message to=\"c@d\"><x xmlns=\"jabber:server\"/></message>");
}


void
unit_suite_route(void)
{
    UNIT_RUN(sanitize_single_quotes_become_double);
    UNIT_RUN(sanitize_keeps_other_bytes);
    UNIT_RUN(sanitize_adds_xmlns_to_the_stanza_only);
    UNIT_RUN(sanitize_escapes_what_the_splitter_would_misread);
    UNIT_RUN(sanitize_cdata_becomes_text);
    UNIT_RUN(sanitize_mixed);
    UNIT_RUN(route_client_is_one_fragment);
    UNIT_RUN(route_client_refuses_what_openfire_cannot_take);
    UNIT_RUN(route_raw_wraps_only_safe_ids);
    UNIT_RUN(session_iqs);
    UNIT_RUN(escape_markup);
    UNIT_RUN(strip_server_namespace);
}
