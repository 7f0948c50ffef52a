
/*
 * The per-worker stream table: stream id -> stream (the Openfire session
 * of one client stream).  The table is the only place where the upstream
 * side finds a client; everything routed to a stream id this worker no
 * longer (or never) had is answered here, so that nothing is dropped
 * without its sender being told.
 */


#include "ngx_stream_xmpp_cm.h"
#include <openssl/rand.h>


#define NGX_XMPP_CM_GHOSTS_MAX   200000


static void ngx_xmpp_cm_stream_linger(ngx_xmpp_cm_stream_t *s);
static void ngx_xmpp_cm_stream_close_handler(ngx_event_t *ev);
static void ngx_xmpp_cm_stream_end(ngx_xmpp_cm_stream_t *s,
    ngx_uint_t how, char *cond, char *text, u_char *raw, size_t rawlen);
static void ngx_xmpp_cm_stream_remember(ngx_xmpp_cm_upstream_t *up,
    ngx_str_t *id);
static void ngx_xmpp_cm_bounce(ngx_xmpp_cm_upstream_t *up,
    ngx_xmpp_cm_xml_t *x, ngx_xmpp_cm_stream_t *s, ngx_str_t *id,
    ngx_xmpp_cm_node_t *c);
static void ngx_xmpp_cm_stream_iq_result(ngx_xmpp_cm_sock_t *sock,
    ngx_xmpp_cm_node_t *iq);
static void ngx_xmpp_cm_stream_route(ngx_xmpp_cm_upstream_t *up,
    ngx_xmpp_cm_sock_t *sock, ngx_xmpp_cm_node_t *route);
static void ngx_xmpp_cm_stream_iq(ngx_xmpp_cm_upstream_t *up,
    ngx_xmpp_cm_sock_t *sock, ngx_xmpp_cm_node_t *iq);
static void ngx_xmpp_cm_stream_end_all(ngx_xmpp_cm_upstream_t *up,
    char *cond, char *text, ngx_uint_t ghost);
static void ngx_xmpp_cm_stream_up(ngx_xmpp_cm_upstream_t *up);
static void ngx_xmpp_cm_stream_unblock(ngx_xmpp_cm_stream_t *s);
static void ngx_xmpp_cm_stream_confirmed(ngx_xmpp_cm_upstream_t *up,
    ngx_str_t *id, ngx_uint_t n);
static void ngx_xmpp_cm_bounce_iq(ngx_xmpp_cm_upstream_t *up,
    ngx_xmpp_cm_sock_t *sock, ngx_str_t *id, ngx_xmpp_cm_node_t *c);
static void ngx_xmpp_cm_stream_return(ngx_xmpp_cm_stream_t *s);
static ngx_uint_t ngx_xmpp_cm_stream_resend(ngx_xmpp_cm_upstream_t *up,
    ngx_xmpp_cm_sock_t *to, ngx_uint_t kind, ngx_str_t *id);


const ngx_xmpp_cm_streams_t  ngx_xmpp_cm_streams = {
    ngx_xmpp_cm_stream_route,
    ngx_xmpp_cm_stream_iq,
    ngx_xmpp_cm_stream_end_all,
    ngx_xmpp_cm_stream_up,
    ngx_xmpp_cm_stream_unblock,
    ngx_xmpp_cm_stream_confirmed,
    ngx_xmpp_cm_stream_resend
};


/* a worker's table for one CM name, beside its sockets */

ngx_int_t
ngx_xmpp_cm_stream_init(ngx_cycle_t *cycle, ngx_xmpp_cm_upstream_t *up)
{
    ngx_rbtree_init(&up->ids, &up->sentinel,
                    ngx_str_rbtree_insert_value);

    if (ngx_array_init(&up->ghosts, cycle->pool, 16, NGX_XMPP_CM_ID_LEN)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    up->closed = ngx_pcalloc(cycle->pool,
                             NGX_XMPP_CM_CLOSED_RING * NGX_XMPP_CM_ID_LEN);
    if (up->closed == NULL) {
        return NGX_ERROR;
    }

    up->streams = &ngx_xmpp_cm_streams;

    return NGX_OK;
}


ngx_xmpp_cm_stream_t *
ngx_xmpp_cm_stream_create(ngx_xmpp_cm_upstream_t *up,
    ngx_xmpp_cm_conn_t *conn, ngx_str_t *addr)
{
    u_char                rnd[8], *p;
    ngx_xmpp_cm_sock_t    *sock;
    ngx_xmpp_cm_stream_t  *s;

    sock = ngx_xmpp_cm_upstream_pick(up);
    if (sock == NULL) {
        return NULL;
    }

    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        ngx_log_error(NGX_LOG_ALERT, &up->log, 0,
                      "xmpp_cm: RAND_bytes() failed");
        return NULL;
    }

    s = ngx_calloc(sizeof(ngx_xmpp_cm_stream_t), &up->log);
    if (s == NULL) {
        return NULL;
    }

    /* w<pid>-<64 random bits>: unique server-wide, tells the worker */

    p = ngx_sprintf(s->id, "w%P-", ngx_pid);
    p = ngx_hex_dump(p, rnd, sizeof(rnd));

    s->node.str.data = s->id;
    s->node.str.len = p - s->id;
    s->node.node.key = ngx_crc32_short(s->id, s->node.str.len);
    s->up = up;
    s->sock = sock;

    if (ngx_xmpp_cm_route_session_iq(up, sock, &s->node.str,
                                     NGX_XMPP_CM_IQ_CREATE, addr, NULL, 0)
        != NGX_OK)
    {
        ngx_free(s);
        return NULL;
    }

    ngx_rbtree_insert(&up->ids, &s->node.node);
    up->nstreams++;
    ngx_xmpp_cm_count(up, OPENED);

    ngx_xmpp_cm_stream_attach(s, conn);

    return s;
}


