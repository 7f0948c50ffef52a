
/*
 * ngx_stream_xmpp_cm: an XMPP connection manager for Openfire.
 * Shared types; one file per concern under src/.
 */


#ifndef _NGX_STREAM_XMPP_CM_H_INCLUDED_
#define _NGX_STREAM_XMPP_CM_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>
#include <ngx_stream.h>
#if (NGX_STREAM_SSL)
#include <ngx_stream_ssl_module.h>
#endif
#include <expat.h>


#define NGX_XMPP_NS_STREAMS   "http://etherx.jabber.org/streams"
#define NGX_XMPP_NS_CLIENT    "jabber:client"
#define NGX_XMPP_NS_CM        "jabber:connectionmanager"
#define NGX_XMPP_NS_CMPROTO   "http://jabber.org/protocol/connectionmanager"
#define NGX_XMPP_NS_SASL      "urn:ietf:params:xml:ns:xmpp-sasl"
#define NGX_XMPP_NS_TLS       "urn:ietf:params:xml:ns:xmpp-tls"
#define NGX_XMPP_NS_XSTREAMS  "urn:ietf:params:xml:ns:xmpp-streams"
#define NGX_XMPP_NS_STANZAS   "urn:ietf:params:xml:ns:xmpp-stanzas"
#define NGX_XMPP_NS_COMPRESS  "http://jabber.org/protocol/compress"
#define NGX_XMPP_NS_FCOMPRESS "http://jabber.org/features/compress"
#define NGX_XMPP_NS_LIMITS    "urn:xmpp:stream-limits:0"
#define NGX_XMPP_NS_CSI       "urn:xmpp:csi:0"
#define NGX_XMPP_NS_SM        "urn:xmpp:sm:3"

/* Openfire's xmpp.parser.buffer.size: a whole <route> must stay below it */
#define NGX_XMPP_CM_OPENFIRE_MAX      1048576
#define NGX_XMPP_CM_ROUTE_OVERHEAD    1024
#define NGX_XMPP_CM_MAX_STANZA        (NGX_XMPP_CM_OPENFIRE_MAX               \
                                       - NGX_XMPP_CM_ROUTE_OVERHEAD)

/* the largest fragment (route, session IQ) sent to Openfire: a margin */
#define NGX_XMPP_CM_FRAGMENT_MAX      (NGX_XMPP_CM_OPENFIRE_MAX - 16)

/* what the framer of an Openfire socket accepts (trusted, so generous) */
#define NGX_XMPP_CM_UPSTREAM_MAX_STANZA  (NGX_XMPP_CM_OPENFIRE_MAX + 4096)
#define NGX_XMPP_CM_UPSTREAM_MAX_DEPTH   1000

/* XML white space (XML 1.0 production 3), the only test of it */
#define ngx_xmpp_cm_is_space(ch)                                             \
    ((ch) == ' ' || (ch) == '\t' || (ch) == '\r' || (ch) == '\n')

#define NGX_XMPP_CM_ID_LEN            40
#define NGX_XMPP_CM_CLOSED_RING       256     /* closed ids remembered */

/* the longest xmpp_cm_domain and xmpp_cm_name that nginx -t accepts */
#define NGX_XMPP_CM_DOMAIN_MAX        200
#define NGX_XMPP_CM_CM_NAME_MAX       100

/* xmpp_cm_limit_rate: the largest rate and burst (bytes) */
#define NGX_XMPP_CM_RATE_MAX          (1024 * 1024 * 1024)


typedef struct ngx_xmpp_cm_upstream_s     ngx_xmpp_cm_upstream_t;
typedef struct ngx_xmpp_cm_sock_s     ngx_xmpp_cm_sock_t;
typedef struct ngx_xmpp_cm_stream_s  ngx_xmpp_cm_stream_t;
typedef struct ngx_xmpp_cm_client_s   ngx_xmpp_cm_client_t;
typedef struct ngx_xmpp_cm_conn_s     ngx_xmpp_cm_conn_t;
typedef struct ngx_xmpp_cm_node_s     ngx_xmpp_cm_node_t;
typedef struct ngx_xmpp_cm_parking_s  ngx_xmpp_cm_parking_t;
typedef struct ngx_xmpp_cm_sm_s       ngx_xmpp_cm_sm_t;


/* configuration (ngx_stream_xmpp_cm_module.c) */

#define NGX_XMPP_CM_TLS_OFF       0
#define NGX_XMPP_CM_TLS_OPTIONAL  1
#define NGX_XMPP_CM_TLS_REQUIRED  2

/* xmpp_cm_upstream_tls: the link to Openfire */

#define NGX_XMPP_CM_UPSTREAM_TLS_OFF       0
#define NGX_XMPP_CM_UPSTREAM_TLS_STARTTLS  1
#define NGX_XMPP_CM_UPSTREAM_TLS_DIRECT    2


/* the values of the two-value directives, as ngx_bufs_t for "*_buffers" */

typedef struct {
    ngx_msec_t                       min;
    ngx_msec_t                       max;
} ngx_xmpp_cm_backoff_t;                       /* xmpp_cm_reconnect */

typedef struct {
    size_t                           high;
    size_t                           low;
} ngx_xmpp_cm_watermarks_t;           /* xmpp_cm_upstream_watermarks */

typedef struct {
    ngx_uint_t                       stanzas;
    size_t                           size;
} ngx_xmpp_cm_window_t;                    /* xmpp_cm_confirm_window */

typedef struct {
    size_t                           rate;     /* bytes/s, 0: off */
    size_t                           burst;
} ngx_xmpp_cm_rate_t;                         /* xmpp_cm_*limit_rate */


