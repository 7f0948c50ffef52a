
/*
 * XEP-0198 stream management: the state a stream keeps across its
 * connections.  The element handling (<enable/>, <r/>, <a/>, <resume/>)
 * is the client connection's; what has to outlive a connection lives
 * here and belongs to the stream: the two counts, the stanzas written to
 * the client and not yet acknowledged, the account, the bound JID.
 *
 * Inbound, h is the number of the client's stanzas such that each of
 * them and all before it are either accepted by Openfire (s->confirmed,
 * in routing order) or answered by the CM itself.  A stanza the CM
 * answers while routes before it are unconfirmed is a mark: the value
 * of s->routed when it came; it counts once s->confirmed reaches that.
 *
 * Outbound, every stanza is kept as the bytes the client got (server
 * namespaces removed, not compressed) in malloc'd chunks, as records of
 * a length and the bytes, until the client's <a h> covers it.
 */


#include "ngx_stream_xmpp_cm.h"


#define NGX_XMPP_CM_SM_CHUNK  8192


struct ngx_xmpp_cm_sm_chunk_s {
    ngx_xmpp_cm_sm_chunk_t          *next;
    u_char                          *pos;      /* the first record kept */
    u_char                          *last;
    u_char                          *end;
};


static ngx_int_t ngx_xmpp_cm_sm_mark(ngx_xmpp_cm_sm_t *sm, uint32_t m);


#define ngx_xmpp_cm_sm_ge(a, b)  ((int32_t) ((uint32_t) (a) - (b)) >= 0)


ngx_xmpp_cm_sm_t *
ngx_xmpp_cm_sm_create(ngx_xmpp_cm_stream_t *s, ngx_str_t *jid, ngx_log_t *log)
{
    u_char            *p;
    size_t             bare;
    ngx_xmpp_cm_sm_t  *sm;

    sm = ngx_calloc(sizeof(ngx_xmpp_cm_sm_t) + 2 * jid->len, log);
    if (sm == NULL) {
        return NULL;
    }

    p = (u_char *) (sm + 1);

    sm->jid.data = p;
    sm->jid.len = jid->len;
    p = ngx_cpymem(p, jid->data, jid->len);

    /* the account: the bare JID, compared without case */

    for (bare = 0; bare < jid->len && jid->data[bare] != '/'; bare++) {
        /* void */
    }

    sm->account.data = p;
    sm->account.len = bare;
    ngx_strlow(p, jid->data, bare);

    sm->covered = s->confirmed;

    if (!ngx_xmpp_cm_sm_ge(sm->covered, s->routed)) {
        /* what was routed before <enable/> is not counted */
        sm->covered = s->routed;
    }

    return sm;
}


void
ngx_xmpp_cm_sm_free(ngx_xmpp_cm_sm_t *sm)
{
    ngx_xmpp_cm_sm_chunk_t  *c, *next;

    for (c = sm->head; c; c = next) {
        next = c->next;
        ngx_free(c);
    }

    if (sm->marks) {
        ngx_free(sm->marks);
    }

    ngx_free(sm);
}


/*
 * A client stanza was counted: routed (s->routed is already one more),
 * or answered at the CM (local).  A local one counts at once when every
 * route before it is confirmed.
 */

void
ngx_xmpp_cm_sm_received(ngx_xmpp_cm_stream_t *s, ngx_uint_t local)
{
    ngx_xmpp_cm_sm_t  *sm;

    sm = s->sm;
    sm->received++;

    if (!local) {
        return;
    }

    if (sm->nmarks == 0 && ngx_xmpp_cm_sm_ge(sm->covered, s->routed)) {
        sm->h++;
        return;
    }

    if (ngx_xmpp_cm_sm_mark(sm, s->routed) != NGX_OK) {
        /* no memory for the mark: counted now, as Openfire's answer */
        sm->h++;
    }
}


