
/*
 * Handing a resumed stream to the worker that holds it (XEP-0198 across
 * nginx workers).  Stream ids name their worker (w<pid>-...); nginx
 * spreads connections over its workers, so a <resume/> usually arrives at
 * another worker than the owner.  Each worker listens on a local socket
 * of its own, an abstract unix socket named after its pid, from
 * init_process to exit (a graceful exit keeps it: an old worker still
 * holding streams after a reload can be reached).  The worker that
 * accepted the resumption connects to the owner's socket, sends a small
 * header (account, previd, h, the client's address, xml:lang), waits for
 * the owner's one-record answer, then relays bytes both ways: the
 * client's decrypted, inflated input to the owner, and the owner's output
 * back through the client's own output path (deflate, TLS).  The owner
 * attaches the relayed socket as a client connection (client.c's adopt).
 *
 * Only this nginx's own processes may connect: abstract sockets have no
 * file permissions, so the owner checks SO_PEERCRED (same uid, and a pid
 * that is one of the master's live children in ngx_processes[]), and the
 * connecting side checks that the listener is the pid the stream id
 * names (a squatter on the name gets nothing).  See docs/security.md.
 *
 * Wire format (lengths in network byte order):
 *   request: "XCM1" u32 rest, u32 h, u16 account, u16 previd, u16 addr,
 *            u16 lang, then the four strings (rest is their sum)
 *   answer:  "XCM1" u8 status (0 OK, 1 failed), u8 len, then failed:
 *            the <failed/> element of the owner's refusal, for the client
 *
 * A second kind, a BOSH request of a session the owner holds (the
 * accepting worker's HTTP request waits for the answer):
 *   request: "XCB1" u32 rest, u32 0, u16 addr, 6 bytes 0, then the
 *            client's address and the request's <body/> as read
 *   answer:  the response's <body/>, then the owner closes (none: no
 *            such session, the accepting worker answers item-not-found)
 * The BOSH module reads and answers it (ngx_xmpp_cm_handoff_bosh).
 */


#include "ngx_stream_xmpp_cm.h"


#define NGX_XMPP_CM_HANDOFF_MAGIC    "XCM1"
#define NGX_XMPP_CM_HANDOFF_BOSH     "XCB1"
#define NGX_XMPP_CM_HANDOFF_BOSH_MAX (16 * 1024 * 1024)
#define NGX_XMPP_CM_HANDOFF_FIXED    20
#define NGX_XMPP_CM_HANDOFF_MAX      4096    /* a whole request */
#define NGX_XMPP_CM_HANDOFF_TIMEOUT  5000    /* request, answer */
#define NGX_XMPP_CM_HANDOFF_ANSWER   6
#define NGX_XMPP_CM_HANDOFF_BACKLOG  511

/* bytes queued towards either side before reading the other stops */
#define NGX_XMPP_CM_RELAY_MARK       65536


struct ngx_xmpp_cm_relay_s {
    ngx_connection_t                   *c;        /* the local socket */
    ngx_pool_t                         *pool;     /* the relay's own */
    ngx_xmpp_cm_worker_t               *worker;
    const ngx_xmpp_cm_relay_handler_t  *handler;
    void                               *data;     /* NULL: client left */
    ngx_xmpp_cm_output_t                out;      /* towards the owner */
    ngx_xmpp_cm_handoff_hdr_t           hdr;
    ngx_pid_t                           owner;
    ngx_log_t                           log;
    size_t                              got;      /* of the answer */
    u_char                              answer[NGX_XMPP_CM_HANDOFF_ANSWER
                                        + NGX_XMPP_CM_HANDOFF_FAILED_MAX];
    unsigned                            relaying:1;
    unsigned                            closing:1;  /* flush, then close */
    unsigned                            blocked:1;  /* owner not read */
    unsigned                            full:1;     /* client not read */
};


/* a request being read by the owner */

typedef struct {
    ngx_xmpp_cm_worker_t               *worker;
    size_t                              got;
    size_t                              need;
    u_char                             *data;     /* buf, or a BOSH one */
    u_char                              buf[NGX_XMPP_CM_HANDOFF_MAX];
} ngx_xmpp_cm_handoff_in_t;


ngx_xmpp_cm_handoff_bosh_pt  ngx_xmpp_cm_handoff_bosh;


static socklen_t ngx_xmpp_cm_handoff_name(struct sockaddr_un *sun,
    ngx_pid_t pid);
static ngx_int_t ngx_xmpp_cm_handoff_peer(ngx_socket_t s, ngx_pid_t pid,
    ngx_log_t *log);
static void ngx_xmpp_cm_handoff_accept(ngx_event_t *ev);
static void ngx_xmpp_cm_handoff_request(ngx_event_t *rev);
static ngx_int_t ngx_xmpp_cm_handoff_parse(ngx_xmpp_cm_handoff_in_t *in,
    ngx_xmpp_cm_handoff_hdr_t *h);