typedef struct {
    ngx_stream_upstream_srv_conf_t  *upstream;
    ngx_str_t                        pass;
    ngx_array_t                     *domains;      /* ngx_str_t */
    ngx_str_t                        name;
    ngx_str_t                        secret;
    ngx_uint_t                       connections;
    ngx_msec_t                       keepalive;
    ngx_msec_t                       upstream_timeout;
    ngx_msec_t                       connect_timeout;
    ngx_xmpp_cm_backoff_t            reconnect;
    ngx_msec_t                       auth_timeout;
    ngx_msec_t                       idle_timeout;
    ngx_msec_t                       stanza_timeout;
    ngx_msec_t                       close_delay;
    ngx_msec_t                       resume_timeout;  /* 0: no resume */
    ngx_flag_t                       sm;              /* XEP-0198 */
    size_t                           max_stanza;
    size_t                           preauth_max_stanza;
    ngx_uint_t                       max_depth;
    size_t                           client_output_limit;
    size_t                           csi_hold_limit;  /* 0: no XEP-0352 */
    ngx_xmpp_cm_watermarks_t         upstream_watermarks;
    ngx_flag_t                       confirm;
    ngx_xmpp_cm_window_t             confirm_window;
    ngx_msec_t                       confirm_delay;
    ngx_xmpp_cm_rate_t               limit_rate;
    ngx_xmpp_cm_rate_t               preauth_limit_rate;
    ngx_uint_t                       starttls;
    ngx_flag_t                       compression;
    ngx_uint_t                       upstream_tls;

#if (NGX_SSL)
    ngx_ssl_t                       *upstream_ssl;
    ngx_uint_t                       upstream_ssl_protocols;
    ngx_str_t                        upstream_ssl_ciphers;
    ngx_flag_t                       upstream_ssl_verify;
    ngx_uint_t                       upstream_ssl_verify_depth;
    ngx_str_t                        upstream_ssl_name;
    ngx_flag_t                       upstream_ssl_server_name;
    ngx_str_t                        upstream_ssl_trusted_certificate;
    ngx_str_t                        upstream_ssl_crl;
    ngx_str_t                        upstream_ssl_certificate;
    ngx_str_t                        upstream_ssl_certificate_key;
    ngx_flag_t                       upstream_ssl_session_reuse;
#endif

#if (NGX_STREAM_SSL)
    ngx_ssl_t                       *ssl;          /* for STARTTLS */
    ngx_ssl_t                        own_ssl;
    ngx_array_t                     *cert_values;  /* complex values */
    ngx_array_t                     *key_values;
    ngx_array_t                     *passwords;
#endif

    ngx_xmpp_cm_upstream_t          *up;         /* per worker */
    ngx_stream_conf_ctx_t           *ctx;          /* the server's */
    ngx_str_t                        conf_file;
    ngx_uint_t                       conf_line;
} ngx_stream_xmpp_cm_srv_conf_t;


typedef struct ngx_xmpp_cm_worker_s  ngx_xmpp_cm_worker_t;


/*
 * The worker's free output bufs and blocks (ngx_stream_xmpp_cm_output.c).
 * The links and bufs come from the cycle pool and stay for the worker's
 * life (as many as the busiest moment needed); block memory above
 * NGX_XMPP_CM_FREE_MAX free blocks goes back to malloc.
 */

typedef struct {
    ngx_chain_t                     *bufs;     /* links with their bufs */
    ngx_buf_t                       *blocks;   /* free 8 KiB blocks */
    ngx_uint_t                       nblocks;
} ngx_xmpp_cm_output_free_t;


typedef struct {
    ngx_array_t                      servers;  /* srv_conf_t * with a pass */
    ngx_shm_zone_t                  *metrics_zone;
    ngx_uint_t                       metrics_slots;
    ngx_xmpp_cm_worker_t            *worker;   /* set in init_process */
} ngx_stream_xmpp_cm_main_conf_t;


ngx_stream_xmpp_cm_srv_conf_t *ngx_stream_xmpp_cm_find_name(
    ngx_cycle_t *cycle, ngx_str_t *name);


extern ngx_module_t  ngx_stream_xmpp_cm_module;


/* metrics (ngx_stream_xmpp_cm_metrics.c), scraped over HTTP */

enum {
    /* gauges */
    NGX_XMPP_CM_M_AUTHENTICATING = 0,
    NGX_XMPP_CM_M_BOUND,
    NGX_XMPP_CM_M_DETACHED,
    NGX_XMPP_CM_M_SOCK_CONNECTING,
    NGX_XMPP_CM_M_SOCK_HANDSHAKE,
    NGX_XMPP_CM_M_SOCK_READY,
    NGX_XMPP_CM_M_WEBSOCKET,
    NGX_XMPP_CM_M_UNCONFIRMED,
    NGX_XMPP_CM_M_UNCONFIRMED_BYTES,
    NGX_XMPP_CM_M_BOSH,
    NGX_XMPP_CM_M_SM,
    NGX_XMPP_CM_M_SM_HELD,

    /* counters */
    NGX_XMPP_CM_M_OPENED,
    NGX_XMPP_CM_M_RECONNECTS,
    NGX_XMPP_CM_M_HANDSHAKE_FAILURES,
    NGX_XMPP_CM_M_STANZAS_TO_OPENFIRE,
    NGX_XMPP_CM_M_STANZAS_TO_CLIENT,
    NGX_XMPP_CM_M_BYTES_TO_OPENFIRE,
    NGX_XMPP_CM_M_BYTES_TO_CLIENT,
    NGX_XMPP_CM_M_FAILED_RETURNED,
    NGX_XMPP_CM_M_LOGIN_SUCCESS,
    NGX_XMPP_CM_M_LOGIN_FAILURE,
    NGX_XMPP_CM_M_FLOW_PAUSES,
    NGX_XMPP_CM_M_BARRIERS,
    NGX_XMPP_CM_M_CONFIRMS,
    NGX_XMPP_CM_M_CONFIRM_WAIT_MS,
    NGX_XMPP_CM_M_RESENT,
    NGX_XMPP_CM_M_DROP_BAD_ROUTE,
    NGX_XMPP_CM_M_DROP_NO_SOCKET,
    NGX_XMPP_CM_M_DROP_CLOSED_STREAM,
    NGX_XMPP_CM_M_DROP_TOO_LARGE,
    NGX_XMPP_CM_M_DROP_UNPARSEABLE,
    NGX_XMPP_CM_M_WEBSOCKET_OPENED,
    NGX_XMPP_CM_M_BOSH_OPENED,
    NGX_XMPP_CM_M_BOSH_REQUESTS,
    NGX_XMPP_CM_M_SM_RESUMED,
    NGX_XMPP_CM_M_SM_RESUME_FAILED,
    NGX_XMPP_CM_M_SM_EXPIRED,
    NGX_XMPP_CM_M_SM_RESENT,
    NGX_XMPP_CM_M_STREAM_ERROR            /* one per condition, then "other" */
};

#define NGX_XMPP_CM_M_GAUGES     NGX_XMPP_CM_M_OPENED
#define NGX_XMPP_CM_M_CONDS      26
#define NGX_XMPP_CM_M_N          ngx_align(NGX_XMPP_CM_M_STREAM_ERROR        \
                                           + NGX_XMPP_CM_M_CONDS, 8)


/* one worker's values for one CM name: written by that worker only */

typedef struct {
    uint64_t                         v[NGX_XMPP_CM_M_N];
} ngx_xmpp_cm_metrics_t;


/*
 * One worker's state, built in init_process from cycle->pool and reached
 * through the main conf (pools cache the pointer): the read buffers every
 * connection of the worker shares, the parked expat parsers, the client
 * list that exit walks, and this worker's metrics slot.  The buffers are
 * last and left uninitialised, so that pages never read stay untouched.
 */

#define NGX_XMPP_CM_CLIENT_READ      16384
#define NGX_XMPP_CM_UPSTREAM_READ    65536
#define NGX_XMPP_CM_ZLIB_CHUNK       16384

