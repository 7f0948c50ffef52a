
/*
 * JIDs and the other checks Openfire leaves to a connection manager.
 *
 * Openfire routes stanzas that come from a CM without JID validation
 * and without the clean-ups of its own client reader
 * (docs/openfire-protocol.md, section 8), so the CM does them: the JID
 * syntax of RFC 7622 with the stringprep rules that need no Unicode
 * tables (docs/security.md says exactly which), the stanza types Openfire
 * knows, and the values of <show/>.  The JID functions are pure: no
 * allocation, no state.
 */


#include "ngx_stream_xmpp_cm.h"


#define NGX_XMPP_CM_JID_PART_MAX  1023
#define NGX_XMPP_CM_LABEL_MAX     63
#define NGX_XMPP_CM_HOST_MAX      253

#define NGX_XMPP_NS_XML  "http://www.w3.org/XML/1998/namespace"


/*
 * Code points above U+007F that nameprep, nodeprep and resourceprep all
 * prohibit (RFC 3454 tables C.1.2, C.2.2, C.3 to C.9; C.4's nFFFE and
 * nFFFF of every plane are tested apart).
 */

static uint32_t  ngx_xmpp_cm_prohibited[][2] = {
    { 0x0080, 0x00a0 }, { 0x0340, 0x0341 }, { 0x06dd, 0x06dd },
    { 0x070f, 0x070f }, { 0x1680, 0x1680 }, { 0x180e, 0x180e },
    { 0x2000, 0x200f }, { 0x2028, 0x202f }, { 0x205f, 0x2063 },
    { 0x206a, 0x206f }, { 0x2ff0, 0x2ffb }, { 0x3000, 0x3000 },
    { 0xd800, 0xf8ff }, { 0xfdd0, 0xfdef }, { 0xfeff, 0xfeff },
    { 0xfff9, 0xffff }, { 0x1d173, 0x1d17a }, { 0xe0001, 0xe0001 },
    { 0xe0020, 0xe007f }, { 0xf0000, 0x10ffff }
};


/* the next code point of valid UTF-8, or 0xffffffff */

static uint32_t
ngx_xmpp_cm_utf8(u_char **pp, const u_char *end)
{
    u_char    *p;
    uint32_t   cp, min;
    ngx_uint_t n;

    p = *pp;
    cp = *p++;

    if (cp < 0x80) {
        *pp = p;
        return cp;
    }

    if (cp >= 0xf0 && cp < 0xf5) {
        n = 3; cp &= 0x07; min = 0x10000;

    } else if (cp >= 0xe0 && cp < 0xf0) {
        n = 2; cp &= 0x0f; min = 0x800;

    } else if (cp >= 0xc2 && cp < 0xe0) {
        n = 1; cp &= 0x1f; min = 0x80;

    } else {
        return 0xffffffff;
    }

    if ((size_t) (end - p) < n) {
        return 0xffffffff;
    }

    while (n--) {
        if ((*p & 0xc0) != 0x80) {
            return 0xffffffff;
        }

        cp = (cp << 6) | (*p++ & 0x3f);
    }

    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0xffffffff;
    }

    *pp = p;

    return cp;
}


static ngx_uint_t
ngx_xmpp_cm_cp_prohibited(uint32_t cp)
{
    ngx_uint_t  i;

    if ((cp & 0xfffe) == 0xfffe) {
        return 1;
    }

    for (i = 0; i < sizeof(ngx_xmpp_cm_prohibited)
                    / sizeof(ngx_xmpp_cm_prohibited[0]); i++)
    {
        if (cp < ngx_xmpp_cm_prohibited[i][0]) {
            return 0;
        }

        if (cp <= ngx_xmpp_cm_prohibited[i][1]) {
            return 1;
        }
    }

    return 0;
}


/*
 * A localpart (nodeprep) or resourcepart (resourceprep): 1 to 1023 bytes
 * of valid UTF-8 without prohibited code points.  Both prohibit ASCII
 * controls; nodeprep also the space and " & ' / : < > @.
 */