/* the socket a session writes to: pinned, re-pinned if it went away */

static ngx_xmpp_cm_sock_t *
ngx_xmpp_cm_stream_sock(ngx_xmpp_cm_stream_t *s)
{
    if (s->sock == NULL || s->sock->state != NGX_XMPP_CM_SOCK_READY) {
        s->sock = ngx_xmpp_cm_upstream_pick(s->up);
    }

    return s->sock;
}


/*
 * A client stanza for Openfire, on the stream's (re-pinned) socket.  A
 * socket over its high-water mark pauses the stream: the connection
 * reads no more until the socket drains (ngx_xmpp_cm_stream_unblock).
 */

ngx_int_t
ngx_xmpp_cm_stream_send(ngx_xmpp_cm_stream_t *s, ngx_xmpp_cm_xml_t *x,
    ngx_xmpp_cm_elem_t *e, u_char *lang)
{
    ngx_int_t  rc;

    if (ngx_xmpp_cm_stream_sock(s) == NULL) {
        return NGX_ERROR;
    }

    rc = ngx_xmpp_cm_route_client(s, x, e, lang);

    if (rc == NGX_OK) {
        s->routed++;
        (void) ngx_xmpp_cm_stream_throttled(s);
    }

    return rc;
}


/*
 * Whether the stream may not send now: its socket is over the high-water
 * mark (the stream is then queued for the socket's unthrottle).  Also
 * asked before a read, so that a client does not read what cannot go.
 */

ngx_uint_t
ngx_xmpp_cm_stream_throttled(ngx_xmpp_cm_stream_t *s)
{
    if (s->paused) {
        return 1;
    }

    if (s->sock == NULL || !s->sock->throttled) {
        return 0;
    }

    ngx_xmpp_cm_count(s->up, FLOW_PAUSES);
    s->paused = 1;
    ngx_queue_insert_tail(&s->sock->paused, &s->queue);

    return 1;
}


/*
 * The stream's client waits for Openfire's confirmation (an XEP-0198
 * <r/>): its routes are on its pinned socket (a reset moves them with
 * the stream), whose barrier goes now.
 */

void
ngx_xmpp_cm_stream_confirm_now(ngx_xmpp_cm_stream_t *s)
{
    if (s->sock && s->routed != s->confirmed) {
        ngx_xmpp_cm_sock_confirm_now(s->sock);
    }
}


/*
 * Openfire accepted n more of this stream's routes, in routing order
 * (the link's barrier): XEP-0198's h follows, and a client's <r/> that
 * waited for it is answered.
 */

static void
ngx_xmpp_cm_stream_confirmed(ngx_xmpp_cm_upstream_t *up, ngx_str_t *id,
    ngx_uint_t n)
{
    ngx_xmpp_cm_stream_t  *s;

    s = ngx_xmpp_cm_stream_find(up, id);
    if (s == NULL) {
        return;
    }

    /* never past what was routed (a barrier may cover the CM's own) */

    if ((uint32_t) n > s->routed - s->confirmed) {
        n = s->routed - s->confirmed;
    }

    s->confirmed += (uint32_t) n;

    if (s->sm && ngx_xmpp_cm_sm_advance(s) && s->conn) {
        s->conn->handler->confirmed(s->conn);
    }
}


/* the socket drained: the upstream side lets the paused stream go on */

static void
ngx_xmpp_cm_stream_unblock(ngx_xmpp_cm_stream_t *s)
{
    s->paused = 0;

    if (s->conn) {
        s->conn->handler->unblock(s->conn);
    }
}


/*
 * A reset socket's unconfirmed element of this stream goes again on the
 * socket to, and so does everything newer of the stream, in order.  A
 * create goes again only while nothing shows that Openfire acted on it
 * (its result, or a route for the stream): a second create with the same
 * id would replace the session (docs/delivery.md).  The elements of a
 * stream already ended go again too (its close is among them).
 */

static ngx_uint_t
ngx_xmpp_cm_stream_resend(ngx_xmpp_cm_upstream_t *up, ngx_xmpp_cm_sock_t *to,
    ngx_uint_t kind, ngx_str_t *id)
{
    ngx_xmpp_cm_stream_t  *s;

    s = ngx_xmpp_cm_stream_find(up, id);

    if (s == NULL) {
        return kind != NGX_XMPP_CM_BUF_CREATE;
    }

    s->sock = to;

    return kind != NGX_XMPP_CM_BUF_CREATE || !s->created;
}


ngx_xmpp_cm_stream_t *
ngx_xmpp_cm_stream_find(ngx_xmpp_cm_upstream_t *up, ngx_str_t *id)
{
    return (ngx_xmpp_cm_stream_t *)
           ngx_str_rbtree_lookup(&up->ids, id,
                                 ngx_crc32_short(id->data, id->len));
}


/* out of the table and freed: only ngx_xmpp_cm_stream_end() (and tests) */

