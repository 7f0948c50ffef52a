
/*
 * The route codec: client stanzas into <route> envelopes, session IQs,
 * and the namespace fix-ups of downstream payloads.
 *
 * Client bytes are copied as expat validated them, with the smallest
 * changes that make them safe inside Openfire's connection-manager
 * stream, whose splitter tracks double quotes only (section 2 of
 * docs/openfire-protocol.md):
 * single-quoted attribute values become double-quoted, '"' and '>' inside
 * them and '>' in text are escaped, CDATA sections become escaped text,
 * and xmlns="jabber:client" is added to a stanza that has no default
 * namespace of its own.
 */


#include "ngx_stream_xmpp_cm.h"


#define NGX_XMPP_CM_XMLNS_CLIENT  " xmlns=\"jabber:client\""


enum {
    sw_text = 0,
    sw_lt,
    sw_name,
    sw_tag,
    sw_sq,
    sw_dq,
    sw_cdata_open,
    sw_cdata,
    sw_skip
};


typedef struct {
    ngx_uint_t  state;
    ngx_uint_t  skip;
    ngx_uint_t  brackets;
    ngx_uint_t  add_xmlns;
    size_t      len;
    u_char     *dst;

    /* the stanza's start tag: xml:lang to add, 'to'/'from' to replace */
    u_char     *lang;
    ngx_str_t  *to;
    ngx_str_t  *from;
    u_char      quote;
    u_char      aname[4];
    size_t      alen;
    unsigned    top:1;
    unsigned    anext:1;
} ngx_xmpp_cm_scan_t;


#define ngx_xmpp_cm_emit(sc, s, n)                                           \
    do {                                                                     \
        if ((sc)->dst) {                                                     \
            (sc)->dst = ngx_cpymem((sc)->dst, s, n);                         \
        }                                                                    \
        (sc)->len += n;                                                      \
    } while (0)


/* the names of the stanza's own attributes, as far as "from" */

static ngx_inline void
ngx_xmpp_cm_scan_name(ngx_xmpp_cm_scan_t *sc, u_char ch)
{
    if (ngx_xmpp_cm_is_space(ch) || ch == '=' || ch == '/') {
        sc->anext = 1;
        return;
    }

    if (sc->anext) {
        sc->anext = 0;
        sc->alen = 0;
    }

    if (sc->alen < sizeof(sc->aname)) {
        sc->aname[sc->alen] = ch;
    }

    sc->alen++;
}


/* at the opening quote of an attribute value of the stanza itself */

static void
ngx_xmpp_cm_scan_value(ngx_xmpp_cm_scan_t *sc, u_char quote)
{
    size_t      n;
    ngx_str_t  *v;

    if (sc->to && sc->alen == 2 && ngx_strncmp(sc->aname, "to", 2) == 0) {
        v = sc->to;

    } else if (sc->from && sc->alen == 4
               && ngx_strncmp(sc->aname, "from", 4) == 0)
    {
        v = sc->from;

    } else {
        return;
    }

    /* the value is replaced: the folded JID, escaped */

    n = ngx_xmpp_cm_escape(sc->dst, v->data, v->len);

    if (sc->dst) {
        sc->dst += n;
    }

    sc->len += n;

    sc->quote = quote;
    sc->state = sw_skip;
}