static ngx_int_t
ngx_xmpp_cm_jid_part(u_char *p, size_t len, ngx_uint_t node)
{
    u_char    *end;
    uint32_t   cp;

    if (len == 0 || len > NGX_XMPP_CM_JID_PART_MAX) {
        return NGX_DECLINED;
    }

    for (end = p + len; p < end; /* void */) {
        cp = ngx_xmpp_cm_utf8(&p, end);

        if (cp < 0x80) {
            if (cp < 0x20 || cp == 0x7f) {
                return NGX_DECLINED;
            }

            if (node && ngx_strchr(" \"&'/:<>@", (int) cp) != NULL) {
                return NGX_DECLINED;
            }

            continue;
        }

        if (cp == 0xffffffff || ngx_xmpp_cm_cp_prohibited(cp)) {
            return NGX_DECLINED;
        }
    }

    return NGX_OK;
}


/* RFC 3492 punycode of a label's code points; NGX_DECLINED: too long */

static ngx_int_t
ngx_xmpp_cm_punycode(uint32_t *cp, size_t n, u_char *dst, size_t *len,
    size_t max)
{
    size_t      out, h, b, i, j;
    uint32_t    m, q, t, k, bias, delta, nn;

    static u_char  digits[] = "abcdefghijklmnopqrstuvwxyz0123456789";

#define ngx_xmpp_cm_puny_put(c)                                              \
    if (out == max) {                                                        \
        return NGX_DECLINED;                                                 \
    }                                                                        \
    dst[out++] = (u_char) (c)

    out = 0;

    for (j = 0; j < n; j++) {
        if (cp[j] < 0x80) {
            ngx_xmpp_cm_puny_put(cp[j]);
        }
    }

    h = b = out;

    if (b) {
        ngx_xmpp_cm_puny_put('-');
    }

    nn = 0x80;
    delta = 0;
    bias = 72;

    while (h < n) {
        m = 0xffffffff;

        for (j = 0; j < n; j++) {
            if (cp[j] >= nn && cp[j] < m) {
                m = cp[j];
            }
        }

        /* no overflow: n <= 64 code points of at most 0x10ffff */
        delta += (m - nn) * (uint32_t) (h + 1);
        nn = m;

        for (j = 0; j < n; j++) {
            if (cp[j] < nn) {
                delta++;
            }

            if (cp[j] != nn) {
                continue;
            }

            q = delta;

            for (k = 36; /* void */; k += 36) {
                t = k <= bias ? 1 : (k >= bias + 26 ? 26 : k - bias);

                if (q < t) {
                    break;
                }

                ngx_xmpp_cm_puny_put(digits[t + (q - t) % (36 - t)]);
                q = (q - t) / (36 - t);
            }

            ngx_xmpp_cm_puny_put(digits[q]);

            /* adapt(delta, h + 1, h == b) */
            delta = (h == b) ? delta / 700 : delta / 2;
            delta += delta / (h + 1);

            for (i = 0; delta > ((36 - 1) * 26) / 2; i += 36) {
                delta /= 36 - 1;
            }

            bias = (uint32_t) (i + (36 * delta) / (delta + 38));
            delta = 0;
            h++;
        }

        delta++;
        nn++;
    }

#undef ngx_xmpp_cm_puny_put

    *len = out;

    return NGX_OK;
}


/*
 * One label of a domainpart in its ASCII form, lower-cased: an LDH label
 * (STD 3) as it is, a label with non-ASCII characters as its A-label
 * ("xn--" and punycode).  NGX_DECLINED: not a valid label.
 */

