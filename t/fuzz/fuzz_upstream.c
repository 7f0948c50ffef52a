
/*
 * fuzz_upstream: the Openfire side of the CM.
 *
 * Input: 3 control bytes, then what Openfire sends on one CM socket
 * (from its stream header on).
 *   byte 0: bits 0-1 read sizes (1-8, 1-64, 1-4096, all at once),
 *           bit 2    the socket starts READY (else OPENING: header and
 *                    handshake still to come),
 *           bit 3    the pool is not configured yet,
 *           bit 4    the pool was down: ghost ids to close when it is up
 *   bytes 1-2: PRNG seed for the read sizes.
 *
 * This file includes src/ngx_stream_xmpp_cm_upstream.c, so the socket's
 * real callbacks run: ngx_xmpp_cm_sock_open (handshake), _sock_element
 * (routes -> session table -> bounce / ghost close; session IQs;
 * configuration IQ -> features; handshake; stream errors), _sock_end.
 * The session table holds sessions "r1a".."r1z" (the ids of the seeds
 * recorded from Openfire 4.1.6) in their close delay, i.e. without a client; a
 * stanza for a live client is not delivered here (that needs a client
 * connection), but the tree walk below does the byte work of
 * ngx_xmpp_cm_client_deliver() on every route payload: copy of the span,
 * server namespace stripped, escaped-text payloads, the bind <jid>.
 *
 * Checked: every node span of the tree is an element in the retained
 * bytes; the counting and writing passes of strip_server_ns agree; and
 * everything the CM queued towards Openfire (handshake, IQ results,
 * <failed> bounces, IQ errors, session closes) is well-formed and safe
 * for Openfire's double-quote-only splitter.
 */

#include "fuzz_common.h"
#include "../../src/ngx_stream_xmpp_cm_upstream.c"


static fuzz_upstream_t  fp;
static ngx_log_t    fu_logs[2];
static ngx_uint_t   fu_nodes;


static void
fu_check_span(ngx_xmpp_cm_xml_t *x, ngx_xmpp_cm_node_t *n)
{
    u_char     *p, *s;
    size_t      len, out, out2;
    XML_Index   kept;

    /* the first byte the framer still holds */
    (void) ngx_xmpp_cm_xml_pending(x, &kept);

    if (n->end <= n->start || n->start < kept) {
        FUZZ_FAIL("node <%.*s> span %llu..%llu outside the retained bytes "
                  "(from %llu)", (int) n->name.len, n->name.data,
                  (unsigned long long) n->start,
                  (unsigned long long) n->end,
                  (unsigned long long) kept);
    }

    len = ngx_xmpp_cm_xml_copy(x, NULL, n->start, n->end);
    p = malloc(len);
    (void) ngx_xmpp_cm_xml_copy(x, p, n->start, n->end);

    if (p[0] != '<' || p[len - 1] != '>') {
        FUZZ_FAIL("node <%.*s> span is not an element: %.*s",
                  (int) n->name.len, n->name.data, (int) len, p);
    }

    /* as ngx_xmpp_cm_client_deliver(): exact-size buffers */

    out = ngx_xmpp_cm_strip_server_ns(NULL, p, len, n);
    s = malloc(out ? out : 1);
    out2 = ngx_xmpp_cm_strip_server_ns(s, p, len, n);

    if (out != out2 || out > len) {
        FUZZ_FAIL("strip_server_ns counted %zu, wrote %zu (of %zu)", out,
                  out2, len);
    }

    free(s);
    free(p);
}


static void
fu_walk(ngx_xmpp_cm_xml_t *x, ngx_xmpp_cm_node_t *n, ngx_uint_t depth)
{
    ngx_uint_t           i;
    ngx_xmpp_cm_node_t  *c;

    fu_nodes++;

    for (i = 0; i < n->nattrs; i++) {
        char  name[64];

        if (n->attrs[2 * i].len >= sizeof(name)) {
            continue;
        }

        ngx_memcpy(name, n->attrs[2 * i].data, n->attrs[2 * i].len);
        name[n->attrs[2 * i].len] = '\0';

        if (ngx_xmpp_cm_node_attr(n, name) == NULL) {
            FUZZ_FAIL("attribute %s not found by node_attr", name);
        }
    }

    if (depth == 1 || n->end) {
        fu_check_span(x, n);
    }

    for (c = n->child; c; c = c->next) {
        if (c->parent != n) {
            FUZZ_FAIL("bad parent link");
        }

        fu_walk(x, c, depth + 1);
    }
}