void
ngx_xmpp_cm_stream_forget(ngx_xmpp_cm_stream_t *s)
{
    if (s->close_ev) {
        if (s->close_ev->timer_set) {
            ngx_del_timer(s->close_ev);
        }

        ngx_free(s->close_ev);
    }

    if (s->paused) {
        ngx_queue_remove(&s->queue);
        s->paused = 0;
    }

    if (s->detached) {
        ngx_xmpp_cm_uncount(s->up, DETACHED);
    }

    if (s->sm) {
        if (s->sm->hold) {
            ngx_xmpp_cm_uncount(s->up, SM_HELD);
        }

        ngx_xmpp_cm_uncount(s->up, SM);
        ngx_xmpp_cm_sm_free(s->sm);
    }

    ngx_rbtree_delete(&s->up->ids, &s->node.node);
    s->up->nstreams--;

    ngx_free(s);
}


/*
 * A connection takes the stream: a new one, or (during the close delay)
 * one that comes back.  Called by the connection side only.
 */

void
ngx_xmpp_cm_stream_attach(ngx_xmpp_cm_stream_t *s, ngx_xmpp_cm_conn_t *conn)
{
    if (s->close_ev && s->close_ev->timer_set) {
        ngx_del_timer(s->close_ev);
    }

    if (s->detached) {
        s->detached = 0;
        ngx_xmpp_cm_uncount(s->up, DETACHED);
    }

    s->conn = conn;
}


/*
 * XEP-0198 resumption: a new connection takes the stream over.  A
 * connection still attached (the client came back before its old
 * connection timed out) is let go and told why first, as the end of a
 * stream tells it, so it never calls the table back.
 */

void
ngx_xmpp_cm_stream_take(ngx_xmpp_cm_stream_t *s, ngx_xmpp_cm_conn_t *conn,
    char *cond, char *text)
{
    ngx_xmpp_cm_conn_t  *old;

    old = s->conn;

    if (old) {
        s->conn = NULL;
        old->handler->ended(old, cond, text, NULL, 0);
    }

    ngx_xmpp_cm_stream_attach(s, conn);
    ngx_xmpp_cm_sm_resumed(s);
}


/*
 * The connection lets go of the stream (it ended, or went away); called
 * by the connection side only, and never calls it back.  <close/> goes
 * out on the socket the session used, at once by default, so that
 * Openfire stops routing to it (a bare-JID message would otherwise go to
 * this resource and end up offline).  With xmpp_cm_close_delay the
 * session stays open on Openfire for that long, detached, and messages
 * routed to it go back with <failed> (stored offline).  While a route is
 * being delivered the close waits for its end, so that the stanzas after
 * the one that ended the stream go back first.
 */

void
ngx_xmpp_cm_stream_detach(ngx_xmpp_cm_stream_t *s)
{
    s->conn = NULL;
    s->detached = 1;
    ngx_xmpp_cm_count(s->up, DETACHED);

    if (s->paused) {
        ngx_queue_remove(&s->queue);
        s->paused = 0;
    }

    if (s->routing) {
        s->gone = 1;
        return;
    }

    ngx_xmpp_cm_stream_linger(s);
}


/*
 * A detached stream: closed now, or after xmpp_cm_close_delay, or, when
 * its connection dropped with XEP-0198 resumption enabled, after the
 * resumption wait (xmpp_cm_resume_timeout, or the client's shorter max),
 * keeping what Openfire routes to it.  The close delay is the same wait
 * without a resumption: what comes in it goes back at once.
 */

static void
ngx_xmpp_cm_stream_linger(ngx_xmpp_cm_stream_t *s)
{
    ngx_msec_t  delay;

    delay = s->up->conf->close_delay;

    if (s->sm && s->sm->hold) {
        delay = s->sm->max;
    }

    if (delay == 0 || s->discard || s->up->exiting) {
        ngx_xmpp_cm_stream_end(s, NGX_XMPP_CM_END_CLOSE, NULL, NULL,
                               NULL, 0);
        return;
    }

    /* the timer exists only for the delay: a live session holds none */

    if (s->close_ev == NULL) {
        s->close_ev = ngx_calloc(sizeof(ngx_event_t), &s->up->log);
        if (s->close_ev == NULL) {
            ngx_xmpp_cm_stream_end(s, NGX_XMPP_CM_END_CLOSE, NULL, NULL,
                                   NULL, 0);
            return;
        }

        s->close_ev->handler = ngx_xmpp_cm_stream_close_handler;
        s->close_ev->data = s;
        s->close_ev->log = &s->up->log;
        s->close_ev->cancelable = 1;
    }

    ngx_add_timer(s->close_ev, delay);
}


static void
ngx_xmpp_cm_stream_close_handler(ngx_event_t *ev)
{
    ngx_xmpp_cm_stream_t  *s = ev->data;

    if (s->sm && s->sm->hold) {
        ngx_xmpp_cm_count(s->up, SM_EXPIRED);
    }

    ngx_xmpp_cm_stream_end(s, NGX_XMPP_CM_END_CLOSE, NULL, NULL,
                           NULL, 0);
}


/*
 * The one end of a stream, from the stream table's side: a connection
 * still attached is let go first and told why (cond and text, or the
 * raw stream error Openfire sent), then Openfire is told (END_CLOSE), or
 * had closed it itself (END_CLOSED), or is told once a socket is up
 * again (END_GHOST), and the stream is freed.
 */