static ngx_int_t ngx_xmpp_cm_handoff_answer(ngx_connection_t *c,
    ngx_xmpp_cm_handoff_in_t *in, ngx_xmpp_cm_handoff_hdr_t *h);
static void ngx_xmpp_cm_handoff_bosh_request(ngx_connection_t *c,
    ngx_xmpp_cm_handoff_in_t *in);
static void ngx_xmpp_cm_handoff_drop(ngx_connection_t *c,
    ngx_xmpp_cm_handoff_in_t *in);
static void ngx_xmpp_cm_handoff_close(ngx_connection_t *c);
static void ngx_xmpp_cm_handoff_nothing(ngx_event_t *ev);
static void ngx_xmpp_cm_relay_read(ngx_event_t *rev);
static void ngx_xmpp_cm_relay_write(ngx_event_t *wev);
static void ngx_xmpp_cm_relay_status(ngx_xmpp_cm_relay_t *r);
static void ngx_xmpp_cm_relay_fail(ngx_xmpp_cm_relay_t *r, char *why);
static void ngx_xmpp_cm_relay_end(ngx_xmpp_cm_relay_t *r);


/* "\0ngx_xmpp_cm/<pid>": abstract, gone with the last descriptor */

static socklen_t
ngx_xmpp_cm_handoff_name(struct sockaddr_un *sun, ngx_pid_t pid)
{
    u_char  *p;

    ngx_memzero(sun, sizeof(struct sockaddr_un));
    sun->sun_family = AF_UNIX;

    p = ngx_snprintf((u_char *) sun->sun_path + 1,
                     sizeof(sun->sun_path) - 1, "ngx_xmpp_cm/%P", pid);

    return offsetof(struct sockaddr_un, sun_path)
           + (p - (u_char *) sun->sun_path);
}


ngx_int_t
ngx_xmpp_cm_handoff_init(ngx_cycle_t *cycle, ngx_xmpp_cm_worker_t *wk,
    ngx_xmpp_cm_adopt_pt adopt, void *data)
{
    socklen_t           len;
    ngx_socket_t        s;
    ngx_connection_t   *c;
    struct sockaddr_un  sun;

    wk->adopt = adopt;
    wk->adopt_data = data;
    wk->handoff = NULL;

    s = socket(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC, 0);
    if (s == (ngx_socket_t) -1) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_socket_errno,
                      "xmpp_cm: handoff socket() failed");
        return NGX_OK;
    }

    len = ngx_xmpp_cm_handoff_name(&sun, ngx_pid);

    if (bind(s, (struct sockaddr *) &sun, len) == -1
        || listen(s, NGX_XMPP_CM_HANDOFF_BACKLOG) == -1)
    {
        /* not fatal: only resumptions of this worker's streams fail */
        ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_socket_errno,
                      "xmpp_cm: handoff socket \"@%s\" unavailable, "
                      "streams of this worker resume on it only",
                      sun.sun_path + 1);
        (void) ngx_close_socket(s);
        return NGX_OK;
    }

    c = ngx_get_connection(s, cycle->log);
    if (c == NULL) {
        (void) ngx_close_socket(s);
        return NGX_ERROR;
    }

    c->data = wk;
    c->read->log = cycle->log;
    c->write->log = cycle->log;
    c->read->handler = ngx_xmpp_cm_handoff_accept;
    c->write->handler = ngx_xmpp_cm_handoff_nothing;

    /* level-triggered, as nginx adds its listening sockets */

    if (ngx_add_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
        ngx_close_connection(c);
        return NGX_ERROR;
    }

    wk->handoff = c;

    return NGX_OK;
}


void
ngx_xmpp_cm_handoff_exit(ngx_xmpp_cm_worker_t *wk)
{
    if (wk->handoff) {
        ngx_close_connection(wk->handoff);
        wk->handoff = NULL;
    }
}


/*
 * pid 0 (the owner's check): the peer is one of this nginx's processes,
 * a child of the master still connected to it by its channel; otherwise
 * the listener must be pid.  Both: the same uid.
 */

static ngx_int_t
ngx_xmpp_cm_handoff_peer(ngx_socket_t s, ngx_pid_t pid, ngx_log_t *log)
{
    ngx_int_t     i;
    socklen_t     len;
    struct ucred  cr;

    len = sizeof(struct ucred);

    if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cr, &len) == -1) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_socket_errno,
                      "xmpp_cm: getsockopt(SO_PEERCRED) failed");
        return NGX_ERROR;
    }

    if (cr.uid != geteuid()) {
        goto refused;
    }

    if (pid) {
        if (cr.pid == pid) {
            return NGX_OK;
        }

        goto refused;
    }

    /*
     * Every slot: a worker learns of the processes forked after it by
     * the master's channel (NGX_CMD_OPEN_CHANNEL), which fills their
     * slots but leaves its ngx_last_process as it was at its fork.
     */

    for (i = 0; i < NGX_MAX_PROCESSES; i++) {
        if (ngx_processes[i].pid == cr.pid && cr.pid > 0
            && ngx_processes[i].channel[0] != -1 && i != ngx_process_slot)
        {
            return NGX_OK;
        }
    }