static ngx_int_t
fu_element(void *data, ngx_xmpp_cm_elem_t *e)
{
    ngx_xmpp_cm_sock_t  *sock = data;
    ngx_xmpp_cm_node_t  *jid, *bind;

    if (e->root) {
        fu_walk(sock->xml, e->root, 1);

        /* the text the CM reads: route payloads, the bind result's jid */

        if (e->root->text.len) {
            (void) ngx_xmpp_cm_escape(NULL, e->root->text.data,
                                      e->root->text.len);
        }

        if (e->root->child
            && (bind = ngx_xmpp_cm_node_child(e->root->child, "bind")))
        {
            jid = ngx_xmpp_cm_node_child(bind, "jid");
            if (jid && jid->text.len) {
                u_char *j = malloc(jid->text.len);
                ngx_memcpy(j, jid->text.data, jid->text.len);
                free(j);
            }
        }
    }

    return ngx_xmpp_cm_sock_stanza(data, e);
}


static ngx_xmpp_cm_xml_handlers_t  fu_handlers = {
    ngx_xmpp_cm_sock_open, NULL, fu_element, ngx_xmpp_cm_sock_end
};


static void
fu_check_output(void)
{
    u_char      *out;
    size_t       len;
    ngx_uint_t   i, nfrag;
    const char  *err;

    for (i = 0; i < 2; i++) {
        out = fuzz_queue_take(&fp.socks[i].out, &len);

        err = fuzz_splitter_check(out, len, &nfrag);
        if (err) {
            FUZZ_FAIL("output to Openfire unsafe for its splitter: %s\n%.*s",
                      err, (int) len, out);
        }

        err = fuzz_wellformed(out, len, 0);
        if (err) {
            FUZZ_FAIL("output to Openfire not well-formed: %s\n%.*s", err,
                      (int) len, out);
        }

        free(out);
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                *g;
    size_t                off;
    uint8_t               flags;
    ngx_int_t             rc;
    ngx_uint_t            i;
    fuzz_rng_t            rng;
    ngx_pool_t            *pool;
    ngx_rbtree_node_t     *node;
    ngx_xmpp_cm_sock_t    *sock;
    ngx_xmpp_cm_stream_t  *s;

    if (fuzz_begin(&fp, &data, &size, &flags, &rng) != NGX_OK) {
        return 0;
    }

    pool = ngx_create_pool(4096, &fuzz_log);
    fp.up.log = fuzz_log;

    /* each socket's own log, with the module's handler (formatted) */

    for (i = 0; i < 2; i++) {
        fu_logs[i] = fuzz_log;
        fu_logs[i].handler = ngx_xmpp_cm_sock_log_error;
        fu_logs[i].data = &fp.socks[i];
        fp.socks[i].log = &fu_logs[i];
    }

    if (ngx_array_init(&fp.up.ghosts, pool, 4, NGX_XMPP_CM_ID_LEN)
        != NGX_OK)
    {
        FUZZ_FAIL("array");
    }

    if (flags & 0x08) {
        fp.up.configured = 0;
        fp.up.was_up = 0;
    }

    if (flags & 0x10) {
        fp.up.was_up = 0;
        g = ngx_array_push(&fp.up.ghosts);
        ngx_memcpy(g, "w1-ghost\0", 9);
    }

    for (i = 0; i < 26; i++) {
        s = ngx_calloc(sizeof(ngx_xmpp_cm_stream_t), &fuzz_log);
        s->id[0] = 'r';
        s->id[1] = '1';
        s->id[2] = 'a' + i;
        s->node.str.data = s->id;
        s->node.str.len = 3;
        s->node.node.key = ngx_crc32_short(s->id, 3);
        s->up = &fp.up;
        s->sock = &fp.socks[i % 2];
        ngx_rbtree_insert(&fp.up.ids, &s->node.node);
        fp.up.nstreams++;
    }

    sock = &fp.socks[0];
    sock->keepalive.handler = ngx_xmpp_cm_sock_keepalive_handler;
    sock->keepalive.data = sock;
    sock->keepalive.log = &fp.up.log;

    if (!(flags & 0x04)) {
        sock->state = NGX_XMPP_CM_SOCK_OPENING;
        fp.up.ready = 1;
    }

    if (ngx_xmpp_cm_sock_framer(sock, pool) != NGX_OK) {
        FUZZ_FAIL("xml_create");
    }

    /* the real element handler, with the tree walked first */
    ngx_xmpp_cm_xml_handlers(sock->xml, &fu_handlers, sock);

    for (off = 0; off < size; /* void */) {

        rc = fuzz_feed_next(sock->xml, data, size, &off, flags & 3, 4096,
                            &rng);

        /* as ngx_xmpp_cm_sock_read_handler(): the socket is closed */

        if (rc != NGX_OK || sock->done) {
            break;
        }
    }

    fu_check_output();

    ngx_xmpp_cm_xml_free(sock->xml);
    sock->xml = NULL;

    while (fp.up.ids.root != fp.up.ids.sentinel) {
        node = ngx_rbtree_min(fp.up.ids.root,
                              fp.up.ids.sentinel);
        ngx_xmpp_cm_stream_forget((ngx_xmpp_cm_stream_t *) node);
    }

    if (fp.up.features.data) {
        ngx_free(fp.up.features.data);
    }

    ngx_destroy_pool(pool);
    fuzz_events_clear();

    return 0;
}
