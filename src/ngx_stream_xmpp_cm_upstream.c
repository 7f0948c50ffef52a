
/*
 * The per-worker upstream pool: N multiplexed CM sockets to one Openfire
 * node, owned by the worker (not by any client session) and logging to
 * the cycle log.  Each socket opens a jabber:connectionmanager stream,
 * authenticates with <handshake>, takes the configuration IQ, and then
 * carries routes and session IQs for every client pinned to it.
 *
 * Openfire spreads a CM name's sessions over all sockets of that name, so
 * every worker process uses a name of its own; incoming routes are
 * dispatched by stream id, never by socket.
 */


#include "ngx_stream_xmpp_cm.h"
#include <ngx_sha1.h>
#include <openssl/rand.h>




static ngx_stream_upstream_rr_peer_t *ngx_xmpp_cm_upstream_peer(
    ngx_xmpp_cm_upstream_t *up);
static ngx_uint_t ngx_xmpp_cm_upstream_primaries(ngx_xmpp_cm_upstream_t *up);
static void ngx_xmpp_cm_upstream_failover(ngx_xmpp_cm_upstream_t *up,
    ngx_xmpp_cm_sock_t *sock);
static u_char *ngx_xmpp_cm_sock_log_error(ngx_log_t *log, u_char *buf,
    size_t len);
static void ngx_xmpp_cm_sock_connect(ngx_xmpp_cm_sock_t *sock);
static void ngx_xmpp_cm_sock_close(ngx_xmpp_cm_sock_t *sock,
    ngx_uint_t level, const char *why);
static void ngx_xmpp_cm_sock_read_handler(ngx_event_t *rev);
static void ngx_xmpp_cm_sock_write_handler(ngx_event_t *wev);
static void ngx_xmpp_cm_sock_reconnect_handler(ngx_event_t *ev);
static void ngx_xmpp_cm_sock_keepalive_handler(ngx_event_t *ev);
static ngx_int_t ngx_xmpp_cm_sock_open(void *data, ngx_str_t *name,
    ngx_str_t *ns, const XML_Char **attrs);
static ngx_int_t ngx_xmpp_cm_sock_stanza(void *data, ngx_xmpp_cm_elem_t *e);
static ngx_int_t ngx_xmpp_cm_sock_element(void *data, ngx_xmpp_cm_elem_t *e);
static void ngx_xmpp_cm_upstream_tmp_cleanup(void *data);
static ngx_int_t ngx_xmpp_cm_sock_end(void *data);
static ngx_int_t ngx_xmpp_cm_sock_framer(ngx_xmpp_cm_sock_t *sock,
    ngx_pool_t *pool);
static void ngx_xmpp_cm_upstream_configure(ngx_xmpp_cm_upstream_t *up,
    ngx_xmpp_cm_node_t *cfg);
static void ngx_xmpp_cm_upstream_up(ngx_xmpp_cm_upstream_t *up);
static void ngx_xmpp_cm_sock_unthrottle(ngx_xmpp_cm_sock_t *sock);
static ngx_int_t ngx_xmpp_cm_sock_header(ngx_xmpp_cm_sock_t *sock);
static void ngx_xmpp_cm_sock_quickack(ngx_xmpp_cm_sock_t *sock);
static ngx_int_t ngx_xmpp_cm_sock_send(ngx_xmpp_cm_sock_t *sock);
static ngx_uint_t ngx_xmpp_cm_sock_drained(ngx_xmpp_cm_sock_t *sock);
static void ngx_xmpp_cm_sock_barrier_due(ngx_xmpp_cm_sock_t *sock);
static ngx_int_t ngx_xmpp_cm_sock_barrier(ngx_xmpp_cm_sock_t *sock);
static void ngx_xmpp_cm_sock_barrier_handler(ngx_event_t *ev);
static void ngx_xmpp_cm_sock_confirmed(ngx_xmpp_cm_upstream_t *up,
    ngx_str_t *id);
static void ngx_xmpp_cm_sock_requeue(ngx_xmpp_cm_sock_t *sock,
    ngx_xmpp_cm_sock_t *other, ngx_uint_t was_ready);
static ngx_uint_t ngx_xmpp_cm_sock_resend(void *data, ngx_buf_t *b);
static void ngx_xmpp_cm_sock_lost_answers(ngx_xmpp_cm_upstream_t *up);
static void ngx_xmpp_cm_sock_gauge(ngx_xmpp_cm_sock_t *sock, ngx_uint_t n,
    size_t size);
#if (NGX_SSL)
static ngx_int_t ngx_xmpp_cm_sock_starttls(ngx_xmpp_cm_sock_t *sock,
    ngx_xmpp_cm_node_t *features);
static void ngx_xmpp_cm_sock_tls(ngx_xmpp_cm_sock_t *sock);
static void ngx_xmpp_cm_sock_tls_done(ngx_connection_t *c);
static void ngx_xmpp_cm_sock_save_session(ngx_connection_t *c);
#endif


static ngx_xmpp_cm_xml_handlers_t  ngx_xmpp_cm_sock_xml = {
    ngx_xmpp_cm_sock_open,
    NULL,
    ngx_xmpp_cm_sock_stanza,
    ngx_xmpp_cm_sock_end
};


ngx_int_t
ngx_xmpp_cm_upstream_init(ngx_cycle_t *cycle,
    ngx_stream_xmpp_cm_srv_conf_t *conf)
{
    u_char                          *p, rnd[3];
    ngx_str_t                       *domain;
    ngx_uint_t                      i;
    ngx_xmpp_cm_sock_t              *sock;
    ngx_xmpp_cm_upstream_t          *up;
    ngx_pool_cleanup_t              *cln;
    ngx_stream_xmpp_cm_main_conf_t  *cmcf;

    up = ngx_pcalloc(cycle->pool, sizeof(ngx_xmpp_cm_upstream_t));
    if (up == NULL) {
        return NGX_ERROR;
    }

    cmcf = ngx_stream_cycle_get_module_main_conf(cycle,
                                                 ngx_stream_xmpp_cm_module);

    conf->up = up;
    up->conf = conf;
    up->worker = cmcf->worker;
    up->metrics = ngx_xmpp_cm_metrics_record(cycle, &conf->name);
    up->log = *cycle->log;

    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "xmpp_cm: RAND_bytes() failed");
        return NGX_ERROR;
    }

    /* NAME-PID-RANDOM: one CM name per worker process and generation */

    p = ngx_pnalloc(cycle->pool, conf->name.len + sizeof("--") - 1
                                 + NGX_INT64_LEN + 2 * sizeof(rnd));
    if (p == NULL) {
        return NGX_ERROR;
    }

    up->name.data = p;
    p = ngx_sprintf(p, "%V-%P-", &conf->name, ngx_pid);
    p = ngx_hex_dump(p, rnd, sizeof(rnd));
    up->name.len = p - up->name.data;
    ngx_strlow(up->name.data, up->name.data, up->name.len);

    domain = conf->domains->elts;
    up->domain = domain[0];

    /* scratch for what one stanza from Openfire needs, reset after it */

    cln = ngx_pool_cleanup_add(cycle->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    up->tmp = ngx_create_pool(4096, &up->log);
    if (up->tmp == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_xmpp_cm_upstream_tmp_cleanup;
    cln->data = up->tmp;

    up->nsocks = conf->connections;
    up->socks = ngx_pcalloc(cycle->pool,
                            up->nsocks * sizeof(ngx_xmpp_cm_sock_t));
    if (up->socks == NULL) {
        return NGX_ERROR;
    }

    /* workers spread over the primary servers */

    up->node = ngx_xmpp_cm_upstream_primaries(up);
    up->node = up->node ? ngx_worker % up->node : 0;

    for (i = 0; i < up->nsocks; i++) {
        sock = &up->socks[i];
        sock->up = up;
        sock->index = i;
        ngx_queue_init(&sock->paused);
        ngx_xmpp_cm_output_init(&sock->out, up->worker);

        /* a log of its own: its lines name it, its action is its own */

        sock->log = ngx_palloc(cycle->pool, sizeof(ngx_log_t));
        if (sock->log == NULL) {
            return NGX_ERROR;
        }

        *sock->log = up->log;
        sock->log->handler = ngx_xmpp_cm_sock_log_error;
        sock->log->data = sock;
        sock->log->action = NULL;

        sock->reconnect.handler = ngx_xmpp_cm_sock_reconnect_handler;
        sock->reconnect.data = sock;
        sock->reconnect.log = sock->log;
        sock->reconnect.cancelable = 1;

        sock->keepalive.handler = ngx_xmpp_cm_sock_keepalive_handler;
        sock->keepalive.data = sock;
        sock->keepalive.log = sock->log;
        sock->keepalive.cancelable = 1;

        sock->barrier.handler = ngx_xmpp_cm_sock_barrier_handler;
        sock->barrier.data = sock;
        sock->barrier.log = sock->log;
        sock->barrier.cancelable = 1;

        ngx_xmpp_cm_sock_connect(sock);
    }

    ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                  "xmpp_cm: worker CM name \"%V\", %ui sockets to \"%V\"",
                  &up->name, up->nsocks, &conf->pass);

    return NGX_OK;
}