static ngx_int_t
ngx_xmpp_cm_label(u_char *p, size_t len, u_char *dst, size_t *dlen)
{
    u_char     *s, *end;
    size_t      n, plen;
    uint32_t    cp[NGX_XMPP_CM_LABEL_MAX + 1];
    ngx_uint_t  ascii;

    if (len == 0) {
        return NGX_DECLINED;
    }

    ascii = 1;
    n = 0;

    for (s = p, end = p + len; s < end; /* void */) {
        if (n == NGX_XMPP_CM_LABEL_MAX + 1) {
            /* each code point costs an output byte at least */
            return NGX_DECLINED;
        }

        cp[n] = ngx_xmpp_cm_utf8(&s, end);

        if (cp[n] == 0xffffffff) {
            return NGX_DECLINED;
        }

        if (cp[n] >= 0x80) {
            if (ngx_xmpp_cm_cp_prohibited(cp[n])) {
                return NGX_DECLINED;
            }

            ascii = 0;

        } else {
            cp[n] = ngx_tolower(cp[n]);

            if (!((cp[n] >= 'a' && cp[n] <= 'z')
                  || (cp[n] >= '0' && cp[n] <= '9') || cp[n] == '-'))
            {
                return NGX_DECLINED;
            }
        }

        n++;
    }

    /* n >= 1: len > 0 and every pass takes a code point or returns */

    if (n == 0 || cp[0] == '-' || cp[n - 1] == '-') {
        return NGX_DECLINED;
    }

    if (ascii) {
        if (n > NGX_XMPP_CM_LABEL_MAX) {
            return NGX_DECLINED;
        }

        for (plen = 0; plen < n; plen++) {
            dst[plen] = (u_char) cp[plen];
        }

        *dlen = n;
        return NGX_OK;
    }

    ngx_memcpy(dst, "xn--", 4);

    if (ngx_xmpp_cm_punycode(cp, n, dst + 4, &plen,
                             NGX_XMPP_CM_LABEL_MAX - 4)
        != NGX_OK)
    {
        return NGX_DECLINED;
    }

    *dlen = plen + 4;

    return NGX_OK;
}


/*
 * A domainpart without its final dot: an [IPv6] literal or a host name
 * (an IPv4 address is one too) of labels of 1-63 bytes and 253 bytes in
 * all, in ASCII form.  With dst (NGX_XMPP_CM_HOST_MAX bytes) it writes
 * that form: lower-case, U-labels as A-labels.
 */

ngx_int_t
ngx_xmpp_cm_jid_domain(u_char *p, size_t len, u_char *dst, size_t *dlen)
{
    u_char   *end, *dot, buf[NGX_XMPP_CM_LABEL_MAX];
    size_t    n, out;
#if (NGX_HAVE_INET6)
    u_char    addr[16];
#endif

    if (len == 0 || len > NGX_XMPP_CM_JID_PART_MAX) {
        return NGX_DECLINED;
    }

    if (p[0] == '[') {
#if (NGX_HAVE_INET6)
        if (len < 4 || len > 64 || p[len - 1] != ']'
            || ngx_inet6_addr(p + 1, len - 2, addr) != NGX_OK)
        {
            return NGX_DECLINED;
        }

        if (dst) {
            for (n = 0; n < len; n++) {
                dst[n] = ngx_tolower(p[n]);
            }
        }

        if (dlen) {
            *dlen = len;
        }

        return NGX_OK;
#else
        return NGX_DECLINED;
#endif
    }

    out = 0;

    for (end = p + len; /* void */; p = dot + 1) {
        dot = ngx_strlchr(p, end, '.');
        if (dot == NULL) {
            dot = end;
        }

        if (ngx_xmpp_cm_label(p, dot - p, buf, &n) != NGX_OK
            || out + n + (out ? 1 : 0) > NGX_XMPP_CM_HOST_MAX)
        {
            return NGX_DECLINED;
        }

        if (dst) {
            if (out) {
                dst[out] = '.';
            }

            ngx_memcpy(dst + out + (out ? 1 : 0), buf, n);
        }

        out += n + (out ? 1 : 0);

        if (dot == end) {
            break;
        }
    }

    if (dlen) {
        *dlen = out;
    }

    return NGX_OK;
}


/*
 * Splits and checks a JID (RFC 7622 3.1): the resourcepart follows the
 * first '/', the localpart precedes the one '@' before it.  NGX_DECLINED:
 * malformed.  j->fold: the localpart or domainpart has ASCII upper case,
 * or the domainpart a final dot, which stringprep would have changed.
 */