static ngx_int_t
ngx_xmpp_cm_sm_mark(ngx_xmpp_cm_sm_t *sm, uint32_t m)
{
    uint32_t    *marks;
    ngx_uint_t   i, cap;

    if (sm->nmarks == sm->mark_cap) {
        cap = sm->mark_cap ? 2 * sm->mark_cap : 16;

        marks = ngx_alloc(cap * sizeof(uint32_t), ngx_cycle->log);
        if (marks == NULL) {
            return NGX_ERROR;
        }

        for (i = 0; i < sm->nmarks; i++) {
            marks[i] = sm->marks[(sm->mark_head + i) % sm->mark_cap];
        }

        if (sm->marks) {
            ngx_free(sm->marks);
        }

        sm->marks = marks;
        sm->mark_cap = cap;
        sm->mark_head = 0;
    }

    sm->marks[(sm->mark_head + sm->nmarks) % sm->mark_cap] = m;
    sm->nmarks++;

    return NGX_OK;
}


/*
 * Openfire confirmed more routes (s->confirmed moved): h follows, with
 * the marks it passed.  Returns 1 when a client's <r/> is now answered.
 */

ngx_uint_t
ngx_xmpp_cm_sm_advance(ngx_xmpp_cm_stream_t *s)
{
    ngx_xmpp_cm_sm_t  *sm;

    sm = s->sm;

    if (!ngx_xmpp_cm_sm_ge(sm->covered, s->confirmed)) {
        sm->h += s->confirmed - sm->covered;
        sm->covered = s->confirmed;
    }

    while (sm->nmarks
           && ngx_xmpp_cm_sm_ge(sm->covered, sm->marks[sm->mark_head]))
    {
        sm->h++;
        sm->mark_head = (sm->mark_head + 1) % sm->mark_cap;
        sm->nmarks--;
    }

    if (sm->r_in && ngx_xmpp_cm_sm_ge(sm->h, sm->r_target)) {
        sm->r_in = 0;
        return 1;
    }

    return 0;
}


/*
 * The client's <r/>: answered once h covers every stanza received
 * before it.  Returns 1 when that is the case now.
 */

ngx_uint_t
ngx_xmpp_cm_sm_request(ngx_xmpp_cm_stream_t *s)
{
    ngx_xmpp_cm_sm_t  *sm;

    sm = s->sm;
    sm->r_target = sm->received;
    sm->r_in = 1;

    return ngx_xmpp_cm_sm_advance(s);
}


/* a stanza for the client: kept until acknowledged (two pieces, one) */

ngx_int_t
ngx_xmpp_cm_sm_queue(ngx_xmpp_cm_sm_t *sm, u_char *p1, size_t len1,
    u_char *p2, size_t len2)
{
    size_t                   len, size;
    ngx_xmpp_cm_sm_chunk_t  *c;

    len = len1 + len2;
    c = sm->tail;

    if (c == NULL || (size_t) (c->end - c->last) < sizeof(size_t) + len) {
        size = ngx_max(NGX_XMPP_CM_SM_CHUNK,
                       sizeof(ngx_xmpp_cm_sm_chunk_t) + sizeof(size_t) + len);

        c = ngx_alloc(size, ngx_cycle->log);
        if (c == NULL) {
            return NGX_ERROR;
        }

        c->next = NULL;
        c->pos = (u_char *) (c + 1);
        c->last = c->pos;
        c->end = (u_char *) c + size;

        if (sm->tail) {
            sm->tail->next = c;

        } else {
            sm->head = c;
        }

        sm->tail = c;
    }

    ngx_memcpy(c->last, &len, sizeof(size_t));
    c->last += sizeof(size_t);
    if (len1) {
        c->last = ngx_cpymem(c->last, p1, len1);
    }

    if (len2) {
        c->last = ngx_cpymem(c->last, p2, len2);
    }

    sm->sent++;
    sm->count++;
    sm->size += len;

    return NGX_OK;
}


/*
 * The client's h: the stanzas it covers are dropped.  NGX_DECLINED: h
 * acknowledges more than was sent, or less than before (XEP-0198 4:
 * handled-count-too-high, a stream error).
 */