static void
ngx_xmpp_cm_stream_end(ngx_xmpp_cm_stream_t *s, ngx_uint_t how,
    char *cond, char *text, u_char *raw, size_t rawlen)
{
    u_char                  *p;
    ngx_xmpp_cm_upstream_t  *up;
    ngx_xmpp_cm_sock_t      *sock;
    ngx_xmpp_cm_conn_t      *conn;

    up = s->up;
    conn = s->conn;

    if (conn) {
        s->conn = NULL;
        conn->handler->ended(conn, cond, text, raw, rawlen);
    }

    switch (how) {

    case NGX_XMPP_CM_END_CLOSE:
        if (s->sm && s->sm->count) {
            /* before the close, while Openfire still has the session */
            ngx_xmpp_cm_stream_return(s);
        }

        sock = ngx_xmpp_cm_stream_sock(s);

        if (sock) {
            (void) ngx_xmpp_cm_route_session_iq(up, sock, &s->node.str,
                                                NGX_XMPP_CM_IQ_CLOSE, NULL,
                                                NULL, 0);
        }

        ngx_xmpp_cm_stream_remember(up, &s->node.str);
        break;

    case NGX_XMPP_CM_END_CLOSED:
        if (s->sm && s->sm->count) {
            /* Openfire has no session to return them to any more */
            ngx_log_error(NGX_LOG_INFO, &up->log, 0,
                          "xmpp_cm: Openfire closed stream %V with %ui "
                          "stanzas not acknowledged by the client",
                          &s->node.str, s->sm->count);
        }

        ngx_xmpp_cm_stream_remember(up, &s->node.str);
        break;

    default: /* NGX_XMPP_CM_END_GHOST */

        if (up->ghosts.nelts < NGX_XMPP_CM_GHOSTS_MAX) {
            p = ngx_array_push(&up->ghosts);
            if (p) {
                ngx_memcpy(p, s->id, s->node.str.len);
                p[s->node.str.len] = '\0';
            }
        }
    }

    ngx_xmpp_cm_stream_forget(s);
}


static void
ngx_xmpp_cm_stream_remember(ngx_xmpp_cm_upstream_t *up, ngx_str_t *id)
{
    u_char  *p;

    if (id->len >= NGX_XMPP_CM_ID_LEN) {
        return;
    }

    p = up->closed
        + (up->closed_next++ % NGX_XMPP_CM_CLOSED_RING) * NGX_XMPP_CM_ID_LEN;

    ngx_memcpy(p, id->data, id->len);
    p[id->len] = '\0';
}


ngx_int_t
ngx_xmpp_cm_stream_recently_closed(ngx_xmpp_cm_upstream_t *up, ngx_str_t *id)
{
    u_char      *p;
    ngx_uint_t   i;

    for (i = 0; i < NGX_XMPP_CM_CLOSED_RING; i++) {
        p = up->closed + i * NGX_XMPP_CM_ID_LEN;

        if (ngx_strncmp(p, id->data, id->len) == 0 && p[id->len] == '\0') {
            return 1;
        }
    }

    return 0;
}


static ngx_int_t
ngx_xmpp_cm_has_text(ngx_str_t *t)
{
    size_t  i;

    for (i = 0; i < t->len; i++) {
        if (!ngx_xmpp_cm_is_space(t->data[i])) {
            return 1;
        }
    }

    return 0;
}


static ngx_str_t *
ngx_xmpp_cm_error_condition(ngx_xmpp_cm_node_t *parent)
{
    ngx_xmpp_cm_node_t  *err, *c;

    err = ngx_xmpp_cm_node_child(parent, "error");
    if (err == NULL) {
        return NULL;
    }

    for (c = err->child; c; c = c->next) {
        if (ngx_xmpp_cm_str_is(&c->ns, NGX_XMPP_NS_STANZAS)
            && !ngx_xmpp_cm_str_is(&c->name, "text"))
        {
            return &c->name;
        }
    }

    return NULL;
}


/* a route from Openfire: deliver, or answer for the absent client */