static ngx_msec_t
ngx_xmpp_cm_backoff(ngx_xmpp_cm_sock_t *sock)
{
    uint32_t                        r;
    ngx_msec_t                      delay;
    ngx_uint_t                      i;
    ngx_stream_xmpp_cm_srv_conf_t  *conf;

    conf = sock->up->conf;
    delay = conf->reconnect.min;

    for (i = 1; i < sock->failures && delay < conf->reconnect.max; i++) {
        delay *= 2;
    }

    if (delay > conf->reconnect.max) {
        delay = conf->reconnect.max;
    }

    /* full jitter over the upper half spreads the reconnect storm */

    if (RAND_bytes((u_char *) &r, sizeof(r)) != 1) {
        r = (uint32_t) ngx_random();
    }

    return delay / 2 + (delay > 1 ? r % (delay / 2 + 1) : 0);
}


static void
ngx_xmpp_cm_sock_schedule(ngx_xmpp_cm_sock_t *sock)
{
    ngx_msec_t  delay;

    if (sock->up->exiting || ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    delay = ngx_xmpp_cm_backoff(sock);

    ngx_log_debug3(NGX_LOG_DEBUG_STREAM, sock->log, 0,
                   "xmpp_cm: socket %ui reconnects in %M ms (failures %ui)",
                   sock->index, delay, sock->failures);

    ngx_add_timer(&sock->reconnect, delay);
}


/*
 * All sockets of one CM name must reach the same Openfire node (Openfire
 * keeps CM session bookkeeping per node).  A worker starts on the server
 * its number selects and moves to the next one only when none of its
 * sockets got past connecting there.  Servers marked "down" are skipped;
 * "backup" servers are used when no primary one is usable.  The lists are
 * walked through ->next, which also holds for upstreams in a shared zone.
 */

static ngx_stream_upstream_rr_peer_t *
ngx_xmpp_cm_upstream_peer(ngx_xmpp_cm_upstream_t *up)
{
    ngx_uint_t                       n, k;
    ngx_stream_upstream_rr_peer_t   *peer;
    ngx_stream_upstream_rr_peers_t  *peers;

    /* primaries, then backups: one index space to fail over through */

    n = 0;

    for (peers = up->conf->upstream->peer.data; peers; peers = peers->next)
    {
        for (peer = peers->peer; peer; peer = peer->next) {
            if (!peer->down) {
                n++;
            }
        }
    }

    if (n == 0) {
        return NULL;
    }

    k = up->node % n;

    for (peers = up->conf->upstream->peer.data; peers; peers = peers->next)
    {
        for (peer = peers->peer; peer; peer = peer->next) {
            if (!peer->down && k-- == 0) {
                return peer;
            }
        }
    }

    return NULL;
}


static ngx_uint_t
ngx_xmpp_cm_upstream_primaries(ngx_xmpp_cm_upstream_t *up)
{
    ngx_uint_t                       n;
    ngx_stream_upstream_rr_peer_t   *peer;
    ngx_stream_upstream_rr_peers_t  *peers;

    n = 0;
    peers = up->conf->upstream->peer.data;

    if (peers) {
        for (peer = peers->peer; peer; peer = peer->next) {
            if (!peer->down) {
                n++;
            }
        }
    }

    return n;
}


static void
ngx_xmpp_cm_upstream_failover(ngx_xmpp_cm_upstream_t *up,
    ngx_xmpp_cm_sock_t *sock)
{
    ngx_uint_t  i;

    if (up->ready || sock->failures < 2) {
        return;
    }

    for (i = 0; i < up->nsocks; i++) {
        if (up->socks[i].state > NGX_XMPP_CM_SOCK_CONNECTING) {
            return;
        }
    }

    up->node++;
}


/* as ngx_stream_proxy_log_error() names the upstream */

static u_char *
ngx_xmpp_cm_sock_log_error(ngx_log_t *log, u_char *buf, size_t len)
{
    u_char              *p;
    ngx_xmpp_cm_sock_t  *sock;

    if (log->action) {
        p = ngx_snprintf(buf, len, " while %s", log->action);
        len -= p - buf;
        buf = p;
    }

    sock = log->data;

    p = ngx_snprintf(buf, len, ", CM socket: %V/%V", &sock->up->name,
                     &sock->resource);

    if (sock->pc.name) {
        len -= p - buf;
        buf = p;
        p = ngx_snprintf(buf, len, ", upstream: %V", sock->pc.name);
    }

    return p;
}


static void
ngx_xmpp_cm_sock_connect(ngx_xmpp_cm_sock_t *sock)
{
    ngx_int_t                      rc;
    ngx_connection_t               *c;
    ngx_xmpp_cm_upstream_t         *up;
    ngx_peer_connection_t          *pc;
    ngx_stream_upstream_rr_peer_t  *peer;

    up = sock->up;

    peer = ngx_xmpp_cm_upstream_peer(up);

    if (peer == NULL) {
        ngx_log_error(NGX_LOG_ERR, &up->log, 0,
                      "xmpp_cm: upstream \"%V\" has no usable server",
                      &up->conf->pass);
        sock->failures++;
        ngx_xmpp_cm_sock_schedule(sock);
        return;
    }

    sock->generation++;
    sock->resource.data = sock->resbuf;
    sock->resource.len = ngx_sprintf(sock->resbuf, "s%ui-%ui", sock->index,
                                     sock->generation)
                         - sock->resbuf;
    sock->sid_len = 0;
    sock->rejected = 0;
    sock->done = 0;
    sock->proceed = 0;
    sock->tls = 0;
    sock->fail = NULL;

    pc = &sock->pc;
    ngx_memzero(pc, sizeof(ngx_peer_connection_t));
    pc->sockaddr = peer->sockaddr;
    pc->socklen = peer->socklen;
    pc->name = &peer->name;
    pc->get = ngx_event_get_peer;
    pc->log = sock->log;
    pc->log_error = NGX_ERROR_ERR;

    sock->log->action = "connecting to Openfire";

    rc = ngx_event_connect_peer(pc);

    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        ngx_log_error(NGX_LOG_ERR, sock->log, 0,
                      "xmpp_cm: connect to %V failed", pc->name);
        sock->failures++;
        ngx_xmpp_cm_upstream_failover(up, sock);
        ngx_xmpp_cm_sock_schedule(sock);
        return;
    }

    c = pc->connection;
    sock->c = c;
    c->data = sock;
    c->log = sock->log;
    c->read->log = c->log;
    c->write->log = c->log;
    c->read->handler = ngx_xmpp_cm_sock_read_handler;
    c->write->handler = ngx_xmpp_cm_sock_write_handler;
    c->read->cancelable = 1;
    c->write->cancelable = 1;

    c->pool = ngx_create_pool(1024, sock->log);
    if (c->pool == NULL) {
        goto failed;
    }

    if (ngx_xmpp_cm_sock_framer(sock, c->pool) != NGX_OK) {
        goto failed;
    }

    if (ngx_xmpp_cm_sock_header(sock) != NGX_OK) {
        goto failed;
    }

    sock->state = NGX_XMPP_CM_SOCK_CONNECTING;
    ngx_xmpp_cm_metrics_socks(up);

    ngx_add_timer(c->read, up->conf->connect_timeout);

    if (rc == NGX_OK) {
        ngx_xmpp_cm_sock_write_handler(c->write);
    }

    return;

failed:

    ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR, "out of memory");
}


/*
 * The literal stream: prefix and double quotes.  Sent at connect, and
 * again over TLS after STARTTLS (docs/openfire-protocol.md, sections 2
 * and 3.4).
 */

static ngx_int_t
ngx_xmpp_cm_sock_header(ngx_xmpp_cm_sock_t *sock)
{
    size_t                  len;
    ngx_buf_t               *b;
    ngx_xmpp_cm_upstream_t  *up;

    static u_char  start[] = "<stream:stream xmlns:stream=\""
                             NGX_XMPP_NS_STREAMS "\" xmlns=\""
                             NGX_XMPP_NS_CM "\" to=\"";
    static u_char  end[] = "\" version=\"1.0\">";

    up = sock->up;

    len = sizeof(start) - 1 + up->name.len + 1 + sock->resource.len
          + sizeof(end) - 1;

    b = ngx_xmpp_cm_output_buf(&sock->out, len, 1);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last = ngx_cpymem(b->last, start, sizeof(start) - 1);
    b->last = ngx_cpymem(b->last, up->name.data, up->name.len);
    *b->last++ = '/';
    b->last = ngx_cpymem(b->last, sock->resource.data, sock->resource.len);
    b->last = ngx_cpymem(b->last, end, sizeof(end) - 1);

    return NGX_OK;
}


