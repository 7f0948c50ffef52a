
/*
 * The client stream: header -> features -> SASL (passed through to
 * Openfire) -> restart -> bound stream, every stanza wrapped in a route.
 *
 * Reads and writes go through c->recv and c->send_chain only, so the same
 * code runs over TLS (nginx's listen ... ssl, and STARTTLS later).  Reads
 * land in one buffer shared by the worker (its context's client_buf); a
 * session keeps only the bytes of an unfinished stanza and its queued
 * output.
 */


#include "ngx_stream_xmpp_cm.h"


#define NGX_XMPP_CM_LINGER         5000

/* a relayed client's queued output over which the owner is not read */
#define NGX_XMPP_CM_CLIENT_RELAY_MARK  65536
/* XEP-0198: when the CM asks the client for an ack (<r/>) */
#define NGX_XMPP_CM_SM_R_COUNT     10      /* stanzas since the last <r/> */
#define NGX_XMPP_CM_SM_R_BYTES     16384   /* bytes since the last <r/> */
#define NGX_XMPP_CM_SM_R_DELAY     1000    /* ms after a write */

/* the SASL mechanisms whose messages name the account (XEP-0198) */
#define NGX_XMPP_CM_MECH_OTHER     0
#define NGX_XMPP_CM_MECH_PLAIN     1
#define NGX_XMPP_CM_MECH_SCRAM     2
#define NGX_XMPP_CM_MECH_DIGEST    3
#define NGX_XMPP_NS_IQAUTH         "jabber:iq:auth"


/*
 * The phases of a client connection, as ngx_mail_* has them: each
 * installs its own read handler (ngx_xmpp_cm_client_phase()), and the two
 * that read the stream their own element policy, decided once per stanza
 * at its start tag.  What remains of sub-states is in flags: SASL under
 * way, a header answered, compression switching within one read, the
 * write side shut while closing.
 */

#define NGX_XMPP_CM_PHASE_AUTH      0   /* header, features, SASL, iq:auth */
#define NGX_XMPP_CM_PHASE_STREAM    1   /* authenticated */
#define NGX_XMPP_CM_PHASE_STARTTLS  2   /* <proceed/> drains: no reads */
#define NGX_XMPP_CM_PHASE_HALF      3   /* client EOF: IQ replies awaited */
#define NGX_XMPP_CM_PHASE_CLOSING   4   /* end queued: input dropped, linger */
#define NGX_XMPP_CM_PHASE_HANDOFF   5   /* <resume/> sent to its worker */
#define NGX_XMPP_CM_PHASE_RELAY     6   /* bytes relayed to that worker */

#define NGX_XMPP_NS_SM              "urn:xmpp:sm:3"


/* XEP-0078: the client's jabber:iq:auth set waiting for Openfire */

typedef struct {
    ngx_str_t                        id;
    ngx_str_t                        jid;     /* username@domain/resource */
} ngx_xmpp_cm_iq_auth_t;


/*
 * XEP-0352: what is held for an inactive client, in arrival order.  Each
 * held stanza is one malloc'd block (its bytes, then for a presence the
 * sender it is the latest of); the list is allocated with the first held
 * stanza and freed when it is written, so a client that holds nothing
 * holds no memory for it.
 */

typedef struct ngx_xmpp_cm_held_s  ngx_xmpp_cm_held_t;

struct ngx_xmpp_cm_held_s {
    ngx_xmpp_cm_held_t              *next;
    size_t                           len;
    size_t                           from_len;    /* presence: its key */
    unsigned                         presence:1;
};

typedef struct {
    ngx_xmpp_cm_held_t              *head;
    ngx_xmpp_cm_held_t             **last;
    size_t                           size;        /* bytes held */
} ngx_xmpp_cm_csi_t;



struct ngx_xmpp_cm_client_s {
    ngx_xmpp_cm_conn_t               conn;        /* first: the stream's view */
    ngx_stream_session_t            *s;           /* NULL: c->data is a web
                                                     transport */
    ngx_connection_t                *c;
    ngx_stream_xmpp_cm_srv_conf_t   *conf;
    ngx_xmpp_cm_upstream_t          *up;
    ngx_xmpp_cm_stream_t            *stream;
    ngx_xmpp_cm_xml_t               *xml;
    ngx_xmpp_cm_output_t             out;
    ngx_xmpp_cm_zlib_t              *zlib;
    ngx_xmpp_cm_relay_t             *relay;       /* to another worker */
    XML_Index                        zstart;
    ngx_str_t                        domain;
    ngx_str_t                        streamid;
    ngx_str_t                        jid;
    ngx_str_t                        account;     /* SASL's, for resume */

    /* one phase at a time: iq_auth before authentication, csi after it */
    union {
        ngx_xmpp_cm_iq_auth_t       *iq_auth;     /* heap, while pending */
        ngx_xmpp_cm_csi_t           *csi;         /* heap, while holding */
    } heap;

    ngx_msec_t                       partial_since;
    XML_Index                        partial_base;
    ngx_msec_t                       auth_deadline;
    ngx_msec_t                       rate_last;   /* xmpp_cm_limit_rate */
    off_t                            rate_credit; /* bytes * 1000 */
    ngx_queue_t                      link;
    u_char                           lang[36];

    unsigned                         phase:3;     /* NGX_XMPP_CM_PHASE_* */
    unsigned                         kind:4;      /* the stanza's, at start */
    unsigned                         authenticated:1;
    unsigned                         sasl_started:1;
    unsigned                         sasl_pending:1;  /* until the result */
    unsigned                         zlib_pending:1;  /* within one read */
    unsigned                         header_sent:1;
    unsigned                         lingering:1;     /* closing: FIN sent */
    unsigned                         mech_refused:1;
    unsigned                         iq_request:1;
    unsigned                         rate_logged:1;
    unsigned                         inactive:1;  /* XEP-0352 */
    unsigned                         dropped:1;   /* no clean end: resumable */
    unsigned                         sasl_mech:2; /* NGX_XMPP_CM_MECH_* */

    ngx_uint_t                       iq_pending;   /* IQ get/set unanswered */
};


/* a client with no stream session: its transport's */
#define ngx_xmpp_cm_client_transport(cl)  ngx_xmpp_cm_transport_of((cl)->c)


ngx_xmpp_cm_transport_t  *(*ngx_xmpp_cm_transport_of)(ngx_connection_t *c);


static void ngx_xmpp_cm_client_phase(ngx_xmpp_cm_client_t *cl,
    ngx_uint_t phase);
static void ngx_xmpp_cm_client_auth_handler(ngx_event_t *rev);
static void ngx_xmpp_cm_client_stream_handler(ngx_event_t *rev);
static void ngx_xmpp_cm_client_block_read(ngx_event_t *rev);
static void ngx_xmpp_cm_client_half_closed_handler(ngx_event_t *rev);
static void ngx_xmpp_cm_client_closing_handler(ngx_event_t *rev);
static void ngx_xmpp_cm_client_relay_handler(ngx_event_t *rev);
static ngx_int_t ngx_xmpp_cm_client_relayed(ngx_xmpp_cm_client_t *cl,
    u_char *buf, size_t n);
static ngx_int_t ngx_xmpp_cm_client_relay_in(void *data, u_char *p,
    size_t n);
static ngx_int_t ngx_xmpp_cm_client_relay_out(void *data, u_char *p,
    size_t n);
static void ngx_xmpp_cm_client_relay_status(void *data, ngx_uint_t status,
    ngx_str_t *failed);
static void ngx_xmpp_cm_client_relay_unblock(void *data);
static void ngx_xmpp_cm_client_relay_closed(void *data);
static ngx_int_t ngx_xmpp_cm_client_handoff(ngx_xmpp_cm_client_t *cl,
    ngx_str_t *previd, uint32_t h);
static ngx_int_t ngx_xmpp_cm_client_reroot(ngx_xmpp_cm_client_t *cl);
static ngx_int_t ngx_xmpp_cm_client_relayed_open(void *data,
    ngx_str_t *name, ngx_str_t *ns, const XML_Char **attrs);
static ngx_int_t ngx_xmpp_cm_client_wake(ngx_xmpp_cm_client_t *cl,
    ngx_event_t *rev);
static void ngx_xmpp_cm_client_shutdown(ngx_xmpp_cm_client_t *cl);
static void ngx_xmpp_cm_client_read(ngx_xmpp_cm_client_t *cl,
    ngx_xmpp_cm_rate_t *limit);
static ssize_t ngx_xmpp_cm_client_recv(ngx_xmpp_cm_client_t *cl,
    size_t size);
static void ngx_xmpp_cm_client_write_handler(ngx_event_t *wev);
static void ngx_xmpp_cm_client_cleanup(void *data);
static void ngx_xmpp_cm_client_finalize(ngx_xmpp_cm_client_t *cl);
static void ngx_xmpp_cm_client_linger(ngx_xmpp_cm_client_t *cl);
static void ngx_xmpp_cm_client_drain(ngx_xmpp_cm_client_t *cl);
static ngx_int_t ngx_xmpp_cm_client_process(ngx_xmpp_cm_client_t *cl,
    u_char *buf, size_t n);
static ngx_int_t ngx_xmpp_cm_client_open(void *data, ngx_str_t *name,
    ngx_str_t *ns, const XML_Char **attrs);
static ngx_int_t ngx_xmpp_cm_client_auth_start(void *data,
    ngx_xmpp_cm_elem_t *e);
static ngx_uint_t ngx_xmpp_cm_client_stream_level(ngx_xmpp_cm_elem_t *e);
static ngx_int_t ngx_xmpp_cm_client_start(ngx_xmpp_cm_client_t *cl,
    ngx_xmpp_cm_elem_t *e);
static ngx_int_t ngx_xmpp_cm_client_stream_start(void *data,
    ngx_xmpp_cm_elem_t *e);
static ngx_int_t ngx_xmpp_cm_client_element(void *data,
    ngx_xmpp_cm_elem_t *e);
static ngx_int_t ngx_xmpp_cm_client_close(void *data);
static ngx_int_t ngx_xmpp_cm_client_reject(ngx_xmpp_cm_client_t *cl,
    ngx_xmpp_cm_elem_t *e);
static ngx_uint_t ngx_xmpp_cm_client_full(ngx_xmpp_cm_client_t *cl,
    size_t len);
static void ngx_xmpp_cm_client_send(ngx_xmpp_cm_client_t *cl, u_char *p,
    size_t len);
static void ngx_xmpp_cm_client_header(ngx_xmpp_cm_client_t *cl);
static void ngx_xmpp_cm_client_success(ngx_xmpp_cm_client_t *cl);
static void ngx_xmpp_cm_client_authenticated(ngx_xmpp_cm_client_t *cl);
static void ngx_xmpp_cm_client_iq_auth(ngx_xmpp_cm_client_t *cl,
    ngx_xmpp_cm_elem_t *e);
static ngx_int_t ngx_xmpp_cm_client_iq_auth_set(void *data,
    ngx_xmpp_cm_elem_t *e);
static void ngx_xmpp_cm_client_iq_auth_result(ngx_xmpp_cm_client_t *cl,
    ngx_xmpp_cm_node_t *iq);
static void ngx_xmpp_cm_client_limits(ngx_xmpp_cm_client_t *cl);
static ngx_uint_t ngx_xmpp_cm_client_tls(ngx_xmpp_cm_client_t *cl);
static ngx_int_t ngx_xmpp_cm_client_csi_hold(ngx_xmpp_cm_client_t *cl,
    ngx_xmpp_cm_xml_t *x, ngx_xmpp_cm_node_t *n, size_t len);
static ngx_uint_t ngx_xmpp_cm_client_csi_urgent(ngx_xmpp_cm_node_t *n,
    ngx_str_t **from);
static void ngx_xmpp_cm_client_csi_flush(ngx_xmpp_cm_client_t *cl);
static void ngx_xmpp_cm_client_csi_free(ngx_xmpp_cm_client_t *cl);
static void ngx_xmpp_cm_client_timer(ngx_xmpp_cm_client_t *cl);
static size_t ngx_xmpp_cm_client_rate(ngx_xmpp_cm_client_t *cl,
    ngx_xmpp_cm_rate_t *limit, size_t size);
static void ngx_xmpp_cm_client_out(ngx_xmpp_cm_client_t *cl, u_char *p,
    size_t len, ngx_uint_t flush);
static ngx_int_t ngx_xmpp_cm_client_deflated(void *data, u_char *p,
    size_t n);
static ngx_int_t ngx_xmpp_cm_client_input(ngx_xmpp_cm_client_t *cl,
    u_char *buf, size_t n);
static ngx_int_t ngx_xmpp_cm_client_inflated(void *data, u_char *p,
    size_t n);
static ngx_int_t ngx_xmpp_cm_client_compress(ngx_xmpp_cm_client_t *cl,
    ngx_xmpp_cm_elem_t *e);
#if (NGX_STREAM_SSL)
static void ngx_xmpp_cm_client_starttls(ngx_xmpp_cm_client_t *cl);
static void ngx_xmpp_cm_client_tls_done(ngx_connection_t *c);
#endif
static void ngx_xmpp_cm_client_end(ngx_xmpp_cm_client_t *cl, char *cond,
    char *text, u_char *raw, size_t rawlen);
static void ngx_xmpp_cm_client_closing(ngx_xmpp_cm_client_t *cl, char *cond,
    char *text, u_char *raw, size_t rawlen);
static void ngx_xmpp_cm_client_detach(ngx_xmpp_cm_client_t *cl);
static void ngx_xmpp_cm_client_flush(ngx_xmpp_cm_client_t *cl);
static ngx_int_t ngx_xmpp_cm_client_deliver(ngx_xmpp_cm_conn_t *conn,
    ngx_xmpp_cm_xml_t *x, ngx_xmpp_cm_node_t *n);
static void ngx_xmpp_cm_client_deliver_text(ngx_xmpp_cm_conn_t *conn,
    ngx_str_t *text);
static void ngx_xmpp_cm_client_ended(ngx_xmpp_cm_conn_t *conn, char *cond,
    char *text, u_char *raw, size_t rawlen);
static void ngx_xmpp_cm_client_unblock(ngx_xmpp_cm_conn_t *conn);
static void ngx_xmpp_cm_client_confirmed(ngx_xmpp_cm_conn_t *conn);
static void ngx_xmpp_cm_client_stanza_out(ngx_xmpp_cm_client_t *cl,
    u_char *p1, size_t len1, u_char *p2, size_t len2);
static void ngx_xmpp_cm_client_sm_kept(ngx_xmpp_cm_client_t *cl,
    u_char *p1, size_t len1, u_char *p2, size_t len2);
static ngx_int_t ngx_xmpp_cm_client_sm(ngx_xmpp_cm_client_t *cl,
    ngx_xmpp_cm_elem_t *e);
static void ngx_xmpp_cm_client_sm_failed(ngx_xmpp_cm_client_t *cl,
    char *cond);
static void ngx_xmpp_cm_client_sm_answer(ngx_xmpp_cm_client_t *cl);
static void ngx_xmpp_cm_client_sm_request(ngx_xmpp_cm_client_t *cl);
static ngx_int_t ngx_xmpp_cm_client_resume(ngx_xmpp_cm_client_t *cl,
    ngx_str_t *account, ngx_str_t *previd, uint32_t h);
static ngx_int_t ngx_xmpp_cm_client_resend(void *data, u_char *p,
    size_t len);
static void ngx_xmpp_cm_client_sasl_account(ngx_xmpp_cm_client_t *cl,
    ngx_xmpp_cm_elem_t *e);
static void ngx_xmpp_cm_client_bound(ngx_xmpp_cm_client_t *cl,
    ngx_xmpp_cm_node_t *iq);
static ngx_uint_t ngx_xmpp_cm_client_offered(ngx_xmpp_cm_client_t *cl,
    const XML_Char **attrs);
static ngx_int_t ngx_xmpp_cm_client_eof(ngx_xmpp_cm_client_t *cl);
static void ngx_xmpp_cm_client_replied(ngx_xmpp_cm_client_t *cl,
    ngx_xmpp_cm_node_t *iq);


/* how the stream table reaches a client connection (h: conn_handler_t) */

static const ngx_xmpp_cm_conn_handler_t  ngx_xmpp_cm_client_conn = {
    ngx_xmpp_cm_client_deliver,
    ngx_xmpp_cm_client_deliver_text,
    ngx_xmpp_cm_client_ended,
    ngx_xmpp_cm_client_unblock,
    ngx_xmpp_cm_client_confirmed
};


static ngx_str_t    ngx_xmpp_cm_client_nocond = ngx_string("(no condition)");

/* the framer's handlers per phase: the element policy is the start tag's */

static ngx_xmpp_cm_xml_handlers_t  ngx_xmpp_cm_client_auth_xml = {
    ngx_xmpp_cm_client_open,
    ngx_xmpp_cm_client_auth_start,
    ngx_xmpp_cm_client_element,
    ngx_xmpp_cm_client_close
};

static ngx_xmpp_cm_xml_handlers_t  ngx_xmpp_cm_client_stream_xml = {
    ngx_xmpp_cm_client_open,
    ngx_xmpp_cm_client_stream_start,
    ngx_xmpp_cm_client_element,
    ngx_xmpp_cm_client_close
};

/* a relayed connection's synthetic root (ngx_xmpp_cm_client_adopt) */

static ngx_xmpp_cm_xml_handlers_t  ngx_xmpp_cm_client_relayed_xml = {
    ngx_xmpp_cm_client_relayed_open,
    ngx_xmpp_cm_client_stream_start,
    ngx_xmpp_cm_client_element,
    ngx_xmpp_cm_client_close
};

/* how a relay to another worker reaches this connection */

static const ngx_xmpp_cm_relay_handler_t  ngx_xmpp_cm_client_relay = {
    ngx_xmpp_cm_client_relay_out,
    ngx_xmpp_cm_client_relay_status,
    ngx_xmpp_cm_client_relay_unblock,
    ngx_xmpp_cm_client_relay_closed
};