static void
ngx_xmpp_cm_stream_route(ngx_xmpp_cm_upstream_t *up, ngx_xmpp_cm_sock_t *sock,
    ngx_xmpp_cm_node_t *route)
{
    ngx_int_t              rc;
    ngx_str_t             *id, *type, *cond;
    ngx_xmpp_cm_node_t    *c;
    ngx_xmpp_cm_stream_t  *s;

    id = ngx_xmpp_cm_node_attr(route, "streamid");

    if (!ngx_xmpp_cm_stream_id_ok(id)) {
        ngx_log_error(NGX_LOG_WARN, &up->log, 0,
                      "xmpp_cm: route without a usable streamid dropped");
        up->dropped++;
        ngx_xmpp_cm_count(up, DROP_BAD_ROUTE);
        return;
    }

    s = ngx_xmpp_cm_stream_find(up, id);
    type = ngx_xmpp_cm_node_attr(route, "type");

    if (type && ngx_xmpp_cm_str_is(type, "error")) {
        cond = ngx_xmpp_cm_error_condition(route);

        if (s == NULL || s->conn == NULL) {
            return;
        }

        if (cond && ngx_xmpp_cm_str_is(cond, "item-not-found")) {
            ngx_log_error(NGX_LOG_INFO, &up->log, 0,
                          "xmpp_cm: Openfire has no session %V any more, "
                          "ending the client stream", id);
            ngx_xmpp_cm_stream_end(s, NGX_XMPP_CM_END_CLOSE, "reset",
                                   "the session no longer exists on the "
                                   "server", NULL, 0);
            return;
        }

        ngx_log_error(NGX_LOG_INFO, &up->log, 0,
                      "xmpp_cm: Openfire refused a stanza of session %V: %V",
                      id, cond ? cond : &route->name);
        return;
    }

    if (s) {
        /* a route for it: Openfire has its session (a resend skips create) */
        s->created = 1;
    }

    if (s && s->conn) {

        /*
         * A payload, elements or Openfire's escaped text, may end the
         * client's stream (a stream error, a client that does not read):
         * the connection detaches, and the table ends the stream here,
         * after the route, never from inside the connection's call.  What
         * follows the end goes back as for a closed stream.
         */

        s->routing = 1;

        if (route->child == NULL) {
            if (ngx_xmpp_cm_has_text(&route->text)) {
                s->conn->handler->deliver_text(s->conn, &route->text);
            }
        }

        for (c = route->child; c; c = c->next) {
            if (s->conn == NULL
                || s->conn->handler->deliver(s->conn, sock->xml, c)
                   == NGX_DECLINED)
            {
                /* no client, or one that is closing or not reading */
                ngx_xmpp_cm_bounce(up, sock->xml, s, id, c);
            }
        }

        s->routing = 0;

        if (s->gone) {
            s->gone = 0;
            ngx_xmpp_cm_stream_linger(s);
        }

        return;
    }

    if (s && s->sm && s->sm->hold) {

        /*
         * XEP-0198: the connection dropped and the client may resume:
         * stanzas are kept for it.  Past the bound the stream ends, and
         * what it kept goes back to Openfire with the rest of the route.
         */

        for (c = route->child; c; c = c->next) {
            rc = ngx_xmpp_cm_sm_hold(s, sock->xml, c);

            if (rc == NGX_DECLINED) {
                ngx_xmpp_cm_bounce(up, sock->xml, s, id, c);
                continue;
            }

            if (rc == NGX_ERROR) {
                ngx_log_error(NGX_LOG_INFO, &up->log, 0,
                              "xmpp_cm: stream %V waiting for resumption "
                              "holds %uz bytes (xmpp_cm_client_output_"
                              "limit), ending it", id, s->sm->size);

                for ( /* void */ ; c; c = c->next) {
                    ngx_xmpp_cm_bounce(up, sock->xml, s, id, c);
                }

                s->sm->hold = 0;
                ngx_xmpp_cm_uncount(s->up, SM_HELD);
                ngx_xmpp_cm_stream_end(s, NGX_XMPP_CM_END_CLOSE, NULL, NULL,
                                       NULL, 0);
                return;
            }
        }

        return;
    }

    for (c = route->child; c; c = c->next) {
        ngx_xmpp_cm_bounce(up, sock->xml, s, id, c);
    }

    if (s == NULL && !ngx_xmpp_cm_stream_recently_closed(up, id)) {
        /* a ghost: a session Openfire has and we do not; close it */

        ngx_log_error(NGX_LOG_INFO, &up->log, 0,
                      "xmpp_cm: route for unknown stream %V, closing it on "
                      "Openfire", id);

        sock = ngx_xmpp_cm_upstream_pick(up);

        if (sock) {
            (void) ngx_xmpp_cm_route_session_iq(up, sock, id,
                                                NGX_XMPP_CM_IQ_CLOSE, NULL,
                                                NULL, 0);
        }

        ngx_xmpp_cm_stream_remember(up, id);
    }
}


/*
 * A stanza for a client that is gone: a message goes back to Openfire in
 * <failed> to be stored offline, an IQ get/set gets an error reply so its
 * sender is not left waiting, anything else is dropped and counted.
 */

static void
ngx_xmpp_cm_bounce(ngx_xmpp_cm_upstream_t *up, ngx_xmpp_cm_xml_t *x,
    ngx_xmpp_cm_stream_t  *s, ngx_str_t *id, ngx_xmpp_cm_node_t *c)
{
    u_char              *buf;
    size_t               len;
    ngx_int_t            rc;
    ngx_uint_t           level;
    ngx_str_t           *type;
    ngx_xmpp_cm_sock_t  *sock;

    sock = s ? ngx_xmpp_cm_stream_sock(s) : ngx_xmpp_cm_upstream_pick(up);

    if (sock == NULL) {
        up->dropped++;
        ngx_xmpp_cm_count(up, DROP_NO_SOCKET);
        ngx_log_error(NGX_LOG_INFO, &up->log, 0,
                      "xmpp_cm: <%V> for closed stream %V dropped: no "
                      "Openfire socket", &c->name, id);
        return;
    }

    if (ngx_xmpp_cm_str_is(&c->name, "message")) {
        len = ngx_xmpp_cm_sanitize(x, NULL, c->start, c->end,
                                   !c->has_xmlns);
        buf = ngx_pnalloc(up->tmp, len);
        if (buf == NULL) {
            return;
        }

        (void) ngx_xmpp_cm_sanitize(x, buf, c->start, c->end,
                                    !c->has_xmlns);

        rc = ngx_xmpp_cm_route_session_iq(up, sock, id,
                                          NGX_XMPP_CM_IQ_FAILED, NULL,
                                          buf, len);
        ngx_xmpp_cm_metrics_returned(up, rc);

        ngx_log_error(NGX_LOG_INFO, &up->log, 0,
                      "xmpp_cm: message for closed stream %V %s", id,
                      rc == NGX_OK ? "returned to Openfire for offline "
                                     "storage"
                                   : "too large to return: dropped");
        return;
    }

    type = ngx_xmpp_cm_node_attr(c, "type");

    if (ngx_xmpp_cm_str_is(&c->name, "iq") && type
        && (ngx_xmpp_cm_str_is(type, "get") || ngx_xmpp_cm_str_is(type, "set")))
    {
        ngx_xmpp_cm_bounce_iq(up, sock, id, c);
        return;
    }

    up->dropped++;
    ngx_xmpp_cm_count(up, DROP_CLOSED_STREAM);

    /*
     * The unavailable presence Openfire routes to a session it is closing,
     * and IQ results, are normal traffic for a just-closed stream.
     */

    level = (s || ngx_xmpp_cm_stream_recently_closed(up, id))
            ? NGX_LOG_DEBUG : NGX_LOG_INFO;

    ngx_log_error(level, &up->log, 0,
                  "xmpp_cm: <%V> for closed stream %V dropped (%ui dropped "
                  "so far)", &c->name, id, up->dropped);
}