static void
ngx_xmpp_cm_sock_close(ngx_xmpp_cm_sock_t *sock, ngx_uint_t level,
    const char *why)
{
    size_t                     dropped;
    ngx_uint_t                 was_ready;
    ngx_xmpp_cm_upstream_t     *up;
    ngx_xmpp_cm_sock_t         *other;
    ngx_xmpp_cm_output_sent_t  st;

    up = sock->up;
    was_ready = (sock->state == NGX_XMPP_CM_SOCK_READY);
    ngx_xmpp_cm_metrics_sock_closed(sock);

    if (sock->state != NGX_XMPP_CM_SOCK_IDLE) {
        ngx_log_error(level, sock->log, 0,
                      "xmpp_cm: Openfire socket closed: %s", why);
    }

    if (sock->c) {
        if (sock->xml) {
            ngx_xmpp_cm_xml_free(sock->xml);
            sock->xml = NULL;
        }

#if (NGX_SSL)
        if (sock->c->ssl) {
            /* no close_notify exchange: the socket goes now */
            sock->c->ssl->no_wait_shutdown = 1;
            sock->c->ssl->no_send_shutdown = 1;
            (void) ngx_ssl_shutdown(sock->c);
        }
#endif

        if (sock->c->pool) {
            ngx_destroy_pool(sock->c->pool);
        }

        ngx_close_connection(sock->c);
        sock->c = NULL;
    }

    if (sock->keepalive.timer_set) {
        ngx_del_timer(&sock->keepalive);
    }

    if (sock->barrier.timer_set) {
        ngx_del_timer(&sock->barrier);
    }

    sock->since_n = 0;
    sock->since_size = 0;
    sock->blost = sock->bseq;

    sock->state = NGX_XMPP_CM_SOCK_IDLE;
    ngx_xmpp_cm_metrics_socks(up);

    if (was_ready) {
        up->ready--;
    }

    /*
     * With xmpp_cm_confirm, what Openfire has not confirmed goes whole to
     * a live socket of the same CM name (ngx_xmpp_cm_sock_requeue).
     * Without, stanzas not written at all move; one cut by the reset is
     * lost (half a stanza cannot be resent), and so are those written.
     * A socket that never got ready holds only its own stream opening (a
     * header still queued behind a TLS handshake, <starttls/>, the
     * handshake).
     */

    other = NULL;

    if (up->ready) {
        other = ngx_xmpp_cm_upstream_pick(up);
    }

    if (up->conf->confirm) {
        ngx_xmpp_cm_sock_requeue(sock, other, was_ready);
        goto unthrottle;
    }

    ngx_xmpp_cm_output_classify(&sock->out, &st);

    dropped = sock->out.size;

    if (was_ready && sock->out.out) {
        ngx_log_error(NGX_LOG_INFO, &up->log, 0,
                      "xmpp_cm: stanzas queued on the socket %V/%V: "
                      "%ui written whole, %ui cut, %ui not written (%s)",
                      &up->name, &sock->resource, st.written, st.cut,
                      st.unwritten, other ? "moved to another socket"
                                          : "lost");
    }

    if (other && was_ready && st.unwritten) {
        dropped -= st.unwritten_bytes;
        ngx_xmpp_cm_output_move(&other->out, &sock->out);

        if (other->c) {
            ngx_post_event(other->c->write, &ngx_posted_events);
        }
    }

    if (dropped && was_ready) {
        ngx_log_error(NGX_LOG_INFO, sock->log, 0,
                      "xmpp_cm: %uz bytes for Openfire were lost with the "
                      "socket", dropped);
    }

    ngx_xmpp_cm_output_free(&sock->out);

unthrottle:

    /* clients paused behind this socket re-pin to another one */

    ngx_xmpp_cm_sock_unthrottle(sock);

    if (was_ready && up->ready == 0) {
        up->was_up = 0;
    }

    if (was_ready && up->ready == 0 && !up->exiting) {
        ngx_log_error(NGX_LOG_ERR, &up->log, 0,
                      "xmpp_cm: no Openfire socket left for \"%V\", "
                      "ending %ui client sessions", &up->name,
                      up->nstreams);

        up->streams->end_all(up,
                             up->down_cond ? (char *) up->down_cond
                             : "remote-connection-failed",
                             "the XMPP server is unreachable", 1);
        up->down_cond = NULL;
    }

    if (!was_ready) {
        sock->failures++;
        ngx_xmpp_cm_upstream_failover(up, sock);

    } else {
        sock->failures = 1;
    }

    ngx_xmpp_cm_sock_schedule(sock);
}


static void
ngx_xmpp_cm_sock_reconnect_handler(ngx_event_t *ev)
{
    ngx_xmpp_cm_sock_t  *sock = ev->data;

    if (sock->state == NGX_XMPP_CM_SOCK_IDLE && !sock->up->exiting) {
        ngx_xmpp_cm_count(sock->up, RECONNECTS);
        ngx_xmpp_cm_sock_connect(sock);
    }
}


static void
ngx_xmpp_cm_sock_keepalive_handler(ngx_event_t *ev)
{
    ngx_xmpp_cm_sock_t  *sock = ev->data;

    if (sock->state != NGX_XMPP_CM_SOCK_READY) {
        return;
    }

    /* whitespace keeps Openfire's xmpp.multiplex.idle from closing us */

    if (ngx_xmpp_cm_sock_write(sock, (u_char *) " ", 1) != NGX_OK) {
        return;
    }

    ngx_add_timer(&sock->keepalive, sock->up->conf->keepalive);
}


static ngx_int_t
ngx_xmpp_cm_test_connect(ngx_connection_t *c)
{
    int        err;
    socklen_t  len;

    err = 0;
    len = sizeof(int);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len) == -1) {
        err = ngx_socket_errno;
    }

    if (err) {
        (void) ngx_connection_error(c, err, "connect() failed");
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_xmpp_cm_sock_write_handler(ngx_event_t *wev)
{
    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_xmpp_cm_sock_t  *sock;

    c = wev->data;
    sock = c->data;

    if (sock->state == NGX_XMPP_CM_SOCK_CONNECTING) {
        if (ngx_xmpp_cm_test_connect(c) != NGX_OK) {
            ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR, "connect failed");
            return;
        }

        sock->state = NGX_XMPP_CM_SOCK_OPENING;
        ngx_xmpp_cm_metrics_socks(sock->up);
        sock->log->action = "opening a stream to Openfire";

        /* many sessions' small stanzas: no Nagle delay on the shared link */

        if (sock->pc.sockaddr->sa_family != AF_UNIX) {
            (void) ngx_tcp_nodelay(c);
        }

#if (NGX_SSL)
        if (sock->up->conf->upstream_tls == NGX_XMPP_CM_UPSTREAM_TLS_DIRECT)
        {
            /* Direct TLS (Openfire's port 5263): the header goes after it */
            ngx_xmpp_cm_sock_tls(sock);
            return;
        }
#endif
    }

    rc = ngx_xmpp_cm_sock_send(sock);

    if (rc == NGX_ERROR) {
        ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR, "write failed");
        return;
    }

    if (ngx_handle_write_event(wev, 0) != NGX_OK) {
        ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR, "write event failed");
        return;
    }

    if (sock->throttled && ngx_xmpp_cm_sock_drained(sock)) {
        ngx_xmpp_cm_sock_unthrottle(sock);
    }
}


/*
 * One send_chain() of the socket's queue.  With xmpp_cm_confirm, once the
 * socket is ready, what is written is kept until a barrier confirms it,
 * and a barrier goes out when one is due (docs/delivery.md).
 */

static ngx_int_t
ngx_xmpp_cm_sock_send(ngx_xmpp_cm_sock_t *sock)
{
    size_t                          size;
    ngx_int_t                       rc;
    ngx_uint_t                      n;
    ngx_stream_xmpp_cm_srv_conf_t  *conf;

    conf = sock->up->conf;

    if (!conf->confirm || sock->state != NGX_XMPP_CM_SOCK_READY) {
        return ngx_xmpp_cm_output_send(sock->c, &sock->out);
    }

    ngx_xmpp_cm_sock_barrier_due(sock);

    n = sock->kept.n;
    size = sock->kept.size;

    rc = ngx_xmpp_cm_output_send_kept(sock->c, &sock->out, &sock->kept);

    ngx_xmpp_cm_sock_gauge(sock, n, size);

    if (sock->kept.n >= conf->confirm_window.stanzas
        || sock->kept.size + sock->out.size > conf->confirm_window.size)
    {
        sock->throttled = 1;
    }

    return rc;
}


/* below the low-water mark, and (confirming) within half the window */

static ngx_uint_t
ngx_xmpp_cm_sock_drained(ngx_xmpp_cm_sock_t *sock)
{
    ngx_stream_xmpp_cm_srv_conf_t  *conf;

    conf = sock->up->conf;

    if (sock->out.size > conf->upstream_watermarks.low) {
        return 0;
    }

    return !conf->confirm
           || (sock->kept.n <= conf->confirm_window.stanzas / 2
               && sock->kept.size + sock->out.size
                  <= conf->confirm_window.size / 2);
}


/* the kept chain's change since n and size, in the metrics' gauges */

static void
ngx_xmpp_cm_sock_gauge(ngx_xmpp_cm_sock_t *sock, ngx_uint_t n, size_t size)
{
    uint64_t  *v;

    v = sock->up->metrics->v;

    if (sock->kept.n >= n) {
        v[NGX_XMPP_CM_M_UNCONFIRMED] += sock->kept.n - n;

    } else {
        v[NGX_XMPP_CM_M_UNCONFIRMED] -= n - sock->kept.n;
    }

    if (sock->kept.size >= size) {
        v[NGX_XMPP_CM_M_UNCONFIRMED_BYTES] += sock->kept.size - size;

    } else {
        v[NGX_XMPP_CM_M_UNCONFIRMED_BYTES] -= size - sock->kept.size;
    }
}