refused:

    ngx_log_error(NGX_LOG_WARN, log, 0,
                  "xmpp_cm: handoff socket: refused peer pid %P uid %d, "
                  "not %s", (ngx_pid_t) cr.pid, (int) cr.uid,
                  pid ? "the owner worker" : "a worker of this nginx");

    return NGX_DECLINED;
}


static void
ngx_xmpp_cm_handoff_accept(ngx_event_t *ev)
{
    ngx_log_t                 *log;
    socklen_t                  len;
    ngx_uint_t                 i;
    ngx_err_t                  err;
    ngx_pool_t                *pool;
    ngx_socket_t               s;
    struct sockaddr_un         sun, *peer, *local;
    ngx_connection_t          *lc, *c;
    ngx_xmpp_cm_worker_t      *wk;
    ngx_xmpp_cm_handoff_in_t  *in;

    lc = ev->data;
    wk = lc->data;

    for (i = 0; i < 64; i++) {

        len = sizeof(struct sockaddr_un);
        s = accept4(lc->fd, (struct sockaddr *) &sun, &len,
                    SOCK_NONBLOCK|SOCK_CLOEXEC);

        if (s == (ngx_socket_t) -1) {
            err = ngx_socket_errno;

            if (err == NGX_EAGAIN) {
                return;
            }

            if (err == NGX_EINTR || err == NGX_ECONNABORTED) {
                continue;
            }

            ngx_log_error(NGX_LOG_ALERT, ev->log, err,
                          "xmpp_cm: handoff accept4() failed");
            return;
        }

        if (ngx_xmpp_cm_handoff_peer(s, 0, ev->log) != NGX_OK) {
            (void) ngx_close_socket(s);
            continue;
        }

        /*
         * The request's buffer is freed once it is answered; the pool
         * becomes the client connection's (its session, client, framer).
         */

        pool = ngx_create_pool(1024, ev->log);
        if (pool == NULL) {
            (void) ngx_close_socket(s);
            return;
        }

        log = ngx_palloc(pool, sizeof(ngx_log_t));
        in = ngx_alloc(sizeof(ngx_xmpp_cm_handoff_in_t), ev->log);

        /* the session variables ($remote_port, $server_addr) read them */
        peer = ngx_pcalloc(pool, sizeof(struct sockaddr_un));
        local = ngx_pcalloc(pool, sizeof(struct sockaddr_un));

        if (log == NULL || in == NULL || peer == NULL || local == NULL) {
            if (in) {
                ngx_free(in);
            }

            ngx_destroy_pool(pool);
            (void) ngx_close_socket(s);
            return;
        }

        *log = *ev->log;

        c = ngx_get_connection(s, log);
        if (c == NULL) {
            ngx_free(in);
            ngx_destroy_pool(pool);
            (void) ngx_close_socket(s);
            return;
        }

        ngx_memcpy(peer, &sun, len);
        local->sun_family = AF_UNIX;

        c->pool = pool;
        c->sockaddr = (struct sockaddr *) peer;
        c->socklen = len;
        c->local_sockaddr = (struct sockaddr *) local;
        c->local_socklen = sizeof(sa_family_t);
        c->log = log;
        c->read->log = log;
        c->write->log = log;
        c->recv = ngx_recv;
        c->send = ngx_send;
        c->recv_chain = ngx_recv_chain;
        c->send_chain = ngx_send_chain;
        c->number = ngx_atomic_fetch_add(ngx_connection_counter, 1);
        log->connection = c->number;
        log->action = "reading a handoff request";

        in->worker = wk;
        in->got = 0;
        in->need = NGX_XMPP_CM_HANDOFF_FIXED;
        in->data = in->buf;
        c->data = in;

        c->read->handler = ngx_xmpp_cm_handoff_request;
        c->write->handler = ngx_xmpp_cm_handoff_nothing;

        ngx_add_timer(c->read, NGX_XMPP_CM_HANDOFF_TIMEOUT);

        /* the request was sent before connect() returned, most likely */
        c->read->ready = 1;
        ngx_xmpp_cm_handoff_request(c->read);
    }
}


/* the owner reads a request, exactly its length, and answers it */

