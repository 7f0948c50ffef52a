
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


#define NGX_XMPP_CM_UPSTREAM_READ  65536


static ngx_stream_upstream_rr_peer_t *ngx_xmpp_cm_pool_peer(
    ngx_xmpp_cm_pool_t *pool);
static ngx_uint_t ngx_xmpp_cm_pool_primaries(ngx_xmpp_cm_pool_t *pool);
static void ngx_xmpp_cm_pool_failover(ngx_xmpp_cm_pool_t *pool,
    ngx_xmpp_cm_sock_t *sock);
static void ngx_xmpp_cm_sock_connect(ngx_xmpp_cm_sock_t *sock);
static void ngx_xmpp_cm_sock_close(ngx_xmpp_cm_sock_t *sock,
    ngx_uint_t level, const char *why);
static void ngx_xmpp_cm_sock_read_handler(ngx_event_t *rev);
static void ngx_xmpp_cm_sock_write_handler(ngx_event_t *wev);
static void ngx_xmpp_cm_sock_reconnect_handler(ngx_event_t *ev);
static void ngx_xmpp_cm_sock_keepalive_handler(ngx_event_t *ev);
static ngx_int_t ngx_xmpp_cm_sock_open(void *data, ngx_str_t *name,
    ngx_str_t *ns, const XML_Char **attrs);
static ngx_int_t ngx_xmpp_cm_sock_element(void *data, ngx_xmpp_cm_elem_t *e);
static ngx_int_t ngx_xmpp_cm_sock_end(void *data);
static ngx_int_t ngx_xmpp_cm_sock_framer(ngx_xmpp_cm_sock_t *sock,
    ngx_pool_t *pool);
static void ngx_xmpp_cm_pool_configure(ngx_xmpp_cm_pool_t *pool,
    ngx_xmpp_cm_node_t *cfg);
static void ngx_xmpp_cm_pool_up(ngx_xmpp_cm_pool_t *pool);
static void ngx_xmpp_cm_sock_unthrottle(ngx_xmpp_cm_sock_t *sock);


static u_char  ngx_xmpp_cm_upstream_buf[NGX_XMPP_CM_UPSTREAM_READ];


ngx_int_t
ngx_xmpp_cm_pool_init(ngx_cycle_t *cycle, ngx_stream_xmpp_cm_srv_conf_t *conf)
{
    u_char              *p, rnd[3];
    ngx_str_t           *domain;
    ngx_uint_t           i;
    ngx_xmpp_cm_sock_t  *sock;
    ngx_xmpp_cm_pool_t  *pool;

    pool = ngx_pcalloc(cycle->pool, sizeof(ngx_xmpp_cm_pool_t));
    if (pool == NULL) {
        return NGX_ERROR;
    }

    conf->pool = pool;
    pool->conf = conf;
    pool->log = *cycle->log;

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

    pool->name.data = p;
    p = ngx_sprintf(p, "%V-%P-", &conf->name, ngx_pid);
    p = ngx_hex_dump(p, rnd, sizeof(rnd));
    pool->name.len = p - pool->name.data;
    ngx_strlow(pool->name.data, pool->name.data, pool->name.len);

    domain = conf->domains->elts;
    pool->domain = domain[0];

    ngx_rbtree_init(&pool->sessions, &pool->sentinel,
                    ngx_str_rbtree_insert_value);

    if (ngx_array_init(&pool->ghosts, cycle->pool, 16, NGX_XMPP_CM_ID_LEN)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    pool->closed = ngx_pcalloc(cycle->pool,
                               NGX_XMPP_CM_CLOSED_RING * NGX_XMPP_CM_ID_LEN);
    if (pool->closed == NULL) {
        return NGX_ERROR;
    }

    pool->nsocks = conf->connections;
    pool->socks = ngx_pcalloc(cycle->pool,
                              pool->nsocks * sizeof(ngx_xmpp_cm_sock_t));
    if (pool->socks == NULL) {
        return NGX_ERROR;
    }

    /* workers spread over the primary servers */

    pool->node = ngx_xmpp_cm_pool_primaries(pool);
    pool->node = pool->node ? ngx_worker % pool->node : 0;

    for (i = 0; i < pool->nsocks; i++) {
        sock = &pool->socks[i];
        sock->pool = pool;
        sock->index = i;
        ngx_queue_init(&sock->blocked);

        sock->reconnect.handler = ngx_xmpp_cm_sock_reconnect_handler;
        sock->reconnect.data = sock;
        sock->reconnect.log = &pool->log;
        sock->reconnect.cancelable = 1;

        sock->keepalive.handler = ngx_xmpp_cm_sock_keepalive_handler;
        sock->keepalive.data = sock;
        sock->keepalive.log = &pool->log;
        sock->keepalive.cancelable = 1;

        ngx_xmpp_cm_sock_connect(sock);
    }

    ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                  "xmpp_cm: worker CM name \"%V\", %ui sockets to \"%V\"",
                  &pool->name, pool->nsocks, &conf->pass);

    return NGX_OK;
}