/*
 * Barriers: a barrier is an IQ get with a child, which Openfire answers
 * with a bad-request error (docs/openfire-protocol.md, section 5.5) after
 * everything the socket carried before it, since it reads each socket in
 * order; the answer may come on any socket of the CM name, so its id
 * names the socket: "b<index>-<generation>-<sequence>" (session IQs are
 * "c<n>", Openfire's own ids are digits).  One goes out after a quarter
 * of the window, or xmpp_cm_confirm_delay after the first stanza it
 * covers, with at most NGX_XMPP_CM_BARRIERS outstanding per socket.
 */

#define NGX_XMPP_CM_BARRIERS  4

#define ngx_xmpp_cm_barriers_out(sock)                                       \
    ((sock)->bseq - ngx_max((sock)->bconf, (sock)->blost))


static void
ngx_xmpp_cm_sock_barrier_due(ngx_xmpp_cm_sock_t *sock)
{
    ngx_stream_xmpp_cm_srv_conf_t  *conf;

    if (sock->since_n == 0 || sock->state != NGX_XMPP_CM_SOCK_READY
        || ngx_xmpp_cm_barriers_out(sock) >= NGX_XMPP_CM_BARRIERS)
    {
        /* with all out, the next answer calls this again */
        return;
    }

    conf = sock->up->conf;

    if (sock->since_n >= conf->confirm_window.stanzas / 4
        || sock->since_size >= conf->confirm_window.size / 4)
    {
        (void) ngx_xmpp_cm_sock_barrier(sock);
        return;
    }

    if (!sock->barrier.timer_set) {
        ngx_add_timer(&sock->barrier, conf->confirm_delay);
    }
}


static void
ngx_xmpp_cm_sock_barrier_handler(ngx_event_t *ev)
{
    ngx_xmpp_cm_sock_confirm_now(ev->data);
}


/*
 * A barrier for what the socket carries now, not xmpp_cm_confirm_delay
 * later: the delay is for a stream nobody waits on, and a client's <r/>
 * (XEP-0198) waits.  With NGX_XMPP_CM_BARRIERS out already, the next
 * answer sends the one that covers the rest (barrier_due).
 */

void
ngx_xmpp_cm_sock_confirm_now(ngx_xmpp_cm_sock_t *sock)
{
    if (sock->since_n == 0 || sock->state != NGX_XMPP_CM_SOCK_READY
        || ngx_xmpp_cm_barriers_out(sock) >= NGX_XMPP_CM_BARRIERS)
    {
        return;
    }

    if (ngx_xmpp_cm_sock_barrier(sock) == NGX_OK) {
        ngx_post_event(sock->c->write, &ngx_posted_events);
    }
}


static ngx_int_t
ngx_xmpp_cm_sock_barrier(ngx_xmpp_cm_sock_t *sock)
{
    u_char                  id[sizeof("b--") - 1 + 3 * NGX_INT_T_LEN];
    size_t                  len, n;
    ngx_buf_t              *b;
    ngx_xmpp_cm_upstream_t  *up;

    up = sock->up;

    n = ngx_sprintf(id, "b%ui-%ui-%ui", sock->index, sock->generation,
                    sock->bseq + 1)
        - id;

    len = sizeof("<iq type=\"get\" id=\"\" to=\"\" from=\"/\">"
                 "<ping xmlns=\"urn:xmpp:ping\"/></iq>") - 1
          + n + up->domain.len + up->name.len + sock->resource.len;

    b = ngx_xmpp_cm_output_buf(&sock->out, len, 1);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last = ngx_sprintf(b->last, "<iq type=\"get\" id=\"%*s\" to=\"%V\" "
                          "from=\"%V/%V\"><ping xmlns=\"urn:xmpp:ping\"/>"
                          "</iq>", n, id, &up->domain, &up->name,
                          &sock->resource);

    /* beside its number, when the first element it covers was queued */

    sock->bseq++;
    ngx_xmpp_cm_buf_mark(b, NGX_XMPP_CM_BUF_BARRIER, sock->bseq,
                         sock->since_at);

    sock->since_n = 0;
    sock->since_size = 0;

    if (sock->barrier.timer_set) {
        ngx_del_timer(&sock->barrier);
    }

    ngx_xmpp_cm_count(up, BARRIERS);

    return NGX_OK;
}


/*
 * The answer to a barrier, on whichever socket: everything its socket
 * wrote before it is confirmed.  The routed client stanzas are counted
 * to their streams (one call per run of one stream), and the bufs go.  An
 * answer to an earlier barrier than one already answered, or for a socket
 * since reset, confirms nothing more.
 */

static void
ngx_xmpp_cm_sock_confirmed(ngx_xmpp_cm_upstream_t *up, ngx_str_t *id)
{
    size_t               size;
    u_char              *p, *end, *q;
    ngx_int_t            v[3];
    ngx_str_t            run, sid;
    ngx_buf_t           *b;
    ngx_uint_t           i, n, kn;
    ngx_chain_t         *cl, *last;
    ngx_xmpp_cm_sock_t  *sock;

    p = id->data + 1;
    end = id->data + id->len;

    for (i = 0; i < 3; i++) {
        q = (i < 2) ? ngx_strlchr(p, end, '-') : end;

        if (q == NULL || (v[i] = ngx_atoi(p, q - p)) == NGX_ERROR) {
            return;
        }

        p = q + 1;
    }

    if ((ngx_uint_t) v[0] >= up->nsocks) {
        return;
    }

    sock = &up->socks[v[0]];

    if ((ngx_uint_t) v[1] != sock->generation
        || sock->state != NGX_XMPP_CM_SOCK_READY
        || (ngx_uint_t) v[2] <= sock->bconf)
    {
        return;
    }

    for (last = sock->kept.out; last; last = last->next) {
        if (last->buf->num == NGX_XMPP_CM_BUF_BARRIER
            && last->buf->file_pos == (off_t) v[2])
        {
            break;
        }
    }

    if (last == NULL) {
        return;
    }

    n = 0;
    ngx_str_null(&run);

    for (cl = sock->kept.out; /* void */ ; cl = cl->next) {
        b = cl->buf;

        if (b->num == NGX_XMPP_CM_BUF_CLIENT) {
            sid.data = b->start + b->file_pos;
            sid.len = (size_t) b->file_last;

            if (n && sid.len == run.len
                && ngx_strncmp(sid.data, run.data, run.len) == 0)
            {
                n++;

            } else {
                if (n) {
                    up->streams->confirmed(up, &run, n);
                }

                run = sid;
                n = 1;
            }
        }

        if (cl == last) {
            break;
        }
    }

    if (n) {
        up->streams->confirmed(up, &run, n);
    }

    kn = sock->kept.n;
    size = sock->kept.size;

    sock->bconf = (ngx_uint_t) v[2];

    up->metrics->v[NGX_XMPP_CM_M_CONFIRMS]++;
    up->metrics->v[NGX_XMPP_CM_M_CONFIRM_WAIT_MS] +=
                      ngx_current_msec - (ngx_msec_t) last->buf->file_last;

    ngx_xmpp_cm_output_confirm(sock->out.free, &sock->kept, last);

    ngx_xmpp_cm_sock_gauge(sock, kn, size);

    ngx_log_debug4(NGX_LOG_DEBUG_STREAM, sock->log, 0,
                   "xmpp_cm: barrier %ui confirmed %ui bufs, %ui (%uz "
                   "bytes) unconfirmed", sock->bconf, kn - sock->kept.n,
                   sock->kept.n, sock->kept.size);

    if (sock->throttled && ngx_xmpp_cm_sock_drained(sock)) {
        ngx_xmpp_cm_sock_unthrottle(sock);
    }

    if (sock->state == NGX_XMPP_CM_SOCK_READY && sock->since_n) {
        ngx_xmpp_cm_sock_barrier_due(sock);
        ngx_post_event(sock->c->write, &ngx_posted_events);
    }
}


/*
 * A socket reset: what Openfire has not confirmed goes whole to another
 * ready socket, after that socket's queue and ahead of anything newer of
 * the same streams (each moves there), in the order it was written; with
 * no ready socket it is dropped, and the stream table ends every stream
 * (end_all).  The socket's own elements (header, handshake, keepalives,
 * IQ results, barriers) are dropped.  docs/delivery.md says what each
 * kind of element does on a resend.
 */