ngx_int_t
ngx_xmpp_cm_sm_ack(ngx_xmpp_cm_sm_t *sm, uint32_t h)
{
    size_t                   len;
    uint32_t                 n;
    ngx_xmpp_cm_sm_chunk_t  *c;

    n = h - sm->acked;

    if (!ngx_xmpp_cm_sm_ge(h, sm->acked) || n > sm->count) {
        return NGX_DECLINED;
    }

    sm->acked = h;

    while (n) {
        c = sm->head;

        if (c == NULL) {
            /* cannot happen: count says how many records there are */
            break;
        }

        ngx_memcpy(&len, c->pos, sizeof(size_t));
        c->pos += sizeof(size_t) + len;
        sm->size -= len;
        sm->count--;
        n--;

        if (c->pos == c->last) {
            sm->head = c->next;

            if (sm->head == NULL) {
                sm->tail = NULL;
            }

            ngx_free(c);
        }
    }

    return NGX_OK;
}


/* every stanza kept, in order; stops at the first handler error */

ngx_int_t
ngx_xmpp_cm_sm_walk(ngx_xmpp_cm_sm_t *sm, ngx_xmpp_cm_sm_pt handler,
    void *data)
{
    u_char                  *p;
    size_t                   len;
    ngx_int_t                rc;
    ngx_xmpp_cm_sm_chunk_t  *c;

    for (c = sm->head; c; c = c->next) {
        for (p = c->pos; p < c->last; p += len) {
            ngx_memcpy(&len, p, sizeof(size_t));
            p += sizeof(size_t);

            rc = handler(data, p, len);
            if (rc != NGX_OK) {
                return rc;
            }
        }
    }

    return NGX_OK;
}


/*
 * A new connection took the stream over.  The client resends what h
 * does not cover, so the count of received stanzas goes back to h, and
 * routes still unconfirmed are no longer counted (their stanzas come
 * again: a stanza may reach Openfire twice, never zero times).
 */

void
ngx_xmpp_cm_sm_resumed(ngx_xmpp_cm_stream_t *s)
{
    ngx_xmpp_cm_sm_t  *sm;

    sm = s->sm;

    (void) ngx_xmpp_cm_sm_advance(s);

    sm->received = sm->h;
    sm->covered = s->routed;
    sm->nmarks = 0;
    sm->mark_head = 0;
    sm->r_in = 0;
    sm->r_out = 0;

    if (sm->hold) {
        sm->hold = 0;
        ngx_xmpp_cm_uncount(s->up, SM_HELD);
    }

    sm->requested = sm->sent;
    sm->requested_size = sm->size;
}


/*
 * Openfire routed a stanza to a stream whose connection dropped: kept
 * for the resumption as the client would have got it.  NGX_DECLINED:
 * not a stanza (answered as for a closed stream); NGX_ERROR: over the
 * bound, or no memory (the stream ends, and what it kept goes back).
 */

ngx_int_t
ngx_xmpp_cm_sm_hold(ngx_xmpp_cm_stream_t *s, ngx_xmpp_cm_xml_t *x,
    ngx_xmpp_cm_node_t *n)
{
    u_char     *tmp, *p;
    size_t      len, out;
    ngx_int_t   rc;

    if (!(ngx_xmpp_cm_str_is(&n->name, "message")
          || ngx_xmpp_cm_str_is(&n->name, "presence")
          || ngx_xmpp_cm_str_is(&n->name, "iq")))
    {
        return NGX_DECLINED;
    }

    len = ngx_xmpp_cm_xml_copy(x, NULL, n->start, n->end);

    if (s->sm->size + len > s->sm->limit) {
        return NGX_ERROR;
    }

    tmp = ngx_alloc(len, ngx_cycle->log);
    if (tmp == NULL) {
        return NGX_ERROR;
    }

    (void) ngx_xmpp_cm_xml_copy(x, tmp, n->start, n->end);

    if (n->has_xmlns && !ngx_xmpp_cm_str_is(&n->xmlns, NGX_XMPP_NS_CLIENT)) {
        out = ngx_xmpp_cm_strip_server_ns(NULL, tmp, len, n);

        p = ngx_alloc(out, ngx_cycle->log);
        if (p == NULL) {
            ngx_free(tmp);
            return NGX_ERROR;
        }

        (void) ngx_xmpp_cm_strip_server_ns(p, tmp, len, n);
        rc = ngx_xmpp_cm_sm_queue(s->sm, p, out, NULL, 0);
        ngx_free(p);

    } else {
        rc = ngx_xmpp_cm_sm_queue(s->sm, tmp, len, NULL, 0);
    }

    ngx_free(tmp);

    return rc;
}