static void
ngx_xmpp_cm_handoff_request(ngx_event_t *rev)
{
    ssize_t                     n;
    uint32_t                    rest;
    ngx_int_t                   rc;
    ngx_connection_t           *c;
    ngx_xmpp_cm_handoff_in_t   *in;
    ngx_xmpp_cm_handoff_hdr_t   h;

    c = rev->data;
    in = c->data;

    if (rev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "xmpp_cm: handoff request not complete in time");
        ngx_xmpp_cm_handoff_drop(c, in);
        return;
    }

    while (in->got < in->need) {

        n = c->recv(c, in->data + in->got, in->need - in->got);

        if (n == NGX_AGAIN) {
            if (ngx_handle_read_event(rev, 0) != NGX_OK) {
                ngx_xmpp_cm_handoff_drop(c, in);
            }

            return;
        }

        if (n == 0 || n == NGX_ERROR) {
            ngx_xmpp_cm_handoff_drop(c, in);
            return;
        }

        in->got += n;

        if (in->got == NGX_XMPP_CM_HANDOFF_FIXED
            && in->need == NGX_XMPP_CM_HANDOFF_FIXED)
        {
            ngx_memcpy(&rest, in->buf + 4, 4);
            rest = ntohl(rest);

            if (ngx_memcmp(in->buf, NGX_XMPP_CM_HANDOFF_BOSH, 4) == 0
                && ngx_xmpp_cm_handoff_bosh
                && rest <= NGX_XMPP_CM_HANDOFF_BOSH_MAX)
            {
                /* a BOSH body may be larger than a resumption's strings */
                in->data = ngx_pnalloc(c->pool,
                                       NGX_XMPP_CM_HANDOFF_FIXED + rest);
                if (in->data == NULL) {
                    ngx_xmpp_cm_handoff_drop(c, in);
                    return;
                }

                ngx_memcpy(in->data, in->buf, NGX_XMPP_CM_HANDOFF_FIXED);
                in->need += rest;
                continue;
            }

            if (ngx_memcmp(in->buf, NGX_XMPP_CM_HANDOFF_MAGIC, 4) != 0) {
                ngx_log_error(NGX_LOG_WARN, c->log, 0,
                              "xmpp_cm: bad handoff request");
                ngx_xmpp_cm_handoff_drop(c, in);
                return;
            }

            if (rest > NGX_XMPP_CM_HANDOFF_MAX - NGX_XMPP_CM_HANDOFF_FIXED) {
                ngx_log_error(NGX_LOG_WARN, c->log, 0,
                              "xmpp_cm: handoff request too long");
                ngx_xmpp_cm_handoff_drop(c, in);
                return;
            }

            in->need += rest;
        }
    }

    if (in->data != in->buf) {
        ngx_del_timer(rev);
        ngx_xmpp_cm_handoff_bosh_request(c, in);
        return;
    }

    if (ngx_xmpp_cm_handoff_parse(in, &h) != NGX_OK) {
        ngx_log_error(NGX_LOG_WARN, c->log, 0,
                      "xmpp_cm: bad handoff request");
        ngx_xmpp_cm_handoff_drop(c, in);
        return;
    }

    ngx_del_timer(rev);

    rc = ngx_xmpp_cm_handoff_answer(c, in, &h);

    /* the strings of the request are copied where they are kept */
    ngx_free(in);

    if (rc != NGX_OK) {
        ngx_xmpp_cm_handoff_close(c);
    }
}


static ngx_int_t
ngx_xmpp_cm_handoff_parse(ngx_xmpp_cm_handoff_in_t *in,
    ngx_xmpp_cm_handoff_hdr_t *h)
{
    u_char      *p;
    uint16_t     l;
    uint32_t     v;
    ngx_str_t   *f[4];
    ngx_uint_t   i;

    f[0] = &h->account;
    f[1] = &h->previd;
    f[2] = &h->addr;
    f[3] = &h->lang;

    ngx_memcpy(&v, in->buf + 8, 4);
    h->h = ntohl(v);

    p = in->buf + NGX_XMPP_CM_HANDOFF_FIXED;

    for (i = 0; i < 4; i++) {
        ngx_memcpy(&l, in->buf + 12 + 2 * i, 2);
        f[i]->len = ntohs(l);
        f[i]->data = p;
        p += f[i]->len;
    }

    return (size_t) (p - in->buf) == in->need ? NGX_OK : NGX_ERROR;
}


/*
 * The stream is looked up and taken over by the client side (adopt),
 * which answers through ngx_xmpp_cm_handoff_reply() before anything it
 * queued for the client is written (client.c writes only from a posted
 * write event).
 */

static ngx_int_t
ngx_xmpp_cm_handoff_answer(ngx_connection_t *c, ngx_xmpp_cm_handoff_in_t *in,
    ngx_xmpp_cm_handoff_hdr_t *h)
{
    ngx_int_t              rc;
    ngx_xmpp_cm_worker_t  *wk;

    wk = in->worker;

    ngx_log_error(NGX_LOG_INFO, c->log, 0,
                  "xmpp_cm: handoff of stream %V for client %V",
                  &h->previd, &h->addr);

    rc = wk->adopt ? wk->adopt(c, h, wk->adopt_data) : NGX_DECLINED;

    if (rc == NGX_OK || rc == NGX_DONE) {
        /* the connection is the client's now, or closed */
        return NGX_OK;
    }

    if (rc == NGX_DECLINED) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "xmpp_cm: handoff of unknown stream %V refused",
                      &h->previd);

        /* the client side writes its own <item-not-found/> */
        (void) ngx_xmpp_cm_handoff_reply(c, NGX_XMPP_CM_HANDOFF_FAILED,
                                         NULL, 0);
    }

    return NGX_ERROR;
}


