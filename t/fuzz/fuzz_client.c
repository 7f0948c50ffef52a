
/*
 * fuzz_client: the client side of the CM.
 *
 * Input: 3 control bytes, then a client's byte stream.
 *   byte 0: bits 0-1 stanza size limit (512, 16k, 256k, 1 MiB - 1024),
 *           bits 2-3 nesting limit (2, 4, 32, 1000),
 *           bits 4-5 read sizes (1-8, 1-64, 1-2048, all at once),
 *           bit 6    restarts allowed (as after SASL success / STARTTLS)
 *   bytes 1-2: PRNG seed for the read sizes and the restart points.
 *
 * Each read is a fresh malloc()ed buffer, freed right after the feed:
 * like the worker's shared read buffer, its bytes are gone after the
 * read, so any later use of them is a use-after-free under ASan.
 *
 * Every stanza the framer accepts goes through the real
 * ngx_xmpp_cm_route_client() on a socket of a fake pool, and the route
 * that lands in the socket's queue must
 *   - split as exactly one fragment by a double-quote-only splitter
 *     (Openfire's), with no '-quoted attribute and no '>' in text;
 *   - be well-formed XML with namespaces, the stanza declaring a default
 *     namespace on itself;
 *   - mean the same as the client's bytes: the same elements, namespaces,
 *     attributes and character data (expat events compared);
 * and the counting pass of the sanitizer must match its writing pass.
 * A stanza that the checks of ngx_stream_xmpp_cm_jid.c change (a folded
 * 'to' or 'from', an invalid <show/> left out) need not mean the same;
 * one they refuse gets the CM's stanza error instead, whose two passes
 * must agree and which must be well-formed.
 */

#include "fuzz_common.h"


typedef struct {
    ngx_xmpp_cm_xml_t      *x;
    size_t                  max_size;     /* the framer's limit */
    ngx_xmpp_cm_stream_t    stream;
    ngx_uint_t              authenticated;
    ngx_uint_t              stanzas;
} fuzz_client_t;


static fuzz_upstream_t  fp;


static ngx_int_t
fc_open(void *data, ngx_str_t *name, ngx_str_t *ns, const XML_Char **attrs)
{
    fuzz_client_t  *fc = data;
    ngx_str_t       root_ns;

    /* as ngx_xmpp_cm_client_open(): anything else ends the stream */

    if (!ngx_xmpp_cm_str_is(ns, NGX_XMPP_NS_STREAMS)
        || !ngx_xmpp_cm_str_is(name, "stream"))
    {
        return NGX_DONE;
    }

    if (!ngx_xmpp_cm_xml_root_ns(fc->x, &root_ns)
        || !ngx_xmpp_cm_str_is(&root_ns, NGX_XMPP_NS_CLIENT))
    {
        return NGX_DONE;
    }

    return NGX_OK;
}


#define FC_FORWARD  0
#define FC_ABORT    1
#define FC_REFUSE   2

static ngx_uint_t
fc_kind(fuzz_client_t *fc, ngx_xmpp_cm_elem_t *e)
{
    /* as ngx_xmpp_cm_client_auth_start() / _stream_start() with TLS off */

    if (ngx_xmpp_cm_str_is(&e->ns, NGX_XMPP_NS_CLIENT)) {
        if (ngx_xmpp_cm_str_is(&e->name, "iq")) {
            return FC_FORWARD;
        }

        if (ngx_xmpp_cm_str_is(&e->name, "message")
            || ngx_xmpp_cm_str_is(&e->name, "presence"))
        {
            return fc->authenticated ? FC_FORWARD : FC_REFUSE;
        }

        return FC_REFUSE;
    }

    if (ngx_xmpp_cm_str_is(&e->ns, NGX_XMPP_NS_SASL) && !fc->authenticated) {
        if (ngx_xmpp_cm_str_is(&e->name, "auth")
            || ngx_xmpp_cm_str_is(&e->name, "response"))
        {
            return FC_FORWARD;
        }

        if (ngx_xmpp_cm_str_is(&e->name, "abort")) {
            return FC_ABORT;
        }
    }

    return FC_REFUSE;
}