ngx_int_t
ngx_xmpp_cm_jid_parse(u_char *p, size_t len, ngx_xmpp_cm_jid_t *j)
{
    u_char  *slash, *at, *end;
    size_t   i;

    ngx_memzero(j, sizeof(ngx_xmpp_cm_jid_t));

    end = p + len;

    slash = ngx_strlchr(p, end, '/');

    if (slash) {
        j->resource.data = slash + 1;
        j->resource.len = end - slash - 1;
        j->has_resource = 1;
        end = slash;
    }

    at = ngx_strlchr(p, end, '@');

    if (at) {
        j->local.data = p;
        j->local.len = at - p;
        j->has_local = 1;
        p = at + 1;
    }

    j->domain.data = p;
    j->domain.len = end - p;

    if (j->domain.len > 1 && p[j->domain.len - 1] == '.') {
        j->domain.len--;
        j->fold = 1;
    }

    if ((j->has_local && ngx_xmpp_cm_jid_part(j->local.data, j->local.len, 1)
                         != NGX_OK)
        || (j->has_resource
            && ngx_xmpp_cm_jid_part(j->resource.data, j->resource.len, 0)
               != NGX_OK)
        || ngx_xmpp_cm_jid_domain(j->domain.data, j->domain.len, NULL, NULL)
           != NGX_OK)
    {
        return NGX_DECLINED;
    }

    for (i = 0; i < j->local.len; i++) {
        if (j->local.data[i] >= 'A' && j->local.data[i] <= 'Z') {
            j->fold = 1;
        }
    }

    for (i = 0; i < j->domain.len; i++) {
        if (j->domain.data[i] >= 'A' && j->domain.data[i] <= 'Z') {
            j->fold = 1;
        }
    }

    return NGX_OK;
}


/*
 * The JID as Openfire would have it after stringprep, as far as the CM
 * does it: ASCII lower case in the localpart and domainpart, without the
 * domainpart's final dot.  With dst == NULL only counts.
 */

size_t
ngx_xmpp_cm_jid_fold(ngx_xmpp_cm_jid_t *j, u_char *dst)
{
    size_t  n, i;

    n = j->local.len + j->has_local + j->domain.len
        + j->has_resource + j->resource.len;

    if (dst == NULL) {
        return n;
    }

    for (i = 0; i < j->local.len; i++) {
        *dst++ = ngx_tolower(j->local.data[i]);
    }

    if (j->has_local) {
        *dst++ = '@';
    }

    for (i = 0; i < j->domain.len; i++) {
        *dst++ = ngx_tolower(j->domain.data[i]);
    }

    if (j->has_resource) {
        *dst++ = '/';
        ngx_memcpy(dst, j->resource.data, j->resource.len);
    }

    return n;
}


/*
 * The stream header's 'to' against a configured domain (ASCII, nginx -t
 * checks it): one final dot is ignored, ASCII case too, and a U-label
 * matches its A-label.
 */

ngx_int_t
ngx_xmpp_cm_jid_domain_eq(ngx_str_t *given, ngx_str_t *conf)
{
    u_char  buf[NGX_XMPP_CM_HOST_MAX];
    size_t  len, clen;

    len = given->len;
    clen = conf->len;

    if (len > 1 && given->data[len - 1] == '.') {
        len--;
    }

    if (clen > 1 && conf->data[clen - 1] == '.') {
        clen--;
    }

    if (len == clen && ngx_strncasecmp(given->data, conf->data, len) == 0) {
        return 1;
    }

    if (ngx_xmpp_cm_jid_domain(given->data, len, buf, &len) != NGX_OK) {
        return 0;
    }

    return len == clen && ngx_strncasecmp(buf, conf->data, len) == 0;
}


static ngx_int_t
ngx_xmpp_cm_type_ok(ngx_str_t *name, ngx_str_t *type, ngx_uint_t has_type)
{
    ngx_uint_t   i;
    char       **t;

    static char  *message[] = { "normal", "chat", "groupchat", "headline",
                                "error", NULL };
    static char  *presence[] = { "unavailable", "subscribe", "subscribed",
                                 "unsubscribe", "unsubscribed", "probe",
                                 "error", NULL };
    static char  *iq[] = { "get", "set", "result", "error", NULL };

    if (ngx_xmpp_cm_str_is(name, "iq")) {
        t = iq;

    } else if (!has_type) {
        return 1;

    } else if (ngx_xmpp_cm_str_is(name, "message")) {
        t = message;

    } else {
        t = presence;
    }

    if (!has_type) {
        return 0;
    }

    for (i = 0; t[i]; i++) {
        if (ngx_xmpp_cm_str_is(type, t[i])) {
            return 1;
        }
    }

    return 0;
}