void
ngx_stream_xmpp_cm_handler(ngx_stream_session_t *s)
{
    u_char                         *p;
    size_t                          n;
    ngx_connection_t               *c;
    ngx_xmpp_cm_client_t           *cl;
    ngx_stream_xmpp_cm_srv_conf_t  *conf;

    c = s->connection;
    conf = ngx_stream_get_module_srv_conf(s, ngx_stream_xmpp_cm_module);

    cl = ngx_xmpp_cm_client_create(c, conf, s);
    if (cl == NULL) {
        ngx_stream_finalize_session(s, NGX_STREAM_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_stream_set_ctx(s, cl, ngx_stream_xmpp_cm_module);

    /* bytes a preread phase module already took from the socket */

    p = NULL;
    n = 0;

    if (c->buffer && c->buffer->pos < c->buffer->last) {
        p = c->buffer->pos;
        n = c->buffer->last - c->buffer->pos;
        c->buffer->pos = c->buffer->last;
    }

    ngx_xmpp_cm_client_run(cl, p, n);
}


/*
 * A client engine on connection c: s is the stream session of a TCP
 * client, NULL for a web transport, which ngx_xmpp_cm_transport_of(c)
 * finds already.  NULL if out of memory, with nothing left to
 * undo.
 */

ngx_xmpp_cm_client_t *
ngx_xmpp_cm_client_create(ngx_connection_t *c,
    ngx_stream_xmpp_cm_srv_conf_t *conf, ngx_stream_session_t *s)
{
    ngx_pool_cleanup_t    *cln;
    ngx_xmpp_cm_client_t  *cl;

    cl = ngx_pcalloc(c->pool, sizeof(ngx_xmpp_cm_client_t));
    if (cl == NULL) {
        return NULL;
    }

    cl->conn.handler = &ngx_xmpp_cm_client_conn;
    cl->s = s;
    cl->c = c;
    cl->conf = conf;
    cl->up = conf->up;
    ngx_xmpp_cm_output_init(&cl->out, cl->up->worker);

    cl->xml = ngx_xmpp_cm_xml_create(c->pool, c->log, 0,
                                     cl->up->worker->parking);
    if (cl->xml == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(c->pool, 0);
    if (cln == NULL) {
        ngx_xmpp_cm_xml_free(cl->xml);
        return NULL;
    }

    cln->handler = ngx_xmpp_cm_client_cleanup;
    cln->data = cl;
    ngx_xmpp_cm_metrics_stream_opened(cl->up);

    ngx_queue_insert_tail(&cl->up->worker->clients, &cl->link);

    ngx_xmpp_cm_xml_handlers(cl->xml, &ngx_xmpp_cm_client_auth_xml, cl);
    ngx_xmpp_cm_xml_limits(cl->xml, conf->preauth_max_stanza,
                           conf->max_depth);

    ngx_xmpp_cm_client_phase(cl, NGX_XMPP_CM_PHASE_AUTH);
    c->write->handler = ngx_xmpp_cm_client_write_handler;
    c->log->action = "reading the XMPP stream header";

    cl->auth_deadline = ngx_current_msec + conf->auth_timeout;
    ngx_add_timer(c->read, conf->auth_timeout);

    /* the rate limit's bucket starts full (clamped at the first read) */
    cl->rate_credit = NGX_MAX_OFF_T_VALUE;

    return cl;
}


/*
 * The engine starts reading: first the n bytes at p that were read
 * before it took the connection over (a preread phase's, the bytes
 * behind an HTTP upgrade request), as if they had been read.
 */

void
ngx_xmpp_cm_client_run(ngx_xmpp_cm_client_t *cl, u_char *p, size_t n)
{
    ngx_int_t                 rc;
    ngx_xmpp_cm_transport_t  *t;

    if (n) {
        if (cl->s) {
            rc = ngx_xmpp_cm_client_process(cl, p, n);

        } else {
            t = ngx_xmpp_cm_client_transport(cl);
            rc = t->handler->input(t, p, n);
        }

        if (rc != NGX_OK) {
            return;
        }
    }

    cl->c->read->handler(cl->c->read);
}


/* the client of a connection's read or write event */

static ngx_inline ngx_xmpp_cm_client_t *
ngx_xmpp_cm_client_of(ngx_event_t *ev)
{
    ngx_connection_t      *c;
    ngx_stream_session_t  *s;

    c = ev->data;
    s = c->data;

    if (s->signature != NGX_STREAM_MODULE) {
        /* a web transport's connection */
        return ngx_xmpp_cm_transport_of(c)->client;
    }

    return ngx_stream_get_module_ctx(s, ngx_stream_xmpp_cm_module);
}


/*
 * Installs a phase: its read handler, and while the stream is read, its
 * element policy.
 */

static void
ngx_xmpp_cm_client_phase(ngx_xmpp_cm_client_t *cl, ngx_uint_t phase)
{
    static ngx_event_handler_pt  handlers[] = {
        ngx_xmpp_cm_client_auth_handler,
        ngx_xmpp_cm_client_stream_handler,
        ngx_xmpp_cm_client_block_read,
        ngx_xmpp_cm_client_half_closed_handler,
        ngx_xmpp_cm_client_closing_handler,
        ngx_xmpp_cm_client_block_read,
        ngx_xmpp_cm_client_relay_handler
    };

    cl->phase = phase;
    cl->c->read->handler = handlers[phase];

    switch (phase) {

    case NGX_XMPP_CM_PHASE_AUTH:
        ngx_xmpp_cm_xml_handlers(cl->xml, &ngx_xmpp_cm_client_auth_xml, cl);
        break;

    case NGX_XMPP_CM_PHASE_STREAM:
        ngx_xmpp_cm_xml_handlers(cl->xml, &ngx_xmpp_cm_client_stream_xml, cl);
        break;
    }
}


/* before authentication: the header, the features, SASL or iq:auth */

static void
ngx_xmpp_cm_client_auth_handler(ngx_event_t *rev)
{
    ngx_xmpp_cm_client_t  *cl;

    cl = ngx_xmpp_cm_client_of(rev);

    if (ngx_xmpp_cm_client_wake(cl, rev) == NGX_OK) {
        ngx_xmpp_cm_client_read(cl, &cl->conf->preauth_limit_rate);
    }
}


/* an authenticated stream: stanzas routed to Openfire */

static void
ngx_xmpp_cm_client_stream_handler(ngx_event_t *rev)
{
    ngx_xmpp_cm_client_t  *cl;

    cl = ngx_xmpp_cm_client_of(rev);

    if (ngx_xmpp_cm_client_wake(cl, rev) == NGX_OK) {
        ngx_xmpp_cm_client_read(cl, &cl->conf->limit_rate);
    }
}


/*
 * <proceed/> is going out: the next bytes belong to TLS, and nothing is
 * read until the write handler starts the handshake.
 */

static void
ngx_xmpp_cm_client_block_read(ngx_event_t *rev)
{
    (void) ngx_xmpp_cm_client_wake(ngx_xmpp_cm_client_of(rev), rev);
}


/* the client sends nothing more: its IQ replies are awaited */

static void
ngx_xmpp_cm_client_half_closed_handler(ngx_event_t *rev)
{
    ngx_xmpp_cm_client_t  *cl;

    cl = ngx_xmpp_cm_client_of(rev);

    if (cl->c->close) {
        ngx_xmpp_cm_client_shutdown(cl);
        return;
    }

    if (rev->timedout) {
        rev->timedout = 0;

        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: %ui IQ replies for a client that "
                      "closed its side did not come in time",
                      cl->iq_pending);
        ngx_xmpp_cm_client_end(cl, NULL, NULL, (u_char *) "", 0);
    }
}


/*
 * The end is queued: the input is read and dropped until the client
 * closes, or the linger timer set by ngx_xmpp_cm_client_closing() fires
 * (see ngx_xmpp_cm_client_linger()).
 */

static void
ngx_xmpp_cm_client_closing_handler(ngx_event_t *rev)
{
    ssize_t                n;
    ngx_connection_t      *c;
    ngx_xmpp_cm_client_t  *cl;

    cl = ngx_xmpp_cm_client_of(rev);
    c = cl->c;

    if (c->close) {
        /* the client is told already: the linger timer bounds the close */
        ngx_xmpp_cm_client_shutdown(cl);
        return;
    }

    if (rev->timedout) {
        rev->timedout = 0;
        ngx_xmpp_cm_client_finalize(cl);
        return;
    }

    for ( ;; ) {

        if (!rev->ready && c->ssl == NULL) {
            break;
        }

        n = ngx_xmpp_cm_client_recv(cl, NGX_XMPP_CM_CLIENT_READ);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_DONE) {
            return;
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_xmpp_cm_client_finalize(cl);
    }
}


/*
 * worker_shutdown_timeout: the client is told, and what is queued for it
 * (messages Openfire already routed, then the stream error) gets the
 * linger to be read, as on any other end.  The shutdown timer marked the
 * connection as failed only to make its owner close it; the linger timer
 * bounds the close, and the worker exits when the last client is gone.
 */

static void
ngx_xmpp_cm_client_shutdown(ngx_xmpp_cm_client_t *cl)
{
    cl->c->close = 0;
    cl->c->error = 0;

    ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                  "xmpp_cm: worker shutdown timeout, ending the stream");

    ngx_xmpp_cm_client_end(cl, "system-shutdown",
                           "the connection manager is shutting down",
                           NULL, 0);
}


/*
 * What wakes a phase that reads the stream (or waits for TLS) other than
 * input: the worker's shutdown timeout, the end of a rate-limit delay,
 * the read timer.  NGX_OK: go on reading.
 */

static ngx_int_t
ngx_xmpp_cm_client_wake(ngx_xmpp_cm_client_t *cl, ngx_event_t *rev)
{
    if (cl->c->close) {
        ngx_xmpp_cm_client_shutdown(cl);
        return NGX_DONE;
    }

    if (rev->timedout && rev->delayed) {

        /*
         * The end of a delay by xmpp_cm_limit_rate, not a timeout: the
         * time the client was delayed by us does not count against its
         * stanza, but the authentication deadline still holds.
         */

        rev->delayed = 0;

        if (cl->partial_since) {
            cl->partial_since += ngx_current_msec - cl->rate_last;
        }

        if (cl->authenticated
            || (ngx_msec_int_t) (cl->auth_deadline - ngx_current_msec) > 0)
        {
            rev->timedout = 0;
        }
    }

    if (rev->timedout) {
        rev->timedout = 0;

        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: client timed out");

        /* XEP-0198: a dead connection, its stream may be resumed */
        cl->dropped = 1;

        ngx_xmpp_cm_client_end(cl, "connection-timeout",
                               cl->partial_since && cl->conf->stanza_timeout
                               && ngx_current_msec - cl->partial_since
                                  >= cl->conf->stanza_timeout
                               ? "stanza not completed in time"
                               : cl->authenticated ? "idle for too long"
                               : "not authenticated in time", NULL, 0);
        return NGX_DONE;
    }

    return cl->phase == NGX_XMPP_CM_PHASE_STARTTLS ? NGX_DONE : NGX_OK;
}


/*
 * Reads the stream while the phase reads it (AUTH or STREAM); a phase
 * that changes within a read (the end, STARTTLS) takes over from there:
 * the rest of that read is not part of the stream.  After <starttls/>,
 * plaintext pipelined behind it must never count as part of the TLS
 * stream (the STARTTLS injection class of bug).
 */

static void
ngx_xmpp_cm_client_read(ngx_xmpp_cm_client_t *cl, ngx_xmpp_cm_rate_t *limit)
{
    size_t                    size;
    ssize_t                   n;
    ngx_int_t                 rc;
    ngx_event_t              *rev;
    ngx_connection_t         *c;
    ngx_xmpp_cm_transport_t  *t;

    c = cl->c;
    rev = c->read;

    for ( ;; ) {

        if (cl->stream && ngx_xmpp_cm_stream_throttled(cl->stream)) {
            /*
             * The upstream socket is over its high-water mark, maybe
             * filled by another client just now: do not read what cannot
             * go, or every readable client would push one more read past
             * the mark (and hold a parser) before it is paused.
             */

            return;
        }

        if (!rev->ready && c->ssl == NULL) {
            /* drained (epoll told us so): save the recv() that says EAGAIN */
            break;
        }

        if (rev->delayed) {
            /* by xmpp_cm_limit_rate: its timer ends the delay */
            break;
        }

        size = NGX_XMPP_CM_CLIENT_READ;

        if (limit->rate) {
            size = ngx_xmpp_cm_client_rate(cl, limit, size);

            if (size == 0) {
                /* delayed: the timer is set */
                break;
            }
        }

        n = ngx_xmpp_cm_client_recv(cl, size);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_DONE) {
            return;
        }

        if (limit->rate) {
            cl->rate_credit -= (off_t) n * 1000;
        }

        if (cl->s) {
            rc = ngx_xmpp_cm_client_input(cl, cl->up->worker->client_buf, n);

        } else {
            t = ngx_xmpp_cm_client_transport(cl);
            rc = t->handler->input(t, cl->up->worker->client_buf, n);
        }

        if (rc != NGX_OK || cl->phase > NGX_XMPP_CM_PHASE_STREAM)
        {
            /*
             * Ended, or STARTTLS: the new phase's handler goes on (the
             * end posts the read event, the write handler starts TLS).
             */
            return;
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_xmpp_cm_client_finalize(cl);
        return;
    }

    if (rev->delayed) {
        return;
    }

    ngx_xmpp_cm_client_timer(cl);
}


/*
 * One read into the worker's buffer: the bytes read, NGX_AGAIN, or
 * NGX_DONE when the client closed or failed (the connection is closed, or
 * its EOF is being handled).
 */

static ssize_t
ngx_xmpp_cm_client_recv(ngx_xmpp_cm_client_t *cl, size_t size)
{
    ssize_t  n;

    n = cl->c->recv(cl->c, cl->up->worker->client_buf, size);

    if (n == NGX_AGAIN) {
        return NGX_AGAIN;
    }

    if (n == 0 && ngx_xmpp_cm_client_eof(cl) == NGX_AGAIN) {
        return NGX_DONE;
    }

    if (n == 0 || n == NGX_ERROR) {
        ngx_log_debug0(NGX_LOG_DEBUG_STREAM, cl->c->log, 0,
                       "xmpp_cm: client closed the connection");
        ngx_xmpp_cm_client_finalize(cl);
        return NGX_DONE;
    }

    if (cl->s) {
        cl->s->received += n;
    }

    return n;
}


/*
 * The client shut its side (shutdown(SHUT_WR), or a close): what it sent
 * is routed already.  A half-closed client still reads, so what is queued
 * for it goes out, then </stream:stream> (RFC 6120 4.4), then the linger
 * closes; a reply that came in just before the EOF was read is not lost.
 * If IQ requests it sent are not answered yet, their replies are awaited
 * first, for at most the linger time.  NGX_OK: close now; NGX_AGAIN: stop
 * reading, the write side goes on.
 */

static ngx_int_t
ngx_xmpp_cm_client_eof(ngx_xmpp_cm_client_t *cl)
{
    ngx_event_t  *rev;

    rev = cl->c->read;

    if (cl->phase == NGX_XMPP_CM_PHASE_CLOSING) {
        if (cl->out.size == 0 || cl->lingering) {
            return NGX_OK;
        }

        /*
         * the write handler lingers once the rest is out; the timer set
         * by ngx_xmpp_cm_client_end() bounds it
         */

        goto stop;
    }

    if (cl->stream == NULL) {
        return NGX_OK;
    }

    if (cl->stream->sm && cl->stream->sm->resume) {
        /* XEP-0198: no </stream:stream>, so the stream waits for a resume */
        cl->dropped = 1;
    }

    if (cl->iq_pending == 0 || cl->dropped) {
        ngx_xmpp_cm_client_end(cl, NULL, NULL, (u_char *) "", 0);
        goto stop;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_STREAM, cl->c->log, 0,
                   "xmpp_cm: client closed its side, awaiting %ui IQ "
                   "replies", cl->iq_pending);

    ngx_xmpp_cm_client_phase(cl, NGX_XMPP_CM_PHASE_HALF);

    if (rev->timer_set) {
        ngx_del_timer(rev);
    }

    ngx_add_timer(rev, NGX_XMPP_CM_LINGER);

stop:

    if ((ngx_event_flags & NGX_USE_LEVEL_EVENT) && rev->active) {
        /* a level-triggered EOF would be reported again and again */

        if (ngx_del_event(rev, NGX_READ_EVENT, 0) != NGX_OK) {
            return NGX_OK;
        }
    }

    return NGX_AGAIN;
}


/* an IQ result or error for the client: one awaited reply fewer */

static void
ngx_xmpp_cm_client_replied(ngx_xmpp_cm_client_t *cl, ngx_xmpp_cm_node_t *iq)
{
    ngx_str_t  *type;

    type = ngx_xmpp_cm_node_attr(iq, "type");

    if (type == NULL
        || !(ngx_xmpp_cm_str_is(type, "result")
             || ngx_xmpp_cm_str_is(type, "error")))
    {
        return;
    }

    cl->iq_pending--;

    if (cl->iq_pending == 0 && cl->phase == NGX_XMPP_CM_PHASE_HALF) {
        ngx_log_debug0(NGX_LOG_DEBUG_STREAM, cl->c->log, 0,
                       "xmpp_cm: last IQ reply for a client that closed "
                       "its side");
        ngx_xmpp_cm_client_end(cl, NULL, NULL, (u_char *) "", 0);
    }
}


/*
 * The read timer: the idle timeout (or the authentication deadline), and
 * while a stanza is unfinished, xmpp_cm_stanza_timeout from its first
 * byte, so a client trickling bytes cannot hold a partial stanza forever.
 * The kept bytes start at the unfinished stanza's first byte: when that
 * position moves, the stanza before it completed and a new one started,
 * so a client streaming stanzas back to back (every read ending inside a
 * stanza) is timed per stanza.
 */

static void
ngx_xmpp_cm_client_timer(ngx_xmpp_cm_client_t *cl)
{
    size_t                    pending;
    XML_Index                 base;
    ngx_msec_t                t, st, spent;
    ngx_event_t              *rev;
    ngx_xmpp_cm_transport_t  *tr;

    rev = cl->c->read;

    if (cl->authenticated) {
        t = cl->conf->idle_timeout;

    } else {
        /* the authentication deadline does not move with traffic */
        t = (ngx_msec_int_t) (cl->auth_deadline - ngx_current_msec) > 0
            ? cl->auth_deadline - ngx_current_msec : 1;
    }

    if (cl->s) {
        pending = ngx_xmpp_cm_xml_pending(cl->xml, &base);

    } else {
        /* a frame not complete yet: the framer has whole elements only */
        tr = ngx_xmpp_cm_client_transport(cl);
        pending = tr->handler->pending(tr, &base);
    }

    if (pending == 0 || cl->conf->stanza_timeout == 0) {
        cl->partial_since = 0;

    } else {
        if (cl->partial_since == 0 || cl->partial_base != base) {
            cl->partial_since = ngx_current_msec;
            cl->partial_base = base;
        }

        spent = ngx_current_msec - cl->partial_since;
        st = spent < cl->conf->stanza_timeout
             ? cl->conf->stanza_timeout - spent : 1;

        if (t == 0 || st < t) {
            t = st;
        }
    }

    if (t) {
        ngx_add_timer(rev, t);

    } else if (rev->timer_set) {
        ngx_del_timer(rev);
    }
}


/*
 * xmpp_cm_limit_rate (or xmpp_cm_preauth_limit_rate): a token bucket of
 * burst bytes, filled at rate bytes per second and counted in thousandths
 * of a byte (a millisecond at the rate is rate thousandths), so that no
 * refill is lost to rounding.  The bytes counted are those c->recv()
 * returns: decrypted over TLS, still compressed with XEP-0138.  Returns
 * how much may be read now, at most size; 0 when the read is delayed:
 * rev->delayed is set, with the read timer at the time the bucket holds a
 * slice (50 ms at the rate, at least 1 byte) again.  A slice is the least
 * read after a delay, so a flooding client costs 20 wake-ups a second,
 * not one per byte; the bucket holds at least one.
 */

static size_t
ngx_xmpp_cm_client_rate(ngx_xmpp_cm_client_t *cl, ngx_xmpp_cm_rate_t *limit,
    size_t size)
{
    off_t         cap, slice, credit;
    size_t        rate, burst;
    ngx_msec_t    elapsed, delay;
    ngx_event_t  *rev;

    rev = cl->c->read;

    rate = limit->rate;
    burst = limit->burst;

    slice = (off_t) ngx_max(rate / 20, 1) * 1000;
    cap = ngx_max((off_t) burst * 1000, slice);

    elapsed = ngx_current_msec - cl->rate_last;
    cl->rate_last = ngx_current_msec;

    credit = cl->rate_credit;

    if (credit >= cap || (off_t) elapsed >= (cap - credit) / (off_t) rate) {
        credit = cap;

    } else {
        credit += (off_t) elapsed * rate;
    }

    cl->rate_credit = credit;

    if (credit >= slice) {
        return ngx_min(size, (size_t) (credit / 1000));
    }

    delay = (ngx_msec_t) ((slice - credit + rate - 1) / rate);

    if (!cl->rate_logged) {
        cl->rate_logged = 1;
        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: client over %s %uz bytes/s, "
                      "its reads are delayed",
                      cl->authenticated ? "xmpp_cm_limit_rate"
                                        : "xmpp_cm_preauth_limit_rate",
                      rate);
    }

    ngx_log_debug1(NGX_LOG_DEBUG_STREAM, cl->c->log, 0,
                   "xmpp_cm: client read delayed %M ms", delay);

    if (rev->timer_set) {
        ngx_del_timer(rev);
    }

    rev->delayed = 1;
    ngx_add_timer(rev, delay);

    return 0;
}