static void
ngx_xmpp_cm_sock_requeue(ngx_xmpp_cm_sock_t *sock, ngx_xmpp_cm_sock_t *other,
    ngx_uint_t was_ready)
{
    size_t                     size, before;
    ngx_uint_t                 n, resent;
    ngx_xmpp_cm_upstream_t    *up;
    ngx_xmpp_cm_output_sent_t  st;

    up = sock->up;

    ngx_xmpp_cm_output_classify(&sock->out, &st);

    n = sock->kept.n;
    size = sock->kept.size;

    if (!was_ready) {
        /* only its own stream opening */
        other = NULL;

    } else if (n || sock->out.out) {
        ngx_log_error(NGX_LOG_INFO, &up->log, 0,
                      "xmpp_cm: on the socket %V/%V: %ui written and not "
                      "confirmed, %ui cut, %ui not written (%s)",
                      &up->name, &sock->resource, n + st.written, st.cut,
                      st.unwritten,
                      other ? "sent again on another socket" : "dropped");
    }

    if (other == NULL) {
        (void) ngx_xmpp_cm_output_resend(NULL, &sock->kept, &sock->out,
                                         NULL, NULL);
        ngx_xmpp_cm_sock_gauge(sock, n, size);
        return;
    }

    before = other->out.size;

    resent = ngx_xmpp_cm_output_resend(&other->out, &sock->kept,
                                       &sock->out, ngx_xmpp_cm_sock_resend,
                                       other);
    ngx_xmpp_cm_sock_gauge(sock, n, size);

    if (resent) {
        up->metrics->v[NGX_XMPP_CM_M_RESENT] += resent;

        /* the next barrier on the other socket covers them */

        if (other->since_n == 0) {
            other->since_at = ngx_current_msec;
        }

        other->since_n += resent;
        other->since_size += other->out.size - before;

        ngx_log_error(NGX_LOG_INFO, &up->log, 0,
                      "xmpp_cm: %ui elements not confirmed by Openfire sent "
                      "again on the socket %V/%V", resent, &up->name,
                      &other->resource);

        if (other->c) {
            ngx_post_event(other->c->write, &ngx_posted_events);
        }
    }

    ngx_xmpp_cm_sock_lost_answers(up);
}


/*
 * Answers to the barriers of the other sockets may have been on their
 * way on a socket that reset: their outstanding barriers no longer hold
 * new ones back, and one more is due where something waits for one (a
 * late answer still confirms).
 */

static void
ngx_xmpp_cm_sock_lost_answers(ngx_xmpp_cm_upstream_t *up)
{
    ngx_uint_t           i;
    ngx_xmpp_cm_sock_t  *s;

    for (i = 0; i < up->nsocks; i++) {
        s = &up->socks[i];

        if (s->bseq == s->blost) {
            continue;
        }

        s->blost = s->bseq;

        if (s->state == NGX_XMPP_CM_SOCK_READY && s->kept.n) {
            if (s->since_n++ == 0) {
                s->since_at = ngx_current_msec;
            }

            ngx_xmpp_cm_sock_barrier_due(s);
        }
    }
}


/* whether a dead socket's buf goes again on the socket data */

static ngx_uint_t
ngx_xmpp_cm_sock_resend(void *data, ngx_buf_t *b)
{
    ngx_xmpp_cm_sock_t *to = data;

    ngx_str_t  id;

    if (b->num < NGX_XMPP_CM_BUF_CLIENT) {
        return 0;
    }

    id.data = b->start + b->file_pos;
    id.len = (size_t) b->file_last;

    return to->up->streams->resend(to->up, to, b->num, &id);
}


static void
ngx_xmpp_cm_sock_read_handler(ngx_event_t *rev)
{
    ssize_t                 n;
    ngx_int_t               rc;
    ngx_uint_t              got;
    const                   char          *cond, *text;
    ngx_connection_t        *c;
    ngx_xmpp_cm_sock_t      *sock;
    ngx_xmpp_cm_upstream_t  *up;

    c = rev->data;
    sock = c->data;
    up = sock->up;

    if (c->close) {
        /* worker shutdown: sessions are closed upstream first */
        ngx_xmpp_cm_upstream_exit(up);
        return;
    }

    if (rev->timedout) {
        if (sock->state == NGX_XMPP_CM_SOCK_READY) {
            ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR,
                                   "no data from Openfire within "
                                   "xmpp_cm_upstream_timeout");
        } else {
            ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR,
                                   "timed out (xmpp_cm_connect_timeout)");
        }
        return;
    }

    got = 0;

    while (rev->ready) {
        n = c->recv(c, up->worker->upstream_buf,
                    NGX_XMPP_CM_UPSTREAM_READ);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {
            if (sock->state == NGX_XMPP_CM_SOCK_CONNECTING) {
                ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR, "connect failed");

            } else if (sock->rejected) {
                ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR,
                                       "stream rejected by Openfire (no id "
                                       "in its header: address in use or "
                                       "no xmpp.multiplex.defaultSecret set)");
            } else if (sock->tls && sock->state == NGX_XMPP_CM_SOCK_OPENING)
            {
                /* TLS 1.3: a refused client certificate shows only here */
                ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR,
                                       "connection closed by Openfire "
                                       "right after TLS: it may want a "
                                       "client certificate "
                                       "(xmpp.multiplex.cert.policy; set "
                                       "xmpp_cm_upstream_ssl_certificate), "
                                       "or it is 4.8.0 to 4.9.0 and "
                                       "STARTTLS hit OF-2899 (use port 5263 "
                                       "with \"xmpp_cm_upstream_tls "
                                       "direct\")");
            } else {
                ngx_xmpp_cm_sock_close(sock, NGX_LOG_WARN,
                                       "connection closed by Openfire");
            }

            return;
        }

        sock->log->action = "reading from Openfire";
        got = 1;

        rc = ngx_xmpp_cm_xml_feed(sock->xml, up->worker->upstream_buf, n);

#if (NGX_SSL)
        if (sock->proceed) {
            /* the rest of that read, if any, is never taken as TLS */
            sock->proceed = 0;
            ngx_xmpp_cm_sock_tls(sock);
            return;
        }
#endif

        if (sock->fail) {
            ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR, sock->fail);
            return;
        }

        if (rc != NGX_OK || sock->done) {
            cond = ngx_xmpp_cm_xml_error(sock->xml, &text);

            if (cond) {
                ngx_log_error(NGX_LOG_ERR, sock->log, 0,
                              "xmpp_cm: bad XML from Openfire: %s (%s)",
                              cond, text ? text : "");
            }

            ngx_xmpp_cm_sock_close(sock, NGX_LOG_WARN,
                                   "stream ended by Openfire");
            return;
        }

        if (sock->state == NGX_XMPP_CM_SOCK_IDLE) {
            return;
        }
    }

    if (got) {
        ngx_xmpp_cm_sock_quickack(sock);
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR, "read event failed");
        return;
    }

    ngx_add_timer(rev, sock->state == NGX_XMPP_CM_SOCK_READY
                       ? up->conf->upstream_timeout
                       : up->conf->connect_timeout);
}


/* the framer of a socket's stream from Openfire (the fuzz target's too) */

static ngx_int_t
ngx_xmpp_cm_sock_framer(ngx_xmpp_cm_sock_t *sock, ngx_pool_t *pool)
{
    sock->xml = ngx_xmpp_cm_xml_create(pool, sock->log, 1, NULL);
    if (sock->xml == NULL) {
        return NGX_ERROR;
    }

    ngx_xmpp_cm_xml_handlers(sock->xml, &ngx_xmpp_cm_sock_xml, sock);
    ngx_xmpp_cm_xml_limits(sock->xml, NGX_XMPP_CM_UPSTREAM_MAX_STANZA,
                           NGX_XMPP_CM_UPSTREAM_MAX_DEPTH);

    return NGX_OK;
}


static ngx_int_t
ngx_xmpp_cm_sock_open(void *data, ngx_str_t *name, ngx_str_t *ns,
    const XML_Char **attrs)
{
    ngx_xmpp_cm_sock_t *sock = data;

    u_char               hex[40], digest[20];
    size_t               len;
    ngx_uint_t           i;
    ngx_str_t            ans, alocal;
    ngx_sha1_t           sha1;
    ngx_xmpp_cm_upstream_t  *up;

    up = sock->up;

    for (i = 0; attrs[i]; i += 2) {
        ngx_xmpp_cm_split_name(attrs[i], &ans, &alocal);

        if (ans.len == 0 && ngx_xmpp_cm_str_is(&alocal, "id")) {
            len = ngx_strlen(attrs[i + 1]);

            if (len && len < sizeof(sock->sid)) {
                sock->sid_len = len;
                ngx_memcpy(sock->sid, attrs[i + 1], len);
            }
        }
    }

    if (sock->sid_len == 0) {
        /* Openfire 4.8+ rejects an open this way, then closes silently */
        sock->rejected = 1;
        return NGX_OK;
    }

    if (up->conf->upstream_tls == NGX_XMPP_CM_UPSTREAM_TLS_STARTTLS
        && !sock->tls)
    {
        /* the features decide: <starttls/>, or no handshake at all */
        return NGX_OK;
    }

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, sock->sid, sock->sid_len);
    ngx_sha1_update(&sha1, up->conf->secret.data, up->conf->secret.len);
    ngx_sha1_final(digest, &sha1);
    ngx_hex_dump(hex, digest, sizeof(digest));

    if (ngx_xmpp_cm_sock_write(sock, (u_char *) "<handshake>", 11) != NGX_OK
        || ngx_xmpp_cm_sock_write(sock, hex, sizeof(hex)) != NGX_OK
        || ngx_xmpp_cm_sock_write(sock, (u_char *) "</handshake>", 12)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    sock->state = NGX_XMPP_CM_SOCK_HANDSHAKE;
    ngx_xmpp_cm_metrics_socks(up);
    sock->log->action = "authenticating to Openfire";

    return NGX_OK;
}