static void
ngx_xmpp_cm_scan(ngx_xmpp_cm_scan_t *sc, u_char *p, size_t n)
{
    u_char  ch, *end;

    if (n == 0) {
        return;
    }

    for (end = p + n; p < end; p++) {
        ch = *p;

        switch (sc->state) {

        case sw_text:
            if (ch == '<') {
                sc->state = sw_lt;

            } else if (ch == '>') {
                ngx_xmpp_cm_emit(sc, "&gt;", 4);

            } else {
                ngx_xmpp_cm_emit(sc, &ch, 1);
            }
            break;

        case sw_lt:
            if (ch == '!') {
                /* "<![CDATA[": comments are refused by the framer */
                sc->state = sw_cdata_open;
                sc->skip = 7;
                break;
            }

            ngx_xmpp_cm_emit(sc, "<", 1);
            ngx_xmpp_cm_emit(sc, &ch, 1);
            sc->state = (sc->add_xmlns || sc->lang) ? sw_name : sw_tag;
            sc->anext = 1;
            break;

        case sw_name:
            if (ngx_xmpp_cm_is_space(ch) || ch == '/' || ch == '>') {
                if (sc->add_xmlns) {
                    ngx_xmpp_cm_emit(sc, NGX_XMPP_CM_XMLNS_CLIENT,
                                     sizeof(NGX_XMPP_CM_XMLNS_CLIENT) - 1);
                }

                if (sc->lang) {
                    ngx_xmpp_cm_emit(sc, " xml:lang=\"", 11);
                    ngx_xmpp_cm_emit(sc, sc->lang, ngx_strlen(sc->lang));
                    ngx_xmpp_cm_emit(sc, "\"", 1);
                }

                sc->add_xmlns = 0;
                sc->lang = NULL;
                sc->state = sw_tag;
                p--;
                break;
            }

            ngx_xmpp_cm_emit(sc, &ch, 1);
            break;

        case sw_tag:
            if (ch == '\'' || ch == '"') {
                ngx_xmpp_cm_emit(sc, "\"", 1);
                sc->state = (ch == '"') ? sw_dq : sw_sq;

                if (sc->top) {
                    ngx_xmpp_cm_scan_value(sc, ch);
                }

            } else {
                if (ch == '>') {
                    sc->state = sw_text;
                    sc->top = 0;

                } else if (sc->top) {
                    ngx_xmpp_cm_scan_name(sc, ch);
                }

                ngx_xmpp_cm_emit(sc, &ch, 1);
            }
            break;

        case sw_skip:
            if (ch == sc->quote) {
                ngx_xmpp_cm_emit(sc, "\"", 1);
                sc->state = sw_tag;
            }
            break;

        case sw_sq:
            if (ch == '\'') {
                ngx_xmpp_cm_emit(sc, "\"", 1);
                sc->state = sw_tag;

            } else if (ch == '"') {
                ngx_xmpp_cm_emit(sc, "&quot;", 6);

            } else if (ch == '>') {
                ngx_xmpp_cm_emit(sc, "&gt;", 4);

            } else {
                ngx_xmpp_cm_emit(sc, &ch, 1);
            }
            break;

        case sw_dq:
            if (ch == '"') {
                ngx_xmpp_cm_emit(sc, "\"", 1);
                sc->state = sw_tag;

            } else if (ch == '>') {
                ngx_xmpp_cm_emit(sc, "&gt;", 4);

            } else {
                ngx_xmpp_cm_emit(sc, &ch, 1);
            }
            break;

        case sw_cdata_open:
            if (--sc->skip == 0) {
                sc->state = sw_cdata;
                sc->brackets = 0;
            }
            break;

        case sw_cdata:
            if (ch == ']') {
                sc->brackets++;
                break;
            }

            if (ch == '>' && sc->brackets >= 2) {
                while (sc->brackets-- > 2) {
                    ngx_xmpp_cm_emit(sc, "]", 1);
                }
                sc->brackets = 0;
                sc->state = sw_text;
                break;
            }

            while (sc->brackets) {
                ngx_xmpp_cm_emit(sc, "]", 1);
                sc->brackets--;
            }

            if (ch == '<') {
                ngx_xmpp_cm_emit(sc, "&lt;", 4);

            } else if (ch == '>') {
                ngx_xmpp_cm_emit(sc, "&gt;", 4);

            } else if (ch == '&') {
                ngx_xmpp_cm_emit(sc, "&amp;", 5);

            } else {
                ngx_xmpp_cm_emit(sc, &ch, 1);
            }
            break;
        }
    }
}


/* with dst == NULL only counts the output length */

size_t
ngx_xmpp_cm_sanitize(ngx_xmpp_cm_xml_t *x, u_char *dst, XML_Index start,
    XML_Index end, ngx_uint_t add_xmlns)
{
    ngx_str_t           p1, p2;
    ngx_xmpp_cm_scan_t  sc;

    ngx_memzero(&sc, sizeof(ngx_xmpp_cm_scan_t));
    sc.dst = dst;
    sc.add_xmlns = add_xmlns;

    ngx_xmpp_cm_xml_pieces(x, start, end, &p1, &p2);

    ngx_xmpp_cm_scan(&sc, p1.data, p1.len);
    ngx_xmpp_cm_scan(&sc, p2.data, p2.len);

    return sc.len;
}


/*
 * A client's stanza for its route: ngx_xmpp_cm_sanitize() plus the
 * stream's xml:lang where the stanza has none (RFC 6120 8.1.5), the
 * folded 'to' and 'from', and without a <show> Openfire would choke on
 * (docs/openfire-protocol.md, section 8).
 */