/* a resumed stream handed to its worker (ngx_stream_xmpp_cm_handoff.c) */

/* what the owner needs to attach the relayed connection */

typedef struct {
    ngx_str_t                        account;  /* established by SASL */
    ngx_str_t                        previd;
    ngx_str_t                        addr;     /* the client's, for logs */
    ngx_str_t                        lang;     /* the stream's xml:lang */
    uint32_t                         h;        /* the client's count */
} ngx_xmpp_cm_handoff_hdr_t;

/*
 * The owner attaches a relayed connection (client.c, through the worker
 * context): NGX_OK, it is a client connection now and has answered;
 * NGX_DONE, it answered failed and closed; NGX_DECLINED, no such stream
 * (nothing done); NGX_ERROR.
 */

typedef ngx_int_t (*ngx_xmpp_cm_adopt_pt)(ngx_connection_t *c,
    ngx_xmpp_cm_handoff_hdr_t *h, void *data);

struct ngx_xmpp_cm_worker_s {
    ngx_queue_t                      clients;      /* for exit */
    ngx_xmpp_cm_parking_t           *parking;      /* parked parsers */
    ngx_int_t                        metrics_slot; /* NGX_ERROR: none */
    void                            *metrics_ctx;  /* the zone's */
    ngx_xmpp_cm_metrics_t            metrics_void; /* counts to nowhere */
    ngx_xmpp_cm_output_free_t        output;       /* free bufs, blocks */
    ngx_connection_t                *handoff;      /* local listener */
    ngx_xmpp_cm_adopt_pt             adopt;        /* client.c's */
    void                            *adopt_data;

    u_char                           client_buf[NGX_XMPP_CM_CLIENT_READ];
    u_char                           upstream_buf[NGX_XMPP_CM_UPSTREAM_READ];

    /* output may be deflated while an inflated chunk is being parsed */
    u_char                           zlib_in[NGX_XMPP_CM_ZLIB_CHUNK];
    u_char                           zlib_out[NGX_XMPP_CM_ZLIB_CHUNK];
};