/*
 * The answer record, written at once: the socket is fresh, its buffer
 * empty, and the record at most 261 bytes.  failed: the <failed/> element
 * the owner's resume wrote, for the client as it is (none: the accepting
 * worker writes item-not-found).
 */

ngx_int_t
ngx_xmpp_cm_handoff_reply(ngx_connection_t *c, ngx_uint_t status,
    u_char *failed, size_t len)
{
    u_char   answer[NGX_XMPP_CM_HANDOFF_ANSWER
                    + NGX_XMPP_CM_HANDOFF_FAILED_MAX];
    ssize_t  n;

    if (len > NGX_XMPP_CM_HANDOFF_FAILED_MAX) {
        len = 0;
    }

    ngx_memcpy(answer, NGX_XMPP_CM_HANDOFF_MAGIC, 4);
    answer[4] = (u_char) status;
    answer[5] = (u_char) len;

    if (len) {
        ngx_memcpy(answer + NGX_XMPP_CM_HANDOFF_ANSWER, failed, len);
    }

    len += NGX_XMPP_CM_HANDOFF_ANSWER;

    n = c->send(c, answer, len);

    return n == (ssize_t) len ? NGX_OK : NGX_ERROR;
}


/* the BOSH module takes the connection: it answers, then closes it */

static void
ngx_xmpp_cm_handoff_bosh_request(ngx_connection_t *c,
    ngx_xmpp_cm_handoff_in_t *in)
{
    u_char     *p;
    uint16_t    l;
    ngx_str_t   addr, body;

    p = in->data;
    ngx_memcpy(&l, p + 12, 2);
    addr.len = ntohs(l);
    addr.data = p + NGX_XMPP_CM_HANDOFF_FIXED;

    if (NGX_XMPP_CM_HANDOFF_FIXED + addr.len > in->need) {
        ngx_log_error(NGX_LOG_WARN, c->log, 0,
                      "xmpp_cm: bad handoff request");
        ngx_xmpp_cm_handoff_drop(c, in);
        return;
    }

    body.data = addr.data + addr.len;
    body.len = in->need - NGX_XMPP_CM_HANDOFF_FIXED - addr.len;

    ngx_free(in);

    c->log->action = "answering a relayed BOSH request";

    /* the strings are in c->pool, the module's from here */
    ngx_xmpp_cm_handoff_bosh(c, &addr, &body);
}


/*
 * The accepting worker's side of a BOSH request: a connection to the
 * owner's socket, the request written, the rest the caller's.  NULL: the
 * owner is not there (gone after a reload), or is not the pid.
 */

ngx_connection_t *
ngx_xmpp_cm_handoff_bosh_connect(ngx_pid_t owner, ngx_str_t *addr,
    ngx_str_t *body, ngx_pool_t *pool, ngx_log_t *log)
{
    u_char              *p;
    size_t               len;
    uint16_t             l;
    uint32_t             v;
    ngx_buf_t           *b;
    ngx_socket_t         s;
    ngx_connection_t    *c;
    struct sockaddr_un   sun;

    if (addr->len > 1024
        || addr->len + body->len > NGX_XMPP_CM_HANDOFF_BOSH_MAX)
    {
        return NULL;
    }

    len = NGX_XMPP_CM_HANDOFF_FIXED + addr->len + body->len;

    b = ngx_create_temp_buf(pool, len);
    if (b == NULL) {
        return NULL;
    }

    p = ngx_cpymem(b->last, NGX_XMPP_CM_HANDOFF_BOSH, 4);
    v = htonl(len - NGX_XMPP_CM_HANDOFF_FIXED);
    p = ngx_cpymem(p, &v, 4);
    p = ngx_cpymem(p, "\0\0\0\0", 4);
    l = htons((uint16_t) addr->len);
    p = ngx_cpymem(p, &l, 2);
    p = ngx_cpymem(p, "\0\0\0\0\0\0", 6);
    p = ngx_cpymem(p, addr->data, addr->len);
    b->last = ngx_cpymem(p, body->data, body->len);

    s = socket(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC, 0);
    if (s == (ngx_socket_t) -1) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_socket_errno,
                      "xmpp_cm: handoff socket() failed");
        return NULL;
    }

    /* a unix socket connects at once, or is refused at once */

    if (connect(s, (struct sockaddr *) &sun,
                ngx_xmpp_cm_handoff_name(&sun, owner))
        == -1)
    {
        ngx_log_error(NGX_LOG_INFO, log, ngx_socket_errno,
                      "xmpp_cm: worker %P of the BOSH session is not "
                      "reachable", owner);
        (void) ngx_close_socket(s);
        return NULL;
    }

    if (ngx_xmpp_cm_handoff_peer(s, owner, log) != NGX_OK) {
        (void) ngx_close_socket(s);
        return NULL;
    }

    c = ngx_get_connection(s, log);
    if (c == NULL) {
        (void) ngx_close_socket(s);
        return NULL;
    }

    c->pool = pool;
    c->read->log = log;
    c->write->log = log;
    c->recv = ngx_recv;
    c->send = ngx_send;
    c->recv_chain = ngx_recv_chain;
    c->send_chain = ngx_send_chain;
    c->write->ready = 1;
    c->buffer = b;

    return c;
}