/* bytes as read from the connection: inflated first if compressed */

static ngx_int_t
ngx_xmpp_cm_client_input(ngx_xmpp_cm_client_t *cl, u_char *buf, size_t n)
{
    size_t     rest;
    ngx_int_t  rc;

    if (cl->phase == NGX_XMPP_CM_PHASE_RELAY) {
        return ngx_xmpp_cm_client_relayed(cl, buf, n);
    }

    if (cl->zlib && !cl->zlib_pending) {
        goto inflate;
    }

    rc = ngx_xmpp_cm_client_process(cl, buf, n);

    if (!cl->zlib_pending || cl->phase == NGX_XMPP_CM_PHASE_CLOSING) {
        return rc;
    }

    /*
     * <compressed/> is queued uncompressed; from here on both directions
     * are zlib, and what followed <compress/> in this read is compressed
     * already.  The client restarts its stream on a fresh parser.
     */

    rest = ngx_xmpp_cm_xml_rest(cl->xml, cl->zstart);
    buf += n - rest;
    n = rest;

    cl->zlib_pending = 0;
    cl->header_sent = 0;
    cl->partial_since = 0;

    if (ngx_xmpp_cm_xml_reset(cl->xml) != NGX_OK) {
        ngx_xmpp_cm_client_end(cl, "internal-server-error", NULL, NULL, 0);
        return NGX_DONE;
    }


    if (n == 0) {
        return NGX_OK;
    }

inflate:

    rc = ngx_xmpp_cm_zlib_inflate(cl->zlib, buf, n,
                                  ngx_xmpp_cm_client_inflated, cl);

    if (rc == NGX_ERROR && cl->phase != NGX_XMPP_CM_PHASE_CLOSING) {
        ngx_xmpp_cm_client_end(cl, "undefined-condition",
                               "processing-failed: bad compressed data",
                               NULL, 0);
        return NGX_DONE;
    }

    return rc;
}


static ngx_int_t
ngx_xmpp_cm_client_inflated(void *data, u_char *p, size_t n)
{
    ngx_xmpp_cm_client_t *cl = data;

    ngx_int_t  rc;

    rc = ngx_xmpp_cm_client_process(cl, p, n);

    return rc == NGX_ERROR ? NGX_DONE : rc;
}


static ngx_int_t
ngx_xmpp_cm_client_process(ngx_xmpp_cm_client_t *cl, u_char *buf, size_t n)
{
    ngx_int_t    rc;
    const char  *cond, *text;

    rc = ngx_xmpp_cm_xml_feed(cl->xml, buf, n);

    if (rc == NGX_OK) {
        return NGX_OK;
    }

    if (cl->phase > NGX_XMPP_CM_PHASE_STREAM || cl->zlib_pending) {
        /* the stream stopped by itself: ended, or STARTTLS, compression */
        return NGX_DONE;
    }

    cond = ngx_xmpp_cm_xml_error(cl->xml, &text);

    if (cond) {
        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: client sent bad XML: %s (%s)",
                      cond, text ? text : "");

        ngx_xmpp_cm_client_end(cl, (char *) cond, (char *) text, NULL, 0);
        return NGX_DONE;
    }

    ngx_xmpp_cm_client_end(cl, "internal-server-error", NULL, NULL, 0);

    return NGX_DONE;
}


static ngx_str_t *
ngx_xmpp_cm_client_attr(const XML_Char **attrs, char *ns, char *name,
    ngx_str_t *value)
{
    ngx_uint_t  i;
    ngx_str_t   ans, local;

    for (i = 0; attrs[i]; i += 2) {
        ngx_xmpp_cm_split_name(attrs[i], &ans, &local);

        if (ngx_xmpp_cm_str_is(&local, name) && ngx_xmpp_cm_str_is(&ans, ns)) {
            value->data = (u_char *) attrs[i + 1];
            value->len = ngx_strlen(value->data);
            return value;
        }
    }

    return NULL;
}


static ngx_int_t
ngx_xmpp_cm_client_open(void *data, ngx_str_t *name, ngx_str_t *ns,
    const XML_Char **attrs)
{
    ngx_xmpp_cm_client_t *cl = data;

    size_t      i;
    ngx_str_t   v, *domain, addr, root_ns;
    ngx_uint_t  n;

    ngx_str_null(&cl->domain);

    if (!ngx_xmpp_cm_str_is(ns, NGX_XMPP_NS_STREAMS)) {
        ngx_xmpp_cm_client_end(cl, "invalid-namespace",
                               "the stream namespace is wrong", NULL, 0);
        return NGX_DONE;
    }

    if (!ngx_xmpp_cm_str_is(name, "stream")) {
        ngx_xmpp_cm_client_end(cl, "bad-format",
                               "expected a stream:stream header", NULL, 0);
        return NGX_DONE;
    }

    if (!ngx_xmpp_cm_xml_root_ns(cl->xml, &root_ns)
        || !ngx_xmpp_cm_str_is(&root_ns, NGX_XMPP_NS_CLIENT))
    {
        ngx_xmpp_cm_client_end(cl, "invalid-namespace",
                               "the content namespace must be jabber:client",
                               NULL, 0);
        return NGX_DONE;
    }

    domain = cl->conf->domains->elts;

    if (ngx_xmpp_cm_client_attr(attrs, "", "to", &v)) {
        for (n = 0; n < cl->conf->domains->nelts; n++) {
            if (ngx_xmpp_cm_jid_domain_eq(&v, &domain[n])) {
                cl->domain = domain[n];
                break;
            }
        }
    }

    if (cl->domain.len == 0) {
        ngx_xmpp_cm_client_end(cl, "host-unknown",
                               "this server does not serve that domain",
                               NULL, 0);
        return NGX_DONE;
    }

    if (ngx_xmpp_cm_client_attr(attrs, "", "version", &v) == NULL
        || v.len < 3 || v.data[0] != '1' || v.data[1] != '.')
    {
        ngx_xmpp_cm_client_end(cl, "unsupported-version",
                               "version 1.0 is required", NULL, 0);
        return NGX_DONE;
    }

    /* empty: the header had none (the reply's header says "en") */
    cl->lang[0] = '\0';

    if (ngx_xmpp_cm_client_attr(attrs,
                                "http://www.w3.org/XML/1998/namespace",
                                "lang", &v)
        && v.len && v.len < sizeof(cl->lang))
    {
        for (i = 0; i < v.len; i++) {
            if (!(isalnum(v.data[i]) || v.data[i] == '-')) {
                break;
            }
        }

        if (i == v.len) {
            ngx_memcpy(cl->lang, v.data, v.len);
            cl->lang[v.len] = '\0';
        }
    }

    if (cl->stream == NULL && !cl->authenticated) {
        if (cl->up->ready == 0 || !cl->up->configured) {
            ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                          "xmpp_cm: no Openfire connection is up, refusing "
                          "the client");
            ngx_xmpp_cm_client_end(cl, "remote-connection-failed",
                                   "the XMPP server is unreachable",
                                   NULL, 0);
            return NGX_DONE;
        }

        /* the client's address as nginx sees it (PROXY protocol, realip) */

        ngx_str_null(&addr);

        switch (cl->c->sockaddr->sa_family) {
        case AF_INET:
#if (NGX_HAVE_INET6)
        case AF_INET6:
#endif
            addr = cl->c->addr_text;
            break;
        }

        cl->stream = ngx_xmpp_cm_stream_create(cl->up, &cl->conn, &addr);

        if (cl->stream == NULL) {
            ngx_xmpp_cm_client_end(cl, "remote-connection-failed",
                                   "the XMPP server is unreachable",
                                   NULL, 0);
            return NGX_DONE;
        }

        cl->streamid = cl->stream->node.str;
        cl->streamid.data = ngx_pstrdup(cl->c->pool, &cl->streamid);
        if (cl->streamid.data == NULL) {
            cl->streamid.len = 0;
        }

        cl->c->log->action = "authenticating";

        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: client stream %V opened",
                      &cl->stream->node.str);
    }

    if (cl->stream == NULL) {
        /* restarted after the session ended: nothing to serve */
        ngx_xmpp_cm_client_end(cl, "reset", NULL, NULL, 0);
        return NGX_DONE;
    }

    ngx_xmpp_cm_client_header(cl);

    return NGX_OK;
}


/*
 * The longest stream header: every part is bounded (a session id, a
 * configured domain, an xml:lang that fits cl->lang).
 */

#define NGX_XMPP_CM_HEADER_MAX                                               \
    (sizeof("<?xml version='1.0'?><stream:stream xmlns=\"" NGX_XMPP_NS_CLIENT \
            "\" xmlns:stream=\"" NGX_XMPP_NS_STREAMS "\" id=\"\" from=\"\""  \
            " version=\"1.0\" xml:lang=\"\">")                               \
     + NGX_XMPP_CM_ID_LEN + NGX_XMPP_CM_DOMAIN_MAX                         \
     + sizeof(((ngx_xmpp_cm_client_t *) 0)->lang))


static void
ngx_xmpp_cm_client_header(ngx_xmpp_cm_client_t *cl)
{
    u_char                  *p, buf[NGX_XMPP_CM_HEADER_MAX];
    ngx_str_t               *domain, id;
    ngx_xmpp_cm_upstream_t  *up;

    static u_char  starttls[] =
        "<starttls xmlns=\"" NGX_XMPP_NS_TLS "\"/>";
    static u_char  starttls_required[] =
        "<starttls xmlns=\"" NGX_XMPP_NS_TLS "\"><required/></starttls>";
    static u_char  post[] =
        "<stream:features><bind xmlns=\"urn:ietf:params:xml:ns:xmpp-bind\"/>"
        "<session xmlns=\"urn:ietf:params:xml:ns:xmpp-session\">"
        "<optional/></session>";
    static u_char  csi[] = "<csi xmlns=\"" NGX_XMPP_NS_CSI "\"/>";
    static u_char  sm[] = "<sm xmlns=\"" NGX_XMPP_NS_SM "\"/>";
    static u_char  compression[] =
        "<compression xmlns=\"" NGX_XMPP_NS_FCOMPRESS "\">"
        "<method>zlib</method></compression>";

    up = cl->up;

    if (cl->domain.len) {
        domain = &cl->domain;

    } else {
        domain = cl->conf->domains->elts;
    }

    if (cl->stream) {
        id = cl->stream->node.str;

    } else {
        ngx_str_null(&id);
    }

    p = ngx_snprintf(buf, sizeof(buf),
                     "<?xml version='1.0'?><stream:stream xmlns=\""
                     NGX_XMPP_NS_CLIENT "\" xmlns:stream=\""
                     NGX_XMPP_NS_STREAMS "\"%s%V%s from=\"%V\""
                     " version=\"1.0\" xml:lang=\"%s\">",
                     id.len ? " id=\"" : "", &id, id.len ? "\"" : "",
                     domain, cl->lang[0] ? cl->lang : (u_char *) "en");

    if (p == buf + sizeof(buf)) {
        /* cannot happen with the bounds above; never send a cut header */
        ngx_log_error(NGX_LOG_ALERT, cl->c->log, 0,
                      "xmpp_cm: stream header too long");
        cl->c->error = 1;
        return;
    }

    ngx_xmpp_cm_client_send(cl, buf, p - buf);
    cl->header_sent = 1;

    if (cl->phase == NGX_XMPP_CM_PHASE_CLOSING || cl->stream == NULL) {
        return;
    }

    if (cl->authenticated) {
        ngx_xmpp_cm_client_send(cl, post, sizeof(post) - 1);
        ngx_xmpp_cm_client_limits(cl);

        if (cl->conf->csi_hold_limit) {
            ngx_xmpp_cm_client_send(cl, csi, sizeof(csi) - 1);
        }

        if (cl->conf->sm) {
            ngx_xmpp_cm_client_send(cl, sm, sizeof(sm) - 1);
        }

        if (cl->zlib == NULL && cl->conf->compression
            && up->cfg_compression && cl->s)
        {
            ngx_xmpp_cm_client_send(cl, compression, sizeof(compression) - 1);
        }

        ngx_xmpp_cm_client_send(cl, (u_char *) "</stream:features>", 18);
        return;
    }

    ngx_xmpp_cm_client_send(cl, (u_char *) "<stream:features>", 17);

    switch (ngx_xmpp_cm_client_tls(cl)) {

    case NGX_XMPP_CM_TLS_REQUIRED:
        /* RFC 6120 5.3.1: nothing else before TLS */
        ngx_xmpp_cm_client_send(cl, starttls_required,
                                sizeof(starttls_required) - 1);
        ngx_xmpp_cm_client_send(cl, (u_char *) "</stream:features>", 18);
        return;

    case NGX_XMPP_CM_TLS_OPTIONAL:
        ngx_xmpp_cm_client_send(cl, starttls, sizeof(starttls) - 1);
        break;
    }

    ngx_xmpp_cm_client_send(cl, up->features.data, up->features.len);
    ngx_xmpp_cm_client_limits(cl);
    ngx_xmpp_cm_client_send(cl, (u_char *) "</stream:features>", 18);
}


/*
 * XEP-0478: the limits this stream is held to, as the framer and the
 * read timer enforce them.  max-bytes is the framer's stanza limit (a
 * stanza of max-bytes is taken, one byte more is policy-violation).
 * idle-seconds after authentication is xmpp_cm_idle_timeout (omitted
 * when 0); before it, the authentication deadline, which traffic does
 * not move: the seconds left until it, so that a client idle for that
 * long is never cut off earlier than it was told.
 */

static void
ngx_xmpp_cm_client_limits(ngx_xmpp_cm_client_t *cl)
{
    u_char      *p, buf[sizeof("<limits xmlns=\"" NGX_XMPP_NS_LIMITS "\">"
                               "<max-bytes></max-bytes><idle-seconds>"
                               "</idle-seconds></limits>")
                        + NGX_SIZE_T_LEN + NGX_INT_T_LEN];
    size_t       max;
    ngx_msec_t   idle;

    if (cl->authenticated) {
        max = cl->conf->max_stanza;
        idle = cl->conf->idle_timeout;

    } else {
        max = cl->conf->preauth_max_stanza;
        idle = (ngx_msec_int_t) (cl->auth_deadline - ngx_current_msec) > 0
               ? cl->auth_deadline - ngx_current_msec : 0;
    }

    p = ngx_sprintf(buf, "<limits xmlns=\"" NGX_XMPP_NS_LIMITS "\">"
                    "<max-bytes>%uz</max-bytes>", max);

    if (idle >= 1000) {
        p = ngx_sprintf(p, "<idle-seconds>%M</idle-seconds>", idle / 1000);
    }

    p = ngx_cpymem(p, "</limits>", sizeof("</limits>") - 1);

    ngx_xmpp_cm_client_send(cl, buf, p - buf);
}


/*
 * What STARTTLS means for this stream now: off (already TLS, or not
 * configured), optional, or required.  Openfire's own "TLS required"
 * (xmpp.client.tls.policy) is not enforced for CM sessions by Openfire,
 * so it upgrades "optional" here.
 */

static ngx_uint_t
ngx_xmpp_cm_client_tls(ngx_xmpp_cm_client_t *cl)
{
    if (cl->c->ssl || cl->conf->starttls == NGX_XMPP_CM_TLS_OFF
        || cl->s == NULL)
    {
        /* a web transport's TLS is the http server's "ssl" */
        return NGX_XMPP_CM_TLS_OFF;
    }

    if (cl->conf->starttls == NGX_XMPP_CM_TLS_REQUIRED
        || (cl->up && cl->up->cfg_tls_required))
    {
        return NGX_XMPP_CM_TLS_REQUIRED;
    }

    return NGX_XMPP_CM_TLS_OPTIONAL;
}


static ngx_int_t
ngx_xmpp_cm_client_forward(ngx_xmpp_cm_client_t *cl, ngx_xmpp_cm_elem_t *e)
{
    ngx_int_t  rc;

    if (cl->stream == NULL) {
        ngx_xmpp_cm_client_end(cl, "reset", NULL, NULL, 0);
        return NGX_DONE;
    }

    rc = ngx_xmpp_cm_stream_send(cl->stream, cl->xml, e, cl->lang);

    if (rc == NGX_DECLINED) {
        ngx_xmpp_cm_client_end(cl, "policy-violation", "stanza too large",
                               NULL, 0);
        return NGX_DONE;
    }

    if (rc != NGX_OK) {
        ngx_xmpp_cm_client_end(cl, "remote-connection-failed",
                               "the XMPP server is unreachable", NULL, 0);
        return NGX_DONE;
    }

    ngx_xmpp_cm_count_relay(cl->up, TO_OPENFIRE, e->end - e->start);

    return NGX_OK;
}


/*
 * A stanza the CM answers with a stanza error instead of routing it
 * (ngx_xmpp_cm_stanza_check); an error is never answered with an error.
 */

static ngx_int_t
ngx_xmpp_cm_client_reject(ngx_xmpp_cm_client_t *cl, ngx_xmpp_cm_elem_t *e)
{
    u_char  *p;
    size_t   len;

    if (e->reject == NULL) {
        /* RFC 6121 4.7.2.1: at most one <show/> */
        e->reject = "bad-request";
    }

    if (e->is_error) {
        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: dropped an error <%V> with a%s",
                      &e->name,
                      ngx_strcmp(e->reject, "jid-malformed") == 0
                      ? " malformed JID" : "n invalid child");
        return NGX_OK;
    }

    ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                  "xmpp_cm: client's <%V> refused: %s", &e->name, e->reject);

    len = ngx_xmpp_cm_stanza_error(cl->xml, e, &cl->jid, NULL);

    if (ngx_xmpp_cm_client_full(cl, len)) {
        return NGX_DONE;
    }

    p = ngx_alloc(len, cl->c->log);
    if (p == NULL) {
        ngx_xmpp_cm_client_end(cl, "internal-server-error", NULL, NULL, 0);
        return NGX_DONE;
    }

    (void) ngx_xmpp_cm_stanza_error(cl->xml, e, &cl->jid, p);

    ngx_xmpp_cm_client_stanza_out(cl, p, len, NULL, 0);
    ngx_free(p);

    return NGX_OK;
}