#define ngx_xmpp_cm_count(pool, m)                                           \
    (pool)->metrics->v[NGX_XMPP_CM_M_##m]++

#define ngx_xmpp_cm_uncount(pool, m)                                         \
    (pool)->metrics->v[NGX_XMPP_CM_M_##m]--

#define ngx_xmpp_cm_count_relay(pool, dir, n)                                \
    do {                                                                     \
        (pool)->metrics->v[NGX_XMPP_CM_M_STANZAS_##dir]++;                  \
        (pool)->metrics->v[NGX_XMPP_CM_M_BYTES_##dir] += (n);               \
    } while (0)


ngx_int_t ngx_xmpp_cm_metrics_conf(ngx_conf_t *cf,
    ngx_stream_xmpp_cm_main_conf_t *cmcf);
char *ngx_xmpp_cm_metrics_slots(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_xmpp_cm_metrics_t *ngx_xmpp_cm_metrics_record(ngx_cycle_t *cycle,
    ngx_str_t *name);
void ngx_xmpp_cm_metrics_exit(ngx_cycle_t *cycle);
void ngx_xmpp_cm_metrics_socks(ngx_xmpp_cm_upstream_t *up);
void ngx_xmpp_cm_metrics_sock_closed(ngx_xmpp_cm_sock_t *sock);
void ngx_xmpp_cm_metrics_stream_error(ngx_xmpp_cm_upstream_t *up, char *cond);
void ngx_xmpp_cm_metrics_stream_opened(ngx_xmpp_cm_upstream_t *up);
void ngx_xmpp_cm_metrics_authenticated(ngx_xmpp_cm_upstream_t *up,
    ngx_uint_t was);
void ngx_xmpp_cm_metrics_stream_closed(ngx_xmpp_cm_upstream_t *up,
    ngx_uint_t authenticated);
void ngx_xmpp_cm_metrics_iq_auth(ngx_xmpp_cm_upstream_t *up, ngx_str_t *type);
void ngx_xmpp_cm_metrics_returned(ngx_xmpp_cm_upstream_t *up, ngx_int_t rc);
void ngx_xmpp_cm_metrics_websocket(ngx_xmpp_cm_upstream_t *up,
    ngx_uint_t open);
void ngx_xmpp_cm_metrics_bosh(ngx_xmpp_cm_upstream_t *up, ngx_int_t what);
ngx_int_t ngx_xmpp_cm_metrics_render(ngx_cycle_t *cycle, ngx_pool_t *pool,
    ngx_str_t *out);


/* output chains (ngx_stream_xmpp_cm_output.c) */

typedef struct {
    ngx_chain_t                     *out;      /* not yet written, in order */
    ngx_chain_t                     *tail;
    size_t                           size;     /* bytes not yet written */
    ngx_xmpp_cm_output_free_t       *free;     /* the worker's */
} ngx_xmpp_cm_output_t;


/* what a socket reset did to a queued stanza */

#define NGX_XMPP_CM_WRITTEN    0               /* written whole */
#define NGX_XMPP_CM_CUT        1               /* the peer got its head */
#define NGX_XMPP_CM_UNWRITTEN  2               /* not a byte written */

typedef struct {
    ngx_uint_t                       written;
    ngx_uint_t                       cut;
    ngx_uint_t                       unwritten;
    size_t                           cut_bytes;       /* not written */
    size_t                           unwritten_bytes;
} ngx_xmpp_cm_output_sent_t;


/*
 * Confirmed delivery on an Openfire socket (docs/delivery.md): what each
 * buf carries, in fields a memory buf does not use otherwise: b->num the
 * kind, b->file_pos and b->file_last the offset and length of the stream
 * id in the buf (a barrier: its sequence number in b->file_pos).
 */

#define NGX_XMPP_CM_BUF_LINK     0    /* the socket's own: never resent */
#define NGX_XMPP_CM_BUF_BARRIER  1    /* a barrier IQ */
#define NGX_XMPP_CM_BUF_CLIENT   2    /* a route of a client stanza */
#define NGX_XMPP_CM_BUF_RAW      3    /* a route the CM built */
#define NGX_XMPP_CM_BUF_CREATE   4    /* session IQs */
#define NGX_XMPP_CM_BUF_CLOSE    5
#define NGX_XMPP_CM_BUF_FAILED   6

#define ngx_xmpp_cm_buf_mark(b, kind, off, len)                              \
    do {                                                                     \
        (b)->num = kind;                                                     \
        (b)->file_pos = (off_t) (off);                                       \
        (b)->file_last = (off_t) (len);                                      \
    } while (0)


/* written to Openfire and not yet confirmed, in the order written */

typedef struct {
    ngx_chain_t                     *out;
    ngx_chain_t                     *tail;
    size_t                           size;     /* their bytes */
    ngx_uint_t                       n;        /* their bufs */
} ngx_xmpp_cm_kept_t;


/* whether a buf of a dead socket goes out again (0: dropped) */
typedef ngx_uint_t (*ngx_xmpp_cm_resend_pt)(void *data, ngx_buf_t *b);


ngx_buf_t *ngx_xmpp_cm_output_buf(ngx_xmpp_cm_output_t *o, size_t size,
    ngx_uint_t stanza);
ngx_int_t ngx_xmpp_cm_output_append(ngx_xmpp_cm_output_t *o, u_char *p,
    size_t n);
ngx_int_t ngx_xmpp_cm_output_send(ngx_connection_t *c,
    ngx_xmpp_cm_output_t *o);
ngx_uint_t ngx_xmpp_cm_output_state(ngx_buf_t *b);
void ngx_xmpp_cm_output_classify(ngx_xmpp_cm_output_t *o,
    ngx_xmpp_cm_output_sent_t *st);
void ngx_xmpp_cm_output_move(ngx_xmpp_cm_output_t *to,
    ngx_xmpp_cm_output_t *from);
void ngx_xmpp_cm_output_free(ngx_xmpp_cm_output_t *o);
ngx_int_t ngx_xmpp_cm_output_send_kept(ngx_connection_t *c,
    ngx_xmpp_cm_output_t *o, ngx_xmpp_cm_kept_t *k);
void ngx_xmpp_cm_output_confirm(ngx_xmpp_cm_output_free_t *fl,
    ngx_xmpp_cm_kept_t *k, ngx_chain_t *last);
ngx_uint_t ngx_xmpp_cm_output_resend(ngx_xmpp_cm_output_t *to,
    ngx_xmpp_cm_kept_t *k, ngx_xmpp_cm_output_t *from,
    ngx_xmpp_cm_resend_pt resend, void *data);
void ngx_xmpp_cm_output_init(ngx_xmpp_cm_output_t *o,
    ngx_xmpp_cm_worker_t *worker);
void ngx_xmpp_cm_output_release(ngx_xmpp_cm_output_free_t *fl);


/*
 * XML framing over expat (ngx_stream_xmpp_cm_xml.c).  The framer is
 * opaque: its owner sets handlers and limits, feeds it reads, and asks
 * for what it needs through the functions below.  Elements and nodes
 * carry stream positions (XML_Index); ngx_xmpp_cm_xml_pieces() turns a
 * range into the bytes, as two spans (the kept bytes of an unfinished
 * stanza, then the current read), valid until the callback returns.
 */

typedef struct ngx_xmpp_cm_xml_s  ngx_xmpp_cm_xml_t;


struct ngx_xmpp_cm_node_s {
    ngx_str_t                        name;
    ngx_str_t                        ns;
    ngx_str_t                       *attrs;        /* name, value pairs */
    ngx_uint_t                       nattrs;
    ngx_xmpp_cm_node_t              *parent;
    ngx_xmpp_cm_node_t              *child;
    ngx_xmpp_cm_node_t              *last;
    ngx_xmpp_cm_node_t              *next;
    ngx_str_t                        text;         /* decoded */
    size_t                           text_cap;
    XML_Index                        start;
    XML_Index                        end;
    ngx_str_t                        xmlns;        /* declared on itself */
    unsigned                         has_xmlns:1;
};


/* a complete top-level element (stanza) and its raw bytes */

#define NGX_XMPP_CM_SHOW_MAX  4

typedef struct {
    ngx_str_t                        name;
    ngx_str_t                        ns;
    unsigned                         has_xmlns:1;
    ngx_xmpp_cm_node_t              *root;         /* tree mode only */
    ngx_str_t                        cond;         /* of a <stream:error> */
    XML_Index                        start;
    XML_Index                        end;

    /* client mode: what the checks of ngx_stream_xmpp_cm_jid.c need */
    const XML_Char                 **attrs;        /* start callback only */
    XML_Index                        body;         /* past the start tag */
    XML_Index                        body_end;     /* at the end tag */
    XML_Index                        show_start;   /* a presence's <show> */
    XML_Index                        show_end;
    const char                      *reject;       /* stanza error */
    ngx_str_t                        to;           /* folded, to route */
    ngx_str_t                        from;
    u_char                          *fold;         /* holds both */
    u_char                           show[NGX_XMPP_CM_SHOW_MAX];
    size_t                           show_len;     /* > MAX: too long */
    unsigned                         nshow:2;      /* 0, 1, 2 or more */
    unsigned                         in_show:1;
    unsigned                         has_lang:1;
    unsigned                         is_error:1;
} ngx_xmpp_cm_elem_t;


typedef ngx_int_t (*ngx_xmpp_cm_open_pt)(void *data, ngx_str_t *name,
    ngx_str_t *ns, const XML_Char **attrs);
typedef ngx_int_t (*ngx_xmpp_cm_elem_pt)(void *data, ngx_xmpp_cm_elem_t *e);
typedef ngx_int_t (*ngx_xmpp_cm_close_pt)(void *data);


typedef struct {
    ngx_xmpp_cm_open_pt              open;         /* the stream root */
    ngx_xmpp_cm_elem_pt              start;        /* optional: start tag */
    ngx_xmpp_cm_elem_pt              element;      /* a complete stanza */
    ngx_xmpp_cm_close_pt             close;        /* </stream:stream> */
} ngx_xmpp_cm_xml_handlers_t;


/* the capacity of an element's name and namespace (longer: empty) */
#define NGX_XMPP_CM_NAME_MAX  32
#define NGX_XMPP_CM_NS_MAX    64


ngx_xmpp_cm_parking_t *ngx_xmpp_cm_xml_parking(ngx_pool_t *pool);
void ngx_xmpp_cm_xml_release_parked(ngx_xmpp_cm_parking_t *pk);
ngx_xmpp_cm_xml_t *ngx_xmpp_cm_xml_create(ngx_pool_t *pool, ngx_log_t *log,
    ngx_uint_t tree, ngx_xmpp_cm_parking_t *parking);
void ngx_xmpp_cm_xml_handlers(ngx_xmpp_cm_xml_t *x,
    ngx_xmpp_cm_xml_handlers_t *h, void *data);
void ngx_xmpp_cm_xml_limits(ngx_xmpp_cm_xml_t *x, size_t max_size,
    ngx_uint_t max_depth);
ngx_int_t ngx_xmpp_cm_xml_reset(ngx_xmpp_cm_xml_t *x);
void ngx_xmpp_cm_xml_free(ngx_xmpp_cm_xml_t *x);
ngx_int_t ngx_xmpp_cm_xml_feed(ngx_xmpp_cm_xml_t *x, u_char *buf, size_t n);
size_t ngx_xmpp_cm_xml_pending(ngx_xmpp_cm_xml_t *x, XML_Index *start);
size_t ngx_xmpp_cm_xml_rest(ngx_xmpp_cm_xml_t *x, XML_Index pos);
const char *ngx_xmpp_cm_xml_error(ngx_xmpp_cm_xml_t *x, const char **text);
ngx_uint_t ngx_xmpp_cm_xml_root_ns(ngx_xmpp_cm_xml_t *x, ngx_str_t *ns);
ngx_int_t ngx_xmpp_cm_xml_fragment(ngx_log_t *log,
    ngx_xmpp_cm_parking_t *parking, u_char *p, size_t len, ngx_uint_t tree,
    size_t max_size, ngx_uint_t max_depth, ngx_xmpp_cm_elem_pt element,
    void *data);
size_t ngx_xmpp_cm_xml_copy(ngx_xmpp_cm_xml_t *x, u_char *dst,
    XML_Index start, XML_Index end);
void ngx_xmpp_cm_xml_pieces(ngx_xmpp_cm_xml_t *x, XML_Index start,
    XML_Index end, ngx_str_t *p1, ngx_str_t *p2);
ngx_str_t *ngx_xmpp_cm_node_attr(ngx_xmpp_cm_node_t *n, char *name);
ngx_xmpp_cm_node_t *ngx_xmpp_cm_node_child(ngx_xmpp_cm_node_t *n,
    char *name);
ngx_int_t ngx_xmpp_cm_str_is(ngx_str_t *s, char *v);
void ngx_xmpp_cm_split_name(const XML_Char *qname, ngx_str_t *ns,
    ngx_str_t *local);
size_t ngx_xmpp_cm_escape(u_char *dst, u_char *src, size_t len);


/* route codec (ngx_stream_xmpp_cm_route.c) */

#define NGX_XMPP_CM_IQ_CREATE  0
#define NGX_XMPP_CM_IQ_CLOSE   1
#define NGX_XMPP_CM_IQ_FAILED  2

size_t ngx_xmpp_cm_sanitize(ngx_xmpp_cm_xml_t *x, u_char *dst,
    XML_Index start, XML_Index end, ngx_uint_t add_xmlns);
ngx_int_t ngx_xmpp_cm_route_client(ngx_xmpp_cm_stream_t *s,
    ngx_xmpp_cm_xml_t *x, ngx_xmpp_cm_elem_t *e, u_char *lang);
ngx_int_t ngx_xmpp_cm_stream_id_ok(ngx_str_t *id);
ngx_int_t ngx_xmpp_cm_route_raw(ngx_xmpp_cm_upstream_t *up,
    ngx_xmpp_cm_sock_t *sock, ngx_str_t *id, u_char *p, size_t len);
ngx_int_t ngx_xmpp_cm_route_session_iq(ngx_xmpp_cm_upstream_t *up,
    ngx_xmpp_cm_sock_t *sock, ngx_str_t *id, ngx_uint_t type,
    ngx_str_t *addr, u_char *payload, size_t len);
size_t ngx_xmpp_cm_stanza_error(ngx_xmpp_cm_xml_t *x, ngx_xmpp_cm_elem_t *e,
    ngx_str_t *to, u_char *dst);
size_t ngx_xmpp_cm_strip_server_ns(u_char *dst, u_char *p, size_t len,
    ngx_xmpp_cm_node_t *n);


/* JIDs and stanza checks (ngx_stream_xmpp_cm_jid.c) */

typedef struct {
    ngx_str_t                        local;
    ngx_str_t                        domain;       /* without a final dot */
    ngx_str_t                        resource;
    unsigned                         has_local:1;
    unsigned                         has_resource:1;
    unsigned                         fold:1;       /* stringprep changes it */
} ngx_xmpp_cm_jid_t;


ngx_int_t ngx_xmpp_cm_jid_parse(u_char *p, size_t len, ngx_xmpp_cm_jid_t *j);
size_t ngx_xmpp_cm_jid_fold(ngx_xmpp_cm_jid_t *j, u_char *dst);
ngx_int_t ngx_xmpp_cm_jid_domain(u_char *p, size_t len, u_char *dst,
    size_t *dlen);
ngx_int_t ngx_xmpp_cm_jid_domain_eq(ngx_str_t *given, ngx_str_t *conf);
void ngx_xmpp_cm_stanza_check(ngx_xmpp_cm_elem_t *e, ngx_log_t *log);
ngx_int_t ngx_xmpp_cm_stanza_show_ok(ngx_xmpp_cm_elem_t *e);


/* upstream pool (ngx_stream_xmpp_cm_upstream.c) */

#define NGX_XMPP_CM_SOCK_IDLE        0
#define NGX_XMPP_CM_SOCK_CONNECTING  1
#define NGX_XMPP_CM_SOCK_OPENING     2
#define NGX_XMPP_CM_SOCK_TLS         3   /* <starttls/> sent, or handshake */
#define NGX_XMPP_CM_SOCK_HANDSHAKE   4
#define NGX_XMPP_CM_SOCK_READY       5


struct ngx_xmpp_cm_sock_s {
    ngx_xmpp_cm_upstream_t          *up;
    ngx_uint_t                       index;
    ngx_uint_t                       generation;
    ngx_uint_t                       state;
    ngx_uint_t                       failures;
    ngx_peer_connection_t            pc;
    ngx_connection_t                *c;
    ngx_log_t                       *log;          /* its own, its action */
    ngx_xmpp_cm_xml_t               *xml;
    ngx_xmpp_cm_output_t             out;          /* a buf per stanza */
    ngx_event_t                      reconnect;
    ngx_event_t                      keepalive;
    ngx_queue_t                      paused;       /* streams paused on it */

    /* confirmed delivery (docs/delivery.md) */
    ngx_xmpp_cm_kept_t               kept;         /* written, unconfirmed */
    ngx_event_t                      barrier;      /* the barrier's delay */
    ngx_uint_t                       bseq;         /* last barrier queued */
    ngx_uint_t                       bconf;        /* last one answered */
    ngx_uint_t                       blost;        /* answers maybe lost */
    ngx_uint_t                       since_n;      /* bufs since a barrier */
    size_t                           since_size;
    ngx_msec_t                       since_at;     /* the first of those */
    ngx_str_t                        resource;
    u_char                           resbuf[2 * NGX_INT_T_LEN + 2];
    u_char                           sid[64];
    size_t                           sid_len;
    const char                      *fail;         /* why it is closed */
#if (NGX_SSL)
    ngx_ssl_session_t               *ssl_session;  /* for reconnects */
#endif
    unsigned                         tls:1;        /* TLS is up */
    unsigned                         proceed:1;    /* <proceed/> came */
    unsigned                         tls_wanted:1; /* <required/> TLS */
    unsigned                         throttled:1;
    unsigned                         rejected:1;
    unsigned                         done:1;
};


/*
 * What the socket group hands up to the stream table: set by
 * ngx_xmpp_cm_stream_init(), so that upstream.c calls nothing in
 * stream.c directly (the stream table calls down into the sockets).
 */

typedef struct {
    void  (*route)(ngx_xmpp_cm_upstream_t *up, ngx_xmpp_cm_sock_t *sock,
                   ngx_xmpp_cm_node_t *route);
    void  (*session_iq)(ngx_xmpp_cm_upstream_t *up, ngx_xmpp_cm_sock_t *sock,
                        ngx_xmpp_cm_node_t *iq);
    void  (*end_all)(ngx_xmpp_cm_upstream_t *up, char *cond, char *text,
                     ngx_uint_t ghost);
    void  (*up)(ngx_xmpp_cm_upstream_t *up);
    void  (*unblock)(ngx_xmpp_cm_stream_t *s);

    /*
     * Openfire has accepted n more routed client stanzas (<route>s that
     * ngx_xmpp_cm_route_client wrote) of the stream with this id, in
     * routing order: a barrier IQ written after them was answered.
     */
    void  (*confirmed)(ngx_xmpp_cm_upstream_t *up, ngx_str_t *id,
                       ngx_uint_t n);

    /*
     * An element of the stream with this id (kind NGX_XMPP_CM_BUF_*) that
     * a reset socket had not got confirmed goes again on the socket to:
     * the stream moves there; 0: it does not go (a create Openfire has
     * acted on).
     */
    ngx_uint_t  (*resend)(ngx_xmpp_cm_upstream_t *up, ngx_xmpp_cm_sock_t *to,
                          ngx_uint_t kind, ngx_str_t *id);
} ngx_xmpp_cm_streams_t;


struct ngx_xmpp_cm_upstream_s {
    ngx_stream_xmpp_cm_srv_conf_t   *conf;
    ngx_str_t                        name;
    ngx_str_t                        domain;
    ngx_log_t                        log;
    ngx_xmpp_cm_sock_t              *socks;
    ngx_uint_t                       nsocks;
    ngx_uint_t                       ready;
    ngx_uint_t                       node;
    ngx_uint_t                       rr;
    ngx_uint_t                       iq_seq;

    ngx_rbtree_t                     ids;          /* id -> stream */
    ngx_rbtree_node_t                sentinel;
    ngx_uint_t                       nstreams;

    ngx_str_t                        features;     /* pre-auth, built */
    unsigned                         cfg_tls_required:1;
    unsigned                         cfg_compression:1;

    ngx_array_t                      ghosts;       /* u_char[ID_LEN] */
    const char                      *down_cond;
    u_char                          *closed;       /* ring of closed ids */
    ngx_uint_t                       closed_next;

    ngx_uint_t                       dropped;
    ngx_pool_t                      *tmp;          /* one Openfire stanza */
    ngx_xmpp_cm_worker_t            *worker;
    ngx_xmpp_cm_metrics_t           *metrics;      /* this worker's slot */
    const ngx_xmpp_cm_streams_t     *streams;      /* set by stream.c */
    unsigned                         configured:1;
    unsigned                         exiting:1;
    unsigned                         was_up:1;
};


ngx_int_t ngx_xmpp_cm_upstream_init(ngx_cycle_t *cycle,
    ngx_stream_xmpp_cm_srv_conf_t *conf);
void ngx_xmpp_cm_upstream_exit(ngx_xmpp_cm_upstream_t *up);
ngx_xmpp_cm_sock_t *ngx_xmpp_cm_upstream_pick(ngx_xmpp_cm_upstream_t *up);
ngx_int_t ngx_xmpp_cm_sock_write(ngx_xmpp_cm_sock_t *sock, u_char *p,
    size_t len);
ngx_buf_t *ngx_xmpp_cm_sock_buf(ngx_xmpp_cm_sock_t *sock, size_t len);
void ngx_xmpp_cm_sock_confirm_now(ngx_xmpp_cm_sock_t *sock);


/* stream table (ngx_stream_xmpp_cm_stream.c) */

/*
 * The connection side of a stream, as the stream table sees it: a
 * connection embeds this and sets its handlers when it attaches.  The
 * table tells the connection what Openfire sent and that the stream
 * ended through these only, so stream.c calls nothing in client.c.
 * ended: the stream has already let go of the connection (s->conn is
 * NULL); the connection must not call the stream table back.
 */

typedef struct {
    ngx_int_t  (*deliver)(ngx_xmpp_cm_conn_t *conn, ngx_xmpp_cm_xml_t *x,
                          ngx_xmpp_cm_node_t *payload);
    void       (*deliver_text)(ngx_xmpp_cm_conn_t *conn, ngx_str_t *text);
    void       (*ended)(ngx_xmpp_cm_conn_t *conn, char *cond, char *text,
                        u_char *raw, size_t rawlen);
    void       (*unblock)(ngx_xmpp_cm_conn_t *conn);
    void       (*confirmed)(ngx_xmpp_cm_conn_t *conn);  /* XEP-0198 h */
} ngx_xmpp_cm_conn_handler_t;


struct ngx_xmpp_cm_conn_s {
    const ngx_xmpp_cm_conn_handler_t  *handler;
};


/* how a stream ends (ngx_xmpp_cm_stream_end) */

#define NGX_XMPP_CM_END_CLOSE   0   /* <close/> to Openfire */
#define NGX_XMPP_CM_END_CLOSED  1   /* Openfire closed or refused it */
#define NGX_XMPP_CM_END_GHOST   2   /* no socket: closed once one is up */


struct ngx_xmpp_cm_stream_s {
    ngx_str_node_t                   node;
    u_char                           id[NGX_XMPP_CM_ID_LEN];
    ngx_xmpp_cm_upstream_t          *up;
    ngx_xmpp_cm_sock_t              *sock;
    ngx_xmpp_cm_conn_t              *conn;       /* NULL: detached */
    ngx_event_t                     *close_ev;   /* during the close delay */
    ngx_queue_t                      queue;      /* in sock->paused */
    ngx_xmpp_cm_sm_t                *sm;         /* XEP-0198, once enabled */

    /* client stanzas routed, and confirmed by Openfire (both wrap) */
    uint32_t                         routed;
    uint32_t                         confirmed;

    unsigned                         paused:1;
    unsigned                         routing:1;   /* in a route's loop */
    unsigned                         gone:1;      /* client left in it */
    unsigned                         detached:1;  /* counted as detached */
    unsigned                         discard:1;   /* close at once */
    unsigned                         created:1;   /* Openfire has it */
};


ngx_int_t ngx_xmpp_cm_stream_init(ngx_cycle_t *cycle,
    ngx_xmpp_cm_upstream_t *up);
ngx_xmpp_cm_stream_t *ngx_xmpp_cm_stream_create(ngx_xmpp_cm_upstream_t *up,
    ngx_xmpp_cm_conn_t *conn, ngx_str_t *addr);
void ngx_xmpp_cm_stream_attach(ngx_xmpp_cm_stream_t *s,
    ngx_xmpp_cm_conn_t *conn);
void ngx_xmpp_cm_stream_detach(ngx_xmpp_cm_stream_t *s);
ngx_int_t ngx_xmpp_cm_stream_send(ngx_xmpp_cm_stream_t *s,
    ngx_xmpp_cm_xml_t *x, ngx_xmpp_cm_elem_t *e, u_char *lang);
ngx_uint_t ngx_xmpp_cm_stream_throttled(ngx_xmpp_cm_stream_t *s);
void ngx_xmpp_cm_stream_confirm_now(ngx_xmpp_cm_stream_t *s);
void ngx_xmpp_cm_stream_forget(ngx_xmpp_cm_stream_t *s);
ngx_xmpp_cm_stream_t *ngx_xmpp_cm_stream_find(ngx_xmpp_cm_upstream_t *up,
    ngx_str_t *id);
ngx_int_t ngx_xmpp_cm_stream_recently_closed(ngx_xmpp_cm_upstream_t *up,
    ngx_str_t *id);

void ngx_xmpp_cm_stream_take(ngx_xmpp_cm_stream_t *s,
    ngx_xmpp_cm_conn_t *conn, char *cond, char *text);

extern const ngx_xmpp_cm_streams_t  ngx_xmpp_cm_streams;


/*
 * XEP-0198 stream management (ngx_stream_xmpp_cm_sm.c): the state that
 * outlives a connection, owned by its stream (malloc'd at <enable/>,
 * freed with the stream).  Counts are the XEP's: unsigned 32-bit,
 * wrapping, compared by their signed difference.
 */

typedef struct ngx_xmpp_cm_sm_chunk_s  ngx_xmpp_cm_sm_chunk_t;

struct ngx_xmpp_cm_sm_s {
    /* inbound: the client's stanzas */
    uint32_t                         received;   /* counted since enable */
    uint32_t                         h;          /* handled: the <a h> */
    uint32_t                         covered;    /* s->confirmed h counts */
    uint32_t                         r_target;   /* received at the <r/> */
    uint32_t                        *marks;      /* answered at the CM */
    ngx_uint_t                       nmarks;     /* ring: s->routed then */
    ngx_uint_t                       mark_head;
    ngx_uint_t                       mark_cap;

    /* outbound: stanzas for the client, kept until acknowledged */
    uint32_t                         sent;       /* queued since enable */
    uint32_t                         acked;      /* the client's last h */
    uint32_t                         requested;  /* sent at our last <r/> */
    size_t                           requested_size;
    ngx_xmpp_cm_sm_chunk_t          *head;
    ngx_xmpp_cm_sm_chunk_t          *tail;
    size_t                           size;       /* bytes not acked */
    ngx_uint_t                       count;      /* stanzas not acked */

    ngx_str_t                        account;    /* bare JID, lower case */
    ngx_str_t                        jid;        /* the bound full JID */
    ngx_msec_t                       max;        /* resumption wait */
    size_t                           limit;      /* bytes kept at most */

    unsigned                         resume:1;   /* resumption enabled */
    unsigned                         hold:1;     /* dropped: wait for it */
    unsigned                         r_in:1;     /* client <r/> unanswered */
    unsigned                         r_out:1;    /* our <r/> unanswered */
};

/* what ngx_xmpp_cm_sm_record() hands to its walker */
typedef ngx_int_t (*ngx_xmpp_cm_sm_pt)(void *data, u_char *p, size_t len);

ngx_xmpp_cm_sm_t *ngx_xmpp_cm_sm_create(ngx_xmpp_cm_stream_t *s,
    ngx_str_t *jid, ngx_log_t *log);
void ngx_xmpp_cm_sm_free(ngx_xmpp_cm_sm_t *sm);
void ngx_xmpp_cm_sm_received(ngx_xmpp_cm_stream_t *s, ngx_uint_t local);
ngx_uint_t ngx_xmpp_cm_sm_advance(ngx_xmpp_cm_stream_t *s);
ngx_uint_t ngx_xmpp_cm_sm_request(ngx_xmpp_cm_stream_t *s);
ngx_int_t ngx_xmpp_cm_sm_queue(ngx_xmpp_cm_sm_t *sm, u_char *p1,
    size_t len1, u_char *p2, size_t len2);
ngx_int_t ngx_xmpp_cm_sm_ack(ngx_xmpp_cm_sm_t *sm, uint32_t h);
ngx_int_t ngx_xmpp_cm_sm_walk(ngx_xmpp_cm_sm_t *sm,
    ngx_xmpp_cm_sm_pt handler, void *data);
void ngx_xmpp_cm_sm_resumed(ngx_xmpp_cm_stream_t *s);
ngx_int_t ngx_xmpp_cm_sm_hold(ngx_xmpp_cm_stream_t *s, ngx_xmpp_cm_xml_t *x,
    ngx_xmpp_cm_node_t *n);
ngx_int_t ngx_xmpp_cm_sm_previd(ngx_str_t *previd, ngx_pid_t *pid);
ngx_int_t ngx_xmpp_cm_sm_account(ngx_pool_t *pool, ngx_str_t *mech,
    ngx_str_t *data, ngx_str_t *domain, ngx_str_t *account);


/* TLS (ngx_stream_xmpp_cm_tls.c) */

#if (NGX_STREAM_SSL)
ngx_int_t ngx_xmpp_cm_tls_conf(ngx_conf_t *cf,
    ngx_stream_xmpp_cm_srv_conf_t *conf, ngx_stream_ssl_conf_t *sscf);
ngx_int_t ngx_xmpp_cm_tls_start(ngx_connection_t *c,
    ngx_stream_xmpp_cm_srv_conf_t *conf, ngx_connection_handler_pt handler);
#endif
#if (NGX_SSL)
ngx_int_t ngx_xmpp_cm_upstream_ssl_conf(ngx_conf_t *cf,
    ngx_stream_xmpp_cm_srv_conf_t *conf);
#endif


/* stream compression (ngx_stream_xmpp_cm_zlib.c) */

typedef struct ngx_xmpp_cm_zlib_s  ngx_xmpp_cm_zlib_t;
typedef ngx_int_t (*ngx_xmpp_cm_zlib_pt)(void *data, u_char *p, size_t n);

ngx_xmpp_cm_zlib_t *ngx_xmpp_cm_zlib_create(ngx_pool_t *pool,
    ngx_log_t *log, ngx_xmpp_cm_worker_t *worker);
void ngx_xmpp_cm_zlib_free(ngx_xmpp_cm_zlib_t *z);
ngx_int_t ngx_xmpp_cm_zlib_deflate(ngx_xmpp_cm_zlib_t *z, u_char *p,
    size_t len, ngx_uint_t flush, ngx_xmpp_cm_zlib_pt handler, void *data);
ngx_int_t ngx_xmpp_cm_zlib_inflate(ngx_xmpp_cm_zlib_t *z, u_char *p,
    size_t len, ngx_xmpp_cm_zlib_pt handler, void *data);


/*
 * A client transport other than the stream module's byte stream: the
 * WebSocket of ngx_http_xmpp_cm_websocket_module.c.  Its connection's
 * c->data is not a stream session (an http request: its signature is not
 * "STRM"), and ngx_xmpp_cm_transport_of(c), set by the transport's
 * module, finds the transport of such a connection.  The client engine
 * hands it the bytes it reads (input: it feeds whole elements back with
 * ngx_xmpp_cm_client_feed()) and the XMPP stream it writes (output: it
 * frames the elements into the client's output chain); pending is a
 * frame not complete yet, for the stanza timeout; finalize closes the
 * connection.
 */

typedef struct ngx_xmpp_cm_transport_s  ngx_xmpp_cm_transport_t;

typedef struct {
    ngx_int_t  (*input)(ngx_xmpp_cm_transport_t *t, u_char *p, size_t n);
    ngx_int_t  (*output)(ngx_xmpp_cm_transport_t *t, u_char *p, size_t n);
    size_t     (*pending)(ngx_xmpp_cm_transport_t *t, XML_Index *base);
    void       (*finalize)(ngx_xmpp_cm_transport_t *t);
} ngx_xmpp_cm_transport_handler_t;

struct ngx_xmpp_cm_transport_s {
    const ngx_xmpp_cm_transport_handler_t  *handler;
    ngx_xmpp_cm_client_t                   *client;
};


/*
 * Handing a resumed stream to the worker that holds it
 * (ngx_stream_xmpp_cm_handoff.c).  Each worker listens on a local socket
 * of its own; the worker that accepted a resumption relays the client's
 * decrypted, inflated bytes to the owner and the owner's bytes back.
 */

#define NGX_XMPP_CM_HANDOFF_OK      0
#define NGX_XMPP_CM_HANDOFF_FAILED  1
#define NGX_XMPP_CM_HANDOFF_FAILED_MAX  255    /* its <failed/> */

typedef struct ngx_xmpp_cm_relay_s  ngx_xmpp_cm_relay_t;

/* how the relay reaches the client connection it serves */

typedef struct {
    /* the owner's bytes; NGX_AGAIN: taken, but read no more for now */
    ngx_int_t  (*out)(void *data, u_char *p, size_t n);
    /*
     * the owner's answer: NGX_XMPP_CM_HANDOFF_OK, or FAILED with the
     * owner's <failed/> element (NULL: not reached, item-not-found)
     */
    void       (*status)(void *data, ngx_uint_t status, ngx_str_t *failed);
    /* the relay drained below its mark: read the client again */
    void       (*unblock)(void *data);
    /* the relay ended (the owner closed, failed, or timed out) */
    void       (*closed)(void *data);
} ngx_xmpp_cm_relay_handler_t;

ngx_int_t ngx_xmpp_cm_handoff_init(ngx_cycle_t *cycle,
    ngx_xmpp_cm_worker_t *wk, ngx_xmpp_cm_adopt_pt adopt, void *data);
void ngx_xmpp_cm_handoff_exit(ngx_xmpp_cm_worker_t *wk);
ngx_int_t ngx_xmpp_cm_handoff_reply(ngx_connection_t *c, ngx_uint_t status,
    u_char *failed, size_t len);
ngx_xmpp_cm_relay_t *ngx_xmpp_cm_relay_create(ngx_connection_t *client,
    ngx_xmpp_cm_worker_t *wk, const ngx_xmpp_cm_relay_handler_t *handler,
    void *data);
ngx_xmpp_cm_handoff_hdr_t *ngx_xmpp_cm_relay_hdr(ngx_xmpp_cm_relay_t *r);
ngx_int_t ngx_xmpp_cm_relay_start(ngx_xmpp_cm_relay_t *r, ngx_pid_t owner);
ngx_int_t ngx_xmpp_cm_relay_send(ngx_xmpp_cm_relay_t *r, u_char *p,
    size_t n);
ngx_uint_t ngx_xmpp_cm_relay_full(ngx_xmpp_cm_relay_t *r);
void ngx_xmpp_cm_relay_drained(ngx_xmpp_cm_relay_t *r);
void ngx_xmpp_cm_relay_close(ngx_xmpp_cm_relay_t *r);

/*
 * A BOSH request relayed to the session's worker: the owner's module
 * takes the connection, answers the <body/> and closes it (set by the
 * BOSH module; NULL: the kind is refused).  c->buffer of the connecting
 * side holds the request, to be written.
 */
typedef void (*ngx_xmpp_cm_handoff_bosh_pt)(ngx_connection_t *c,
    ngx_str_t *addr, ngx_str_t *body);

extern ngx_xmpp_cm_handoff_bosh_pt  ngx_xmpp_cm_handoff_bosh;

ngx_connection_t *ngx_xmpp_cm_handoff_bosh_connect(ngx_pid_t owner,
    ngx_str_t *addr, ngx_str_t *body, ngx_pool_t *pool, ngx_log_t *log);


/* client stream (ngx_stream_xmpp_cm_client.c) */

void ngx_stream_xmpp_cm_handler(ngx_stream_session_t *s);
ngx_xmpp_cm_client_t *ngx_xmpp_cm_client_create(ngx_connection_t *c,
    ngx_stream_xmpp_cm_srv_conf_t *conf, ngx_stream_session_t *s);
void ngx_xmpp_cm_client_run(ngx_xmpp_cm_client_t *cl, u_char *p, size_t n);
ngx_int_t ngx_xmpp_cm_client_feed(ngx_xmpp_cm_client_t *cl, u_char *p,
    size_t n);
void ngx_xmpp_cm_client_error(ngx_xmpp_cm_client_t *cl, char *cond,
    char *text);
ngx_uint_t ngx_xmpp_cm_client_opened(ngx_xmpp_cm_client_t *cl);
size_t ngx_xmpp_cm_client_max(ngx_xmpp_cm_client_t *cl);
ngx_xmpp_cm_output_t *ngx_xmpp_cm_client_output(ngx_xmpp_cm_client_t *cl);

extern ngx_xmpp_cm_transport_t *(*ngx_xmpp_cm_transport_of)(
    ngx_connection_t *c);
void ngx_xmpp_cm_client_shutdown_all(ngx_xmpp_cm_worker_t *worker);
ngx_int_t ngx_xmpp_cm_client_variable(ngx_stream_session_t *s,
    ngx_uint_t which, ngx_str_t *value);
ngx_int_t ngx_xmpp_cm_client_adopt(ngx_connection_t *c,
    ngx_xmpp_cm_handoff_hdr_t *h, void *data);


#endif /* _NGX_STREAM_XMPP_CM_H_INCLUDED_ */