static ngx_msec_t
ngx_xmpp_cm_backoff(ngx_xmpp_cm_sock_t *sock)
{
    uint32_t                        r;
    ngx_msec_t                      delay;
    ngx_uint_t                      i;
    ngx_stream_xmpp_cm_srv_conf_t  *conf;

    conf = sock->pool->conf;
    delay = conf->reconnect_min;

    for (i = 1; i < sock->failures && delay < conf->reconnect_max; i++) {
        delay *= 2;
    }

    if (delay > conf->reconnect_max) {
        delay = conf->reconnect_max;
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

    if (sock->pool->exiting || ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    delay = ngx_xmpp_cm_backoff(sock);

    ngx_log_debug3(NGX_LOG_DEBUG_STREAM, &sock->pool->log, 0,
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
ngx_xmpp_cm_pool_peer(ngx_xmpp_cm_pool_t *pool)
{
    ngx_uint_t                       n, k;
    ngx_stream_upstream_rr_peer_t   *peer;
    ngx_stream_upstream_rr_peers_t  *peers;

    /* primaries, then backups: one index space to fail over through */

    n = 0;

    for (peers = pool->conf->upstream->peer.data; peers; peers = peers->next)
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

    k = pool->node % n;

    for (peers = pool->conf->upstream->peer.data; peers; peers = peers->next)
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
ngx_xmpp_cm_pool_primaries(ngx_xmpp_cm_pool_t *pool)
{
    ngx_uint_t                       n;
    ngx_stream_upstream_rr_peer_t   *peer;
    ngx_stream_upstream_rr_peers_t  *peers;

    n = 0;
    peers = pool->conf->upstream->peer.data;

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
ngx_xmpp_cm_pool_failover(ngx_xmpp_cm_pool_t *pool, ngx_xmpp_cm_sock_t *sock)
{
    ngx_uint_t  i;

    if (pool->ready || sock->failures < 2) {
        return;
    }

    for (i = 0; i < pool->nsocks; i++) {
        if (pool->socks[i].state > NGX_XMPP_CM_SOCK_CONNECTING) {
            return;
        }
    }

    pool->node++;
}


static void
ngx_xmpp_cm_sock_connect(ngx_xmpp_cm_sock_t *sock)
{
    u_char                          *p;
    size_t                           len;
    ngx_int_t                        rc;
    ngx_connection_t                *c;
    ngx_xmpp_cm_pool_t              *pool;
    ngx_peer_connection_t           *pc;
    ngx_stream_upstream_rr_peer_t   *peer;

    pool = sock->pool;

    peer = ngx_xmpp_cm_pool_peer(pool);

    if (peer == NULL) {
        ngx_log_error(NGX_LOG_ERR, &pool->log, 0,
                      "xmpp_cm: upstream \"%V\" has no usable server",
                      &pool->conf->pass);
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

    pc = &sock->pc;
    ngx_memzero(pc, sizeof(ngx_peer_connection_t));
    pc->sockaddr = peer->sockaddr;
    pc->socklen = peer->socklen;
    pc->name = &peer->name;
    pc->get = ngx_event_get_peer;
    pc->log = &pool->log;
    pc->log_error = NGX_ERROR_ERR;

    pool->log.action = "connecting to Openfire";

    rc = ngx_event_connect_peer(pc);

    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        ngx_log_error(NGX_LOG_ERR, &pool->log, 0,
                      "xmpp_cm: connect to %V failed", pc->name);
        sock->failures++;
        ngx_xmpp_cm_pool_failover(pool, sock);
        ngx_xmpp_cm_sock_schedule(sock);
        return;
    }

    c = pc->connection;
    sock->c = c;
    c->data = sock;
    c->log = &pool->log;
    c->read->log = c->log;
    c->write->log = c->log;
    c->read->handler = ngx_xmpp_cm_sock_read_handler;
    c->write->handler = ngx_xmpp_cm_sock_write_handler;
    c->read->cancelable = 1;
    c->write->cancelable = 1;

    c->pool = ngx_create_pool(1024, &pool->log);
    if (c->pool == NULL) {
        goto failed;
    }

    if (ngx_xmpp_cm_sock_framer(sock, c->pool) != NGX_OK) {
        goto failed;
    }

    /* the literal stream: prefix and double quotes (protocol section 2) */

    len = sizeof("<stream:stream xmlns:stream=\"" NGX_XMPP_NS_STREAMS
                 "\" xmlns=\"" NGX_XMPP_NS_CM "\" to=\"/\" version=\"1.0\">")
          - 1 + pool->name.len + sock->resource.len;

    p = ngx_xmpp_cm_queue_alloc(&sock->out, len);
    if (p == NULL) {
        goto failed;
    }

    (void) ngx_sprintf(p, "<stream:stream xmlns:stream=\"" NGX_XMPP_NS_STREAMS
                       "\" xmlns=\"" NGX_XMPP_NS_CM "\" to=\"%V/%V\""
                       " version=\"1.0\">", &pool->name, &sock->resource);

    sock->state = NGX_XMPP_CM_SOCK_CONNECTING;

    ngx_add_timer(c->read, pool->conf->connect_timeout);

    if (rc == NGX_OK) {
        ngx_xmpp_cm_sock_write_handler(c->write);
    }

    return;

failed:

    ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR, "out of memory");
}


static void
ngx_xmpp_cm_sock_close(ngx_xmpp_cm_sock_t *sock, ngx_uint_t level,
    const char *why)
{
    size_t               dropped;
    ngx_uint_t           was_ready;
    ngx_xmpp_cm_pool_t  *pool;
    ngx_xmpp_cm_sock_t  *other;

    pool = sock->pool;
    was_ready = (sock->state == NGX_XMPP_CM_SOCK_READY);

    if (sock->state != NGX_XMPP_CM_SOCK_IDLE) {
        ngx_log_error(level, &pool->log, 0,
                      "xmpp_cm: Openfire socket %V/%V closed: %s",
                      &pool->name, &sock->resource, why);
    }

    if (sock->c) {
        if (sock->xml) {
            ngx_xmpp_cm_xml_free(sock->xml);
            sock->xml = NULL;
        }

        if (sock->c->pool) {
            ngx_destroy_pool(sock->c->pool);
        }

        ngx_close_connection(sock->c);
        sock->c = NULL;
    }

    if (sock->keepalive.timer_set) {
        ngx_del_timer(&sock->keepalive);
    }

    sock->state = NGX_XMPP_CM_SOCK_IDLE;

    if (was_ready) {
        pool->ready--;
    }

    /* unsent routes move to a live socket of the same CM name */

    other = NULL;

    if (pool->ready) {
        other = ngx_xmpp_cm_pool_pick(pool);
    }

    dropped = sock->out.size;

    if (other && sock->out.size) {
        ngx_xmpp_cm_queue_move(&other->out, &sock->out, &dropped);

        if (other->c && !other->c->write->posted) {
            ngx_post_event(other->c->write, &ngx_posted_events);
        }
    }

    if (dropped && was_ready) {
        ngx_log_error(NGX_LOG_INFO, &pool->log, 0,
                      "xmpp_cm: %uz bytes for Openfire were lost with the "
                      "socket %V/%V", dropped, &pool->name, &sock->resource);
    }

    ngx_xmpp_cm_queue_free(&sock->out);

    /* clients paused behind this socket re-pin to another one */

    ngx_xmpp_cm_sock_unthrottle(sock);

    if (was_ready && pool->ready == 0) {
        pool->was_up = 0;
    }

    if (was_ready && pool->ready == 0 && !pool->exiting) {
        ngx_log_error(NGX_LOG_ERR, &pool->log, 0,
                      "xmpp_cm: no Openfire socket left for \"%V\", "
                      "ending %ui client sessions", &pool->name,
                      pool->nsessions);

        ngx_xmpp_cm_session_end_all(pool,
                                    pool->down_cond ? (char *) pool->down_cond
                                    : "remote-connection-failed",
                                    "the XMPP server is unreachable", 1);
        pool->down_cond = NULL;
    }

    if (!was_ready) {
        sock->failures++;
        ngx_xmpp_cm_pool_failover(pool, sock);

    } else {
        sock->failures = 1;
    }

    ngx_xmpp_cm_sock_schedule(sock);
}


static void
ngx_xmpp_cm_sock_reconnect_handler(ngx_event_t *ev)
{
    ngx_xmpp_cm_sock_t  *sock = ev->data;

    if (sock->state == NGX_XMPP_CM_SOCK_IDLE && !sock->pool->exiting) {
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

    ngx_add_timer(&sock->keepalive, sock->pool->conf->keepalive);
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
        sock->pool->log.action = "opening a stream to Openfire";

        /* many sessions' small stanzas: no Nagle delay on the shared link */

        if (sock->pc.sockaddr->sa_family != AF_UNIX) {
            (void) ngx_tcp_nodelay(c);
        }
    }

    rc = ngx_xmpp_cm_queue_send(c, &sock->out);

    if (rc == NGX_ERROR) {
        ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR, "write failed");
        return;
    }

    if (ngx_handle_write_event(wev, 0) != NGX_OK) {
        ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR, "write event failed");
        return;
    }

    if (sock->throttled
        && sock->out.size <= sock->pool->conf->upstream_low)
    {
        ngx_xmpp_cm_sock_unthrottle(sock);
    }
}


static void
ngx_xmpp_cm_sock_read_handler(ngx_event_t *rev)
{
    ssize_t              n;
    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_xmpp_cm_sock_t  *sock;
    ngx_xmpp_cm_pool_t  *pool;

    c = rev->data;
    sock = c->data;
    pool = sock->pool;

    if (c->close) {
        /* worker shutdown: sessions are closed upstream first */
        ngx_xmpp_cm_pool_exit(pool);
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

    while (rev->ready) {
        n = c->recv(c, ngx_xmpp_cm_upstream_buf, NGX_XMPP_CM_UPSTREAM_READ);

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
            } else {
                ngx_xmpp_cm_sock_close(sock, NGX_LOG_WARN,
                                       "connection closed by Openfire");
            }

            return;
        }

        pool->log.action = "reading from Openfire";

        rc = ngx_xmpp_cm_xml_feed(sock->xml, ngx_xmpp_cm_upstream_buf, n);

        if (rc != NGX_OK || sock->done) {
            if (sock->xml->error) {
                ngx_log_error(NGX_LOG_ERR, &pool->log, 0,
                              "xmpp_cm: bad XML from Openfire: %s (%s)",
                              sock->xml->error,
                              sock->xml->error_text ? sock->xml->error_text
                                                    : "");
            }

            ngx_xmpp_cm_sock_close(sock, NGX_LOG_WARN,
                                   "stream ended by Openfire");
            return;
        }

        if (sock->state == NGX_XMPP_CM_SOCK_IDLE) {
            return;
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_xmpp_cm_sock_close(sock, NGX_LOG_ERR, "read event failed");
        return;
    }

    ngx_add_timer(rev, sock->state == NGX_XMPP_CM_SOCK_READY
                       ? pool->conf->upstream_timeout
                       : pool->conf->connect_timeout);
}


/* the framer of a socket's stream from Openfire (the fuzz target's too) */

static ngx_int_t
ngx_xmpp_cm_sock_framer(ngx_xmpp_cm_sock_t *sock, ngx_pool_t *pool)
{
    sock->xml = ngx_xmpp_cm_xml_create(pool, &sock->pool->log, 1);
    if (sock->xml == NULL) {
        return NGX_ERROR;
    }

    sock->xml->data = sock;
    sock->xml->open = ngx_xmpp_cm_sock_open;
    sock->xml->element = ngx_xmpp_cm_sock_element;
    sock->xml->close = ngx_xmpp_cm_sock_end;
    sock->xml->max_size = NGX_XMPP_CM_OPENFIRE_MAX + 4096;
    sock->xml->max_depth = 1000;

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
    ngx_xmpp_cm_pool_t  *pool;

    pool = sock->pool;

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

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, sock->sid, sock->sid_len);
    ngx_sha1_update(&sha1, pool->conf->secret.data, pool->conf->secret.len);
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
    pool->log.action = "authenticating to Openfire";

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
    ngx_str_t            cond;
    ngx_xmpp_cm_pool_t  *pool;
    ngx_xmpp_cm_node_t  *n;

    pool = sock->pool;
    ngx_str_set(&cond, "undefined-condition");

    for (n = err->child; n; n = n->next) {
        if (!ngx_xmpp_cm_str_is(&n->name, "text")) {
            cond = n->name;
            break;
        }
    }

    if (ngx_xmpp_cm_str_is(&cond, "not-authorized")
        && sock->state == NGX_XMPP_CM_SOCK_HANDSHAKE)
    {
        ngx_log_error(NGX_LOG_ERR, &pool->log, 0,
                      "xmpp_cm: Openfire refused the handshake of %V/%V "
                      "(not-authorized): the xmpp_cm_secret in %V:%ui does "
                      "not match Openfire's xmpp.multiplex.defaultSecret "
                      "property; set both to the same value",
                      &pool->name, &sock->resource, &pool->conf->conf_file,
                      pool->conf->conf_line);
        return;
    }

    if (ngx_xmpp_cm_str_is(&cond, "system-shutdown")) {
        pool->down_cond = "system-shutdown";
    }

    ngx_log_error(NGX_LOG_ERR, &pool->log, 0,
                  "xmpp_cm: stream error from Openfire on %V/%V: %V",
                  &pool->name, &sock->resource, &cond);
}


static ngx_int_t
ngx_xmpp_cm_sock_element(void *data, ngx_xmpp_cm_elem_t *e)
{
    ngx_xmpp_cm_sock_t *sock = data;

    u_char              *p;
    size_t               len;
    ngx_str_t           *id;
    ngx_xmpp_cm_pool_t  *pool;
    ngx_xmpp_cm_node_t  *root, *child;

    pool = sock->pool;
    root = e->root;

    if (root == NULL) {
        return NGX_OK;
    }

    /*
     * Openfire registers a socket at stream open, before the handshake,
     * and may route any session of the name to it (4.1.6 row 7).
     */

    if (ngx_xmpp_cm_str_is(&root->name, "route")) {
        ngx_xmpp_cm_session_route(pool, sock, root);
        return NGX_OK;
    }

    if (ngx_xmpp_cm_str_is(&root->name, "iq")) {
        child = ngx_xmpp_cm_node_child(root, NULL);
        id = ngx_xmpp_cm_node_attr(root, "id");

        if (child && ngx_xmpp_cm_str_is(&child->name, "configuration")) {
            ngx_xmpp_cm_pool_configure(pool, child);

            if (id && id->len) {
                /* escaping may make the id six times as long */

                len = sizeof("<iq type=\"result\" id=\"\"/>") - 1
                      + ngx_xmpp_cm_escape(NULL, id->data, id->len);

                p = ngx_xmpp_cm_sock_alloc(sock, len);
                if (p == NULL) {
                    return NGX_ERROR;
                }

                p = ngx_cpymem(p, "<iq type=\"result\" id=\"", 22);
                p += ngx_xmpp_cm_escape(p, id->data, id->len);
                ngx_memcpy(p, "\"/>", 3);
            }

            if (!pool->configured) {
                pool->configured = 1;
            }

            if (pool->ready && !pool->was_up) {
                ngx_xmpp_cm_pool_up(pool);
            }

            return NGX_OK;
        }

        if (child && ngx_xmpp_cm_str_is(&child->name, "session")) {
            ngx_xmpp_cm_session_iq(pool, sock, root);
            return NGX_OK;
        }

        ngx_log_error(NGX_LOG_INFO, &pool->log, 0,
                      "xmpp_cm: ignored IQ from Openfire on %V/%V",
                      &pool->name, &sock->resource);
        return NGX_OK;
    }

    if (ngx_xmpp_cm_str_is(&root->name, "handshake")) {
        if (sock->state != NGX_XMPP_CM_SOCK_HANDSHAKE) {
            return NGX_OK;
        }

        sock->state = NGX_XMPP_CM_SOCK_READY;
        sock->failures = 0;
        pool->ready++;
        pool->log.action = NULL;

        ngx_log_error(NGX_LOG_NOTICE, &pool->log, 0,
                      "xmpp_cm: connected to Openfire %V as %V/%V",
                      sock->pc.name, &pool->name, &sock->resource);

        ngx_add_timer(&sock->keepalive, pool->conf->keepalive);

        if (pool->configured && !pool->was_up) {
            ngx_xmpp_cm_pool_up(pool);
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
        return NGX_OK;
    }

    ngx_log_error(NGX_LOG_INFO, &pool->log, 0,
                  "xmpp_cm: ignored <%V> from Openfire", &root->name);

    return NGX_OK;
}


/* the pool is usable again: close what Openfire may still hold for us */

static void
ngx_xmpp_cm_pool_up(ngx_xmpp_cm_pool_t *pool)
{
    u_char              *id;
    ngx_str_t            sid;
    ngx_uint_t           i;
    ngx_xmpp_cm_sock_t  *sock;

    pool->was_up = 1;

    sock = ngx_xmpp_cm_pool_pick(pool);
    if (sock == NULL) {
        return;
    }

    id = pool->ghosts.elts;

    for (i = 0; i < pool->ghosts.nelts; i++) {
        sid.data = id + i * NGX_XMPP_CM_ID_LEN;
        sid.len = ngx_strlen(sid.data);
        (void) ngx_xmpp_cm_route_session_iq(pool, sock, &sid,
                                            NGX_XMPP_CM_IQ_CLOSE, NULL,
                                            NULL, 0);
    }

    if (pool->ghosts.nelts) {
        ngx_log_error(NGX_LOG_INFO, &pool->log, 0,
                      "xmpp_cm: closed %ui sessions Openfire may still hold "
                      "for \"%V\"", pool->ghosts.nelts, &pool->name);
    }

    pool->ghosts.nelts = 0;
}


/*
 * The configuration IQ carries the c2s listener's settings; its
 * mechanisms become what clients are offered, minus EXTERNAL and every
 * channel-binding (-PLUS) mechanism: Openfire sees CM sessions as
 * unencrypted, so those can never succeed through a CM.
 */

static void
ngx_xmpp_cm_pool_configure(ngx_xmpp_cm_pool_t *pool, ngx_xmpp_cm_node_t *cfg)
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

    buf = ngx_alloc(size, &pool->log);
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

    pool->cfg_tls_required = n && ngx_xmpp_cm_node_child(n, "required");

    pool->cfg_compression = ngx_xmpp_cm_node_child(cfg, "compression") != NULL;

    if (pool->features.data) {
        ngx_free(pool->features.data);
    }

    pool->features.data = buf;
    pool->features.len = p - buf;

    ngx_log_debug2(NGX_LOG_DEBUG_STREAM, &pool->log, 0,
                   "xmpp_cm: features for \"%V\": %V", &pool->name,
                   &pool->features);
}


ngx_xmpp_cm_sock_t *
ngx_xmpp_cm_pool_pick(ngx_xmpp_cm_pool_t *pool)
{
    ngx_uint_t           i;
    ngx_xmpp_cm_sock_t  *sock;

    if (pool->ready == 0 || pool->exiting) {
        return NULL;
    }

    for (i = 0; i < pool->nsocks; i++) {
        sock = &pool->socks[pool->rr++ % pool->nsocks];

        if (sock->state == NGX_XMPP_CM_SOCK_READY) {
            return sock;
        }
    }

    return NULL;
}


/*
 * Appends to the socket's queue and posts one write for the event loop
 * pass: many sessions' stanzas go out in one send_chain().
 */

u_char *
ngx_xmpp_cm_sock_alloc(ngx_xmpp_cm_sock_t *sock, size_t len)
{
    u_char  *p;

    p = ngx_xmpp_cm_queue_alloc(&sock->out, len);
    if (p == NULL) {
        return NULL;
    }

    if (sock->c && sock->state > NGX_XMPP_CM_SOCK_CONNECTING
        && !sock->c->write->posted)
    {
        ngx_post_event(sock->c->write, &ngx_posted_events);
    }

    if (sock->out.size > sock->pool->conf->upstream_high) {
        sock->throttled = 1;
    }

    return p;
}


ngx_int_t
ngx_xmpp_cm_sock_write(ngx_xmpp_cm_sock_t *sock, u_char *data, size_t len)
{
    u_char  *p;

    p = ngx_xmpp_cm_sock_alloc(sock, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(p, data, len);

    return NGX_OK;
}


void
ngx_xmpp_cm_sock_block(ngx_xmpp_cm_sock_t *sock, ngx_xmpp_cm_session_t *s)
{
    if (!s->is_blocked) {
        s->is_blocked = 1;
        ngx_queue_insert_tail(&sock->blocked, &s->blocked);
    }
}


static void
ngx_xmpp_cm_sock_unthrottle(ngx_xmpp_cm_sock_t *sock)
{
    ngx_queue_t            *q;
    ngx_xmpp_cm_session_t  *s;

    sock->throttled = 0;

    /*
     * Every paused client is released (its read is posted, in order); one
     * that fills the socket past the high-water mark again pauses again.
     */

    while (!ngx_queue_empty(&sock->blocked)) {
        q = ngx_queue_head(&sock->blocked);
        s = ngx_queue_data(q, ngx_xmpp_cm_session_t, blocked);
        ngx_queue_remove(q);
        s->is_blocked = 0;

        if (s->client) {
            ngx_xmpp_cm_client_unblock(s->client);
        }
    }
}


/*
 * Worker exit: every client session is closed upstream (and its client
 * told) before the sockets go, so Openfire keeps no ghost sessions.
 */

void
ngx_xmpp_cm_pool_exit(ngx_xmpp_cm_pool_t *pool)
{
    int                  timeout;
    ngx_uint_t           i;
    ngx_xmpp_cm_sock_t  *sock;
    struct timeval       tv;

    if (pool->exiting) {
        return;
    }

    ngx_log_error(NGX_LOG_NOTICE, &pool->log, 0,
                  "xmpp_cm: worker exiting, closing %ui client sessions of "
                  "\"%V\"", pool->nsessions, &pool->name);

    ngx_xmpp_cm_session_end_all(pool, "system-shutdown",
                                "the connection manager is shutting down", 0);

    pool->exiting = 1;

    timeout = 2;
    tv.tv_sec = timeout;
    tv.tv_usec = 0;

    for (i = 0; i < pool->nsocks; i++) {
        sock = &pool->socks[i];

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
            (void) ngx_xmpp_cm_queue_send(sock->c, &sock->out);
        }

        (void) ngx_xmpp_cm_queue_send(sock->c, &sock->out);
        ngx_xmpp_cm_sock_close(sock, NGX_LOG_INFO, "worker exiting");
    }

    if (pool->features.data) {
        ngx_free(pool->features.data);
        ngx_str_null(&pool->features);
    }
}