/*
 * What a client may send, by state: decided at the stanza's start tag so
 * that nothing unwanted is buffered.
 */

#define NGX_XMPP_CM_E_FORWARD   0
#define NGX_XMPP_CM_E_ABORT     1
#define NGX_XMPP_CM_E_STARTTLS  2
#define NGX_XMPP_CM_E_ERROR     3
#define NGX_XMPP_CM_E_NOAUTH    4
#define NGX_XMPP_CM_E_REFUSE    5
#define NGX_XMPP_CM_E_ENCRYPT   6
#define NGX_XMPP_CM_E_COMPRESS  7
#define NGX_XMPP_CM_E_CSI       8
#define NGX_XMPP_CM_E_SM        9


/* the pre-authentication policy (NGX_XMPP_CM_PHASE_AUTH) */

static ngx_int_t
ngx_xmpp_cm_client_auth_start(void *data, ngx_xmpp_cm_elem_t *e)
{
    ngx_xmpp_cm_client_t *cl = data;

    ngx_str_t   *name, *ns;
    ngx_uint_t   notls;

    name = &e->name;
    ns = &e->ns;

    /* TLS required and not negotiated: only <starttls/> is accepted */

    notls = (ngx_xmpp_cm_client_tls(cl) == NGX_XMPP_CM_TLS_REQUIRED);

    if (ngx_xmpp_cm_str_is(ns, NGX_XMPP_NS_CLIENT)) {

        if (ngx_xmpp_cm_str_is(name, "iq")) {
            cl->kind = notls ? NGX_XMPP_CM_E_NOAUTH : NGX_XMPP_CM_E_FORWARD;

        } else if (ngx_xmpp_cm_str_is(name, "message")
                   || ngx_xmpp_cm_str_is(name, "presence"))
        {
            cl->kind = NGX_XMPP_CM_E_NOAUTH;

        } else {
            cl->kind = NGX_XMPP_CM_E_REFUSE;
        }

    } else if (ngx_xmpp_cm_str_is(ns, NGX_XMPP_NS_SASL)) {

        if (ngx_xmpp_cm_str_is(name, "auth")
            || ngx_xmpp_cm_str_is(name, "response"))
        {
            cl->kind = notls ? NGX_XMPP_CM_E_ENCRYPT : NGX_XMPP_CM_E_FORWARD;

        } else if (ngx_xmpp_cm_str_is(name, "abort")) {
            cl->kind = NGX_XMPP_CM_E_ABORT;

        } else {
            cl->kind = NGX_XMPP_CM_E_REFUSE;
        }

    } else if (ngx_xmpp_cm_str_is(ns, NGX_XMPP_NS_CSI)
               || ngx_xmpp_cm_str_is(ns, NGX_XMPP_NS_SM))
    {
        /* RFC 6120 4.9.3.12: data that needs authentication, before it */
        cl->kind = NGX_XMPP_CM_E_NOAUTH;

    } else {
        cl->kind = ngx_xmpp_cm_client_stream_level(e);
    }

    return ngx_xmpp_cm_client_start(cl, e);
}


/*
 * The authenticated policy (NGX_XMPP_CM_PHASE_STREAM).  An IQ still gets
 * the TLS check: Openfire may ask for TLS after a client authenticated
 * (a configuration IQ on a reconnect).
 */

static ngx_int_t
ngx_xmpp_cm_client_stream_start(void *data, ngx_xmpp_cm_elem_t *e)
{
    ngx_xmpp_cm_client_t *cl = data;

    ngx_str_t  *name;

    name = &e->name;

    if (ngx_xmpp_cm_str_is(&e->ns, NGX_XMPP_NS_CLIENT)) {

        if (ngx_xmpp_cm_str_is(name, "iq")) {
            cl->kind = ngx_xmpp_cm_client_tls(cl) == NGX_XMPP_CM_TLS_REQUIRED
                       ? NGX_XMPP_CM_E_NOAUTH : NGX_XMPP_CM_E_FORWARD;

        } else if (ngx_xmpp_cm_str_is(name, "message")
                   || ngx_xmpp_cm_str_is(name, "presence"))
        {
            cl->kind = NGX_XMPP_CM_E_FORWARD;

        } else {
            cl->kind = NGX_XMPP_CM_E_REFUSE;
        }

    } else if (ngx_xmpp_cm_str_is(&e->ns, NGX_XMPP_NS_CSI)
               && cl->conf->csi_hold_limit
               && (ngx_xmpp_cm_str_is(name, "active")
                   || ngx_xmpp_cm_str_is(name, "inactive")))
    {
        /* XEP-0352: handled here, Openfire's CM protocol cannot carry it */
        cl->kind = NGX_XMPP_CM_E_CSI;

    } else if (ngx_xmpp_cm_str_is(&e->ns, NGX_XMPP_NS_SM) && cl->conf->sm
               && (ngx_xmpp_cm_str_is(name, "enable")
                   || ngx_xmpp_cm_str_is(name, "r")
                   || ngx_xmpp_cm_str_is(name, "a")
                   || ngx_xmpp_cm_str_is(name, "resume")))
    {
        /* XEP-0198: handled here, never routed */
        cl->kind = NGX_XMPP_CM_E_SM;

    } else {
        cl->kind = ngx_xmpp_cm_client_stream_level(e);
    }

    return ngx_xmpp_cm_client_start(cl, e);
}


/* stream-level elements, the same in both phases */

static ngx_uint_t
ngx_xmpp_cm_client_stream_level(ngx_xmpp_cm_elem_t *e)
{
    ngx_str_t  *name, *ns;

    name = &e->name;
    ns = &e->ns;

    if (ngx_xmpp_cm_str_is(ns, NGX_XMPP_NS_TLS)
        && ngx_xmpp_cm_str_is(name, "starttls"))
    {
        return NGX_XMPP_CM_E_STARTTLS;
    }

    if (ngx_xmpp_cm_str_is(ns, NGX_XMPP_NS_STREAMS)
        && ngx_xmpp_cm_str_is(name, "error"))
    {
        return NGX_XMPP_CM_E_ERROR;
    }

    if (ngx_xmpp_cm_str_is(ns, NGX_XMPP_NS_COMPRESS)
        && ngx_xmpp_cm_str_is(name, "compress"))
    {
        return NGX_XMPP_CM_E_COMPRESS;
    }

    return NGX_XMPP_CM_E_REFUSE;
}


/* at a stanza's start tag: refused now, or what is needed at its end */

static ngx_int_t
ngx_xmpp_cm_client_start(ngx_xmpp_cm_client_t *cl, ngx_xmpp_cm_elem_t *e)
{
    ngx_str_t  type;

    cl->iq_request = 0;

    switch (cl->kind) {

    case NGX_XMPP_CM_E_NOAUTH:
        ngx_xmpp_cm_client_end(cl, "not-authorized",
                               ngx_xmpp_cm_client_tls(cl)
                               == NGX_XMPP_CM_TLS_REQUIRED
                               ? "TLS is required" : "authenticate first",
                               NULL, 0);
        return NGX_DONE;

    case NGX_XMPP_CM_E_REFUSE:
        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: client sent unsupported <%V xmlns=\"%V\">",
                      &e->name, &e->ns);
        ngx_xmpp_cm_client_end(cl, "unsupported-stanza-type", NULL, NULL, 0);
        return NGX_DONE;

    case NGX_XMPP_CM_E_FORWARD:
        if (e->attrs == NULL) {
            break;
        }

        if (ngx_xmpp_cm_str_is(&e->ns, NGX_XMPP_NS_CLIENT)) {
            /* what Openfire leaves to the CM: JIDs, types (jid.c) */
            ngx_xmpp_cm_stanza_check(e, cl->c->log);
        }

        if (ngx_xmpp_cm_str_is(&e->name, "auth")) {
            cl->mech_refused = !ngx_xmpp_cm_client_offered(cl, e->attrs);

            /* XEP-0198: which mechanism names the account, for resume */

            cl->sasl_mech = NGX_XMPP_CM_MECH_OTHER;
            ngx_str_null(&cl->account);

            if (ngx_xmpp_cm_client_attr(e->attrs, "", "mechanism", &type)) {
                if (ngx_xmpp_cm_str_is(&type, "PLAIN")) {
                    cl->sasl_mech = NGX_XMPP_CM_MECH_PLAIN;

                } else if (ngx_xmpp_cm_str_is(&type, "DIGEST-MD5")) {
                    cl->sasl_mech = NGX_XMPP_CM_MECH_DIGEST;

                } else if (ngx_xmpp_cm_str_is(&type, "SCRAM-SHA-1")
                           || ngx_xmpp_cm_str_is(&type, "SCRAM-SHA-256")
                           || ngx_xmpp_cm_str_is(&type, "SCRAM-SHA-512"))
                {
                    cl->sasl_mech = NGX_XMPP_CM_MECH_SCRAM;
                }
            }

        } else if (ngx_xmpp_cm_str_is(&e->name, "iq")) {
            cl->iq_request =
                ngx_xmpp_cm_client_attr(e->attrs, "", "type", &type) != NULL
                && (ngx_xmpp_cm_str_is(&type, "get")
                    || ngx_xmpp_cm_str_is(&type, "set"));
        }

        break;

    case NGX_XMPP_CM_E_SM:
        if (e->attrs) {
            /* XEP-0198's elements are empty: all is in the start tag */
            return ngx_xmpp_cm_client_sm(cl, e);
        }

        break;
    }

    return NGX_OK;
}


/*
 * Whether the client asks for a SASL mechanism offered to it.  Those the
 * CM hides (EXTERNAL, *-PLUS: they cannot succeed through a CM) and those
 * Openfire does not offer at all get <invalid-mechanism/> from the CM, as
 * Openfire would answer them, but without counting them as failed
 * attempts against the account (xmpp.auth.retries).
 */

static ngx_uint_t
ngx_xmpp_cm_client_offered(ngx_xmpp_cm_client_t *cl, const XML_Char **attrs)
{
    u_char     *p, *last, *n;
    size_t      len;
    ngx_str_t   mech;
    ngx_uint_t  i;
    u_char      needle[sizeof("<mechanism>") - 1 + 20
                       + sizeof("</mechanism>") - 1];

    if (ngx_xmpp_cm_client_attr(attrs, "", "mechanism", &mech) == NULL
        || mech.len == 0 || mech.len > 20)
    {
        return 0;
    }

    /* RFC 4422 3.1: 1 to 20 of A-Z, 0-9, '-' and '_' */

    for (i = 0; i < mech.len; i++) {
        if (!((mech.data[i] >= 'A' && mech.data[i] <= 'Z')
              || (mech.data[i] >= '0' && mech.data[i] <= '9')
              || mech.data[i] == '-' || mech.data[i] == '_'))
        {
            return 0;
        }
    }

    n = ngx_cpymem(needle, "<mechanism>", sizeof("<mechanism>") - 1);
    n = ngx_cpymem(n, mech.data, mech.len);
    n = ngx_cpymem(n, "</mechanism>", sizeof("</mechanism>") - 1);
    len = n - needle;

    p = cl->up->features.data;
    last = p + cl->up->features.len;

    for ( /* void */ ; (size_t) (last - p) >= len; p++) {
        if (ngx_memcmp(p, needle, len) == 0) {
            return 1;
        }
    }

    return 0;
}


static ngx_int_t
ngx_xmpp_cm_client_element(void *data, ngx_xmpp_cm_elem_t *e)
{
    ngx_xmpp_cm_client_t *cl = data;

    ngx_int_t  rc;

    static u_char  aborted[] = "<failure xmlns=\"" NGX_XMPP_NS_SASL "\">"
                               "<aborted/></failure>";
    static u_char  tls_failure[] = "<failure xmlns=\"" NGX_XMPP_NS_TLS "\"/>";
    static u_char  proceed[] = "<proceed xmlns=\"" NGX_XMPP_NS_TLS "\"/>";
    static u_char  encrypt[] = "<failure xmlns=\"" NGX_XMPP_NS_SASL "\">"
                               "<encryption-required/></failure>";
    static u_char  invalid_mech[] = "<failure xmlns=\"" NGX_XMPP_NS_SASL "\">"
                                    "<invalid-mechanism/></failure>";

    /* decided at the start tag by the phase's policy */

    switch (cl->kind) {

    case NGX_XMPP_CM_E_FORWARD:
        if (cl->mech_refused && ngx_xmpp_cm_str_is(&e->name, "auth")) {
            cl->mech_refused = 0;
            ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                          "xmpp_cm: client asked for a SASL mechanism "
                          "not offered");
            ngx_xmpp_cm_client_send(cl, invalid_mech,
                                    sizeof(invalid_mech) - 1);
            return NGX_OK;
        }

        if (ngx_xmpp_cm_str_is(&e->ns, NGX_XMPP_NS_SASL)) {
            /* RFC 6120 5.3.1: TLS comes before SASL, never during it */
            cl->sasl_started = 1;
            cl->sasl_pending = 1;

            if (cl->sasl_mech && cl->account.len == 0 && cl->conf->sm
                && cl->conf->resume_timeout)
            {
                ngx_xmpp_cm_client_sasl_account(cl, e);
            }

        } else if (!cl->authenticated && ngx_xmpp_cm_str_is(&e->name, "iq"))
        {
            ngx_xmpp_cm_client_iq_auth(cl, e);
        }

        if (e->reject || e->nshow > 1) {
            rc = ngx_xmpp_cm_client_reject(cl, e);

            if (rc == NGX_OK && cl->stream && cl->stream->sm) {
                /* XEP-0198: answered here, handled in its turn */
                ngx_xmpp_cm_sm_received(cl->stream, 1);
            }

            return rc;
        }

        rc = ngx_xmpp_cm_client_forward(cl, e);

        if (rc == NGX_OK && cl->stream && cl->stream->sm) {
            /* XEP-0198: counted when Openfire confirms the route */
            ngx_xmpp_cm_sm_received(cl->stream, 0);
        }

        if (rc == NGX_OK && cl->iq_request) {
            /* awaited even if the client half-closes its socket */
            cl->iq_pending++;
        }

        return rc;

    case NGX_XMPP_CM_E_ABORT:
        /* Openfire rejects <abort/> in a route; answer it here */
        ngx_xmpp_cm_client_send(cl, aborted, sizeof(aborted) - 1);
        return NGX_OK;

    case NGX_XMPP_CM_E_STARTTLS:
#if (NGX_STREAM_SSL)
        if (ngx_xmpp_cm_client_tls(cl) != NGX_XMPP_CM_TLS_OFF
            && !cl->authenticated && !cl->sasl_started)
        {
            ngx_xmpp_cm_client_send(cl, proceed, sizeof(proceed) - 1);
            ngx_xmpp_cm_client_phase(cl, NGX_XMPP_CM_PHASE_STARTTLS);
            cl->c->log->action = "in STARTTLS";

            /* stop: the rest of this read is not part of any stream */
            return NGX_DONE;
        }
#endif

        /* not offered: RFC 6120 5.4.2.2, failure and close */
        ngx_xmpp_cm_client_send(cl, tls_failure, sizeof(tls_failure) - 1);
        ngx_xmpp_cm_client_end(cl, NULL, NULL, (u_char *) "", 0);
        return NGX_DONE;

    case NGX_XMPP_CM_E_COMPRESS:
        return ngx_xmpp_cm_client_compress(cl, e);

    case NGX_XMPP_CM_E_CSI:
        if (ngx_xmpp_cm_str_is(&e->name, "inactive")) {
            cl->inactive = 1;

        } else {
            /* <active/>: what was held goes out first, in order */
            ngx_xmpp_cm_client_csi_flush(cl);
            cl->inactive = 0;
        }

        ngx_log_debug1(NGX_LOG_DEBUG_STREAM, cl->c->log, 0,
                       "xmpp_cm: client is %V", &e->name);
        return NGX_OK;

    case NGX_XMPP_CM_E_SM:
        /* handled at its start tag */
        return NGX_OK;

    case NGX_XMPP_CM_E_ENCRYPT:
        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: client tried SASL before the required TLS");
        ngx_xmpp_cm_client_send(cl, encrypt, sizeof(encrypt) - 1);
        return NGX_OK;

    case NGX_XMPP_CM_E_ERROR:
        /* RFC 6120 4.9.1.1: the stream ends; only </stream:stream> */
        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: client sent a stream error: %V",
                      e->cond.len ? &e->cond : &ngx_xmpp_cm_client_nocond);
        ngx_xmpp_cm_client_end(cl, NULL, NULL, (u_char *) "", 0);
        return NGX_DONE;

    default:
        /* refused at the start tag already */
        return ngx_xmpp_cm_client_start(cl, e);
    }
}


/*
 * XEP-0138: offered after authentication when xmpp_cm_compression is on
 * and Openfire's configuration offers compression to clients.
 */

static ngx_int_t
ngx_xmpp_cm_client_compress(ngx_xmpp_cm_client_t *cl, ngx_xmpp_cm_elem_t *e)
{
    u_char     buf[512], *p, *m, *end;
    size_t     len;

    static u_char  compressed[] = "<compressed xmlns=\"" NGX_XMPP_NS_COMPRESS
                                  "\"/>";
    static u_char  setup_failed[] = "<failure xmlns=\"" NGX_XMPP_NS_COMPRESS
                                    "\"><setup-failed/></failure>";
    static u_char  unsupported[] = "<failure xmlns=\"" NGX_XMPP_NS_COMPRESS
                                   "\"><unsupported-method/></failure>";

    if (cl->zlib || !cl->authenticated || !cl->conf->compression
        || !cl->up->cfg_compression || cl->s == NULL)
    {
        ngx_xmpp_cm_client_send(cl, setup_failed, sizeof(setup_failed) - 1);
        return NGX_OK;
    }

    /* <compress><method>zlib</method></compress>: a tiny element */

    len = ngx_xmpp_cm_xml_copy(cl->xml, NULL, e->start, e->end);

    if (len >= sizeof(buf)) {
        ngx_xmpp_cm_client_send(cl, unsupported, sizeof(unsupported) - 1);
        return NGX_OK;
    }

    (void) ngx_xmpp_cm_xml_copy(cl->xml, buf, e->start, e->end);
    end = buf + len;

    m = ngx_strlcasestrn(buf, end, (u_char *) "<method", 7 - 1);

    if (m) {
        m = ngx_strlchr(m, end, '>');
    }

    if (m == NULL) {
        ngx_xmpp_cm_client_send(cl, unsupported, sizeof(unsupported) - 1);
        return NGX_OK;
    }

    for (p = m + 1; p < end && ngx_xmpp_cm_is_space(*p); p++) {
        /* void */
    }

    if (end - p < 5 || ngx_strncmp(p, "zlib", 4) != 0
        || !(p[4] == '<' || ngx_xmpp_cm_is_space(p[4])))
    {
        ngx_xmpp_cm_client_send(cl, unsupported, sizeof(unsupported) - 1);
        return NGX_OK;
    }

    ngx_xmpp_cm_client_send(cl, compressed, sizeof(compressed) - 1);

    cl->zlib = ngx_xmpp_cm_zlib_create(cl->c->pool, cl->c->log,
                                       cl->up->worker);

    if (cl->zlib == NULL) {
        ngx_xmpp_cm_client_end(cl, "internal-server-error", NULL, NULL, 0);
        return NGX_DONE;
    }

    cl->zlib_pending = 1;
    cl->zstart = e->end;

    ngx_log_debug0(NGX_LOG_DEBUG_STREAM, cl->c->log, 0,
                   "xmpp_cm: stream compression on");

    return NGX_DONE;
}