static void
ngx_xmpp_cm_handoff_drop(ngx_connection_t *c, ngx_xmpp_cm_handoff_in_t *in)
{
    ngx_free(in);
    ngx_xmpp_cm_handoff_close(c);
}


static void
ngx_xmpp_cm_handoff_close(ngx_connection_t *c)
{
    ngx_pool_t  *pool;

    pool = c->pool;
    ngx_close_connection(c);
    ngx_destroy_pool(pool);
}


static void
ngx_xmpp_cm_handoff_nothing(ngx_event_t *ev)
{
}


/* the accepting side: a relay for one client connection */

ngx_xmpp_cm_relay_t *
ngx_xmpp_cm_relay_create(ngx_connection_t *client, ngx_xmpp_cm_worker_t *wk,
    const ngx_xmpp_cm_relay_handler_t *handler, void *data)
{
    ngx_pool_t           *pool;
    ngx_xmpp_cm_relay_t  *r;

    pool = ngx_create_pool(1024, client->log);
    if (pool == NULL) {
        return NULL;
    }

    r = ngx_pcalloc(pool, sizeof(ngx_xmpp_cm_relay_t));
    if (r == NULL) {
        ngx_destroy_pool(pool);
        return NULL;
    }

    r->pool = pool;
    r->worker = wk;
    r->handler = handler;
    r->data = data;
    r->log = *client->log;
    r->log.action = "relaying a resumed stream";
    ngx_xmpp_cm_output_init(&r->out, wk);

    return r;
}


ngx_xmpp_cm_handoff_hdr_t *
ngx_xmpp_cm_relay_hdr(ngx_xmpp_cm_relay_t *r)
{
    return &r->hdr;
}


/*
 * Connects to the owner and queues the request.  NGX_DECLINED: the owner
 * is gone (its socket refuses, or is not the owner's): <failed/> now.
 * Nothing is called back from here; the answer comes with a read event.
 */

ngx_int_t
ngx_xmpp_cm_relay_start(ngx_xmpp_cm_relay_t *r, ngx_pid_t owner)
{
    u_char                     *p;
    uint16_t                    l;
    uint32_t                    v;
    ngx_buf_t                  *b;
    ngx_err_t                   err;
    socklen_t                   len;
    ngx_uint_t                  i;
    ngx_socket_t                s;
    ngx_connection_t           *c;
    struct sockaddr_un          sun;
    ngx_xmpp_cm_handoff_hdr_t  *h;
    ngx_str_t                  *f[4];

    h = &r->hdr;
    f[0] = &h->account;
    f[1] = &h->previd;
    f[2] = &h->addr;
    f[3] = &h->lang;

    len = NGX_XMPP_CM_HANDOFF_FIXED;

    for (i = 0; i < 4; i++) {
        if (f[i]->len > 1024) {
            return NGX_DECLINED;
        }

        len += f[i]->len;
    }

    r->owner = owner;

    s = socket(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC, 0);
    if (s == (ngx_socket_t) -1) {
        ngx_log_error(NGX_LOG_ALERT, &r->log, ngx_socket_errno,
                      "xmpp_cm: handoff socket() failed");
        return NGX_DECLINED;
    }

    /* a unix socket connects at once, or is refused at once */

    if (connect(s, (struct sockaddr *) &sun,
                ngx_xmpp_cm_handoff_name(&sun, owner))
        == -1)
    {
        err = ngx_socket_errno;
        ngx_log_error(NGX_LOG_INFO, &r->log, err,
                      "xmpp_cm: worker %P of stream %V is not reachable",
                      owner, &h->previd);
        (void) ngx_close_socket(s);
        return NGX_DECLINED;
    }

    if (ngx_xmpp_cm_handoff_peer(s, owner, &r->log) != NGX_OK) {
        (void) ngx_close_socket(s);
        return NGX_DECLINED;
    }

    c = ngx_get_connection(s, &r->log);
    if (c == NULL) {
        (void) ngx_close_socket(s);
        return NGX_DECLINED;
    }

    c->pool = r->pool;
    c->data = r;
    c->read->log = &r->log;
    c->write->log = &r->log;
    c->recv = ngx_recv;
    c->send = ngx_send;
    c->recv_chain = ngx_recv_chain;
    c->send_chain = ngx_send_chain;
    c->read->handler = ngx_xmpp_cm_relay_read;
    c->write->handler = ngx_xmpp_cm_relay_write;
    c->write->ready = 1;
    r->c = c;

    b = ngx_xmpp_cm_output_buf(&r->out, len, 1);
    if (b == NULL) {
        ngx_xmpp_cm_relay_end(r);
        return NGX_ERROR;
    }

    p = ngx_cpymem(b->last, NGX_XMPP_CM_HANDOFF_MAGIC, 4);
    v = htonl(len - NGX_XMPP_CM_HANDOFF_FIXED);
    p = ngx_cpymem(p, &v, 4);
    v = htonl(h->h);
    p = ngx_cpymem(p, &v, 4);

    for (i = 0; i < 4; i++) {
        l = htons((uint16_t) f[i]->len);
        p = ngx_cpymem(p, &l, 2);
    }

    for (i = 0; i < 4; i++) {
        p = ngx_cpymem(p, f[i]->data, f[i]->len);
    }

    b->last = p;

    /* the caller's strings are gone after this call; previd is logged */

    p = ngx_pnalloc(r->pool, h->previd.len);
    if (p) {
        ngx_memcpy(p, h->previd.data, h->previd.len);
    }

    h->previd.data = p;
    h->previd.len = p ? h->previd.len : 0;
    ngx_str_null(&h->account);
    ngx_str_null(&h->addr);
    ngx_str_null(&h->lang);

    ngx_add_timer(c->read, NGX_XMPP_CM_HANDOFF_TIMEOUT);

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_xmpp_cm_relay_end(r);
        return NGX_ERROR;
    }

    ngx_post_event(c->write, &ngx_posted_events);

    return NGX_OK;
}