/* an IQ request for a client that is gone: service-unavailable */

static void
ngx_xmpp_cm_bounce_iq(ngx_xmpp_cm_upstream_t *up, ngx_xmpp_cm_sock_t *sock,
    ngx_str_t *id, ngx_xmpp_cm_node_t *c)
{
    u_char     *buf, *p;
    size_t      len;
    ngx_str_t  *iqid, *from, *to;

    iqid = ngx_xmpp_cm_node_attr(c, "id");
    from = ngx_xmpp_cm_node_attr(c, "from");
    to = ngx_xmpp_cm_node_attr(c, "to");

    len = sizeof("<iq xmlns=\"jabber:client\" type=\"error\""
                 " id=\"\" to=\"\" from=\"\"><error type=\"cancel\">"
                 "<service-unavailable xmlns=\"" NGX_XMPP_NS_STANZAS
                 "\"/></error></iq>") - 1
          + (iqid ? ngx_xmpp_cm_escape(NULL, iqid->data, iqid->len) : 0)
          + (from ? ngx_xmpp_cm_escape(NULL, from->data, from->len) : 0)
          + (to ? ngx_xmpp_cm_escape(NULL, to->data, to->len) : 0);

    buf = ngx_pnalloc(up->tmp, len);
    if (buf == NULL) {
        return;
    }

    p = ngx_cpymem(buf, "<iq xmlns=\"jabber:client\" type=\"error\"", 38);

    if (iqid) {
        p = ngx_cpymem(p, " id=\"", 5);
        p += ngx_xmpp_cm_escape(p, iqid->data, iqid->len);
        *p++ = '"';
    }

    if (from) {
        p = ngx_cpymem(p, " to=\"", 5);
        p += ngx_xmpp_cm_escape(p, from->data, from->len);
        *p++ = '"';
    }

    if (to) {
        p = ngx_cpymem(p, " from=\"", 7);
        p += ngx_xmpp_cm_escape(p, to->data, to->len);
        *p++ = '"';
    }

    p = ngx_cpymem(p, "><error type=\"cancel\"><service-unavailable"
                   " xmlns=\"" NGX_XMPP_NS_STANZAS "\"/></error></iq>",
                   sizeof("><error type=\"cancel\"><service-unavailable"
                   " xmlns=\"" NGX_XMPP_NS_STANZAS "\"/></error></iq>")
                   - 1);

    (void) ngx_xmpp_cm_route_raw(up, sock, id, buf, p - buf);

    ngx_log_error(NGX_LOG_INFO, &up->log, 0,
                  "xmpp_cm: IQ for closed stream %V answered with "
                  "service-unavailable", id);
}


/*
 * XEP-0198: the stream ends without a resumption (its wait is over, the
 * client closed it, or it was never resumable) while stanzas written to
 * the client are not acknowledged, or were kept while it was away: as
 * for a closed stream, messages go back to Openfire in <failed> to be
 * stored offline, IQ requests get service-unavailable, the rest is
 * dropped (presence is sent again at the next login).  An error message
 * (the CM's own answers among them) is not stored offline by Openfire.
 * The client may have read some of them: those reach it twice.
 */

typedef struct {
    ngx_xmpp_cm_stream_t            *s;
    ngx_xmpp_cm_sock_t              *sock;
    u_char                          *p;
    size_t                           len;
    ngx_uint_t                       returned;
    ngx_uint_t                       answered;
    ngx_uint_t                       dropped;
} ngx_xmpp_cm_return_t;