static ngx_int_t
ngx_xmpp_cm_sock_end(void *data)
{
    ngx_xmpp_cm_sock_t *sock = data;

    sock->done = 1;

    return NGX_DONE;
}


static void
ngx_xmpp_cm_sock_stream_error(ngx_xmpp_cm_sock_t *sock,
    ngx_xmpp_cm_node_t *err)
{
    ngx_str_t               cond;
    ngx_xmpp_cm_upstream_t  *up;
    ngx_xmpp_cm_node_t      *n;

    up = sock->up;
    ngx_str_set(&cond, "undefined-condition");

    for (n = err->child; n; n = n->next) {
        if (!ngx_xmpp_cm_str_is(&n->name, "text")) {
            cond = n->name;
            break;
        }
    }

    /* "TLS is mandatory, but was not established." (policy required) */

    if (ngx_xmpp_cm_str_is(&cond, "not-authorized") && sock->tls_wanted) {
        ngx_log_error(NGX_LOG_ERR, sock->log, 0,
                      "xmpp_cm: Openfire %V requires TLS on the "
                      "connection-manager link (xmpp.multiplex.tls.policy "
                      "is required): set \"xmpp_cm_upstream_tls starttls\" "
                      "in %V:%ui, or \"direct\" with its port 5263",
                      sock->pc.name, &up->conf->conf_file,
                      up->conf->conf_line);
        return;
    }

    if (ngx_xmpp_cm_str_is(&cond, "not-authorized")
        && sock->state == NGX_XMPP_CM_SOCK_HANDSHAKE)
    {
        ngx_log_error(NGX_LOG_ERR, sock->log, 0,
                      "xmpp_cm: Openfire refused the handshake "
                      "(not-authorized): the xmpp_cm_secret in %V:%ui does "
                      "not match Openfire's xmpp.multiplex.defaultSecret "
                      "property; set both to the same value",
                      &up->conf->conf_file, up->conf->conf_line);
        return;
    }

    if (ngx_xmpp_cm_str_is(&cond, "system-shutdown")) {
        up->down_cond = "system-shutdown";
    }

    ngx_log_error(NGX_LOG_ERR, sock->log, 0,
                  "xmpp_cm: stream error from Openfire: %V", &cond);
}


/* what the stanza's handling allocated in pool->tmp goes with it */

static ngx_int_t
ngx_xmpp_cm_sock_stanza(void *data, ngx_xmpp_cm_elem_t *e)
{
    ngx_xmpp_cm_sock_t *sock = data;

    ngx_int_t  rc;

    rc = ngx_xmpp_cm_sock_element(sock, e);

    ngx_reset_pool(sock->up->tmp);

    return rc;
}


static void
ngx_xmpp_cm_upstream_tmp_cleanup(void *data)
{
    ngx_destroy_pool(data);
}


static ngx_int_t
ngx_xmpp_cm_sock_element(void *data, ngx_xmpp_cm_elem_t *e)
{
    ngx_xmpp_cm_sock_t *sock = data;

    size_t               len;
    ngx_buf_t           *b;
    ngx_str_t           *id, *type;
    ngx_xmpp_cm_upstream_t  *up;
    ngx_xmpp_cm_node_t  *root, *child;

    up = sock->up;
    root = e->root;

    if (root == NULL) {
        return NGX_OK;
    }

    /*
     * Openfire registers a socket at stream open, before the handshake,
     * and may route any session of the name to it
     * (docs/openfire-protocol.md, section 7, row 7).
     */

    if (ngx_xmpp_cm_str_is(&root->name, "route")) {
        up->streams->route(up, sock, root);
        return NGX_OK;
    }

    if (ngx_xmpp_cm_str_is(&root->name, "iq")) {
        child = ngx_xmpp_cm_node_child(root, NULL);
        id = ngx_xmpp_cm_node_attr(root, "id");
        type = ngx_xmpp_cm_node_attr(root, "type");

        if (id && id->len > 1 && id->data[0] == 'b' && type
            && (ngx_xmpp_cm_str_is(type, "error")
                || ngx_xmpp_cm_str_is(type, "result")))
        {
            /* the answer to a barrier, on any socket of the name */
            ngx_xmpp_cm_sock_confirmed(up, id);
            return NGX_OK;
        }

        if (child && ngx_xmpp_cm_str_is(&child->name, "configuration")) {
            ngx_xmpp_cm_upstream_configure(up, child);

            if (id && id->len) {
                /* escaping may make the id six times as long */

                len = sizeof("<iq type=\"result\" id=\"\"/>") - 1
                      + ngx_xmpp_cm_escape(NULL, id->data, id->len);

                b = ngx_xmpp_cm_sock_buf(sock, len);
                if (b == NULL) {
                    return NGX_ERROR;
                }

                b->last = ngx_cpymem(b->last, "<iq type=\"result\" id=\"",
                                     22);
                b->last += ngx_xmpp_cm_escape(b->last, id->data, id->len);
                b->last = ngx_cpymem(b->last, "\"/>", 3);
            }

            up->configured = 1;

            if (up->ready && !up->was_up) {
                ngx_xmpp_cm_upstream_up(up);
            }

            return NGX_OK;
        }

        if (child && ngx_xmpp_cm_str_is(&child->name, "session")) {
            up->streams->session_iq(up, sock, root);
            return NGX_OK;
        }

        ngx_log_error(NGX_LOG_INFO, sock->log, 0,
                      "xmpp_cm: ignored IQ from Openfire");
        return NGX_OK;
    }

    if (ngx_xmpp_cm_str_is(&root->name, "handshake")) {
        if (sock->state != NGX_XMPP_CM_SOCK_HANDSHAKE) {
            return NGX_OK;
        }

        sock->state = NGX_XMPP_CM_SOCK_READY;
        ngx_xmpp_cm_metrics_socks(up);
        sock->failures = 0;
        up->ready++;
        sock->log->action = NULL;

        ngx_log_error(NGX_LOG_NOTICE, sock->log, 0,
                      "xmpp_cm: connected to Openfire %V", sock->pc.name);

        ngx_add_timer(&sock->keepalive, up->conf->keepalive);

        if (up->configured && !up->was_up) {
            ngx_xmpp_cm_upstream_up(up);
        }

        return NGX_OK;
    }

    if (ngx_xmpp_cm_str_is(&root->name, "error")
        && ngx_xmpp_cm_str_is(&root->ns, NGX_XMPP_NS_STREAMS))
    {
        ngx_xmpp_cm_sock_stream_error(sock, root);
        sock->done = 1;
        return NGX_DONE;
    }

    if (ngx_xmpp_cm_str_is(&root->name, "features")) {
        child = ngx_xmpp_cm_node_child(root, "starttls");
        sock->tls_wanted = !sock->tls && child
                           && ngx_xmpp_cm_node_child(child, "required");
#if (NGX_SSL)
        if (up->conf->upstream_tls == NGX_XMPP_CM_UPSTREAM_TLS_STARTTLS
            && !sock->tls && sock->sid_len
            && sock->state == NGX_XMPP_CM_SOCK_OPENING)
        {
            return ngx_xmpp_cm_sock_starttls(sock, root);
        }
#endif
        return NGX_OK;
    }

#if (NGX_SSL)
    if (ngx_xmpp_cm_str_is(&root->ns, NGX_XMPP_NS_TLS)
        && sock->state == NGX_XMPP_CM_SOCK_TLS && !sock->tls)
    {
        if (ngx_xmpp_cm_str_is(&root->name, "proceed")) {
            sock->proceed = 1;
            return NGX_DONE;
        }

        ngx_log_error(NGX_LOG_ERR, sock->log, 0,
                      "xmpp_cm: Openfire %V answered <%V/> to STARTTLS: "
                      "its TLS setup failed; check the certificate "
                      "in Openfire's identity store and its log",
                      sock->pc.name, &root->name);
        sock->fail = "STARTTLS refused by Openfire";
        return NGX_DONE;
    }
#endif

    ngx_log_error(NGX_LOG_INFO, sock->log, 0,
                  "xmpp_cm: ignored <%V> from Openfire", &root->name);

    return NGX_OK;
}


/* the socket group is up again: the stream table closes its ghosts */

static void
ngx_xmpp_cm_upstream_up(ngx_xmpp_cm_upstream_t *up)
{
    up->was_up = 1;
    up->streams->up(up);
}


/*
 * The configuration IQ carries the c2s listener's settings; its
 * mechanisms become what clients are offered, minus EXTERNAL and every
 * channel-binding (-PLUS) mechanism: Openfire sees CM sessions as
 * unencrypted, so those can never succeed through a CM.
 */