static size_t
ngx_xmpp_cm_sanitize_stanza(ngx_xmpp_cm_xml_t *x, u_char *dst,
    ngx_xmpp_cm_elem_t *e, u_char *lang)
{
    ngx_str_t           p1, p2;
    XML_Index           cut, resume;
    ngx_xmpp_cm_scan_t  sc;

    ngx_memzero(&sc, sizeof(ngx_xmpp_cm_scan_t));
    sc.dst = dst;
    sc.add_xmlns = !e->has_xmlns;
    sc.lang = lang;
    sc.to = e->to.len ? &e->to : NULL;
    sc.from = e->from.len ? &e->from : NULL;
    sc.top = 1;

    cut = e->end;
    resume = e->end;

    if (e->nshow == 1 && !ngx_xmpp_cm_stanza_show_ok(e)) {
        cut = e->show_start;
        resume = e->show_end;
    }

    ngx_xmpp_cm_xml_pieces(x, e->start, cut, &p1, &p2);
    ngx_xmpp_cm_scan(&sc, p1.data, p1.len);
    ngx_xmpp_cm_scan(&sc, p2.data, p2.len);

    if (resume < e->end) {
        ngx_xmpp_cm_xml_pieces(x, resume, e->end, &p1, &p2);
        ngx_xmpp_cm_scan(&sc, p1.data, p1.len);
        ngx_xmpp_cm_scan(&sc, p2.data, p2.len);
    }

    return sc.len;
}


/*
 * The stanza error the CM answers a client's stanza with (RFC 6120 8.3):
 * the stanza's start tag without its 'from' and 'type', its 'to' as
 * 'from', to=JID (the client's, once bound) and type="error"; then its
 * children and <error type="modify"><e->reject/></error>.  These are the
 * client's own bytes going back to it: no quoting fix-ups.  The stanza's
 * namespace declarations stay, so its children mean what they meant.
 * With dst == NULL only counts.
 */

#define ngx_xmpp_cm_put(s, n)                                                \
    do {                                                                     \
        if (dst) {                                                           \
            dst = ngx_cpymem(dst, s, n);                                     \
        }                                                                    \
        len += n;                                                            \
    } while (0)

#define ngx_xmpp_cm_put_raw(a, b)                                            \
    do {                                                                     \
        n = ngx_xmpp_cm_xml_copy(x, dst, a, b);                              \
        if (dst) {                                                           \
            dst += n;                                                        \
        }                                                                    \
        len += n;                                                            \
    } while (0)