/*
 * A resumption id names its worker: "w<pid>-<hex>", the stream id.
 * NGX_OK with the pid, NGX_ERROR when it is not such an id.
 */

ngx_int_t
ngx_xmpp_cm_sm_previd(ngx_str_t *previd, ngx_pid_t *pid)
{
    size_t     i;
    ngx_int_t  n;

    if (previd->len < 3 || previd->len >= NGX_XMPP_CM_ID_LEN
        || previd->data[0] != 'w')
    {
        return NGX_ERROR;
    }

    for (i = 1; i < previd->len && previd->data[i] != '-'; i++) {
        if (previd->data[i] < '0' || previd->data[i] > '9') {
            return NGX_ERROR;
        }
    }

    if (i == 1 || i == previd->len || i > 1 + NGX_INT_T_LEN) {
        return NGX_ERROR;
    }

    n = ngx_atoi(previd->data + 1, i - 1);
    if (n == NGX_ERROR) {
        return NGX_ERROR;
    }

    *pid = (ngx_pid_t) n;

    return NGX_OK;
}


/* user, or user@domain, as a bare JID in lower case */

static ngx_int_t
ngx_xmpp_cm_sm_user(ngx_pool_t *pool, u_char *p, size_t len,
    ngx_str_t *domain, ngx_str_t *account)
{
    u_char  *d;

    if (len == 0 || len > 1023) {
        return NGX_DECLINED;
    }

    if (ngx_strlchr(p, p + len, '@')) {
        d = ngx_pnalloc(pool, len);
        if (d == NULL) {
            return NGX_ERROR;
        }

        ngx_strlow(d, p, len);
        account->data = d;
        account->len = len;
        return NGX_OK;
    }

    d = ngx_pnalloc(pool, len + 1 + domain->len);
    if (d == NULL) {
        return NGX_ERROR;
    }

    ngx_strlow(d, p, len);
    d[len] = '@';
    ngx_strlow(d + len + 1, domain->data, domain->len);

    account->data = d;
    account->len = len + 1 + domain->len;

    return NGX_OK;
}


/* RFC 5802 5.1: a saslname, "=2C" and "=3D" unescaped into dst */

static size_t
ngx_xmpp_cm_sm_saslname(u_char *dst, u_char *p, size_t len)
{
    u_char  *s, *d, *end;

    end = p + len;

    for (s = p, d = dst; s < end; s++) {
        if (*s == '=' && end - s >= 3) {
            if (s[1] == '2' && (s[2] == 'C' || s[2] == 'c')) {
                *d++ = ',';
                s += 2;
                continue;
            }

            if (s[1] == '3' && (s[2] == 'D' || s[2] == 'd')) {
                *d++ = '=';
                s += 2;
                continue;
            }
        }

        *d++ = *s;
    }

    return d - dst;
}


/*
 * The account a SASL message names, for the mechanisms whose messages
 * carry it: PLAIN (authzid, else authcid), SCRAM-SHA-* (the
 * client-first-message: a= authzid, else n=), DIGEST-MD5 (the
 * response's username and realm).  data is the decoded message.
 * NGX_DECLINED: this mechanism or message does not name one.
 */