static void
ngx_xmpp_cm_upstream_configure(ngx_xmpp_cm_upstream_t *up,
    ngx_xmpp_cm_node_t *cfg)
{
    u_char              *p, *buf;
    size_t               size;
    ngx_str_t           *m;
    ngx_xmpp_cm_node_t  *n, *mech;

    /* an upper bound: every mechanism, escaped, and every feature */

    size = sizeof("<mechanisms xmlns=\"" NGX_XMPP_NS_SASL "\">"
                  "</mechanisms>"
                  "<auth xmlns=\"http://jabber.org/features/iq-auth\"/>"
                  "<register xmlns=\"http://jabber.org/features/"
                  "iq-register\"/>");

    for (n = cfg->child; n; n = n->next) {
        for (mech = n->child; mech; mech = mech->next) {
            size += sizeof("<mechanism></mechanism>") - 1;

            if (mech->text.len) {
                size += ngx_xmpp_cm_escape(NULL, mech->text.data,
                                           mech->text.len);
            }
        }
    }

    buf = ngx_alloc(size, &up->log);
    if (buf == NULL) {
        return;
    }

    p = buf;

    n = ngx_xmpp_cm_node_child(cfg, "mechanisms");

    if (n) {
        p = ngx_cpymem(p, "<mechanisms xmlns=\"" NGX_XMPP_NS_SASL "\">",
                       sizeof("<mechanisms xmlns=\"" NGX_XMPP_NS_SASL "\">")
                       - 1);

        for (mech = n->child; mech; mech = mech->next) {
            m = &mech->text;

            if (!ngx_xmpp_cm_str_is(&mech->name, "mechanism") || m->len == 0
                || ngx_xmpp_cm_str_is(m, "EXTERNAL")
                || (m->len > 5
                    && ngx_strncmp(m->data + m->len - 5, "-PLUS", 5) == 0))
            {
                continue;
            }

            p = ngx_cpymem(p, "<mechanism>", 11);
            p += ngx_xmpp_cm_escape(p, m->data, m->len);
            p = ngx_cpymem(p, "</mechanism>", 12);
        }

        p = ngx_cpymem(p, "</mechanisms>", 13);
    }

    if (ngx_xmpp_cm_node_child(cfg, "auth")) {
        p = ngx_cpymem(p, "<auth xmlns=\"http://jabber.org/features/iq-auth\""
                       "/>", 50);
    }

    if (ngx_xmpp_cm_node_child(cfg, "register")) {
        p = ngx_cpymem(p, "<register xmlns=\"http://jabber.org/features/"
                       "iq-register\"/>", 58);
    }

    n = ngx_xmpp_cm_node_child(cfg, "starttls");

    up->cfg_tls_required = n && ngx_xmpp_cm_node_child(n, "required");

    up->cfg_compression = ngx_xmpp_cm_node_child(cfg, "compression") != NULL;

    if (up->features.data) {
        ngx_free(up->features.data);
    }

    up->features.data = buf;
    up->features.len = p - buf;

    ngx_log_debug2(NGX_LOG_DEBUG_STREAM, &up->log, 0,
                   "xmpp_cm: features for \"%V\": %V", &up->name,
                   &up->features);
}


ngx_xmpp_cm_sock_t *
ngx_xmpp_cm_upstream_pick(ngx_xmpp_cm_upstream_t *up)
{
    ngx_uint_t           i;
    ngx_xmpp_cm_sock_t  *sock;

    if (up->ready == 0 || up->exiting) {
        return NULL;
    }

    for (i = 0; i < up->nsocks; i++) {
        sock = &up->socks[up->rr++ % up->nsocks];

        if (sock->state == NGX_XMPP_CM_SOCK_READY) {
            return sock;
        }
    }

    return NULL;
}


/*
 * A buf of its own for one stanza of len bytes at the end of the socket's
 * chain (the caller writes them at b->last), and one posted write for the
 * event loop pass: many sessions' stanzas go out in one send_chain().
 */

ngx_buf_t *
ngx_xmpp_cm_sock_buf(ngx_xmpp_cm_sock_t *sock, size_t len)
{
    ngx_buf_t  *b;

    b = ngx_xmpp_cm_output_buf(&sock->out, len, 1);
    if (b == NULL) {
        return NULL;
    }

    if (sock->c && sock->state > NGX_XMPP_CM_SOCK_CONNECTING) {
        ngx_post_event(sock->c->write, &ngx_posted_events);
    }

    if (sock->out.size > sock->up->conf->upstream_watermarks.high) {
        sock->throttled = 1;
    }

    if (sock->up->conf->confirm) {
        /* what the next barrier will confirm; a full window pauses */

        if (sock->since_n++ == 0) {
            sock->since_at = ngx_current_msec;
        }

        sock->since_size += len;

        /* those queued since the last barrier are not written yet */

        if (sock->kept.n + sock->since_n
            >= sock->up->conf->confirm_window.stanzas
            || sock->kept.size + sock->out.size
               > sock->up->conf->confirm_window.size)
        {
            sock->throttled = 1;
        }
    }

    return b;
}


ngx_int_t
ngx_xmpp_cm_sock_write(ngx_xmpp_cm_sock_t *sock, u_char *data, size_t len)
{
    ngx_buf_t  *b;

    b = ngx_xmpp_cm_sock_buf(sock, len);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last = ngx_cpymem(b->last, data, len);

    return NGX_OK;
}


/*
 * Openfire leaves Nagle on for CM sockets (xmpp.socket.tcp-nodelay is
 * false): its next write waits for our ACK of the last one, which Linux
 * delays up to 40 ms once the link looks interactive.  TCP_QUICKACK sends
 * that ACK now; Linux clears it again, so it is set after every read.
 */

static void
ngx_xmpp_cm_sock_quickack(ngx_xmpp_cm_sock_t *sock)
{
#if (NGX_LINUX) && defined(TCP_QUICKACK)
    int  one;

    if (sock->pc.sockaddr->sa_family == AF_UNIX || sock->c == NULL) {
        return;
    }

    one = 1;

    if (setsockopt(sock->c->fd, IPPROTO_TCP, TCP_QUICKACK,
                   (const void *) &one, sizeof(int))
        == -1)
    {
        ngx_log_debug1(NGX_LOG_DEBUG_STREAM, sock->log, ngx_errno,
                       "xmpp_cm: TCP_QUICKACK on %V failed", sock->pc.name);
    }
#endif
}


static void
ngx_xmpp_cm_sock_unthrottle(ngx_xmpp_cm_sock_t *sock)
{
    ngx_queue_t           *q;
    ngx_xmpp_cm_stream_t  *s;

    sock->throttled = 0;

    /*
     * Every paused client is released (its read is posted, in order); one
     * that fills the socket past the high-water mark again pauses again.
     */

    while (!ngx_queue_empty(&sock->paused)) {
        q = ngx_queue_head(&sock->paused);
        s = ngx_queue_data(q, ngx_xmpp_cm_stream_t, queue);
        ngx_queue_remove(q);

        sock->up->streams->unblock(s);
    }
}


/*
 * Worker exit: every client session is closed upstream (and its client
 * told) before the sockets go, so Openfire keeps no ghost sessions.
 */

void
ngx_xmpp_cm_upstream_exit(ngx_xmpp_cm_upstream_t *up)
{
    int                  timeout;
    ngx_uint_t           i;
    ngx_xmpp_cm_sock_t  *sock;
    struct timeval       tv;

    if (up->exiting) {
        return;
    }

    ngx_log_error(NGX_LOG_NOTICE, &up->log, 0,
                  "xmpp_cm: worker exiting, closing %ui client sessions of "
                  "\"%V\"", up->nstreams, &up->name);

    up->streams->end_all(up, "system-shutdown",
                         "the connection manager is shutting down", 0);

    up->exiting = 1;

    timeout = 2;
    tv.tv_sec = timeout;
    tv.tv_usec = 0;

    for (i = 0; i < up->nsocks; i++) {
        sock = &up->socks[i];

        if (sock->reconnect.timer_set) {
            ngx_del_timer(&sock->reconnect);
        }

        if (sock->c == NULL) {
            continue;
        }

        if (sock->state == NGX_XMPP_CM_SOCK_READY && sock->out.size) {
            /* a last, bounded blocking flush of the close IQs */
            (void) ngx_blocking(sock->c->fd);
            (void) setsockopt(sock->c->fd, SOL_SOCKET, SO_SNDTIMEO,
                              (const void *) &tv, sizeof(tv));
            sock->c->write->ready = 1;
            (void) ngx_xmpp_cm_output_send(sock->c, &sock->out);
        }

        if (sock->state != NGX_XMPP_CM_SOCK_TLS) {
            /* not into a TLS handshake under way */
            (void) ngx_xmpp_cm_output_send(sock->c, &sock->out);
        }

        ngx_xmpp_cm_sock_close(sock, NGX_LOG_INFO, "worker exiting");
    }

    if (up->features.data) {
        ngx_free(up->features.data);
        ngx_str_null(&up->features);
    }

#if (NGX_SSL)
    for (i = 0; i < up->nsocks; i++) {
        if (up->socks[i].ssl_session) {
            ngx_ssl_free_session(up->socks[i].ssl_session);
            up->socks[i].ssl_session = NULL;
        }
    }
#endif
}


#if (NGX_SSL)

/*
 * xmpp_cm_upstream_tls starttls: TLS is required.  The handshake digest is
 * never sent in clear text, since whoever sees it can test secrets offline
 * (it is sha1(id + secret)); a server that offers no <starttls/> gets
 * nothing and the socket backs off.
 */