/* client -> owner; NGX_AGAIN: queued, but over the mark */

ngx_int_t
ngx_xmpp_cm_relay_send(ngx_xmpp_cm_relay_t *r, u_char *p, size_t n)
{
    if (r->c == NULL || r->closing) {
        return NGX_ERROR;
    }

    if (ngx_xmpp_cm_output_append(&r->out, p, n) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_post_event(r->c->write, &ngx_posted_events);

    if (r->out.size >= NGX_XMPP_CM_RELAY_MARK) {
        ngx_log_debug1(NGX_LOG_DEBUG_STREAM, &r->log, 0,
                       "xmpp_cm: relay: %uz bytes for the owner, "
                       "the client is not read", r->out.size);
        r->full = 1;
        return NGX_AGAIN;
    }

    return NGX_OK;
}


ngx_uint_t
ngx_xmpp_cm_relay_full(ngx_xmpp_cm_relay_t *r)
{
    if (r->out.size >= NGX_XMPP_CM_RELAY_MARK) {
        r->full = 1;
        return 1;
    }

    return 0;
}


/* the client's output drained: the owner is read again */

void
ngx_xmpp_cm_relay_drained(ngx_xmpp_cm_relay_t *r)
{
    if (r->blocked && r->c) {
        r->blocked = 0;
        ngx_post_event(r->c->read, &ngx_posted_events);
    }
}


/*
 * The client connection lets go (its end, or its cleanup): what it sent
 * is still written to the owner, which then reads the end of the socket
 * as the client's, then the relay closes; the handoff timeout bounds it.
 */

void
ngx_xmpp_cm_relay_close(ngx_xmpp_cm_relay_t *r)
{
    r->data = NULL;

    /* the log's handler names the client's session, which goes now */
    r->log.handler = NULL;
    r->log.data = NULL;

    if (r->c == NULL || !r->relaying || r->out.size == 0) {
        ngx_xmpp_cm_relay_end(r);
        return;
    }

    r->closing = 1;

    if (r->c->read->timer_set) {
        ngx_del_timer(r->c->read);
    }

    ngx_add_timer(r->c->read, NGX_XMPP_CM_HANDOFF_TIMEOUT);
    ngx_post_event(r->c->write, &ngx_posted_events);
}


static void
ngx_xmpp_cm_relay_write(ngx_event_t *wev)
{
    ngx_int_t             rc;
    ngx_connection_t     *c;
    ngx_xmpp_cm_relay_t  *r;

    c = wev->data;
    r = c->data;

    rc = ngx_xmpp_cm_output_send(c, &r->out);

    if (rc == NGX_ERROR) {
        ngx_xmpp_cm_relay_fail(r, "write failed");
        return;
    }

    if (r->closing) {
        if (rc == NGX_OK) {
            ngx_xmpp_cm_relay_end(r);
            return;
        }

    } else if (r->full && r->out.size < NGX_XMPP_CM_RELAY_MARK / 2) {
        r->full = 0;

        if (r->data) {
            r->handler->unblock(r->data);
        }
    }

    if (ngx_handle_write_event(wev, 0) != NGX_OK) {
        ngx_xmpp_cm_relay_fail(r, "write event failed");
    }
}


static void
ngx_xmpp_cm_relay_read(ngx_event_t *rev)
{
    ssize_t               n;
    ngx_int_t             rc;
    ngx_connection_t     *c;
    ngx_xmpp_cm_relay_t  *r;

    c = rev->data;
    r = c->data;

    if (rev->timedout) {
        ngx_xmpp_cm_relay_fail(r, r->closing ? "flush timed out"
                                             : "no answer in time");
        return;
    }

    while (!r->relaying) {
        n = c->recv(c, r->answer + r->got,
                    r->got < NGX_XMPP_CM_HANDOFF_ANSWER
                    ? NGX_XMPP_CM_HANDOFF_ANSWER - r->got
                    : NGX_XMPP_CM_HANDOFF_ANSWER + r->answer[5] - r->got);

        if (n == NGX_AGAIN) {
            goto again;
        }

        if (n == 0 || n == NGX_ERROR) {
            ngx_xmpp_cm_relay_fail(r, "closed before its answer");
            return;
        }

        r->got += n;

        if (r->got >= NGX_XMPP_CM_HANDOFF_ANSWER
            && r->got == (size_t) NGX_XMPP_CM_HANDOFF_ANSWER + r->answer[5])
        {
            ngx_xmpp_cm_relay_status(r);
            return;
        }
    }

    while (!r->blocked) {

        n = c->recv(c, r->worker->client_buf, NGX_XMPP_CM_CLIENT_READ);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {
            ngx_log_debug0(NGX_LOG_DEBUG_STREAM, c->log, 0,
                           "xmpp_cm: the owner worker closed the relay");

            if (r->data) {
                r->handler->closed(r->data);
                r->data = NULL;
            }

            ngx_xmpp_cm_relay_end(r);
            return;
        }

        if (r->data == NULL) {
            /* the client left; its end is being flushed: drop */
            continue;
        }

        rc = r->handler->out(r->data, r->worker->client_buf, n);

        if (rc == NGX_AGAIN) {
            /* the client's output is over the mark: drained() resumes */
            ngx_log_debug0(NGX_LOG_DEBUG_STREAM, c->log, 0,
                           "xmpp_cm: relay: client output over the mark, "
                           "the owner is not read");
            r->blocked = 1;

        } else if (rc != NGX_OK) {
            ngx_xmpp_cm_relay_fail(r, "client output failed");
            return;
        }
    }

again:

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_xmpp_cm_relay_fail(r, "read event failed");
    }
}


