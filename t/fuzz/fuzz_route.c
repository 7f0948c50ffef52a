
/*
 * fuzz_route: the route builder's sanitizer and escaper on arbitrary
 * well-formed stanzas, whatever their name or namespace.
 *
 * Input: 1 control byte, then the bytes of one or more stanzas.
 *   byte 0: where the stanza bytes are cut in two reads (byte0 / 256 of
 *           the length), so that the sanitizer sees a stanza in two
 *           pieces (the kept "pend" bytes and the new read).
 * The stanzas follow a fixed client stream header
 * (xmlns='jabber:client', prefix stream: declared); the framer is in
 * client mode with the largest limits.
 *
 * For every stanza, with and without the added xmlns (when it has none):
 *   - the counting and writing passes of ngx_xmpp_cm_sanitize agree;
 *   - <route ...>sanitized</route> is exactly one fragment for Openfire's
 *     double-quote-only splitter, with no '-quoted attribute, no '>' in
 *     text, no CDATA;
 *   - it is well-formed with namespaces, the stanza declares a default
 *     namespace when the xmlns was added, and it means the same as the
 *     client's bytes (expat events compared).
 * And ngx_xmpp_cm_escape() of the stanza bytes, as an attribute value and
 * as text, is well-formed and decodes back to the same characters.
 */

#include "fuzz_common.h"


static const char  fr_header[] =
    "<stream:stream xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' "
    "version='1.0'>";

static const char  fr_head[] =
    "<route to=\"localhost\" from=\"cm1\" streamid=\"w1-1\">";


static ngx_int_t
fr_open(void *data, ngx_str_t *name, ngx_str_t *ns, const XML_Char **attrs)
{
    return NGX_OK;
}


static ngx_int_t
fr_close(void *data)
{
    return NGX_DONE;
}


static void
fr_check(ngx_xmpp_cm_xml_t *x, ngx_xmpp_cm_elem_t *e, u_char *orig,
    size_t olen, const char *ev_orig, size_t l1, ngx_uint_t add)
{
    u_char  *route, *p;
    size_t   n1, n2, rlen;

    n1 = ngx_xmpp_cm_sanitize(x, NULL, e->start, e->end, add);
    rlen = sizeof(fr_head) - 1 + n1 + sizeof("</route>") - 1;
    route = malloc(rlen);
    p = ngx_cpymem(route, fr_head, sizeof(fr_head) - 1);
    n2 = ngx_xmpp_cm_sanitize(x, p, e->start, e->end, add);

    if (n1 != n2) {
        FUZZ_FAIL("sanitize counted %zu bytes, wrote %zu", n1, n2);
    }

    ngx_memcpy(p + n2, "</route>", 8);

    fuzz_route_check(orig, olen, ev_orig, l1, route, rlen,
                     add || e->has_xmlns);

    free(route);
}


static void
fr_check_escape(u_char *orig, size_t olen)
{
    u_char      *w, *p, *norm;
    char        *ev;
    size_t       n, n2, wlen, l, i, m;
    const char  *err;

    n = ngx_xmpp_cm_escape(NULL, orig, olen);
    wlen = 7 + n + 2 + n + 6;
    w = malloc(wlen);
    p = ngx_cpymem(w, "<e a=\"", 6);
    n2 = ngx_xmpp_cm_escape(p, orig, olen);

    if (n != n2) {
        FUZZ_FAIL("escape counted %zu, wrote %zu", n, n2);
    }

    p += n2;
    p = ngx_cpymem(p, "\">", 2);
    p += ngx_xmpp_cm_escape(p, orig, olen);
    p = ngx_cpymem(p, "</e>", 4);
    wlen = p - w;

    err = fuzz_wellformed(w, wlen, 0);
    if (err) {
        FUZZ_FAIL("escaped stanza bytes not well-formed (%s):\n%.*s", err,
                  (int) wlen, w);
    }

    /* as text it decodes to the same characters (line ends normalized) */

    p = ngx_cpymem(w, "<e>", 3);
    p += ngx_xmpp_cm_escape(p, orig, olen);
    p = ngx_cpymem(p, "</e>", 4);

    ev = fuzz_events(w, p - w, "<w>", "</w>", &l, NULL);
    if (ev == NULL) {
        FUZZ_FAIL("escaped stanza bytes do not parse as text");
    }

    norm = malloc(olen + 1);
    for (i = 0, m = 0; i < olen; i++) {
        if (orig[i] == '\r') {
            norm[m++] = '\n';
            if (i + 1 < olen && orig[i + 1] == '\n') {
                i++;
            }
            continue;
        }
        norm[m++] = orig[i];
    }

    {
        char    num[32];
        size_t  k = snprintf(num, sizeof(num), "<e>T%zu:", m);

        if (l != k + m + 3 || ngx_strncmp(ev, num, k) != 0
            || ngx_memcmp(ev + k, norm, m) != 0)
        {
            FUZZ_FAIL("escaped text does not decode to the stanza bytes:"
                      "\n%.*s\n%s", (int) olen, orig, ev);
        }
    }

    free(norm);
    free(ev);
    free(w);
}


static ngx_int_t
fr_element(void *data, ngx_xmpp_cm_elem_t *e)
{
    ngx_xmpp_cm_xml_t *x = data;

    u_char  *orig;
    char    *ev_orig;
    size_t   olen, l1;

    olen = ngx_xmpp_cm_xml_copy(x, NULL, e->start, e->end);
    orig = malloc(olen);
    (void) ngx_xmpp_cm_xml_copy(x, orig, e->start, e->end);

    ev_orig = fuzz_stanza_events(orig, olen, &l1);

    if (!e->has_xmlns) {
        fr_check(x, e, orig, olen, ev_orig, l1, 1);
    }

    fr_check(x, e, orig, olen, ev_orig, l1, 0);
    fr_check_escape(orig, olen);

    free(ev_orig);
    free(orig);

    return NGX_OK;
}


static ngx_xmpp_cm_xml_handlers_t  fr_handlers = {
    fr_open, NULL, fr_element, fr_close
};


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char             *buf;
    size_t              cut;
    ngx_int_t           rc;
    ngx_pool_t         *pool;
    ngx_xmpp_cm_xml_t  *x;

    if (size < 1) {
        return 0;
    }

    fuzz_init();

    cut = (size - 1) * data[0] / 256;
    data++;
    size--;

    pool = ngx_create_pool(1024, &fuzz_log);
    x = ngx_xmpp_cm_xml_create(pool, &fuzz_log, 0, fuzz_worker->parking);

    ngx_xmpp_cm_xml_handlers(x, &fr_handlers, x);
    ngx_xmpp_cm_xml_limits(x, 1047552, 1000);

    rc = ngx_xmpp_cm_xml_feed(x, (u_char *) fr_header, sizeof(fr_header) - 1);

    if (rc == NGX_OK && cut) {
        buf = malloc(cut);
        ngx_memcpy(buf, data, cut);
        rc = ngx_xmpp_cm_xml_feed(x, buf, cut);
        free(buf);
    }

    if (rc == NGX_OK && size > cut) {
        buf = malloc(size - cut);
        ngx_memcpy(buf, data + cut, size - cut);
        rc = ngx_xmpp_cm_xml_feed(x, buf, size - cut);
        free(buf);
    }

    ngx_xmpp_cm_xml_free(x);
    ngx_destroy_pool(pool);

    return 0;
}