static ngx_int_t
fc_start(void *data, ngx_xmpp_cm_elem_t *e)
{
    fuzz_client_t  *fc = data;

    switch (fc_kind(fc, e)) {

    case FC_REFUSE:
        return NGX_DONE;

    case FC_FORWARD:
        if (ngx_xmpp_cm_str_is(&e->ns, NGX_XMPP_NS_CLIENT)) {
            /* as ngx_xmpp_cm_client_start() */
            ngx_xmpp_cm_stanza_check(e, &fuzz_log);
        }
    }

    return NGX_OK;
}


static void
fc_check_error(fuzz_client_t *fc, ngx_xmpp_cm_elem_t *e, u_char *orig,
    size_t olen)
{
    u_char       *p;
    size_t        n1, n2;
    ngx_str_t     jid = ngx_string("u@localhost/r");
    const char   *err;

    if (e->reject == NULL) {
        e->reject = "bad-request";
    }

    n1 = ngx_xmpp_cm_stanza_error(fc->x, e, &jid, NULL);
    p = malloc(n1);
    n2 = ngx_xmpp_cm_stanza_error(fc->x, e, &jid, p);

    if (n1 != n2) {
        FUZZ_FAIL("stanza error counted %zu bytes, wrote %zu", n1, n2);
    }

    err = fuzz_wellformed(p, n2, 1);
    if (err) {
        FUZZ_FAIL("stanza error is not well-formed: %s\n--- client bytes:"
                  "\n%.*s\n--- error:\n%.*s", err, (int) olen, orig,
                  (int) n2, p);
    }

    free(p);
}


static void
fc_check_route(fuzz_client_t *fc, ngx_xmpp_cm_elem_t *e, u_char *orig,
    size_t olen, ngx_uint_t same)
{
    u_char      *route, *body;
    char        *ev_orig;
    size_t       rlen, n1, n2, l1, head;
    ngx_uint_t   add;

    route = fuzz_queue_take(&fp.socks[0].out, &rlen);

    /* the counting pass and the writing pass agree, to the byte */

    add = !e->has_xmlns;
    n1 = ngx_xmpp_cm_sanitize(fc->x, NULL, e->start, e->end, add);
    body = malloc(n1 ? n1 : 1);
    n2 = ngx_xmpp_cm_sanitize(fc->x, body, e->start, e->end, add);

    if (n1 != n2) {
        FUZZ_FAIL("sanitize counted %zu bytes, wrote %zu", n1, n2);
    }

    head = sizeof("<route to=\"localhost\" from=\"cm1-4242-a1b2c3\" "
                  "streamid=\"w4242-00000000000000ab\">") - 1;

    if (ngx_memcmp(route + rlen - 8, "</route>", 8) != 0
        || (same && (rlen != head + n1 + sizeof("</route>") - 1
                     || ngx_memcmp(route + head, body, n1) != 0)))
    {
        FUZZ_FAIL("route is not head + sanitized stanza + </route>:\n%.*s",
                  (int) rlen, route);
    }

    free(body);

    ev_orig = fuzz_stanza_events(orig, olen, &l1);
    fuzz_route_check(orig, olen, ev_orig, l1, route, rlen, same);

    free(ev_orig);
    free(route);
}