static ngx_int_t
ngx_xmpp_cm_client_close(void *data)
{
    ngx_xmpp_cm_client_t *cl = data;

    ngx_log_debug0(NGX_LOG_DEBUG_STREAM, cl->c->log, 0,
                   "xmpp_cm: client closed its stream");

    ngx_xmpp_cm_client_end(cl, NULL, NULL, (u_char *) "", 0);

    return NGX_DONE;
}


/* output to the client, capped so a client that does not read is cut */

static void
ngx_xmpp_cm_client_send(ngx_xmpp_cm_client_t *cl, u_char *p, size_t len)
{
    ngx_xmpp_cm_client_out(cl, p, len, 1);
}


/* queues output, deflated once compression is on; flush ends a stanza */

static void
ngx_xmpp_cm_client_out(ngx_xmpp_cm_client_t *cl, u_char *p, size_t len,
    ngx_uint_t flush)
{
    ngx_int_t                 rc;
    ngx_connection_t         *c;
    ngx_xmpp_cm_transport_t  *t;

    c = cl->c;

    if (cl->s == NULL) {
        /* a web transport frames the stream's elements itself */
        t = ngx_xmpp_cm_client_transport(cl);
        rc = t->handler->output(t, p, len);

    } else if (cl->zlib && !cl->zlib_pending) {
        rc = ngx_xmpp_cm_zlib_deflate(cl->zlib, p, len, flush,
                                      ngx_xmpp_cm_client_deflated, cl);

    } else {
        rc = ngx_xmpp_cm_output_append(&cl->out, p, len);
    }

    if (rc != NGX_OK) {
        c->error = 1;
        return;
    }

    ngx_post_event(c->write, &ngx_posted_events);
}


static ngx_int_t
ngx_xmpp_cm_client_deflated(void *data, u_char *p, size_t n)
{
    ngx_xmpp_cm_client_t *cl = data;

    return ngx_xmpp_cm_output_append(&cl->out, p, n);
}


static ngx_uint_t
ngx_xmpp_cm_client_full(ngx_xmpp_cm_client_t *cl, size_t len)
{
    if (cl->out.size + len <= cl->conf->client_output_limit) {
        return 0;
    }

    ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                  "xmpp_cm: client is not reading: %uz bytes queued "
                  "(xmpp_cm_client_output_limit), closing it",
                  cl->out.size);

    ngx_xmpp_cm_client_end(cl, "policy-violation",
                           "too much unread data (client not reading)",
                           NULL, 0);

    return 1;
}


/*
 * A stanza (or SASL element) from Openfire for this client.  NGX_DECLINED:
 * not taken (the client is closing, or not reading and ended now); the
 * stream table answers it as for a closed stream.
 */

static ngx_int_t
ngx_xmpp_cm_client_deliver(ngx_xmpp_cm_conn_t *conn, ngx_xmpp_cm_xml_t *x,
    ngx_xmpp_cm_node_t *n)
{
    ngx_xmpp_cm_client_t *cl = (ngx_xmpp_cm_client_t *) conn;

    u_char      *p, *tmp;
    size_t       len, out;
    ngx_buf_t   *b;
    ngx_str_t    p1, p2;
    ngx_uint_t   success;

    len = ngx_xmpp_cm_xml_copy(x, NULL, n->start, n->end);

    if (cl->inactive && cl->phase != NGX_XMPP_CM_PHASE_CLOSING
        && ngx_xmpp_cm_client_csi_hold(cl, x, n, len) == NGX_OK)
    {
        return NGX_OK;
    }

    if (cl->phase == NGX_XMPP_CM_PHASE_CLOSING
        || ngx_xmpp_cm_client_full(cl, len))
    {
        return NGX_DECLINED;
    }

    if (ngx_xmpp_cm_str_is(&n->ns, NGX_XMPP_NS_STREAMS)
        && ngx_xmpp_cm_str_is(&n->name, "error"))
    {
        tmp = ngx_pnalloc(cl->up->tmp, len);
        if (tmp == NULL) {
            return NGX_OK;
        }

        (void) ngx_xmpp_cm_xml_copy(x, tmp, n->start, n->end);

        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: Openfire ended the session with a stream "
                      "error");

        ngx_xmpp_cm_client_end(cl, NULL, NULL, tmp, len);
        return NGX_OK;
    }

    success = ngx_xmpp_cm_str_is(&n->ns, NGX_XMPP_NS_SASL)
              && ngx_xmpp_cm_str_is(&n->name, "success");

    if (success && (cl->authenticated || !cl->sasl_pending)) {
        ngx_log_error(NGX_LOG_ERR, cl->c->log, 0,
                      "xmpp_cm: SASL success from Openfire outside SASL "
                      "negotiation on stream %V dropped", &cl->streamid);
        return NGX_OK;
    }

    if (n->has_xmlns && !ngx_xmpp_cm_str_is(&n->xmlns, NGX_XMPP_NS_CLIENT)
        && !success && !ngx_xmpp_cm_str_is(&n->ns, NGX_XMPP_NS_SASL))
    {
        tmp = ngx_pnalloc(cl->up->tmp, len);
        if (tmp == NULL) {
            return NGX_OK;
        }

        (void) ngx_xmpp_cm_xml_copy(x, tmp, n->start, n->end);

        out = ngx_xmpp_cm_strip_server_ns(NULL, tmp, len, n);
        p = ngx_pnalloc(cl->up->tmp, out);
        if (p == NULL) {
            return NGX_OK;
        }

        (void) ngx_xmpp_cm_strip_server_ns(p, tmp, len, n);
        ngx_xmpp_cm_client_out(cl, p, out, 1);
        p1.data = p;
        p1.len = out;
        ngx_str_null(&p2);

    } else if (cl->zlib || cl->s == NULL) {
        ngx_xmpp_cm_xml_pieces(x, n->start, n->end, &p1, &p2);
        ngx_xmpp_cm_client_out(cl, p1.data, p1.len, 0);
        ngx_xmpp_cm_client_out(cl, p2.data, p2.len, 1);

    } else {
        b = ngx_xmpp_cm_output_buf(&cl->out, len, 0);
        if (b == NULL) {
            return NGX_OK;
        }

        p1.data = b->last;
        p1.len = ngx_xmpp_cm_xml_copy(x, b->last, n->start, n->end);
        ngx_str_null(&p2);
        b->last += p1.len;
    }

    if (cl->stream && cl->stream->sm
        && !ngx_xmpp_cm_str_is(&n->ns, NGX_XMPP_NS_SASL))
    {
        /* XEP-0198: kept until the client acknowledges it */
        ngx_xmpp_cm_client_sm_kept(cl, p1.data, p1.len, p2.data, p2.len);
    }

    ngx_xmpp_cm_count_relay(cl->up, TO_CLIENT, len);

    ngx_post_event(cl->c->write, &ngx_posted_events);

    if (ngx_xmpp_cm_str_is(&n->ns, NGX_XMPP_NS_SASL)
        && ngx_xmpp_cm_str_is(&n->name, "failure"))
    {
        ngx_xmpp_cm_count(cl->up, LOGIN_FAILURE);
        cl->sasl_pending = 0;
    }

    if (success) {
        ngx_xmpp_cm_client_success(cl);

    } else if (cl->heap.iq_auth && !cl->authenticated
               && ngx_xmpp_cm_str_is(&n->name, "iq"))
    {
        ngx_xmpp_cm_client_iq_auth_result(cl, n);

    } else if (cl->jid.len == 0 && ngx_xmpp_cm_str_is(&n->name, "iq")) {
        ngx_xmpp_cm_client_bound(cl, n);
    }

    if (cl->iq_pending && ngx_xmpp_cm_str_is(&n->name, "iq")) {
        ngx_xmpp_cm_client_replied(cl, n);
    }

    return NGX_OK;
}


/*
 * XEP-0352: a stanza from Openfire for an inactive client.  NGX_OK: held
 * (or dropped in favour of a newer presence of the same sender).
 * NGX_DECLINED: it goes out now, after what was held before it, which is
 * written here first: an urgent stanza, or one that would take the held
 * bytes past xmpp_cm_csi_hold_limit (nothing is dropped for the bound).
 */

static ngx_int_t
ngx_xmpp_cm_client_csi_hold(ngx_xmpp_cm_client_t *cl, ngx_xmpp_cm_xml_t *x,
    ngx_xmpp_cm_node_t *n, size_t len)
{
    u_char               *tmp, *data;
    size_t                size;
    ngx_str_t            *from;
    ngx_xmpp_cm_csi_t    *csi;
    ngx_xmpp_cm_held_t   *h, *old, **hp;

    from = NULL;

    if (ngx_xmpp_cm_client_csi_urgent(n, &from)) {
        ngx_xmpp_cm_client_csi_flush(cl);
        return NGX_DECLINED;
    }

    csi = cl->heap.csi;

    if ((csi ? csi->size : 0) + len > cl->conf->csi_hold_limit) {
        ngx_log_debug1(NGX_LOG_DEBUG_STREAM, cl->c->log, 0,
                       "xmpp_cm: csi hold limit reached, %uz bytes written",
                       csi ? csi->size : 0);
        ngx_xmpp_cm_client_csi_flush(cl);
        return NGX_DECLINED;
    }

    if (csi == NULL) {
        csi = ngx_alloc(sizeof(ngx_xmpp_cm_csi_t), cl->c->log);
        if (csi == NULL) {
            return NGX_DECLINED;
        }

        csi->head = NULL;
        csi->last = &csi->head;
        csi->size = 0;
        cl->heap.csi = csi;
    }

    /* the bytes as deliver() writes them: server namespaces removed */

    tmp = NULL;
    size = len;

    if (n->has_xmlns && !ngx_xmpp_cm_str_is(&n->xmlns, NGX_XMPP_NS_CLIENT)) {
        tmp = ngx_pnalloc(cl->up->tmp, len);
        if (tmp == NULL) {
            goto failed;
        }

        (void) ngx_xmpp_cm_xml_copy(x, tmp, n->start, n->end);
        size = ngx_xmpp_cm_strip_server_ns(NULL, tmp, len, n);
    }

    h = ngx_alloc(sizeof(ngx_xmpp_cm_held_t) + size
                  + (from ? from->len : 0), cl->c->log);
    if (h == NULL) {
        goto failed;
    }

    data = (u_char *) (h + 1);

    if (tmp) {
        (void) ngx_xmpp_cm_strip_server_ns(data, tmp, len, n);

    } else {
        (void) ngx_xmpp_cm_xml_copy(x, data, n->start, n->end);
    }

    h->next = NULL;
    h->len = size;
    h->presence = ngx_xmpp_cm_str_is(&n->name, "presence");
    h->from_len = 0;

    if (from) {
        h->from_len = from->len;
        ngx_memcpy(data + size, from->data, from->len);
    }

    /* a presence replaces the one held for the same sender */

    if (h->presence) {
        for (hp = &csi->head; *hp; hp = &(*hp)->next) {
            if ((*hp)->presence && (*hp)->from_len == h->from_len
                && ngx_memcmp((u_char *) (*hp + 1) + (*hp)->len,
                              data + size, h->from_len) == 0)
            {
                break;
            }
        }

        if (*hp) {
            old = *hp;
            *hp = old->next;

            if (csi->last == &old->next) {
                csi->last = hp;
            }

            csi->size -= old->len;
            ngx_free(old);
        }
    }

    *csi->last = h;
    csi->last = &h->next;
    csi->size += size;

    ngx_log_debug2(NGX_LOG_DEBUG_STREAM, cl->c->log, 0,
                   "xmpp_cm: csi held %uz bytes, %uz in all", size,
                   csi->size);

    return NGX_OK;

failed:

    /* not held: it goes out now, so what was held before it goes first */
    ngx_xmpp_cm_client_csi_flush(cl);

    return NGX_DECLINED;
}


/*
 * What may wait for an inactive client (docs/architecture.md, "Client
 * state indication"): presence updates (available or unavailable, no
 * type other than that) and messages with no body that carry only chat
 * states, receipts, chat markers, PEP events and their decorations.
 * Anything else is urgent: IQs, SASL, stream errors, presence
 * subscriptions and errors, messages with a body, a subject, an invite,
 * an error type, carbons, MAM results, encrypted payloads, calls.
 */

static ngx_uint_t
ngx_xmpp_cm_client_csi_urgent(ngx_xmpp_cm_node_t *n, ngx_str_t **from)
{
    ngx_str_t           *type;
    ngx_uint_t           i;
    ngx_xmpp_cm_node_t  *c;

    static char  *held[] = {
        "http://jabber.org/protocol/chatstates",
        "urn:xmpp:receipts",
        "urn:xmpp:chat-markers:0",
        "http://jabber.org/protocol/pubsub#event",
        "urn:xmpp:hints",
        "urn:xmpp:sid:0",
        "urn:xmpp:delay",
        NULL
    };

    type = ngx_xmpp_cm_node_attr(n, "type");

    if (ngx_xmpp_cm_str_is(&n->name, "presence")) {
        if (type == NULL || ngx_xmpp_cm_str_is(type, "unavailable")) {
            *from = ngx_xmpp_cm_node_attr(n, "from");
            return 0;
        }

        return 1;
    }

    if (!ngx_xmpp_cm_str_is(&n->name, "message") || n->child == NULL
        || (type && ngx_xmpp_cm_str_is(type, "error")))
    {
        return 1;
    }

    for (c = n->child; c; c = c->next) {
        if (ngx_xmpp_cm_str_is(&c->name, "thread")) {
            continue;
        }

        for (i = 0; held[i]; i++) {
            if (ngx_xmpp_cm_str_is(&c->ns, held[i])) {
                break;
            }
        }

        if (held[i] == NULL) {
            return 1;
        }
    }

    return 0;
}


/* what was held is written, in order, and its memory goes back */

static void
ngx_xmpp_cm_client_csi_flush(ngx_xmpp_cm_client_t *cl)
{
    ngx_xmpp_cm_csi_t   *csi;
    ngx_xmpp_cm_held_t  *h, *next;

    csi = cl->heap.csi;

    if (csi == NULL) {
        return;
    }

    /* an end on the way (XEP-0198's bound) finds nothing held */
    cl->heap.csi = NULL;

    for (h = csi->head; h; h = next) {
        next = h->next;

        /*
         * XEP-0198: kept until acknowledged.  Once the connection ends
         * (over the bound of what is kept), the rest is kept only, to go
         * back to Openfire with the stream.
         */

        if (cl->stream && cl->stream->sm) {
            if (cl->phase == NGX_XMPP_CM_PHASE_CLOSING) {
                (void) ngx_xmpp_cm_sm_queue(cl->stream->sm,
                                            (u_char *) (h + 1), h->len,
                                            NULL, 0);
                ngx_free(h);
                continue;
            }

            ngx_xmpp_cm_client_sm_kept(cl, (u_char *) (h + 1), h->len,
                                       NULL, 0);
        }

        if (cl->phase != NGX_XMPP_CM_PHASE_CLOSING || cl->stream == NULL
            || cl->stream->sm == NULL)
        {
            ngx_xmpp_cm_client_out(cl, (u_char *) (h + 1), h->len,
                                   next == NULL);
            ngx_xmpp_cm_count_relay(cl->up, TO_CLIENT, h->len);
        }

        ngx_free(h);
    }

    ngx_free(csi);
}


static void
ngx_xmpp_cm_client_csi_free(ngx_xmpp_cm_client_t *cl)
{
    ngx_xmpp_cm_held_t  *h, *next;

    for (h = cl->heap.csi->head; h; h = next) {
        next = h->next;
        ngx_free(h);
    }

    ngx_free(cl->heap.csi);
    cl->heap.csi = NULL;
}


/*
 * XEP-0198 stream management: the elements, handled here at their start
 * tag (they are empty), never routed.  The state that outlives the
 * connection is the stream's (ngx_stream_xmpp_cm_sm.c).
 */