/*
 * A client's message, presence or iq at its start tag (e->attrs): the
 * stanza error the CM answers instead of routing it (e->reject), or the
 * 'to' and 'from' to route in their folded form (e->to, e->from, in
 * e->fold, which the framer frees with the element's state at the
 * stanza's end).
 */

void
ngx_xmpp_cm_stanza_check(ngx_xmpp_cm_elem_t *e, ngx_log_t *log)
{
    size_t              len;
    u_char             *p;
    ngx_str_t           ns, local, type, v[2];
    ngx_uint_t          i, has_type, has[2], fold[2];
    ngx_xmpp_cm_jid_t   j[2];

    ngx_memzero(v, sizeof(v));
    ngx_memzero(j, sizeof(j));
    has_type = 0;
    has[0] = has[1] = 0;
    fold[0] = fold[1] = 0;
    ngx_str_null(&type);

    for (i = 0; e->attrs[i]; i += 2) {
        ngx_xmpp_cm_split_name(e->attrs[i], &ns, &local);

        if (ns.len == 0) {
            if (ngx_xmpp_cm_str_is(&local, "type")) {
                type.data = (u_char *) e->attrs[i + 1];
                type.len = ngx_strlen(type.data);
                has_type = 1;

            } else if (ngx_xmpp_cm_str_is(&local, "to")) {
                v[0].data = (u_char *) e->attrs[i + 1];
                v[0].len = ngx_strlen(v[0].data);
                has[0] = 1;

            } else if (ngx_xmpp_cm_str_is(&local, "from")) {
                v[1].data = (u_char *) e->attrs[i + 1];
                v[1].len = ngx_strlen(v[1].data);
                has[1] = 1;
            }

        } else if (ngx_xmpp_cm_str_is(&local, "lang")
                   && ngx_xmpp_cm_str_is(&ns, NGX_XMPP_NS_XML))
        {
            e->has_lang = 1;
        }
    }

    e->is_error = has_type && ngx_xmpp_cm_str_is(&type, "error");

    /* an empty 'to' or 'from' is removed by Openfire: no address */

    for (i = 0; i < 2; i++) {
        if (!has[i] || v[i].len == 0) {
            continue;
        }

        if (ngx_xmpp_cm_jid_parse(v[i].data, v[i].len, &j[i]) != NGX_OK) {
            e->reject = "jid-malformed";
            return;
        }

        fold[i] = j[i].fold;
    }

    if (!ngx_xmpp_cm_type_ok(&e->name, &type, has_type)) {
        e->reject = "bad-request";
        return;
    }

    if (!fold[0] && !fold[1]) {
        return;
    }

    len = (fold[0] ? ngx_xmpp_cm_jid_fold(&j[0], NULL) : 0)
          + (fold[1] ? ngx_xmpp_cm_jid_fold(&j[1], NULL) : 0);

    p = ngx_alloc(len, log);
    if (p == NULL) {
        /* routed unfolded: Openfire may not find the address, no more */
        return;
    }

    e->fold = p;

    if (fold[0]) {
        e->to.data = p;
        e->to.len = ngx_xmpp_cm_jid_fold(&j[0], p);
        p += e->to.len;
    }

    if (fold[1]) {
        e->from.data = p;
        e->from.len = ngx_xmpp_cm_jid_fold(&j[1], p);
    }
}


/* Presence.Show: what Openfire's client reader keeps */

ngx_int_t
ngx_xmpp_cm_stanza_show_ok(ngx_xmpp_cm_elem_t *e)
{
    ngx_str_t  v;

    v.data = e->show;
    v.len = e->show_len;

    return ngx_xmpp_cm_str_is(&v, "chat") || ngx_xmpp_cm_str_is(&v, "away")
           || ngx_xmpp_cm_str_is(&v, "xa") || ngx_xmpp_cm_str_is(&v, "dnd");
}