size_t
ngx_xmpp_cm_stanza_error(ngx_xmpp_cm_xml_t *x, ngx_xmpp_cm_elem_t *e,
    ngx_str_t *to, u_char *dst)
{
    u_char      ch, q, aname[4], *p, *end;
    size_t      len, alen, n;
    ngx_str_t   pc[2];
    ngx_uint_t  k, state, keep;
    XML_Index   i, nstart, nend, qend;

    enum {
        st_name = 0,
        st_space,
        st_attr,
        st_eq,
        st_value,
        st_done
    };

    len = 0;
    alen = 0;
    q = 0;
    keep = 1;
    nstart = e->start;
    nend = e->start;
    qend = e->body;
    state = st_name;

    ngx_xmpp_cm_xml_pieces(x, e->start, e->body, &pc[0], &pc[1]);
    i = e->start;

    for (k = 0; k < 2; k++) {
        if (pc[k].len == 0) {
            continue;
        }

        for (p = pc[k].data, end = p + pc[k].len; p < end; p++, i++) {
            ch = *p;

            switch (state) {

            case st_name:
                if (ngx_xmpp_cm_is_space(ch) || ch == '/' || ch == '>') {
                    qend = i;
                    state = ngx_xmpp_cm_is_space(ch) ? st_space : st_done;
                    break;
                }

                ngx_xmpp_cm_put(&ch, 1);
                break;

            case st_space:
                if (ch == '/' || ch == '>') {
                    state = st_done;
                    break;
                }

                if (ngx_xmpp_cm_is_space(ch)) {
                    break;
                }

                nstart = i;
                alen = 0;
                state = st_attr;

                /* fall through */

            case st_attr:
                if (ngx_xmpp_cm_is_space(ch) || ch == '=') {
                    nend = i;
                    state = st_eq;
                    break;
                }

                if (alen < sizeof(aname)) {
                    aname[alen] = ch;
                }

                alen++;
                break;

            case st_eq:
                if (ch != '\'' && ch != '"') {
                    break;
                }

                q = ch;
                state = st_value;
                keep = 1;

                if (alen == 2 && ngx_strncmp(aname, "to", 2) == 0) {
                    ngx_xmpp_cm_put(" from=", 6);

                } else if ((alen == 4 && ngx_strncmp(aname, "from", 4) == 0)
                           || (alen == 4
                               && ngx_strncmp(aname, "type", 4) == 0))
                {
                    keep = 0;
                    break;

                } else {
                    ngx_xmpp_cm_put(" ", 1);
                    ngx_xmpp_cm_put_raw(nstart, nend);
                    ngx_xmpp_cm_put("=", 1);
                }

                ngx_xmpp_cm_put(&ch, 1);
                break;

            case st_value:
                if (keep) {
                    ngx_xmpp_cm_put(&ch, 1);
                }

                if (ch == q) {
                    state = st_space;
                }

                break;

            default: /* st_done: "/>" or ">" */
                break;
            }
        }
    }

    if (to->len) {
        ngx_xmpp_cm_put(" to=\"", 5);
        n = ngx_xmpp_cm_escape(dst, to->data, to->len);
        if (dst) {
            dst += n;
        }
        len += n;
        ngx_xmpp_cm_put("\"", 1);
    }

    ngx_xmpp_cm_put(" type=\"error\">", 14);
    ngx_xmpp_cm_put_raw(e->body, e->body_end);
    ngx_xmpp_cm_put("<error type=\"modify\"><", 22);
    ngx_xmpp_cm_put(e->reject, ngx_strlen(e->reject));
    ngx_xmpp_cm_put(" xmlns=\"" NGX_XMPP_NS_STANZAS "\"/></error></",
                    sizeof(" xmlns=\"" NGX_XMPP_NS_STANZAS "\"/></error></")
                    - 1);
    ngx_xmpp_cm_put_raw(e->start + 1, qend);
    ngx_xmpp_cm_put(">", 1);

    return len;
}


static size_t
ngx_xmpp_cm_route_head(ngx_xmpp_cm_upstream_t *up, ngx_str_t *id, u_char *dst)
{
    if (dst == NULL) {
        return sizeof("<route to=\"\" from=\"\" streamid=\"\">") - 1
               + up->domain.len + up->name.len + id->len;
    }

    return ngx_sprintf(dst, "<route to=\"%V\" from=\"%V\" streamid=\"%V\">",
                       &up->domain, &up->name, id)
           - dst;
}


/* where the stream id is in a route head: kept beside the buf */

static ngx_inline size_t
ngx_xmpp_cm_route_id_at(ngx_xmpp_cm_upstream_t *up)
{
    return sizeof("<route to=\"\" from=\"\" streamid=\"") - 1
           + up->domain.len + up->name.len;
}


/* the one check of Openfire's fragment limit */

static ngx_inline ngx_uint_t
ngx_xmpp_cm_fragment_fits(size_t len)
{
    return len <= NGX_XMPP_CM_FRAGMENT_MAX;
}


/*
 * Stream ids this module makes are "w<pid>-<hex>".  An id from Openfire
 * with anything but letters, digits, '-', '_' or '.' cannot be one of
 * ours, and is never written back (it could break the shared stream).
 * The rule lives here, beside the writers that check it.
 */

ngx_int_t
ngx_xmpp_cm_stream_id_ok(ngx_str_t *id)
{
    u_char  *p, *end;

    if (id == NULL || id->len == 0 || id->len >= NGX_XMPP_CM_ID_LEN) {
        return 0;
    }

    for (p = id->data, end = p + id->len; p < end; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
              || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_'
              || *p == '.'))
        {
            return 0;
        }
    }

    return 1;
}


/*
 * Wraps a client stanza in a route on the stream's socket.
 * NGX_DECLINED: it would not fit Openfire's fragment limit.
 */