static void
ngx_xmpp_cm_relay_status(ngx_xmpp_cm_relay_t *r)
{
    ngx_str_t          failed;
    ngx_connection_t  *c;

    c = r->c;

    if (ngx_memcmp(r->answer, NGX_XMPP_CM_HANDOFF_MAGIC, 4) != 0
        || r->answer[4] > NGX_XMPP_CM_HANDOFF_FAILED)
    {
        ngx_xmpp_cm_relay_fail(r, "bad answer");
        return;
    }

    if (r->answer[4] == NGX_XMPP_CM_HANDOFF_FAILED) {
        failed.len = r->answer[5];
        failed.data = r->answer + NGX_XMPP_CM_HANDOFF_ANSWER;

        ngx_log_error(NGX_LOG_INFO, &r->log, 0,
                      "xmpp_cm: worker %P refused the resumption of %V",
                      r->owner, &r->hdr.previd);

        if (r->data) {
            r->handler->status(r->data, NGX_XMPP_CM_HANDOFF_FAILED,
                               failed.len ? &failed : NULL);
            r->data = NULL;
        }

        ngx_xmpp_cm_relay_end(r);
        return;
    }

    r->relaying = 1;
    ngx_del_timer(c->read);

    ngx_log_error(NGX_LOG_INFO, &r->log, 0,
                  "xmpp_cm: stream %V relayed to worker %P",
                  &r->hdr.previd, r->owner);

    if (r->data) {
        r->handler->status(r->data, NGX_XMPP_CM_HANDOFF_OK, NULL);
    }

    ngx_post_event(c->read, &ngx_posted_events);
}


/* the relay failed: before the answer the client gets <failed/> */

static void
ngx_xmpp_cm_relay_fail(ngx_xmpp_cm_relay_t *r, char *why)
{
    ngx_log_error(NGX_LOG_INFO, &r->log, 0,
                  "xmpp_cm: relay to worker %P for stream %V: %s",
                  r->owner, &r->hdr.previd, why);

    if (r->data) {
        if (r->relaying) {
            r->handler->closed(r->data);

        } else {
            r->handler->status(r->data, NGX_XMPP_CM_HANDOFF_FAILED, NULL);
        }

        r->data = NULL;
    }

    ngx_xmpp_cm_relay_end(r);
}


static void
ngx_xmpp_cm_relay_end(ngx_xmpp_cm_relay_t *r)
{
    if (r->c) {
        ngx_close_connection(r->c);
        r->c = NULL;
    }

    ngx_xmpp_cm_output_free(&r->out);
    ngx_destroy_pool(r->pool);
}