static ngx_int_t
ngx_xmpp_cm_sock_starttls(ngx_xmpp_cm_sock_t *sock,
    ngx_xmpp_cm_node_t *features)
{
    ngx_xmpp_cm_upstream_t  *up;
    ngx_xmpp_cm_node_t      *n;

    static u_char  starttls[] = "<starttls xmlns=\"" NGX_XMPP_NS_TLS "\"/>";

    up = sock->up;
    n = ngx_xmpp_cm_node_child(features, "starttls");

    if (n == NULL || !ngx_xmpp_cm_str_is(&n->ns, NGX_XMPP_NS_TLS)) {
        ngx_log_error(NGX_LOG_ERR, sock->log, 0,
                      "xmpp_cm: Openfire %V offers no STARTTLS on its "
                      "connection-manager port, and \"xmpp_cm_upstream_tls "
                      "starttls\" in %V:%ui requires it: the handshake is "
                      "not sent; give Openfire a certificate and set its "
                      "xmpp.multiplex.tls.policy to optional or required, "
                      "or connect to its Direct-TLS port (5263) with "
                      "\"xmpp_cm_upstream_tls direct\"",
                      sock->pc.name, &up->conf->conf_file,
                      up->conf->conf_line);
        sock->fail = "no STARTTLS offered, handshake not sent";
        return NGX_DONE;
    }

    if (ngx_xmpp_cm_sock_write(sock, starttls, sizeof(starttls) - 1)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    sock->state = NGX_XMPP_CM_SOCK_TLS;
    ngx_xmpp_cm_metrics_socks(up);
    sock->log->action = "starting TLS with Openfire";

    return NGX_OK;
}


static void
ngx_xmpp_cm_sock_tls(ngx_xmpp_cm_sock_t *sock)
{
    ngx_int_t                      rc;
    ngx_connection_t               *c;
    ngx_xmpp_cm_upstream_t         *up;
    ngx_stream_xmpp_cm_srv_conf_t  *conf;

    c = sock->c;
    up = sock->up;
    conf = up->conf;

    sock->state = NGX_XMPP_CM_SOCK_TLS;
    ngx_xmpp_cm_metrics_socks(up);
    sock->log->action = "TLS handshaking with Openfire";

    /*
     * NGX_SSL_BUFFER, as the stream proxy has it: the stanzas' bufs are
     * copied into full TLS records, not one SSL_write() per stanza
     */

    if (ngx_ssl_create_connection(conf->upstream_ssl, c,
                                  NGX_SSL_BUFFER|NGX_SSL_CLIENT)
        != NGX_OK)
    {
        ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR, "TLS setup failed");
        return;
    }

#ifdef SSL_CTRL_SET_TLSEXT_HOSTNAME

    /* RFC 6066: no IP literals as server names */

    if (conf->upstream_ssl_server_name
        && ngx_inet_addr(conf->upstream_ssl_name.data,
                         conf->upstream_ssl_name.len) == INADDR_NONE
        && ngx_strlchr(conf->upstream_ssl_name.data,
                       conf->upstream_ssl_name.data
                       + conf->upstream_ssl_name.len, ':') == NULL
        && SSL_set_tlsext_host_name(c->ssl->connection,
                                    (char *) conf->upstream_ssl_name.data)
           == 0)
    {
        ngx_ssl_error(NGX_LOG_ERR, sock->log, 0,
                      "SSL_set_tlsext_host_name(\"%V\") failed",
                      &conf->upstream_ssl_name);
        ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR, "TLS setup failed");
        return;
    }

#endif

    if (conf->upstream_ssl_session_reuse) {
        c->ssl->save_session = ngx_xmpp_cm_sock_save_session;

        if (sock->ssl_session
            && ngx_ssl_set_session(c, sock->ssl_session) != NGX_OK)
        {
            ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR, "TLS setup failed");
            return;
        }
    }

    ngx_add_timer(c->read, conf->connect_timeout);

    rc = ngx_ssl_handshake(c);

    if (rc == NGX_AGAIN) {
        c->ssl->handler = ngx_xmpp_cm_sock_tls_done;
        return;
    }

    ngx_xmpp_cm_sock_tls_done(c);
}


static void
ngx_xmpp_cm_sock_tls_done(ngx_connection_t *c)
{
    long                           rc;
    ngx_xmpp_cm_sock_t             *sock;
    ngx_xmpp_cm_upstream_t         *up;
    ngx_stream_xmpp_cm_srv_conf_t  *conf;

    sock = c->data;
    up = sock->up;
    conf = up->conf;

    if (!c->ssl->handshaked) {
        if (c->read->timedout || c->write->timedout) {
            ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR,
                                   "TLS handshake timed out "
                                   "(xmpp_cm_connect_timeout)");
            return;
        }

        ngx_log_error(NGX_LOG_ERR, sock->log, 0,
                      "xmpp_cm: TLS handshake with Openfire %V failed (the "
                      "line before says why): check that %s, that "
                      "\"xmpp_cm_upstream_ssl_protocols\" and "
                      "\"_ciphers\" in %V:%ui overlap Openfire's, and, "
                      "if Openfire wants a client certificate "
                      "(xmpp.multiplex.cert.policy), "
                      "\"xmpp_cm_upstream_ssl_certificate\"",
                      sock->pc.name,
                      conf->upstream_tls == NGX_XMPP_CM_UPSTREAM_TLS_DIRECT
                      ? "this port is Openfire's Direct-TLS CM port "
                        "(xmpp.multiplex.ssl.port, 5263)"
                      : "Openfire is not 4.8.0 to 4.9.0 (OF-2899: STARTTLS "
                        "on the CM link kills the socket; use port 5263 "
                        "with \"xmpp_cm_upstream_tls direct\")",
                      &conf->conf_file, conf->conf_line);
        ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR, "TLS handshake failed");
        return;
    }

    if (conf->upstream_ssl_verify) {
        rc = SSL_get_verify_result(c->ssl->connection);

        if (rc != X509_V_OK) {
            ngx_log_error(NGX_LOG_ERR, sock->log, 0,
                          "xmpp_cm: Openfire %V's certificate did not "
                          "verify: (%l:%s); put the CA that signed it in "
                          "\"xmpp_cm_upstream_ssl_trusted_certificate\" "
                          "(%V:%ui), or raise "
                          "\"xmpp_cm_upstream_ssl_verify_depth\" for a "
                          "longer chain; the handshake is not sent",
                          sock->pc.name, rc,
                          X509_verify_cert_error_string(rc),
                          &conf->conf_file, conf->conf_line);
            goto failed;
        }

        if (ngx_ssl_check_host(c, &conf->upstream_ssl_name) != NGX_OK) {
            ngx_log_error(NGX_LOG_ERR, sock->log, 0,
                          "xmpp_cm: Openfire %V's certificate does not "
                          "match \"%V\"; set \"xmpp_cm_upstream_ssl_name\" "
                          "(%V:%ui) to a name it carries, or give Openfire "
                          "a certificate for \"%V\"; the handshake is not "
                          "sent", sock->pc.name, &conf->upstream_ssl_name,
                          &conf->conf_file, conf->conf_line,
                          &conf->upstream_ssl_name);
            goto failed;
        }
    }

    ngx_log_error(NGX_LOG_INFO, sock->log, 0,
                  "xmpp_cm: TLS to Openfire %V: %s, %s%s", sock->pc.name,
                  SSL_get_version(c->ssl->connection),
                  SSL_get_cipher_name(c->ssl->connection),
                  SSL_session_reused(c->ssl->connection) ? ", reused" : "");

    sock->tls = 1;
    sock->state = NGX_XMPP_CM_SOCK_OPENING;
    ngx_xmpp_cm_metrics_socks(up);
    sock->log->action = "opening a stream to Openfire";

    c->read->handler = ngx_xmpp_cm_sock_read_handler;
    c->write->handler = ngx_xmpp_cm_sock_write_handler;

    if (conf->upstream_tls == NGX_XMPP_CM_UPSTREAM_TLS_STARTTLS) {
        /* a new stream over TLS: a new header and a fresh parser */

        if (ngx_xmpp_cm_xml_reset(sock->xml) != NGX_OK
            || ngx_xmpp_cm_sock_header(sock) != NGX_OK)
        {
            ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR, "out of memory");
            return;
        }
    }

    /* direct TLS: the header queued at connect goes out now */

    ngx_xmpp_cm_sock_write_handler(c->write);

    if (sock->state != NGX_XMPP_CM_SOCK_IDLE) {
        ngx_xmpp_cm_sock_read_handler(c->read);
    }

    return;

failed:

    if (sock->ssl_session) {
        ngx_ssl_free_session(sock->ssl_session);
        sock->ssl_session = NULL;
    }

    ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR,
                           "Openfire's certificate was refused");
}


/* TLS session reuse across reconnects (xmpp_cm_upstream_ssl_session_reuse) */

static void
ngx_xmpp_cm_sock_save_session(ngx_connection_t *c)
{
    ngx_ssl_session_t   *session;
    ngx_xmpp_cm_sock_t  *sock;

    sock = c->data;

    session = ngx_ssl_get_session(c);
    if (session == NULL) {
        return;
    }

    if (sock->ssl_session) {
        ngx_ssl_free_session(sock->ssl_session);
    }

    sock->ssl_session = session;
}

#endif