ngx_int_t
ngx_xmpp_cm_sm_account(ngx_pool_t *pool, ngx_str_t *mech, ngx_str_t *data,
    ngx_str_t *domain, ngx_str_t *account)
{
    u_char     *p, *end, *a, *v, *user, *realm;
    size_t      ulen, rlen, alen;
    ngx_str_t   dom;

    p = data->data;
    end = p + data->len;

    if (ngx_xmpp_cm_str_is(mech, "PLAIN")) {
        /* authzid NUL authcid NUL passwd */

        a = ngx_strlchr(p, end, '\0');
        if (a == NULL) {
            return NGX_DECLINED;
        }

        if (a > p) {
            return ngx_xmpp_cm_sm_user(pool, p, a - p, domain, account);
        }

        user = a + 1;
        v = ngx_strlchr(user, end, '\0');
        if (v == NULL) {
            return NGX_DECLINED;
        }

        return ngx_xmpp_cm_sm_user(pool, user, v - user, domain, account);
    }

    if (mech->len > 5 && ngx_strncmp(mech->data, "SCRAM", 5) == 0) {
        /* gs2-header: ("n" | "y" | "p=..") "," [ "a=" saslname ] "," */

        a = ngx_strlchr(p, end, ',');
        if (a == NULL) {
            return NGX_DECLINED;
        }

        a++;
        user = NULL;
        ulen = 0;

        if (end - a > 2 && a[0] == 'a' && a[1] == '=') {
            v = ngx_strlchr(a, end, ',');
            if (v == NULL) {
                return NGX_DECLINED;
            }

            user = a + 2;
            ulen = v - user;
            a = v;
        }

        if (a >= end || *a != ',') {
            return NGX_DECLINED;
        }

        a++;

        if (user == NULL) {
            if (end - a < 2 || a[0] != 'n' || a[1] != '=') {
                return NGX_DECLINED;
            }

            user = a + 2;
            v = ngx_strlchr(user, end, ',');
            ulen = (v ? v : end) - user;
        }

        v = ngx_pnalloc(pool, ulen + 1);
        if (v == NULL) {
            return NGX_ERROR;
        }

        ulen = ngx_xmpp_cm_sm_saslname(v, user, ulen);

        return ngx_xmpp_cm_sm_user(pool, v, ulen, domain, account);
    }

    if (ngx_xmpp_cm_str_is(mech, "DIGEST-MD5")) {
        /* username="..",realm="..",nonce=.. (RFC 2831 2.1.2) */

        user = NULL;
        realm = NULL;
        ulen = 0;
        rlen = 0;

        while (p < end) {
            while (p < end && (*p == ',' || ngx_xmpp_cm_is_space(*p))) {
                p++;
            }

            a = p;

            while (p < end && *p != '=') {
                p++;
            }

            if (p == end) {
                break;
            }

            alen = p - a;
            p++;

            if (p < end && *p == '"') {
                v = ++p;

                while (p < end && *p != '"') {
                    p += (*p == '\\' && p + 1 < end) ? 2 : 1;
                }

            } else {
                v = p;

                while (p < end && *p != ',') {
                    p++;
                }
            }

            if (alen == 8 && ngx_strncasecmp(a, (u_char *) "username", 8)
                             == 0)
            {
                user = v;
                ulen = p - v;

            } else if (alen == 5
                       && ngx_strncasecmp(a, (u_char *) "realm", 5) == 0)
            {
                realm = v;
                rlen = p - v;
            }

            if (p < end && *p == '"') {
                p++;
            }
        }

        if (user == NULL || ngx_strlchr(user, user + ulen, '\\')) {
            return NGX_DECLINED;
        }

        dom = *domain;

        if (realm && rlen) {
            dom.data = realm;
            dom.len = rlen;
        }

        return ngx_xmpp_cm_sm_user(pool, user, ulen, &dom, account);
    }

    return NGX_DECLINED;
}