static ngx_int_t
ngx_xmpp_cm_stream_returned(void *data, ngx_xmpp_cm_elem_t *e)
{
    ngx_xmpp_cm_return_t *r = data;

    u_char                  *buf, *p;
    size_t                   len;
    ngx_int_t                rc;
    ngx_str_t               *type;
    ngx_xmpp_cm_node_t      *n;
    ngx_xmpp_cm_upstream_t  *up;

    static u_char  head[] = "<message xmlns=\"" NGX_XMPP_NS_CLIENT "\"";

    n = e->root;
    up = r->s->up;
    type = ngx_xmpp_cm_node_attr(n, "type");

    if (ngx_xmpp_cm_str_is(&n->name, "message")
        && !(type && ngx_xmpp_cm_str_is(type, "error")))
    {
        if (n->has_xmlns || r->len < 8) {
            rc = ngx_xmpp_cm_route_session_iq(up, r->sock, &r->s->node.str,
                                              NGX_XMPP_CM_IQ_FAILED, NULL,
                                              r->p, r->len);

        } else {
            /* "<message" + the rest: the namespace it had in the stream */

            len = sizeof(head) - 1 + r->len - 8;

            buf = ngx_alloc(len, &up->log);
            if (buf == NULL) {
                return NGX_ERROR;
            }

            p = ngx_cpymem(buf, head, sizeof(head) - 1);
            ngx_memcpy(p, r->p + 8, r->len - 8);

            rc = ngx_xmpp_cm_route_session_iq(up, r->sock, &r->s->node.str,
                                              NGX_XMPP_CM_IQ_FAILED, NULL,
                                              buf, len);
            ngx_free(buf);
        }

        ngx_xmpp_cm_metrics_returned(up, rc);

        if (rc == NGX_OK) {
            r->returned++;

        } else {
            r->dropped++;
        }

        return NGX_OK;
    }

    if (ngx_xmpp_cm_str_is(&n->name, "iq") && type
        && (ngx_xmpp_cm_str_is(type, "get") || ngx_xmpp_cm_str_is(type, "set")))
    {
        ngx_xmpp_cm_bounce_iq(up, r->sock, &r->s->node.str, n);
        r->answered++;
        return NGX_OK;
    }

    r->dropped++;

    return NGX_OK;
}


static ngx_int_t
ngx_xmpp_cm_stream_return_one(void *data, u_char *p, size_t len)
{
    ngx_xmpp_cm_return_t *r = data;

    ngx_xmpp_cm_upstream_t  *up;

    up = r->s->up;
    r->p = p;
    r->len = len;

    if (ngx_xmpp_cm_xml_fragment(&up->log, up->worker->parking, p, len, 1,
                                 NGX_XMPP_CM_UPSTREAM_MAX_STANZA,
                                 NGX_XMPP_CM_UPSTREAM_MAX_DEPTH,
                                 ngx_xmpp_cm_stream_returned, r)
        != NGX_OK)
    {
        r->dropped++;
    }

    return NGX_OK;
}


static void
ngx_xmpp_cm_stream_return(ngx_xmpp_cm_stream_t *s)
{
    ngx_xmpp_cm_return_t  r;

    ngx_memzero(&r, sizeof(ngx_xmpp_cm_return_t));

    r.s = s;
    r.sock = ngx_xmpp_cm_stream_sock(s);

    if (r.sock == NULL) {
        ngx_log_error(NGX_LOG_INFO, &s->up->log, 0,
                      "xmpp_cm: %ui stanzas not acknowledged by the client "
                      "of stream %V are lost: no Openfire socket",
                      s->sm->count, &s->node.str);
        return;
    }

    (void) ngx_xmpp_cm_sm_walk(s->sm, ngx_xmpp_cm_stream_return_one, &r);

    ngx_log_error(NGX_LOG_INFO, &s->up->log, 0,
                  "xmpp_cm: stream %V ends with %ui stanzas not "
                  "acknowledged by the client: %ui messages returned to "
                  "Openfire, %ui IQs answered, %ui dropped", &s->node.str,
                  s->sm->count, r.returned, r.answered, r.dropped);
}


/* session IQs from Openfire: close, and replies to ours */