ngx_int_t
ngx_xmpp_cm_route_client(ngx_xmpp_cm_stream_t *s, ngx_xmpp_cm_xml_t *x,
    ngx_xmpp_cm_elem_t *e, u_char *lang)
{
    size_t               body, head, len;
    ngx_buf_t           *b;
    ngx_xmpp_cm_sock_t  *sock;

    sock = s->sock;         /* pinned by ngx_xmpp_cm_stream_send() */
    if (sock == NULL) {
        return NGX_ERROR;
    }

    if (lang == NULL || lang[0] == '\0' || e->has_lang
        || !ngx_xmpp_cm_str_is(&e->ns, NGX_XMPP_NS_CLIENT))
    {
        /* SASL elements carry no language */
        lang = NULL;
    }

    body = ngx_xmpp_cm_sanitize_stanza(x, NULL, e, lang);
    head = ngx_xmpp_cm_route_head(s->up, &s->node.str, NULL);
    len = head + body + sizeof("</route>") - 1;

    if (!ngx_xmpp_cm_fragment_fits(len)) {
        return NGX_DECLINED;
    }

    b = ngx_xmpp_cm_sock_buf(sock, len);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last += ngx_xmpp_cm_route_head(s->up, &s->node.str, b->last);
    b->last += ngx_xmpp_cm_sanitize_stanza(x, b->last, e, lang);
    b->last = ngx_cpymem(b->last, "</route>", sizeof("</route>") - 1);

    ngx_xmpp_cm_buf_mark(b, NGX_XMPP_CM_BUF_CLIENT,
                         ngx_xmpp_cm_route_id_at(s->up), s->node.str.len);

    return NGX_OK;
}


/* wraps bytes the CM built itself (already safe) in a route */

ngx_int_t
ngx_xmpp_cm_route_raw(ngx_xmpp_cm_upstream_t *up, ngx_xmpp_cm_sock_t *sock,
    ngx_str_t *id, u_char *data, size_t n)
{
    size_t      len;
    ngx_buf_t  *b;

    len = ngx_xmpp_cm_route_head(up, id, NULL) + n + sizeof("</route>") - 1;

    if (!ngx_xmpp_cm_stream_id_ok(id) || n == 0
        || !ngx_xmpp_cm_fragment_fits(len))
    {
        return NGX_DECLINED;
    }

    b = ngx_xmpp_cm_sock_buf(sock, len);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last += ngx_xmpp_cm_route_head(up, id, b->last);
    b->last = ngx_cpymem(b->last, data, n);
    b->last = ngx_cpymem(b->last, "</route>", sizeof("</route>") - 1);

    ngx_xmpp_cm_buf_mark(b, NGX_XMPP_CM_BUF_RAW, ngx_xmpp_cm_route_id_at(up),
                         id->len);

    return NGX_OK;
}


/*
 * <iq type="set" id=.. to=DOMAIN from=NAME/RES><session xmlns=.. id=ID>
 * <create>|<close/>|<failed>payload</failed></session></iq>
 */