static ngx_int_t
ngx_xmpp_cm_client_sm(ngx_xmpp_cm_client_t *cl, ngx_xmpp_cm_elem_t *e)
{
    u_char            *p, buf[sizeof("<enabled xmlns=\"" NGX_XMPP_NS_SM
                                     "\" id=\"\" resume=\"true\" max=\"\"/>")
                              + NGX_XMPP_CM_ID_LEN + NGX_INT_T_LEN];
    ngx_int_t          n;
    ngx_str_t          v, previd;
    ngx_msec_t         max;
    ngx_xmpp_cm_sm_t  *sm;

    sm = cl->stream ? cl->stream->sm : NULL;

    if (ngx_xmpp_cm_str_is(&e->name, "enable")) {

        /* XEP-0198 3: once, and after resource binding */

        if (cl->stream == NULL || sm || cl->jid.len == 0) {
            ngx_xmpp_cm_client_sm_failed(cl, "unexpected-request");
            return NGX_OK;
        }

        sm = ngx_xmpp_cm_sm_create(cl->stream, &cl->jid, cl->c->log);
        if (sm == NULL) {
            ngx_xmpp_cm_client_sm_failed(cl, "internal-server-error");
            return NGX_OK;
        }

        cl->stream->sm = sm;
        ngx_xmpp_cm_count(cl->up, SM);
        sm->limit = cl->conf->client_output_limit;

        if (cl->conf->resume_timeout
            && ngx_xmpp_cm_client_attr(e->attrs, "", "resume", &v)
            && (ngx_xmpp_cm_str_is(&v, "true") || ngx_xmpp_cm_str_is(&v, "1")))
        {
            sm->resume = 1;
            max = cl->conf->resume_timeout;

            /* the client's preferred maximum, when shorter (seconds) */

            if (ngx_xmpp_cm_client_attr(e->attrs, "", "max", &v)) {
                n = ngx_atoi(v.data, v.len);

                if (n > 0 && n < 86400 && (ngx_msec_t) n * 1000 < max) {
                    max = (ngx_msec_t) n * 1000;
                }
            }

            sm->max = max;

            p = ngx_sprintf(buf, "<enabled xmlns=\"" NGX_XMPP_NS_SM "\" "
                            "id=\"%V\" resume=\"true\" max=\"%M\"/>",
                            &cl->stream->node.str,
                            (max + 999) / 1000);

        } else {
            p = ngx_sprintf(buf, "<enabled xmlns=\"" NGX_XMPP_NS_SM "\"/>");
        }

        ngx_xmpp_cm_client_send(cl, buf, p - buf);

        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: stream management enabled on %V%s",
                      &cl->streamid, sm->resume ? ", resumable" : "");
        return NGX_OK;
    }

    if (ngx_xmpp_cm_str_is(&e->name, "resume")) {

        /* XEP-0198 5: instead of resource binding, not after it */

        if (cl->stream == NULL || sm || cl->jid.len) {
            ngx_xmpp_cm_client_sm_failed(cl, "unexpected-request");
            return NGX_OK;
        }

        if (ngx_xmpp_cm_client_attr(e->attrs, "", "previd", &previd) == NULL
            || ngx_xmpp_cm_client_attr(e->attrs, "", "h", &v) == NULL
            || (n = ngx_atoi(v.data, v.len)) == NGX_ERROR
            || (uint64_t) n > NGX_MAX_UINT32_VALUE)
        {
            ngx_xmpp_cm_client_end(cl, "bad-format",
                                   "<resume/> needs previd and h", NULL, 0);
            return NGX_DONE;
        }

        if (ngx_xmpp_cm_client_resume(cl, &cl->account, &previd,
                                      (uint32_t) n)
            == NGX_DECLINED
            && ngx_xmpp_cm_client_handoff(cl, &previd, (uint32_t) n)
               == NGX_DONE)
        {
            /* another worker's stream: handed to it, its answer awaited */
            return NGX_DONE;
        }

        return cl->phase == NGX_XMPP_CM_PHASE_CLOSING ? NGX_DONE : NGX_OK;
    }

    if (sm == NULL) {
        /* <r/> or <a/> before <enable/>: nothing is counted */
        ngx_xmpp_cm_client_end(cl, "unsupported-stanza-type",
                               "stream management is not enabled", NULL, 0);
        return NGX_DONE;
    }

    if (ngx_xmpp_cm_str_is(&e->name, "r")) {
        if (ngx_xmpp_cm_sm_request(cl->stream)) {
            ngx_xmpp_cm_client_sm_answer(cl);

        } else {
            /* answered when Openfire confirms (client_confirmed) */
            ngx_xmpp_cm_stream_confirm_now(cl->stream);
        }

        return NGX_OK;
    }

    /* <a h/> */

    if (ngx_xmpp_cm_client_attr(e->attrs, "", "h", &v) == NULL
        || (n = ngx_atoi(v.data, v.len)) == NGX_ERROR
        || (uint64_t) n > NGX_MAX_UINT32_VALUE)
    {
        ngx_xmpp_cm_client_end(cl, "bad-format", "<a/> needs h", NULL, 0);
        return NGX_DONE;
    }

    if (ngx_xmpp_cm_sm_ack(sm, (uint32_t) n) != NGX_OK) {
        p = ngx_pnalloc(cl->c->pool, sizeof("<stream:error>"
                        "<undefined-condition xmlns=\"" NGX_XMPP_NS_XSTREAMS
                        "\"/><handled-count-too-high xmlns=\"" NGX_XMPP_NS_SM
                        "\" h=\"\" send-count=\"\"/></stream:error>")
                        + 2 * NGX_INT_T_LEN);
        if (p == NULL) {
            ngx_xmpp_cm_client_end(cl, "undefined-condition", NULL, NULL, 0);
            return NGX_DONE;
        }

        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: client acknowledged %i stanzas, %uD were "
                      "sent", n, sm->sent);

        ngx_xmpp_cm_metrics_stream_error(cl->up, "undefined-condition");

        v.data = p;
        v.len = ngx_sprintf(p, "<stream:error><undefined-condition xmlns=\""
                            NGX_XMPP_NS_XSTREAMS "\"/><handled-count-too-high"
                            " xmlns=\"" NGX_XMPP_NS_SM "\" h=\"%i\" "
                            "send-count=\"%uD\"/></stream:error>",
                            n, sm->sent)
                - p;

        ngx_xmpp_cm_client_end(cl, NULL, NULL, v.data, v.len);
        return NGX_DONE;
    }

    /* any <a/> answers our <r/> */

    sm->r_out = 0;

    if (sm->count == 0) {
        if (cl->c->write->timer_set) {
            ngx_del_timer(cl->c->write);
        }

    } else if (!cl->c->write->timer_set) {
        cl->c->write->cancelable = 1;
        ngx_add_timer(cl->c->write, NGX_XMPP_CM_SM_R_DELAY);
    }

    return NGX_OK;
}


/* XEP-0198 <failed/> with a stanza error condition: the stream goes on */

static void
ngx_xmpp_cm_client_sm_failed(ngx_xmpp_cm_client_t *cl, char *cond)
{
    u_char  *p, buf[sizeof("<failed xmlns=\"" NGX_XMPP_NS_SM "\"><"
                           " xmlns=\"" NGX_XMPP_NS_STANZAS "\"/></failed>")
                    + 32];

    p = ngx_snprintf(buf, sizeof(buf), "<failed xmlns=\"" NGX_XMPP_NS_SM
                     "\"><%s xmlns=\"" NGX_XMPP_NS_STANZAS "\"/></failed>",
                     cond);

    ngx_xmpp_cm_client_send(cl, buf, p - buf);
}


/* <a h/> for the client's <r/>: h covers what came before the <r/> */

static void
ngx_xmpp_cm_client_sm_answer(ngx_xmpp_cm_client_t *cl)
{
    u_char  *p, buf[sizeof("<a xmlns=\"" NGX_XMPP_NS_SM "\" h=\"\"/>")
                    + NGX_INT_T_LEN];

    p = ngx_sprintf(buf, "<a xmlns=\"" NGX_XMPP_NS_SM "\" h=\"%uD\"/>",
                    cl->stream->sm->h);

    ngx_xmpp_cm_client_send(cl, buf, p - buf);
}


/* Openfire confirmed routes of this stream: a waiting <r/> is answered */

static void
ngx_xmpp_cm_client_confirmed(ngx_xmpp_cm_conn_t *conn)
{
    ngx_xmpp_cm_client_t *cl = (ngx_xmpp_cm_client_t *) conn;

    if (cl->phase == NGX_XMPP_CM_PHASE_CLOSING || cl->stream == NULL) {
        return;
    }

    ngx_xmpp_cm_client_sm_answer(cl);
}


/* our <r/>: at most one unanswered */

static void
ngx_xmpp_cm_client_sm_request(ngx_xmpp_cm_client_t *cl)
{
    ngx_xmpp_cm_sm_t  *sm;

    static u_char  r[] = "<r xmlns=\"" NGX_XMPP_NS_SM "\"/>";

    sm = cl->stream->sm;

    ngx_xmpp_cm_client_send(cl, r, sizeof(r) - 1);

    sm->r_out = 1;
    sm->requested = sm->sent;
    sm->requested_size = 0;

    if (cl->c->write->timer_set) {
        ngx_del_timer(cl->c->write);
    }
}


/* a stanza for the client: written, and with XEP-0198 kept */

static void
ngx_xmpp_cm_client_stanza_out(ngx_xmpp_cm_client_t *cl, u_char *p1,
    size_t len1, u_char *p2, size_t len2)
{
    if (cl->stream && cl->stream->sm) {
        ngx_xmpp_cm_client_sm_kept(cl, p1, len1, p2, len2);

        if (cl->phase == NGX_XMPP_CM_PHASE_CLOSING) {
            /* over the bound: kept, to go back with the stream */
            return;
        }
    }

    if (len2) {
        ngx_xmpp_cm_client_out(cl, p1, len1, 0);
        ngx_xmpp_cm_client_out(cl, p2, len2, 1);

    } else {
        ngx_xmpp_cm_client_out(cl, p1, len1, 1);
    }
}


/*
 * Keeps a stanza written to the client until it is acknowledged, and
 * asks for an ack: after NGX_XMPP_CM_SM_R_COUNT stanzas or
 * NGX_XMPP_CM_SM_R_BYTES bytes since the last <r/>, else
 * NGX_XMPP_CM_SM_R_DELAY after the write (the write event's timer), with
 * at most one <r/> unanswered.  More than xmpp_cm_client_output_limit
 * bytes kept is a stream error: the client does not acknowledge.
 */

static void
ngx_xmpp_cm_client_sm_kept(ngx_xmpp_cm_client_t *cl, u_char *p1,
    size_t len1, u_char *p2, size_t len2)
{
    ngx_xmpp_cm_sm_t  *sm;

    sm = cl->stream->sm;

    if (ngx_xmpp_cm_sm_queue(sm, p1, len1, p2, len2) != NGX_OK) {
        ngx_xmpp_cm_client_end(cl, "internal-server-error", NULL, NULL, 0);
        return;
    }

    sm->requested_size += len1 + len2;

    if (cl->phase != NGX_XMPP_CM_PHASE_STREAM) {
        return;
    }

    if (sm->size > sm->limit) {
        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: client does not acknowledge: %ui stanzas, "
                      "%uz bytes kept (xmpp_cm_client_output_limit), "
                      "closing it", sm->count, sm->size);

        ngx_xmpp_cm_client_end(cl, "policy-violation",
                               "too many unacknowledged stanzas", NULL, 0);
        return;
    }

    if (sm->r_out) {
        return;
    }

    if (sm->sent - sm->requested >= NGX_XMPP_CM_SM_R_COUNT
        || sm->requested_size >= NGX_XMPP_CM_SM_R_BYTES)
    {
        ngx_xmpp_cm_client_sm_request(cl);
        return;
    }

    if (!cl->c->write->timer_set) {
        cl->c->write->cancelable = 1;
        ngx_add_timer(cl->c->write, NGX_XMPP_CM_SM_R_DELAY);
    }
}


/*
 * XEP-0198 5: an authenticated connection, not bound yet, takes over
 * the stream previd names, if it belongs to the same account.  The entry
 * point for a resumption; NGX_DECLINED when previd names another worker
 * (nothing sent: the caller decides), else NGX_OK with <resumed/> or
 * <failed/> sent (the held stream untouched on failure).
 */

static ngx_int_t
ngx_xmpp_cm_client_resume(ngx_xmpp_cm_client_t *cl, ngx_str_t *account,
    ngx_str_t *previd, uint32_t h)
{
    u_char                *p, buf[sizeof("<resumed xmlns=\"" NGX_XMPP_NS_SM
                                         "\" previd=\"\" h=\"\"/>")
                                  + NGX_XMPP_CM_ID_LEN + NGX_INT_T_LEN];
    ngx_pid_t              pid;
    ngx_xmpp_cm_sm_t      *sm;
    ngx_xmpp_cm_stream_t  *s, *own;

    if (ngx_xmpp_cm_sm_previd(previd, &pid) == NGX_OK && pid != ngx_pid) {
        return NGX_DECLINED;
    }

    s = ngx_xmpp_cm_stream_find(cl->up, previd);
    sm = s ? s->sm : NULL;

    if (sm == NULL || !sm->resume || s == cl->stream) {
        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: resumption of unknown or expired stream "
                      "\"%V\" refused", previd);
        ngx_xmpp_cm_count(cl->up, SM_RESUME_FAILED);
        ngx_xmpp_cm_client_sm_failed(cl, "item-not-found");
        return NGX_OK;
    }

    if (account->len == 0) {
        /* ANONYMOUS, EXTERNAL, a mechanism that names no account */
        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: resumption of %V refused: the account of "
                      "this connection is not known", previd);
        ngx_xmpp_cm_count(cl->up, SM_RESUME_FAILED);
        ngx_xmpp_cm_client_sm_failed(cl, "not-authorized");
        return NGX_OK;
    }

    if (account->len != sm->account.len
        || ngx_strncasecmp(account->data, sm->account.data, account->len)
           != 0)
    {
        /* as for an unknown id: says nothing about other accounts */
        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: resumption of %V by %V refused: the stream "
                      "belongs to another account", previd, account);
        ngx_xmpp_cm_count(cl->up, SM_RESUME_FAILED);
        ngx_xmpp_cm_client_sm_failed(cl, "item-not-found");
        return NGX_OK;
    }

    if (ngx_xmpp_cm_sm_ack(sm, h) != NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: resumption of %V refused: h %uD, %uD sent",
                      previd, h, sm->sent);
        ngx_xmpp_cm_count(cl->up, SM_RESUME_FAILED);
        ngx_xmpp_cm_client_sm_failed(cl, "unexpected-request");
        return NGX_OK;
    }

    /* the new connection's own session (never bound) is closed now */

    own = cl->stream;

    if (own) {
        /* a connection relayed from another worker has none */
        cl->stream = NULL;
        own->discard = 1;
        ngx_xmpp_cm_stream_detach(own);
    }

    ngx_xmpp_cm_stream_take(s, &cl->conn, "conflict",
                            "the stream was resumed on another connection");

    cl->stream = s;
    ngx_xmpp_cm_count(cl->up, SM_RESUMED);

    cl->streamid.data = ngx_pstrdup(cl->c->pool, &s->node.str);
    cl->streamid.len = cl->streamid.data ? s->node.str.len : 0;

    cl->jid.data = ngx_pstrdup(cl->c->pool, &sm->jid);
    cl->jid.len = cl->jid.data ? sm->jid.len : 0;

    p = ngx_sprintf(buf, "<resumed xmlns=\"" NGX_XMPP_NS_SM "\" "
                    "previd=\"%V\" h=\"%uD\"/>", &s->node.str, sm->h);

    ngx_xmpp_cm_client_send(cl, buf, p - buf);

    ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                  "xmpp_cm: stream %V resumed as %V, %ui stanzas sent again",
                  &s->node.str, &cl->jid, sm->count);

    /* what the client has not acknowledged, then what came meanwhile */

    (void) ngx_xmpp_cm_sm_walk(sm, ngx_xmpp_cm_client_resend, cl);

    if (sm->count) {
        ngx_xmpp_cm_client_sm_request(cl);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_xmpp_cm_client_resend(void *data, u_char *p, size_t len)
{
    ngx_xmpp_cm_client_t *cl = data;

    ngx_xmpp_cm_client_out(cl, p, len, 1);
    ngx_xmpp_cm_count_relay(cl->up, TO_CLIENT, len);
    ngx_xmpp_cm_count(cl->up, SM_RESENT);

    return NGX_OK;
}


/*
 * XEP-0198: the account a SASL message names (the mechanisms of
 * ngx_xmpp_cm_sm_account), kept for a resumption; it is trusted only
 * once Openfire's <success/> authenticated this connection, and a new
 * <auth> forgets it.
 */

static void
ngx_xmpp_cm_client_sasl_account(ngx_xmpp_cm_client_t *cl,
    ngx_xmpp_cm_elem_t *e)
{
    u_char     *raw, *p, *q, *end;
    size_t      len;
    ngx_str_t   src, dec, mech;

    static const ngx_str_t  mechs[] = {
        ngx_null_string,
        ngx_string("PLAIN"),
        ngx_string("SCRAM"),
        ngx_string("DIGEST-MD5")
    };

    if (e->body == 0 || e->body_end <= e->body || e->body_end > e->end) {
        return;
    }

    len = ngx_xmpp_cm_xml_copy(cl->xml, NULL, e->body, e->body_end);

    if (len == 0 || len > 4096) {
        return;
    }

    raw = ngx_alloc(len + ngx_base64_decoded_length(len), cl->c->log);
    if (raw == NULL) {
        return;
    }

    (void) ngx_xmpp_cm_xml_copy(cl->xml, raw, e->body, e->body_end);

    /* base64 without the white space a client may put in */

    q = raw;
    end = raw + len;

    for (p = raw; p < end; p++) {
        if (!ngx_xmpp_cm_is_space(*p)) {
            *q++ = *p;
        }
    }

    src.data = raw;
    src.len = q - raw;
    dec.data = raw + len;

    if (src.len && ngx_decode_base64(&dec, &src) == NGX_OK) {
        mech = mechs[cl->sasl_mech];

        if (cl->sasl_mech == NGX_XMPP_CM_MECH_SCRAM) {
            mech.len = sizeof("SCRAM-") - 1;
            mech.data = (u_char *) "SCRAM-";
        }

        if (ngx_xmpp_cm_sm_account(cl->c->pool, &mech, &dec, &cl->domain,
                                   &cl->account)
            != NGX_OK)
        {
            ngx_str_null(&cl->account);
        }
    }

    ngx_free(raw);
}


/*
 * XEP-0078 (Openfire's Non-SASL Authentication plugin): a jabber:iq:auth
 * set before authentication.  Its id and the JID it asks for are kept
 * until Openfire answers that id; a result authenticates and binds the
 * stream at once (no restart).  The stanza was checked by the client's
 * framer already; it is read again as a tree.
 */

static void
ngx_xmpp_cm_client_iq_auth(ngx_xmpp_cm_client_t *cl, ngx_xmpp_cm_elem_t *e)
{
    u_char  *buf;
    size_t   len;

    len = ngx_xmpp_cm_xml_copy(cl->xml, NULL, e->start, e->end);

    buf = ngx_alloc(len, cl->c->log);
    if (buf == NULL) {
        return;
    }

    (void) ngx_xmpp_cm_xml_copy(cl->xml, buf, e->start, e->end);

    (void) ngx_xmpp_cm_xml_fragment(cl->c->log, cl->up->worker->parking,
                                    buf, len, 1, len,
                                    cl->conf->max_depth,
                                    ngx_xmpp_cm_client_iq_auth_set, cl);
    ngx_free(buf);
}


static ngx_int_t
ngx_xmpp_cm_client_iq_auth_set(void *data, ngx_xmpp_cm_elem_t *e)
{
    ngx_xmpp_cm_client_t *cl = data;

    u_char                 *p;
    ngx_str_t              *type, *id, user, res;
    ngx_xmpp_cm_node_t     *query, *n;
    ngx_xmpp_cm_iq_auth_t  *a;

    if (e->root == NULL) {
        return NGX_OK;
    }

    type = ngx_xmpp_cm_node_attr(e->root, "type");
    id = ngx_xmpp_cm_node_attr(e->root, "id");
    query = ngx_xmpp_cm_node_child(e->root, "query");

    if (type == NULL || !ngx_xmpp_cm_str_is(type, "set")
        || id == NULL || id->len == 0 || id->len > 3071
        || query == NULL || !ngx_xmpp_cm_str_is(&query->ns, NGX_XMPP_NS_IQAUTH))
    {
        return NGX_OK;
    }

    /* Openfire refuses a set without both (not-authorized, not-acceptable) */

    ngx_str_null(&user);
    ngx_str_null(&res);

    n = ngx_xmpp_cm_node_child(query, "username");
    if (n) {
        user = n->text;
    }

    n = ngx_xmpp_cm_node_child(query, "resource");
    if (n) {
        res = n->text;
    }

    if (user.len == 0 || user.len > 1023 || res.len == 0 || res.len > 1023) {
        return NGX_OK;
    }

    a = ngx_alloc(sizeof(ngx_xmpp_cm_iq_auth_t) + id->len + user.len + 1
                  + cl->domain.len + 1 + res.len, cl->c->log);
    if (a == NULL) {
        return NGX_OK;
    }

    p = (u_char *) (a + 1);

    a->id.data = p;
    a->id.len = id->len;
    p = ngx_cpymem(p, id->data, id->len);

    /* Openfire lower-cases the username */

    a->jid.data = p;
    ngx_strlow(p, user.data, user.len);
    p += user.len;
    *p++ = '@';
    p = ngx_cpymem(p, cl->domain.data, cl->domain.len);
    *p++ = '/';
    p = ngx_cpymem(p, res.data, res.len);
    a->jid.len = p - a->jid.data;

    if (cl->heap.iq_auth) {
        ngx_free(cl->heap.iq_auth);
    }

    cl->heap.iq_auth = a;

    return NGX_OK;
}


/*
 * Openfire's answer to the pending jabber:iq:auth set: a result
 * authenticates and binds.  IQAuthHandler addresses it to the new full
 * JID, which then names the stream (else the JID asked for does); a
 * result to the pre-bind address (no '@') answers another IQ that reused
 * the id, and an error leaves the stream unauthenticated.
 */

static void
ngx_xmpp_cm_client_iq_auth_result(ngx_xmpp_cm_client_t *cl,
    ngx_xmpp_cm_node_t *iq)
{
    ngx_str_t              *id, *type, *to, *jid;
    ngx_xmpp_cm_iq_auth_t  *a;

    a = cl->heap.iq_auth;
    id = ngx_xmpp_cm_node_attr(iq, "id");
    type = ngx_xmpp_cm_node_attr(iq, "type");
    to = ngx_xmpp_cm_node_attr(iq, "to");

    if (id == NULL || type == NULL || id->len != a->id.len
        || ngx_strncmp(id->data, a->id.data, id->len) != 0)
    {
        return;
    }

    cl->heap.iq_auth = NULL;
    ngx_xmpp_cm_metrics_iq_auth(cl->up, type);

    jid = to ? to : &a->jid;

    if (ngx_xmpp_cm_str_is(type, "result") && !cl->authenticated
        && jid->len && jid->len <= 3071
        && ngx_strlchr(jid->data, jid->data + jid->len, '@'))
    {
        cl->jid.data = ngx_pstrdup(cl->c->pool, jid);

        if (cl->jid.data) {
            cl->jid.len = jid->len;
            ngx_xmpp_cm_client_authenticated(cl);

            ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                          "xmpp_cm: client stream %V authenticated (legacy "
                          "jabber:iq:auth) and bound as %V",
                          &cl->streamid, &cl->jid);
        }
    }

    ngx_free(a);
}