static void
ngx_xmpp_cm_stream_iq(ngx_xmpp_cm_upstream_t *up, ngx_xmpp_cm_sock_t *sock,
    ngx_xmpp_cm_node_t *iq)
{
    u_char                *raw;
    size_t                len;
    ngx_str_t             *type, *id, *cond;
    ngx_xmpp_cm_node_t    *session, *err, *n;
    ngx_xmpp_cm_stream_t  *s;

    type = ngx_xmpp_cm_node_attr(iq, "type");
    session = ngx_xmpp_cm_node_child(iq, "session");
    id = session ? ngx_xmpp_cm_node_attr(session, "id") : NULL;

    if (type == NULL || !ngx_xmpp_cm_stream_id_ok(id)) {
        return;
    }

    s = ngx_xmpp_cm_stream_find(up, id);

    if (ngx_xmpp_cm_str_is(type, "set")) {
        if (ngx_xmpp_cm_node_child(session, "close") == NULL) {
            ngx_log_error(NGX_LOG_INFO, &up->log, 0,
                          "xmpp_cm: unexpected session IQ from Openfire");
            return;
        }

        /* RFC 6120 8.2.3 (Openfire ignores it): closed, known or not */

        ngx_xmpp_cm_stream_iq_result(sock, iq);

        if (s == NULL) {
            return;
        }

        raw = NULL;
        len = 0;
        err = NULL;

        for (n = session->child; n; n = n->next) {
            if (ngx_xmpp_cm_str_is(&n->name, "error")
                && ngx_xmpp_cm_str_is(&n->ns, NGX_XMPP_NS_STREAMS))
            {
                err = n;
                break;
            }
        }

        if (err) {
            len = ngx_xmpp_cm_xml_copy(sock->xml, NULL, err->start, err->end);
            raw = ngx_pnalloc(up->tmp, len);

            if (raw) {
                (void) ngx_xmpp_cm_xml_copy(sock->xml, raw, err->start,
                                            err->end);
            } else {
                len = 0;
            }
        }

        ngx_log_error(NGX_LOG_INFO, &up->log, 0,
                      "xmpp_cm: Openfire closed session %V", id);

        ngx_xmpp_cm_stream_end(s, NGX_XMPP_CM_END_CLOSED, NULL, NULL,
                               raw, len);
        return;
    }

    if (ngx_xmpp_cm_str_is(type, "result")) {
        if (s && ngx_xmpp_cm_node_child(session, "create")) {
            s->created = 1;
        }

        return;
    }

    if (!ngx_xmpp_cm_str_is(type, "error")) {
        return;
    }

    cond = ngx_xmpp_cm_error_condition(iq);

    if (ngx_xmpp_cm_node_child(session, "create")) {
        ngx_log_error(NGX_LOG_INFO, &up->log, 0,
                      "xmpp_cm: Openfire refused session %V: %V", id,
                      cond ? cond : &iq->name);

        if (s) {
            ngx_xmpp_cm_stream_end(s, NGX_XMPP_CM_END_CLOSED,
                                   "policy-violation",
                                   "the server refused the session",
                                   NULL, 0);
        }

        return;
    }

    if (ngx_xmpp_cm_node_child(session, "failed")) {
        ngx_log_error(NGX_LOG_INFO, &up->log, 0,
                      "xmpp_cm: Openfire did not store a message returned "
                      "for stream %V (%V): the message is lost", id,
                      cond ? cond : &iq->name);
    }
}


/* <iq type="result"> for an IQ set from Openfire: id kept, to/from swapped */

static void
ngx_xmpp_cm_stream_iq_result(ngx_xmpp_cm_sock_t *sock,
    ngx_xmpp_cm_node_t *iq)
{
    u_char     *buf, *p;
    size_t      len;
    ngx_str_t  *id, *from, *to;

    id = ngx_xmpp_cm_node_attr(iq, "id");
    from = ngx_xmpp_cm_node_attr(iq, "from");
    to = ngx_xmpp_cm_node_attr(iq, "to");

    if (id == NULL) {
        return;
    }

    len = sizeof("<iq type=\"result\" id=\"\" to=\"\" from=\"\"/>") - 1
          + ngx_xmpp_cm_escape(NULL, id->data, id->len)
          + (from ? ngx_xmpp_cm_escape(NULL, from->data, from->len) : 0)
          + (to ? ngx_xmpp_cm_escape(NULL, to->data, to->len) : 0);

    buf = ngx_pnalloc(sock->up->tmp, len);
    if (buf == NULL) {
        return;
    }

    p = ngx_cpymem(buf, "<iq type=\"result\" id=\"", 22);
    p += ngx_xmpp_cm_escape(p, id->data, id->len);

    if (from) {
        p = ngx_cpymem(p, "\" to=\"", 6);
        p += ngx_xmpp_cm_escape(p, from->data, from->len);
    }

    if (to) {
        p = ngx_cpymem(p, "\" from=\"", 8);
        p += ngx_xmpp_cm_escape(p, to->data, to->len);
    }

    p = ngx_cpymem(p, "\"/>", 3);

    (void) ngx_xmpp_cm_sock_write(sock, buf, p - buf);
}


/* Openfire ended every session of this worker's name (or we exit) */

static void
ngx_xmpp_cm_stream_end_all(ngx_xmpp_cm_upstream_t *up, char *cond, char *text,
    ngx_uint_t ghost)
{
    ngx_rbtree_node_t  *node;

    while (up->ids.root != up->ids.sentinel) {
        node = ngx_rbtree_min(up->ids.root, up->ids.sentinel);

        ngx_xmpp_cm_stream_end((ngx_xmpp_cm_stream_t *) node,
                               ghost ? NGX_XMPP_CM_END_GHOST
                                      : NGX_XMPP_CM_END_CLOSE,
                                cond, text, NULL, 0);
    }
}


/* the socket group is up again: close what Openfire may still hold for us */

static void
ngx_xmpp_cm_stream_up(ngx_xmpp_cm_upstream_t *up)
{
    u_char              *id;
    ngx_str_t            sid;
    ngx_uint_t           i;
    ngx_xmpp_cm_sock_t  *sock;

    sock = ngx_xmpp_cm_upstream_pick(up);
    if (sock == NULL) {
        return;
    }

    id = up->ghosts.elts;

    for (i = 0; i < up->ghosts.nelts; i++) {
        sid.data = id + i * NGX_XMPP_CM_ID_LEN;
        sid.len = ngx_strlen(sid.data);
        (void) ngx_xmpp_cm_route_session_iq(up, sock, &sid,
                                            NGX_XMPP_CM_IQ_CLOSE, NULL,
                                            NULL, 0);
    }

    if (up->ghosts.nelts) {
        ngx_log_error(NGX_LOG_INFO, &up->log, 0,
                      "xmpp_cm: closed %ui sessions Openfire may still hold "
                      "for \"%V\"", up->ghosts.nelts, &up->name);
    }

    up->ghosts.nelts = 0;
}