ngx_int_t
ngx_xmpp_cm_route_session_iq(ngx_xmpp_cm_upstream_t *up,
    ngx_xmpp_cm_sock_t *sock, ngx_str_t *id, ngx_uint_t type,
    ngx_str_t *addr, u_char *payload, size_t plen)
{
    u_char     *p, seq[NGX_INT_T_LEN];
    size_t      len, slen;
    ngx_buf_t  *b;

    if (!ngx_xmpp_cm_stream_id_ok(id)) {
        /* an empty or odd session id would kill the shared socket */
        return NGX_ERROR;
    }

    /* every length is counted first: nothing is ever cut */

    slen = ngx_sprintf(seq, "%ui", ++up->iq_seq) - seq;

    len = sizeof("<iq type=\"set\" id=\"c\" to=\"\" from=\"/\">"
                 "<session xmlns=\"" NGX_XMPP_NS_CMPROTO "\" id=\"\">"
                 "</session></iq>") - 1
          + slen + up->domain.len + up->name.len + sock->resource.len
          + id->len;

    switch (type) {

    case NGX_XMPP_CM_IQ_CREATE:
        if (addr && addr->len) {
            len += sizeof("<create><host name=\"\" address=\"\"/>"
                          "</create>") - 1 + 2 * addr->len;
        } else {
            len += sizeof("<create/>") - 1;
        }
        break;

    case NGX_XMPP_CM_IQ_CLOSE:
        len += sizeof("<close/>") - 1;
        break;

    default: /* NGX_XMPP_CM_IQ_FAILED */
        if (plen == 0) {
            return NGX_ERROR;
        }

        len += sizeof("<failed></failed>") - 1 + plen;

        if (!ngx_xmpp_cm_fragment_fits(len)) {
            return NGX_DECLINED;
        }
    }

    b = ngx_xmpp_cm_sock_buf(sock, len);
    if (b == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(b->last, "<iq type=\"set\" id=\"c%*s\" to=\"%V\" "
                    "from=\"%V/%V\"><session xmlns=\"" NGX_XMPP_NS_CMPROTO
                    "\" id=\"%V\">", slen, seq, &up->domain, &up->name,
                    &sock->resource, id);

    /* the stream id ends just before the '">' of the session start tag */

    ngx_xmpp_cm_buf_mark(b, NGX_XMPP_CM_BUF_CREATE + type,
                         p - 2 - id->len - b->start, id->len);

    switch (type) {

    case NGX_XMPP_CM_IQ_CREATE:
        if (addr && addr->len) {
            p = ngx_sprintf(p, "<create><host name=\"%V\" address=\"%V\"/>"
                            "</create>", addr, addr);
        } else {
            p = ngx_cpymem(p, "<create/>", sizeof("<create/>") - 1);
        }
        break;

    case NGX_XMPP_CM_IQ_CLOSE:
        p = ngx_cpymem(p, "<close/>", sizeof("<close/>") - 1);
        break;

    default: /* NGX_XMPP_CM_IQ_FAILED */
        p = ngx_cpymem(p, "<failed>", sizeof("<failed>") - 1);
        p = ngx_cpymem(p, payload, plen);
        p = ngx_cpymem(p, "</failed>", sizeof("</failed>") - 1);
    }

    b->last = ngx_cpymem(p, "</session></iq>", sizeof("</session></iq>") - 1);

    return NGX_OK;
}


/*
 * Openfire's stanzas come without a namespace, which makes them
 * jabber:client in the client's stream.  A server-side default namespace
 * on the payload's own start tag is removed so that it is one there too.
 */

static ngx_int_t
ngx_xmpp_cm_server_ns(ngx_str_t *ns)
{
    return ngx_xmpp_cm_str_is(ns, "jabber:server")
           || ngx_xmpp_cm_str_is(ns, NGX_XMPP_NS_CM)
           || ngx_xmpp_cm_str_is(ns, "jabber:component:accept");
}


/*
 * The payload's start tag as expat accepted it is read attribute by
 * attribute: "<" name, then white space, a name, "=" (white space around
 * it allowed) and a value in either quote, which holds no quote of its
 * kind.  Only an attribute named "xmlns" is removed, never text inside a
 * value (an id holding xmlns="jabber:server" or a '>').
 */

size_t
ngx_xmpp_cm_strip_server_ns(u_char *dst, u_char *p, size_t len,
    ngx_xmpp_cm_node_t *n)
{
    u_char  *a, *v, *name, *end, q;
    size_t   nlen;

    end = p + len;

    if (!n->has_xmlns || !ngx_xmpp_cm_server_ns(&n->xmlns)) {
        goto copy;
    }

    for (v = p + 1; v < end && !ngx_xmpp_cm_is_space(*v); v++) {
        if (*v == '>' || *v == '/') {
            goto copy;
        }
    }

    /* a: the white space before an attribute, v: just past its value */

    for ( ;; ) {
        a = v;

        while (v < end && ngx_xmpp_cm_is_space(*v)) {
            v++;
        }

        if (v == a || v == end || *v == '>' || *v == '/') {
            goto copy;
        }

        name = v;

        while (v < end && *v != '=' && !ngx_xmpp_cm_is_space(*v)) {
            v++;
        }

        nlen = v - name;

        while (v < end && ngx_xmpp_cm_is_space(*v)) {
            v++;
        }

        if (v == end || *v++ != '=') {
            goto copy;
        }

        while (v < end && ngx_xmpp_cm_is_space(*v)) {
            v++;
        }

        if (v == end || (*v != '"' && *v != '\'')) {
            goto copy;
        }

        q = *v;
        v = ngx_strlchr(v + 1, end, q);

        if (v == NULL) {
            goto copy;
        }

        v++;

        if (nlen == 5 && ngx_strncmp(name, "xmlns", 5) == 0) {
            break;
        }
    }

    if (dst) {
        dst = ngx_cpymem(dst, p, a - p);
        ngx_memcpy(dst, v, end - v);
    }

    return (a - p) + (end - v);

copy:

    if (dst) {
        ngx_memcpy(dst, p, len);
    }

    return len;
}