static ngx_int_t
fc_element(void *data, ngx_xmpp_cm_elem_t *e)
{
    fuzz_client_t  *fc = data;

    u_char     *orig;
    size_t      olen;
    ngx_int_t   rc;
    ngx_uint_t  kind, same;

    kind = fc_kind(fc, e);

    if (kind == FC_REFUSE) {
        FUZZ_FAIL("a stanza refused at its start tag reached its end");
    }

    fc->stanzas++;

    if (e->end <= e->start || e->end - e->start > fc->max_size) {
        FUZZ_FAIL("bad span %llu..%llu (max %zu)",
                  (unsigned long long) e->start,
                  (unsigned long long) e->end, fc->max_size);
    }

    olen = ngx_xmpp_cm_xml_copy(fc->x, NULL, e->start, e->end);
    if (olen != (size_t) (e->end - e->start)) {
        FUZZ_FAIL("xml_copy gives %zu bytes for a span of %llu", olen,
                  (unsigned long long) (e->end - e->start));
    }

    orig = malloc(olen);
    (void) ngx_xmpp_cm_xml_copy(fc->x, orig, e->start, e->end);

    if (orig[0] != '<' || orig[olen - 1] != '>') {
        FUZZ_FAIL("stanza span is not an element: %.*s", (int) olen, orig);
    }

    if (kind == FC_ABORT) {
        free(orig);
        return NGX_OK;
    }

    if (e->reject || e->nshow > 1) {
        fc_check_error(fc, e, orig, olen);
        free(orig);
        return NGX_OK;
    }

    same = e->to.len == 0 && e->from.len == 0
           && (e->nshow == 0 || ngx_xmpp_cm_stanza_show_ok(e));

    rc = ngx_xmpp_cm_route_client(&fc->stream, fc->x, e, NULL);

    if (rc == NGX_DECLINED) {
        /* too large once quoted: the client gets policy-violation */
        free(orig);
        ngx_xmpp_cm_output_free(&fp.socks[0].out);
        return NGX_DONE;
    }

    if (rc != NGX_OK) {
        FUZZ_FAIL("route_client failed: %d", (int) rc);
    }

    fc_check_route(fc, e, orig, olen, same);
    free(orig);

    return NGX_OK;
}


static ngx_int_t
fc_close(void *data)
{
    return NGX_DONE;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t          off;
    uint8_t         flags;
    ngx_int_t       rc;
    fuzz_rng_t      rng;
    ngx_pool_t     *pool;
    const char     *text;
    fuzz_client_t   fc;

    static const size_t      sizes[] = { 512, 16384, 262144, 1047552 };
    static const ngx_uint_t  depths[] = { 2, 4, 32, 1000 };

    static ngx_xmpp_cm_xml_handlers_t  handlers = {
        fc_open, fc_start, fc_element, fc_close
    };

    if (fuzz_begin(&fp, &data, &size, &flags, &rng) != NGX_OK) {
        return 0;
    }

    pool = ngx_create_pool(1024, &fuzz_log);

    ngx_memzero(&fc, sizeof(fuzz_client_t));
    fc.stream.id[0] = '\0';
    ngx_memcpy(fc.stream.id, "w4242-00000000000000ab", 22);
    fc.stream.node.str.data = fc.stream.id;
    fc.stream.node.str.len = 22;
    fc.stream.up = &fp.up;
    fc.stream.sock = &fp.socks[0];

    fc.x = ngx_xmpp_cm_xml_create(pool, &fuzz_log, 0,
                                  fuzz_worker->parking);
    if (fc.x == NULL) {
        FUZZ_FAIL("xml_create");
    }

    fc.max_size = sizes[flags & 3];
    ngx_xmpp_cm_xml_handlers(fc.x, &handlers, &fc);
    ngx_xmpp_cm_xml_limits(fc.x, fc.max_size, depths[(flags >> 2) & 3]);

    for (off = 0; off < size; /* void */) {

        rc = fuzz_feed_next(fc.x, data, size, &off, (flags >> 4) & 3, 2048,
                            &rng);

        if (rc != NGX_OK) {
            if (rc == NGX_ERROR && ngx_xmpp_cm_xml_error(fc.x, &text) == NULL)
            {
                FUZZ_FAIL("feed failed with no stream error");
            }
            break;
        }

        /* SASL success (or STARTTLS): a fresh parser, the larger limit */

        if ((flags & 0x40) && fc.stanzas && fuzz_rand(&rng) % 8 == 0) {
            if (ngx_xmpp_cm_xml_reset(fc.x) != NGX_OK) {
                FUZZ_FAIL("xml_reset");
            }

            fc.authenticated = 1;
            fc.stanzas = 0;
            fc.max_size = 1047552;
            ngx_xmpp_cm_xml_limits(fc.x, fc.max_size,
                                   depths[(flags >> 2) & 3]);
        }
    }

    ngx_xmpp_cm_xml_free(fc.x);
    ngx_destroy_pool(pool);
    ngx_xmpp_cm_output_free(&fp.socks[0].out);
    ngx_xmpp_cm_output_free(&fp.socks[1].out);
    fuzz_events_clear();

    return 0;
}