/* the bind result names the full JID: kept for logs and $xmpp_cm_jid */

static void
ngx_xmpp_cm_client_bound(ngx_xmpp_cm_client_t *cl, ngx_xmpp_cm_node_t *iq)
{
    ngx_str_t           *type;
    ngx_xmpp_cm_node_t  *bind, *jid;

    type = ngx_xmpp_cm_node_attr(iq, "type");
    bind = ngx_xmpp_cm_node_child(iq, "bind");

    if (type == NULL || !ngx_xmpp_cm_str_is(type, "result") || bind == NULL) {
        return;
    }

    jid = ngx_xmpp_cm_node_child(bind, "jid");

    if (jid == NULL || jid->text.len == 0 || jid->text.len > 3071) {
        return;
    }

    cl->jid.data = ngx_pstrdup(cl->c->pool, &jid->text);
    if (cl->jid.data == NULL) {
        return;
    }

    cl->jid.len = jid->text.len;

    ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                  "xmpp_cm: client stream %V bound as %V",
                  &cl->streamid, &cl->jid);
}


ngx_int_t
ngx_xmpp_cm_client_variable(ngx_stream_session_t *s, ngx_uint_t which,
    ngx_str_t *value)
{
    ngx_xmpp_cm_client_t  *cl;

    cl = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_cm_module);
    if (cl == NULL) {
        return NGX_DECLINED;
    }

    *value = which ? cl->jid : cl->streamid;

    return NGX_OK;
}


/*
 * Openfire 4.8+: SASL results and stream errors as escaped text.  A stream
 * error ends the connection here; the table, which called us inside a
 * route, ends the stream once the route is done, as for deliver().
 */

static void
ngx_xmpp_cm_client_deliver_text(ngx_xmpp_cm_conn_t *conn, ngx_str_t *text)
{
    ngx_xmpp_cm_client_t *cl = (ngx_xmpp_cm_client_t *) conn;

    u_char      *p, *end;
    ngx_uint_t   success;

    if (cl->phase == NGX_XMPP_CM_PHASE_CLOSING) {
        return;
    }

    /*
     * Written as is into the client's stream, so it must be one or more
     * complete elements: anything else would break the stream.  It is
     * Openfire's fault, and not parseable: logged and dropped, never
     * handed back (broken XML would break the shared Openfire socket).
     */

    if (ngx_xmpp_cm_xml_fragment(cl->c->log, cl->up->worker->parking,
                                 text->data, text->len, 0,
                                 NGX_XMPP_CM_OPENFIRE_MAX,
                                 NGX_MAX_UINT32_VALUE, NULL, NULL)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, cl->c->log, 0,
                      "xmpp_cm: text route from Openfire for stream %V is "
                      "not complete elements, dropped: \"%*s\"",
                      &cl->streamid, ngx_min(text->len, 64), text->data);
        if (cl->up) {
            cl->up->dropped++;
            ngx_xmpp_cm_count(cl->up, DROP_UNPARSEABLE);
        }
        return;
    }

    p = text->data;
    end = p + text->len;

    while (p < end && ngx_xmpp_cm_is_space(*p)) {
        p++;
    }

    if (end - p > 13 && ngx_strncmp(p, "<stream:error", 13) == 0) {
        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: Openfire ended the session with a stream "
                      "error");
        ngx_xmpp_cm_client_end(cl, NULL, NULL, p, end - p);
        return;
    }

    success = (end - p > 8 && ngx_strncmp(p, "<success", 8) == 0
               && (ngx_xmpp_cm_is_space(p[8])
                   || p[8] == '/' || p[8] == '>'));

    if (success && (cl->authenticated || !cl->sasl_pending)) {
        ngx_log_error(NGX_LOG_ERR, cl->c->log, 0,
                      "xmpp_cm: SASL success from Openfire outside SASL "
                      "negotiation on stream %V dropped", &cl->streamid);
        return;
    }

    if (ngx_xmpp_cm_client_full(cl, text->len)) {
        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: SASL data for a client that is not reading "
                      "dropped");
        return;
    }

    ngx_xmpp_cm_client_send(cl, p, end - p);

    if (end - p > 8 && ngx_strncmp(p, "<failure", 8) == 0
        && (ngx_xmpp_cm_is_space(p[8]) || p[8] == '/' || p[8] == '>'))
    {
        ngx_xmpp_cm_count(cl->up, LOGIN_FAILURE);
        cl->sasl_pending = 0;
    }

    if (success) {
        ngx_xmpp_cm_client_success(cl);
    }
}


/*
 * SASL succeeded: the client restarts its stream on a fresh parser, and
 * gets the same stream id with the post-authentication features.
 */

static void
ngx_xmpp_cm_client_success(ngx_xmpp_cm_client_t *cl)
{
    /* the restarted stream gets a header of its own (RFC 6120 4.3.3) */
    cl->header_sent = 0;
    cl->partial_since = 0;

    if (ngx_xmpp_cm_xml_reset(cl->xml) != NGX_OK) {
        ngx_xmpp_cm_client_end(cl, "internal-server-error", NULL, NULL, 0);
        return;
    }

    ngx_xmpp_cm_client_authenticated(cl);
}


/* SASL success or a legacy jabber:iq:auth result */

static void
ngx_xmpp_cm_client_authenticated(ngx_xmpp_cm_client_t *cl)
{
    if (cl->heap.iq_auth) {
        ngx_free(cl->heap.iq_auth);
        cl->heap.iq_auth = NULL;
    }

    ngx_xmpp_cm_metrics_authenticated(cl->up, cl->authenticated);
    cl->authenticated = 1;
    cl->sasl_pending = 0;

    if (cl->phase == NGX_XMPP_CM_PHASE_AUTH) {
        ngx_xmpp_cm_client_phase(cl, NGX_XMPP_CM_PHASE_STREAM);
    }

    cl->c->log->action = "in an authenticated XMPP stream";

    ngx_xmpp_cm_xml_limits(cl->xml, cl->conf->max_stanza,
                           cl->conf->max_depth);

    if (cl->c->read->delayed) {
        /* xmpp_cm_limit_rate's timer: the idle timer follows the delay */
        return;
    }

    if (cl->c->read->timer_set) {
        ngx_del_timer(cl->c->read);
    }

    if (cl->conf->idle_timeout) {
        ngx_add_timer(cl->c->read, cl->conf->idle_timeout);
    }
}


/*
 * The connection ends its stream (a client error, its </stream:stream>,
 * a timeout...): the client is told, then the stream table lets the
 * stream go (close delay, or <close/> to Openfire).  raw == "" with
 * rawlen 0 sends only the end tag.
 */

static void
ngx_xmpp_cm_client_end(ngx_xmpp_cm_client_t *cl, char *cond, char *text,
    u_char *raw, size_t rawlen)
{
    if (cl->phase == NGX_XMPP_CM_PHASE_CLOSING) {
        return;
    }

    ngx_xmpp_cm_client_closing(cl, cond, text, raw, rawlen);
    ngx_xmpp_cm_client_detach(cl);
}


/*
 * The stream table ended the stream (Openfire closed or refused it, no
 * socket is left, the worker exits): it has let go of this connection
 * already, so the connection only drops its link and tells the client.
 */

static void
ngx_xmpp_cm_client_ended(ngx_xmpp_cm_conn_t *conn, char *cond, char *text,
    u_char *raw, size_t rawlen)
{
    ngx_xmpp_cm_client_t *cl = (ngx_xmpp_cm_client_t *) conn;

    cl->stream = NULL;

    ngx_xmpp_cm_client_closing(cl, cond, text, raw, rawlen);

    if (cl->up->exiting || ngx_exiting || ngx_terminate) {
        ngx_xmpp_cm_client_flush(cl);
    }
}


/* the one link from a connection to its stream is cut here */

static void
ngx_xmpp_cm_client_detach(ngx_xmpp_cm_client_t *cl)
{
    ngx_xmpp_cm_stream_t  *s;

    s = cl->stream;

    if (s) {
        if (s->sm && s->sm->resume && cl->dropped && !cl->up->exiting) {
            /* XEP-0198: kept for xmpp_cm_resume_timeout, collecting */
            s->sm->hold = 1;
            ngx_xmpp_cm_count(cl->up, SM_HELD);
            s->sm->r_in = 0;
            s->sm->r_out = 0;
        }

        cl->stream = NULL;
        ngx_xmpp_cm_stream_detach(s);
    }
}


/*
 * The client stream ends: a stream error (cond, or raw bytes Openfire
 * sent), then </stream:stream>; the connection closes once that is
 * written, or after a short linger.  Touches no stream.
 */

static void
ngx_xmpp_cm_client_closing(ngx_xmpp_cm_client_t *cl, char *cond, char *text,
    u_char *raw, size_t rawlen)
{
    u_char      *p, *buf;
    size_t       len;
    ngx_event_t *rev;

    if (cl->phase == NGX_XMPP_CM_PHASE_CLOSING) {
        return;
    }

    ngx_xmpp_cm_client_phase(cl, NGX_XMPP_CM_PHASE_CLOSING);

    /*
     * A stream not answered yet, a restarted one too (RFC 6120 4.9.1.2):
     * the client's parser needs a header before the error; only the
     * header, no features.
     */

    if (!cl->header_sent) {
        ngx_xmpp_cm_client_header(cl);
    }

    if (cl->authenticated && cl->heap.csi) {
        /* what was held for an inactive client goes before the end */
        ngx_xmpp_cm_client_csi_flush(cl);
    }

    if (raw) {
        ngx_xmpp_cm_client_send(cl, raw, rawlen);

    } else if (cond) {
        ngx_xmpp_cm_metrics_stream_error(cl->up, cond);

        len = sizeof("<stream:error>< xmlns=\"" NGX_XMPP_NS_XSTREAMS "\"/>"
                     "</stream:error>") - 1 + ngx_strlen(cond);

        if (text) {
            len += sizeof("<text xmlns=\"" NGX_XMPP_NS_XSTREAMS "\"></text>")
                   - 1 + ngx_strlen(text);
        }

        buf = ngx_pnalloc(cl->c->pool, len);

        if (buf) {
            p = ngx_sprintf(buf, "<stream:error><%s xmlns=\""
                            NGX_XMPP_NS_XSTREAMS "\"/>", cond);

            if (text) {
                p = ngx_sprintf(p, "<text xmlns=\"" NGX_XMPP_NS_XSTREAMS
                                "\">%s</text>", text);
            }

            p = ngx_cpymem(p, "</stream:error>", 15);
            ngx_xmpp_cm_client_send(cl, buf, p - buf);
        }

        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: client stream %V ended: %s",
                      cl->stream ? &cl->stream->node.str : &cl->domain,
                      cond);
    }

    ngx_xmpp_cm_client_send(cl, (u_char *) "</stream:stream>", 16);

    rev = cl->c->read;
    rev->delayed = 0;

    if (rev->timer_set) {
        ngx_del_timer(rev);
    }

    ngx_add_timer(rev, NGX_XMPP_CM_LINGER);

    ngx_post_event(rev, &ngx_posted_events);
}


static void
ngx_xmpp_cm_client_write_handler(ngx_event_t *wev)
{
    ngx_int_t              rc;
    ngx_connection_t      *c;
    ngx_xmpp_cm_client_t  *cl;

    c = wev->data;
    cl = ngx_xmpp_cm_client_of(wev);

    if (c->error) {
        ngx_xmpp_cm_client_finalize(cl);
        return;
    }

    if (wev->timedout) {
        /* XEP-0198: the delay after a write is over, ask for an ack */
        wev->timedout = 0;

        if (cl->phase == NGX_XMPP_CM_PHASE_STREAM && cl->stream
            && cl->stream->sm && cl->stream->sm->count
            && !cl->stream->sm->r_out)
        {
            ngx_xmpp_cm_client_sm_request(cl);
        }
    }

    rc = ngx_xmpp_cm_output_send(c, &cl->out);

    if (rc == NGX_ERROR) {
        ngx_xmpp_cm_client_finalize(cl);
        return;
    }

    if (rc == NGX_OK && cl->phase == NGX_XMPP_CM_PHASE_CLOSING) {
        ngx_xmpp_cm_client_linger(cl);
        return;
    }

    if (cl->relay && cl->out.size < NGX_XMPP_CM_CLIENT_RELAY_MARK) {
        /* the owner worker's output is read again */
        ngx_xmpp_cm_relay_drained(cl->relay);
    }

#if (NGX_STREAM_SSL)
    if (rc == NGX_OK && cl->phase == NGX_XMPP_CM_PHASE_STARTTLS
        && c->ssl == NULL)
    {
        ngx_xmpp_cm_client_starttls(cl);
        return;
    }
#endif

    if (ngx_handle_write_event(wev, 0) != NGX_OK) {
        ngx_xmpp_cm_client_finalize(cl);
    }
}


#if (NGX_STREAM_SSL)

static void
ngx_xmpp_cm_client_starttls(ngx_xmpp_cm_client_t *cl)
{
    ngx_int_t          rc;
    ngx_connection_t  *c;

    c = cl->c;

    /* a fresh parser: the client restarts its stream over TLS */

    cl->header_sent = 0;

    if (ngx_xmpp_cm_xml_reset(cl->xml) != NGX_OK) {
        ngx_xmpp_cm_client_finalize(cl);
        return;
    }


    rc = ngx_xmpp_cm_tls_start(c, cl->conf, ngx_xmpp_cm_client_tls_done);

    if (rc == NGX_AGAIN) {
        return;
    }

    if (rc == NGX_ERROR) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "xmpp_cm: TLS handshake failed");
        ngx_xmpp_cm_client_finalize(cl);
        return;
    }

    ngx_xmpp_cm_client_tls_done(c);
}


static void
ngx_xmpp_cm_client_tls_done(ngx_connection_t *c)
{
    ngx_stream_session_t  *s;
    ngx_xmpp_cm_client_t  *cl;

    s = c->data;
    cl = ngx_stream_get_module_ctx(s, ngx_stream_xmpp_cm_module);

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (!c->ssl->handshaked) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "xmpp_cm: TLS handshake failed");
        ngx_xmpp_cm_client_finalize(cl);
        return;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_STREAM, c->log, 0,
                   "xmpp_cm: STARTTLS done");

    c->log->action = "reading the XMPP stream header";

    ngx_xmpp_cm_client_phase(cl, NGX_XMPP_CM_PHASE_AUTH);
    c->write->handler = ngx_xmpp_cm_client_write_handler;

    /* the authentication deadline still counts from the connect */

    ngx_xmpp_cm_client_timer(cl);

    /* the restarted header may already sit in OpenSSL's buffers */

    c->read->handler(c->read);
}

#endif


static void
ngx_xmpp_cm_client_flush(ngx_xmpp_cm_client_t *cl)
{
    (void) ngx_xmpp_cm_output_send(cl->c, &cl->out);
}


/* the stream's socket drained: reading goes on */

static void
ngx_xmpp_cm_client_unblock(ngx_xmpp_cm_conn_t *conn)
{
    ngx_xmpp_cm_client_t *cl = (ngx_xmpp_cm_client_t *) conn;

    ngx_post_event(cl->c->read, &ngx_posted_events);
}


/*
 * Everything for a closing client is written.  Closing the socket now
 * would make the kernel answer any unread input with a RST, and a RST can
 * destroy the stream error still in the client's receive queue: the
 * client would never learn why.  So, as nginx's lingering close and RFC
 * 6120 4.4 have it, the write side is shut (plaintext: FIN after the
 * data) and the input is read and dropped until the client closes or the
 * linger timer set by ngx_xmpp_cm_client_end() fires.  Over TLS the
 * close_notify goes first (TLS half-close: reading goes on); if the socket
 * cannot take it now, the write side stays open and the client still
 * closes on </stream:stream>.
 */

static void
ngx_xmpp_cm_client_linger(ngx_xmpp_cm_client_t *cl)
{
    ngx_connection_t  *c;

    c = cl->c;

    if (cl->lingering) {
        return;
    }

    cl->lingering = 1;

#if (NGX_STREAM_SSL)
    if (c->ssl) {
        ERR_clear_error();

        if (SSL_shutdown(c->ssl->connection) < 0) {
            ERR_clear_error();
            goto drain;
        }
    }
#endif

    if (shutdown(c->fd, SHUT_WR) == -1) {
        ngx_log_debug1(NGX_LOG_DEBUG_STREAM, c->log, ngx_socket_errno,
                       "xmpp_cm: shutdown(SHUT_WR) failed on fd %d", c->fd);
        ngx_xmpp_cm_client_finalize(cl);
        return;
    }

#if (NGX_STREAM_SSL)
drain:
#endif

    ngx_post_event(c->read, &ngx_posted_events);
}


/*
 * Worker exit: no time to linger, but the input already received is read
 * (and dropped) before the close, so that the close sends a FIN after the
 * stream error rather than a RST.
 */

static void
ngx_xmpp_cm_client_drain(ngx_xmpp_cm_client_t *cl)
{
    ssize_t            n;
    ngx_uint_t         i;
    ngx_connection_t  *c;

    c = cl->c;

    if (cl->out.size || c->ssl) {
        return;
    }

    (void) shutdown(c->fd, SHUT_WR);

    for (i = 0; i < 64; i++) {
        n = c->recv(c, cl->up->worker->client_buf,
                    NGX_XMPP_CM_CLIENT_READ);

        if (n <= 0) {
            break;
        }
    }
}


static void
ngx_xmpp_cm_client_finalize(ngx_xmpp_cm_client_t *cl)
{
    ngx_xmpp_cm_transport_t  *t;

    if (cl->s) {
        ngx_stream_finalize_session(cl->s, NGX_STREAM_OK);
        return;
    }

    t = ngx_xmpp_cm_client_transport(cl);
    t->handler->finalize(t);
}


static void
ngx_xmpp_cm_client_cleanup(void *data)
{
    ngx_xmpp_cm_client_t *cl = data;

    if (cl->out.size) {
        ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                      "xmpp_cm: %uz bytes for the client were not delivered "
                      "(connection closed)", cl->out.size);
    }

    if (cl->stream && cl->stream->sm) {
        /* the connection died: held stanzas are kept with the stream */
        cl->dropped = 1;

        if (cl->authenticated && cl->heap.csi) {
            cl->phase = NGX_XMPP_CM_PHASE_CLOSING;
            ngx_xmpp_cm_client_csi_flush(cl);
        }
    }

    ngx_xmpp_cm_client_detach(cl);

    if (cl->relay) {
        ngx_xmpp_cm_relay_close(cl->relay);
        cl->relay = NULL;
    }

    if (cl->authenticated) {
        if (cl->heap.csi) {
            ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                          "xmpp_cm: %uz bytes held for the inactive client "
                          "were not delivered (connection closed)",
                          cl->heap.csi->size);
            cl->inactive = 0;
            ngx_xmpp_cm_client_csi_free(cl);
        }

    } else if (cl->heap.iq_auth) {
        ngx_free(cl->heap.iq_auth);
    }

    ngx_xmpp_cm_metrics_stream_closed(cl->up, cl->authenticated);
    ngx_queue_remove(&cl->link);
    ngx_xmpp_cm_output_free(&cl->out);
    ngx_xmpp_cm_xml_free(cl->xml);

    if (cl->zlib) {
        ngx_xmpp_cm_zlib_free(cl->zlib);
    }
}


/*
 * What a web transport asks of the engine.  Input comes as whole
 * elements: a transport checks its framing (one element per message)
 * and feeds the element's bytes, or a stream header it made from its own
 * stream open (RFC 7395 <open/>), at the point where a TCP client's
 * bytes would go.  NGX_OK: go on; anything else: the stream ended.
 */

ngx_int_t
ngx_xmpp_cm_client_feed(ngx_xmpp_cm_client_t *cl, u_char *p, size_t n)
{
    if (cl->phase > NGX_XMPP_CM_PHASE_STREAM) {
        return NGX_DONE;
    }

    return ngx_xmpp_cm_client_process(cl, p, n);
}


/* the stream ends: cond NULL for a plain close (the client's <close/>) */

void
ngx_xmpp_cm_client_error(ngx_xmpp_cm_client_t *cl, char *cond, char *text)
{
    ngx_xmpp_cm_client_end(cl, cond, text, cond ? NULL : (u_char *) "", 0);
}


/* whether a stream is open: answered, and not restarted since */

ngx_uint_t
ngx_xmpp_cm_client_opened(ngx_xmpp_cm_client_t *cl)
{
    return cl->header_sent;
}


/* the largest element the framer takes now (the phase's limit) */

size_t
ngx_xmpp_cm_client_max(ngx_xmpp_cm_client_t *cl)
{
    return cl->authenticated ? cl->conf->max_stanza
                             : cl->conf->preauth_max_stanza;
}


ngx_xmpp_cm_output_t *
ngx_xmpp_cm_client_output(ngx_xmpp_cm_client_t *cl)
{
    return &cl->out;
}


/*
 * Worker exit: every client still connected is told (system-shutdown),
 * flushed as far as the socket takes it, and closed, so that no
 * connection is left open behind the module.
 */

void
ngx_xmpp_cm_client_shutdown_all(ngx_xmpp_cm_worker_t *worker)
{
    ngx_queue_t           *q;
    ngx_xmpp_cm_client_t  *cl;

    while (!ngx_queue_empty(&worker->clients)) {
        q = ngx_queue_head(&worker->clients);
        cl = ngx_queue_data(q, ngx_xmpp_cm_client_t, link);

        ngx_xmpp_cm_client_end(cl, "system-shutdown",
                               "the connection manager is shutting down",
                               NULL, 0);
        ngx_xmpp_cm_client_flush(cl);
        ngx_xmpp_cm_client_drain(cl);
        ngx_xmpp_cm_client_finalize(cl);
    }
}


/*
 * XEP-0198 resumption at another worker than the one holding the stream
 * (ngx_stream_xmpp_cm_handoff.c).  The accepting worker's side: the
 * <resume/> goes to the owner as a request and reading stops until its
 * answer; then the client's bytes, decrypted and inflated here, go to the
 * owner, and the owner's come back through this connection's output
 * (deflate, TLS).  NGX_DONE: the request is on its way; NGX_OK: the
 * owner cannot be reached, <failed/> is sent and the stream goes on.
 */

static ngx_int_t
ngx_xmpp_cm_client_handoff(ngx_xmpp_cm_client_t *cl, ngx_str_t *previd,
    uint32_t h)
{
    ngx_pid_t                   owner;
    ngx_xmpp_cm_relay_t        *r;
    ngx_xmpp_cm_handoff_hdr_t  *hdr;

    r = NULL;

    /*
     * the owner attaches the relay as a byte stream: a web transport's
     * frames are not one, so its streams resume at their own worker only
     */

    if (ngx_xmpp_cm_sm_previd(previd, &owner) != NGX_OK || cl->relay
        || cl->s == NULL)
    {
        goto failed;
    }

    r = ngx_xmpp_cm_relay_create(cl->c, cl->up->worker,
                                 &ngx_xmpp_cm_client_relay, cl);
    if (r == NULL) {
        goto failed;
    }

    hdr = ngx_xmpp_cm_relay_hdr(r);
    hdr->account = cl->account;
    hdr->previd = *previd;
    hdr->h = h;
    hdr->addr = cl->c->addr_text;
    hdr->lang.data = cl->lang;
    hdr->lang.len = ngx_strlen(cl->lang);

    /* the request is written into the relay's output here */

    if (ngx_xmpp_cm_relay_start(r, owner) != NGX_OK) {
        ngx_xmpp_cm_relay_close(r);
        goto failed;
    }

    cl->relay = r;
    ngx_xmpp_cm_client_phase(cl, NGX_XMPP_CM_PHASE_HANDOFF);
    cl->c->log->action = "handing a resumed stream to its worker";

    /* the client awaits <resumed/>: the rest of this read is not read */
    return NGX_DONE;

failed:

    ngx_log_error(NGX_LOG_INFO, cl->c->log, 0,
                  "xmpp_cm: resumption of \"%V\" refused: its worker is "
                  "not reachable", previd);

    ngx_xmpp_cm_client_sm_failed(cl, "item-not-found");

    return NGX_OK;
}


static void
ngx_xmpp_cm_client_relay_status(void *data, ngx_uint_t status,
    ngx_str_t *failed)
{
    ngx_xmpp_cm_client_t *cl = data;

    ngx_connection_t  *c;

    c = cl->c;

    if (status != NGX_XMPP_CM_HANDOFF_OK) {
        /*
         * The relay ends itself; this stream goes on as it was, on a
         * fresh parser inside a synthetic root (the framer stopped at the
         * <resume/>).
         */

        cl->relay = NULL;

        if (failed) {
            /* the owner's own <failed/>, as its resume wrote it */
            ngx_xmpp_cm_client_send(cl, failed->data, failed->len);

        } else {
            ngx_xmpp_cm_client_sm_failed(cl, "item-not-found");
        }

        if (ngx_xmpp_cm_client_reroot(cl) != NGX_OK) {
            ngx_xmpp_cm_client_end(cl, "internal-server-error", NULL,
                                   NULL, 0);
            return;
        }

        ngx_xmpp_cm_client_phase(cl, NGX_XMPP_CM_PHASE_STREAM);
        c->log->action = "in an authenticated XMPP stream";
        ngx_post_event(c->read, &ngx_posted_events);
        return;
    }

    /*
     * The owner took the stream over: this connection's own Openfire
     * session goes (close delay, then <close/>), and the owner's idle
     * timeout governs the relayed stream.
     */

    if (cl->stream) {
        cl->stream->discard = 1;
    }

    ngx_xmpp_cm_client_detach(cl);
    ngx_xmpp_cm_client_phase(cl, NGX_XMPP_CM_PHASE_RELAY);

    /* the stream is parsed at the owner: this parser is not needed */
    ngx_xmpp_cm_xml_free(cl->xml);

    c->log->action = "relaying a resumed stream";

    if (c->read->timer_set && !c->read->delayed) {
        ngx_del_timer(c->read);
    }

    ngx_post_event(c->read, &ngx_posted_events);
}


/* relaying: the client's bytes to the owner, as long as it drains them */

static void
ngx_xmpp_cm_client_relay_handler(ngx_event_t *rev)
{
    ssize_t                n;
    ngx_connection_t      *c;
    ngx_xmpp_cm_client_t  *cl;

    cl = ngx_xmpp_cm_client_of(rev);
    c = cl->c;

    if (c->close) {
        ngx_xmpp_cm_client_shutdown(cl);
        return;
    }

    if (rev->timedout) {
        /* only xmpp_cm_limit_rate sets a timer here */
        rev->timedout = 0;
        rev->delayed = 0;
    }

    while (cl->relay && !ngx_xmpp_cm_relay_full(cl->relay)) {

        if (!rev->ready && c->ssl == NULL) {
            break;
        }

        n = ngx_xmpp_cm_client_recv(cl, NGX_XMPP_CM_CLIENT_READ);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_DONE) {
            return;
        }

        if (ngx_xmpp_cm_client_input(cl, cl->up->worker->client_buf, n)
            != NGX_OK)
        {
            return;
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_xmpp_cm_client_finalize(cl);
    }
}


static ngx_int_t
ngx_xmpp_cm_client_relayed(ngx_xmpp_cm_client_t *cl, u_char *buf, size_t n)
{
    ngx_int_t  rc;

    if (cl->zlib) {
        rc = ngx_xmpp_cm_zlib_inflate(cl->zlib, buf, n,
                                      ngx_xmpp_cm_client_relay_in, cl);

    } else {
        rc = ngx_xmpp_cm_client_relay_in(cl, buf, n);
    }

    if (rc != NGX_OK) {
        ngx_xmpp_cm_client_finalize(cl);
        return NGX_DONE;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_xmpp_cm_client_relay_in(void *data, u_char *p, size_t n)
{
    ngx_xmpp_cm_client_t *cl = data;

    if (cl->relay == NULL
        || ngx_xmpp_cm_relay_send(cl->relay, p, n) == NGX_ERROR)
    {
        return NGX_ERROR;
    }

    /* over the mark: the read loop stops, the relay's unblock resumes it */
    return NGX_OK;
}


static ngx_int_t
ngx_xmpp_cm_client_relay_out(void *data, u_char *p, size_t n)
{
    ngx_xmpp_cm_client_t *cl = data;

    if (cl->phase != NGX_XMPP_CM_PHASE_RELAY) {
        return NGX_ERROR;
    }

    ngx_xmpp_cm_client_out(cl, p, n, 1);

    if (cl->c->error) {
        return NGX_ERROR;
    }

    return cl->out.size >= NGX_XMPP_CM_CLIENT_RELAY_MARK ? NGX_AGAIN : NGX_OK;
}


static void
ngx_xmpp_cm_client_relay_unblock(void *data)
{
    ngx_xmpp_cm_client_t *cl = data;

    ngx_post_event(cl->c->read, &ngx_posted_events);
}


/*
 * The owner ended the relayed stream (its </stream:stream> or stream
 * error came through already), or the relay failed: what is queued goes
 * out, then the linger, as for any end; nothing is added.
 */

static void
ngx_xmpp_cm_client_relay_closed(void *data)
{
    ngx_xmpp_cm_client_t *cl = data;

    ngx_event_t  *rev;

    cl->relay = NULL;

    ngx_xmpp_cm_client_phase(cl, NGX_XMPP_CM_PHASE_CLOSING);

    rev = cl->c->read;
    rev->delayed = 0;

    if (rev->timer_set) {
        ngx_del_timer(rev);
    }

    ngx_add_timer(rev, NGX_XMPP_CM_LINGER);
    ngx_post_event(cl->c->write, &ngx_posted_events);
}


/*
 * The owner's side: a relayed connection becomes a client connection of
 * the held stream's server, authenticated, in the post-authentication
 * phase, with the framer inside a synthetic root, and the resumption is
 * done as for a local connection (ngx_xmpp_cm_client_resume).  The
 * answer goes back first: OK, then <resumed/> and what is sent again
 * follow through the relay; or failed, with the <failed/> the resume
 * wrote, and the connection ends.  NGX_DECLINED: no such stream here,
 * nothing created (the caller answers item-not-found); NGX_DONE: answered
 * and ended; NGX_ERROR: nothing created.
 */

ngx_int_t
ngx_xmpp_cm_client_adopt(ngx_connection_t *c, ngx_xmpp_cm_handoff_hdr_t *h,
    void *data)
{
    u_char                          *p, *failed;
    size_t                           n;
    ngx_buf_t                       *b;
    ngx_uint_t                       i;
    ngx_time_t                      *tp;
    ngx_chain_t                     *ch;
    ngx_stream_session_t            *s;
    ngx_xmpp_cm_stream_t            *st;
    ngx_xmpp_cm_client_t            *cl;
    ngx_stream_core_srv_conf_t      *cscf;
    ngx_stream_core_main_conf_t     *ccmf;
    ngx_stream_xmpp_cm_srv_conf_t  **srv, *conf;
    ngx_stream_xmpp_cm_main_conf_t  *cmcf = data;

    st = NULL;
    srv = cmcf->servers.elts;

    for (i = 0; i < cmcf->servers.nelts && st == NULL; i++) {
        if (srv[i]->up) {
            st = ngx_xmpp_cm_stream_find(srv[i]->up, &h->previd);
        }
    }

    if (st == NULL) {
        return NGX_DECLINED;
    }

    conf = st->up->conf;

    s = ngx_pcalloc(c->pool, sizeof(ngx_stream_session_t));
    if (s == NULL) {
        return NGX_ERROR;
    }

    s->signature = NGX_STREAM_MODULE;
    s->main_conf = conf->ctx->main_conf;
    s->srv_conf = conf->ctx->srv_conf;
    s->connection = c;

    ccmf = ngx_stream_get_module_main_conf(s, ngx_stream_core_module);

    s->ctx = ngx_pcalloc(c->pool, sizeof(void *) * ngx_stream_max_module);
    s->variables = ngx_pcalloc(c->pool, ccmf->variables.nelts
                                        * sizeof(ngx_stream_variable_value_t));
    if (s->ctx == NULL || s->variables == NULL) {
        return NGX_ERROR;
    }

    tp = ngx_timeofday();
    s->start_sec = tp->sec;
    s->start_msec = tp->msec;

    cscf = ngx_stream_get_module_srv_conf(s, ngx_stream_core_module);

    cl = ngx_xmpp_cm_client_create(c, conf, s);
    if (cl == NULL) {
        return NGX_ERROR;
    }

    ngx_stream_set_ctx(s, cl, ngx_stream_xmpp_cm_module);

    /* the request's buffer goes after this call: keep what stays */

    c->data = s;
    c->addr_text.data = ngx_pstrdup(c->pool, &h->addr);
    c->addr_text.len = c->addr_text.data ? h->addr.len : 0;
    ngx_set_connection_log(c, cscf->error_log);

#if (NGX_STAT_STUB)
    /* ngx_stream_close_connection() counts it out */
    (void) ngx_atomic_fetch_add(ngx_stat_active, 1);
#endif

    c->write->handler = ngx_xmpp_cm_client_write_handler;

    if (ngx_xmpp_cm_client_reroot(cl) != NGX_OK) {
        goto end;
    }

    ngx_xmpp_cm_metrics_authenticated(cl->up, 0);
    cl->authenticated = 1;
    cl->header_sent = 1;
    cl->rate_credit = NGX_MAX_OFF_T_VALUE;
    cl->domain = cl->up->domain;

    if (h->lang.len < sizeof(cl->lang)) {
        p = ngx_cpymem(cl->lang, h->lang.data, h->lang.len);
        *p = '\0';
    }

    ngx_xmpp_cm_xml_limits(cl->xml, conf->max_stanza, conf->max_depth);
    ngx_xmpp_cm_client_phase(cl, NGX_XMPP_CM_PHASE_STREAM);
    c->log->action = "in a relayed XMPP stream";

    cl->account.data = ngx_pstrdup(c->pool, &h->account);
    cl->account.len = cl->account.data ? h->account.len : 0;

    (void) ngx_xmpp_cm_client_resume(cl, &h->account, &h->previd, h->h);

    if (cl->stream) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "xmpp_cm: client %V resumed stream %V through a relay",
                      &h->addr, &cl->stream->node.str);

        if (ngx_xmpp_cm_handoff_reply(c, NGX_XMPP_CM_HANDOFF_OK, NULL, 0)
            != NGX_OK)
        {
            c->error = 1;
        }

        if (conf->idle_timeout) {
            ngx_add_timer(c->read, conf->idle_timeout);
        }

        ngx_post_event(c->read, &ngx_posted_events);
        return NGX_OK;
    }

    /* refused: the <failed/> it queued goes back in the answer */

    n = 0;
    failed = ngx_pnalloc(c->pool, cl->out.size);

    for (ch = cl->out.out; ch && failed; ch = ch->next) {
        b = ch->buf;
        p = ngx_cpymem(failed + n, b->pos, b->last - b->pos);
        n = p - failed;
    }

    /* longer than an answer takes: the accepting worker's own */

    if (n > NGX_XMPP_CM_HANDOFF_FAILED_MAX) {
        n = 0;
    }

    (void) ngx_xmpp_cm_handoff_reply(c, NGX_XMPP_CM_HANDOFF_FAILED,
                                     failed, n);

end:

    ngx_xmpp_cm_output_free(&cl->out);
    ngx_xmpp_cm_client_finalize(cl);

    return NGX_DONE;
}


/*
 * A fresh parser inside a synthetic root, as if the stream had been
 * opened and answered: a relayed connection at the owner, or a stream
 * whose framer stopped at a <resume/> that failed at the owner.
 */

static ngx_int_t
ngx_xmpp_cm_client_reroot(ngx_xmpp_cm_client_t *cl)
{
    static u_char  root[] = "<stream:stream xmlns=\"" NGX_XMPP_NS_CLIENT
                            "\" xmlns:stream=\"" NGX_XMPP_NS_STREAMS "\">";

    if (ngx_xmpp_cm_xml_reset(cl->xml) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_xmpp_cm_xml_handlers(cl->xml, &ngx_xmpp_cm_client_relayed_xml, cl);

    return ngx_xmpp_cm_xml_feed(cl->xml, root, sizeof(root) - 1);
}


/* the synthetic root of a relayed connection: already answered */

static ngx_int_t
ngx_xmpp_cm_client_relayed_open(void *data, ngx_str_t *name, ngx_str_t *ns,
    const XML_Char **attrs)
{
    return NGX_OK;
}
