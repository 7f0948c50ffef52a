
/*
 * XMPP over BOSH (XEP-0124, XEP-0206) into the connection manager:
 *
 *     location = /http-bind { xmpp_cm_bosh NAME; }
 *
 * in any http server of the same nginx, NAME being the xmpp_cm_name of a
 * stream server with xmpp_cm_pass.  A BOSH session is a client stream of
 * the CM with no connection of its own: the session object here owns a
 * pool and a connection structure with no socket (fd -1, no events in the
 * event module) on which the client engine (ngx_stream_xmpp_cm_client.c)
 * runs as for a TCP client, with this file as its transport
 * (ngx_xmpp_cm_transport_t).  Each HTTP request's <body/> is checked and
 * its children fed to the engine after a synthetic stream header (a new
 * one on xmpp:restart); what the engine writes, cut of the stream header
 * and end, waits in the session until a held request takes it.  The
 * engine's timers (authentication deadline, idle timeout) run on the
 * socketless connection's read event, re-armed by each request; the
 * session's inactivity timer runs while no request is held.  What is
 * queued for the client when the session ends goes back to Openfire as
 * <session><failed> (messages), as the stream table does for a closed
 * stream, before the engine closes the stream upstream.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_http.h>
#include "ngx_stream_xmpp_cm.h"


#define NGX_XMPP_NS_HTTPBIND  "http://jabber.org/protocol/httpbind"
#define NGX_XMPP_NS_XBOSH     "urn:xmpp:xbosh"
#define NGX_XMPP_NS_XML       "http://www.w3.org/XML/1998/namespace"

/* c->data of a session's connection starts with this, as a request does */
#define NGX_HTTP_XMPP_CM_BOSH_SIGNATURE  0x48534f42    /* "BOSH" */

#define NGX_HTTP_XMPP_CM_BOSH_SID_LEN    32             /* hex of 16 bytes */

/* the <body/> wrapper and its attributes around the stanzas */
#define NGX_HTTP_XMPP_CM_BOSH_WRAPPER    4096

/* XEP-0124 7.1: rid up to 2^53 - 1 */
#define NGX_HTTP_XMPP_CM_BOSH_RID_MAX    9007199254740991ULL

#define NGX_HTTP_XMPP_CM_BOSH_HOLD_MAX   16

/* a response relayed from the session's worker: written, and its size */
#define NGX_HTTP_XMPP_CM_BOSH_RELAY_TIMEOUT  5000
#define NGX_XMPP_CM_RELAY_ANSWER_MAX         (64 * 1024 * 1024)


typedef struct {
    ngx_str_t                        name;
    ngx_stream_xmpp_cm_srv_conf_t   *conf;        /* resolved at init */
    ngx_str_t                        file;
    ngx_uint_t                       line;
    ngx_array_t                     *origins;     /* ngx_str_t */
    ngx_msec_t                       max_wait;
    ngx_msec_t                       inactivity;
    ngx_uint_t                       max_hold;
} ngx_http_xmpp_cm_bosh_loc_conf_t;


typedef struct {
    ngx_array_t                      locs;        /* loc_conf_t * */
    ngx_rbtree_t                     sessions;    /* sid -> session */
    ngx_rbtree_node_t                sentinel;
} ngx_http_xmpp_cm_bosh_main_conf_t;


/* a response kept for a repeated rid (XEP-0124 14.3) */

typedef struct {
    uint64_t                         rid;
    u_char                          *data;        /* ngx_alloc */
    size_t                           len;
} ngx_http_xmpp_cm_bosh_cache_t;


/* what a <body/> says */

typedef struct {
    ngx_str_t                        sid;
    ngx_str_t                        rid;
    ngx_str_t                        to;
    ngx_str_t                        lang;
    ngx_str_t                        wait;
    ngx_str_t                        hold;
    ngx_str_t                        type;
    ngx_str_t                        restart;
    ngx_str_t                        version;     /* xmpp:version */
    u_char                          *inner;       /* the children */
    size_t                           inner_len;
    uint64_t                         rid_n;

    /* parser state */
    ngx_pool_t                      *pool;
    XML_Parser                       parser;
    ngx_uint_t                       depth;
    XML_Index                        inner_start;
    unsigned                         bad:1;
    unsigned                         root:1;
} ngx_http_xmpp_cm_bosh_body_t;


typedef struct ngx_http_xmpp_cm_bosh_s  ngx_http_xmpp_cm_bosh_t;

/*
 * A request of a session: an HTTP request of this worker (r), or one
 * another worker relayed over the local socket (relay, r NULL).  Its
 * pool and log are either's.
 */

typedef struct {
    ngx_http_request_t              *r;
    ngx_connection_t                *relay;
    ngx_pool_t                      *pool;
    ngx_log_t                       *log;
    ngx_http_xmpp_cm_bosh_t         *bs;
    ngx_queue_t                      queue;       /* in held or ahead */
    ngx_event_t                      wait;
    uint64_t                         rid;
    ngx_http_xmpp_cm_bosh_body_t     body;
    unsigned                         queued:1;
    unsigned                         ahead:1;     /* behind a missing rid */
    unsigned                         create:1;
} ngx_http_xmpp_cm_bosh_req_t;


struct ngx_http_xmpp_cm_bosh_s {
    uint32_t                         signature;   /* first: c->data */
    ngx_xmpp_cm_transport_t          t;
    ngx_str_node_t                   node;        /* sid */
    u_char                           sid[NGX_HTTP_XMPP_CM_BOSH_SID_LEN];
    ngx_pool_t                      *pool;
    ngx_connection_t                *c;           /* no socket */
    ngx_log_t                        log;
    ngx_xmpp_cm_client_t            *cl;
    ngx_xmpp_cm_upstream_t          *up;
    ngx_http_xmpp_cm_bosh_main_conf_t  *bmcf;
    ngx_http_xmpp_cm_bosh_loc_conf_t   *blcf;

    uint64_t                         rid;         /* the last one taken */
    ngx_queue_t                      held;        /* oldest first */
    ngx_uint_t                       nheld;
    ngx_queue_t                      ahead;
    ngx_uint_t                       nahead;

    ngx_msec_t                       wait;
    ngx_msec_t                       inactivity;
    ngx_uint_t                       hold;
    ngx_uint_t                       requests;

    /* what the engine wrote for the client and no request took yet */
    u_char                          *out;         /* ngx_alloc */
    size_t                           out_len;
    size_t                           out_cap;

    u_char                          *err;         /* its <stream:error> */
    size_t                           err_len;
    const char                      *cond;        /* BOSH's own condition */

    ngx_str_t                        authid;      /* the stream id */
    ngx_str_t                        from;
    ngx_str_t                        to;          /* of the creation */
    ngx_str_t                        lang;

    ngx_http_xmpp_cm_bosh_cache_t   *cache;       /* [requests] */

    ngx_event_t                      inactive;
    ngx_event_t                      flush;

    unsigned                         header:1;    /* a stream header next */
    unsigned                         closed:1;    /* </stream:stream> */
    unsigned                         bounce:1;    /* queue goes back */
    unsigned                         finalized:1;
};


static char *ngx_http_xmpp_cm_bosh(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_xmpp_cm_bosh_origin(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static void *ngx_http_xmpp_cm_bosh_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_xmpp_cm_bosh_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_xmpp_cm_bosh_merge_loc_conf(ngx_conf_t *cf,
    void *parent, void *child);
static ngx_int_t ngx_http_xmpp_cm_bosh_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_xmpp_cm_bosh_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_xmpp_cm_bosh_preflight(ngx_http_request_t *r,
    ngx_http_xmpp_cm_bosh_loc_conf_t *blcf);
static ngx_int_t ngx_http_xmpp_cm_bosh_cors(ngx_http_request_t *r,
    ngx_http_xmpp_cm_bosh_loc_conf_t *blcf);
static ngx_int_t ngx_http_xmpp_cm_bosh_add_header(ngx_http_request_t *r,
    char *name, u_char *value, size_t len);
static void ngx_http_xmpp_cm_bosh_body_handler(ngx_http_request_t *r);
static ngx_http_xmpp_cm_bosh_t *ngx_http_xmpp_cm_bosh_find(
    ngx_http_xmpp_cm_bosh_main_conf_t *bmcf, ngx_str_t *sid);
static ngx_int_t ngx_http_xmpp_cm_bosh_read_body(ngx_http_request_t *r,
    size_t max, u_char **p, size_t *len);
static ngx_int_t ngx_http_xmpp_cm_bosh_parse(ngx_http_xmpp_cm_bosh_body_t *b,
    u_char *p, size_t len);
static void XMLCALL ngx_http_xmpp_cm_bosh_start(void *data,
    const XML_Char *name, const XML_Char **attrs);
static void XMLCALL ngx_http_xmpp_cm_bosh_end(void *data,
    const XML_Char *name);
static void XMLCALL ngx_http_xmpp_cm_bosh_doctype(void *data,
    const XML_Char *name, const XML_Char *sysid, const XML_Char *pubid,
    int has_internal_subset);
static ngx_int_t ngx_http_xmpp_cm_bosh_number(ngx_str_t *s, uint64_t max,
    uint64_t *n);
static void ngx_http_xmpp_cm_bosh_create(ngx_http_xmpp_cm_bosh_req_t *req,
    ngx_http_xmpp_cm_bosh_loc_conf_t *blcf);
static void ngx_http_xmpp_cm_bosh_request(ngx_http_xmpp_cm_bosh_t *bs,
    ngx_http_xmpp_cm_bosh_req_t *req);
static void ngx_http_xmpp_cm_bosh_run(ngx_http_xmpp_cm_bosh_t *bs,
    ngx_http_xmpp_cm_bosh_req_t *req);
static ngx_int_t ngx_http_xmpp_cm_bosh_stream_header(
    ngx_http_xmpp_cm_bosh_t *bs, ngx_http_xmpp_cm_bosh_body_t *b);
static void ngx_http_xmpp_cm_bosh_hold(ngx_http_xmpp_cm_bosh_t *bs,
    ngx_http_xmpp_cm_bosh_req_t *req);
static void ngx_http_xmpp_cm_bosh_release(ngx_http_xmpp_cm_bosh_t *bs);
static void ngx_http_xmpp_cm_bosh_unqueue(ngx_http_xmpp_cm_bosh_req_t *req);
static void ngx_http_xmpp_cm_bosh_respond(ngx_http_xmpp_cm_bosh_req_t *req,
    ngx_uint_t data, ngx_uint_t terminate, const char *cond);
static ngx_int_t ngx_http_xmpp_cm_bosh_qualify(ngx_http_xmpp_cm_bosh_t *bs,
    ngx_pool_t *pool, u_char **data, size_t *len);
static ngx_int_t ngx_http_xmpp_cm_bosh_qualify_one(void *data,
    ngx_xmpp_cm_elem_t *e);
static void ngx_http_xmpp_cm_bosh_send(ngx_http_request_t *r, u_char *p,
    size_t len);
static void ngx_http_xmpp_cm_bosh_answer(ngx_http_xmpp_cm_bosh_req_t *req,
    u_char *p, size_t len);
static void ngx_http_xmpp_cm_bosh_fail(ngx_http_xmpp_cm_bosh_req_t *req);
static void ngx_http_xmpp_cm_bosh_forward(ngx_http_request_t *r,
    ngx_pid_t owner, u_char *p, size_t len);
static void ngx_http_xmpp_cm_bosh_forward_write(ngx_event_t *wev);
static void ngx_http_xmpp_cm_bosh_forward_read(ngx_event_t *rev);
static void ngx_http_xmpp_cm_bosh_forward_cleanup(void *data);
static void ngx_http_xmpp_cm_bosh_relayed(ngx_connection_t *c,
    ngx_str_t *addr, ngx_str_t *body);
static void ngx_http_xmpp_cm_bosh_relay_write(ngx_event_t *wev);
static void ngx_http_xmpp_cm_bosh_relay_read(ngx_event_t *rev);
static void ngx_http_xmpp_cm_bosh_refuse(ngx_http_request_t *r,
    const char *cond);
static void ngx_http_xmpp_cm_bosh_terminate(ngx_http_xmpp_cm_bosh_t *bs,
    ngx_http_xmpp_cm_bosh_req_t *req, const char *cond);
static void ngx_http_xmpp_cm_bosh_wait_handler(ngx_event_t *ev);
static void ngx_http_xmpp_cm_bosh_inactive_handler(ngx_event_t *ev);
static void ngx_http_xmpp_cm_bosh_flush_handler(ngx_event_t *ev);
static void ngx_http_xmpp_cm_bosh_req_cleanup(void *data);
static void ngx_http_xmpp_cm_bosh_bounce(ngx_http_xmpp_cm_bosh_t *bs);
static ngx_int_t ngx_http_xmpp_cm_bosh_bounce_one(void *data,
    ngx_xmpp_cm_elem_t *e);
static void ngx_http_xmpp_cm_bosh_destroy(ngx_http_xmpp_cm_bosh_t *bs);
static ngx_xmpp_cm_transport_t *ngx_http_xmpp_cm_bosh_of(
    ngx_connection_t *c);
static ngx_int_t ngx_xmpp_cm_bosh_input(ngx_xmpp_cm_transport_t *t,
    u_char *p, size_t n);
static ngx_int_t ngx_xmpp_cm_bosh_output(ngx_xmpp_cm_transport_t *t,
    u_char *p, size_t n);
static size_t ngx_xmpp_cm_bosh_pending(ngx_xmpp_cm_transport_t *t,
    XML_Index *base);
static void ngx_xmpp_cm_bosh_finalize(ngx_xmpp_cm_transport_t *t);
static ssize_t ngx_http_xmpp_cm_bosh_recv(ngx_connection_t *c, u_char *buf,
    size_t size);
static ngx_chain_t *ngx_http_xmpp_cm_bosh_send_chain(ngx_connection_t *c,
    ngx_chain_t *in, off_t limit);


static ngx_conf_num_bounds_t  ngx_http_xmpp_cm_bosh_hold_bounds = {
    ngx_conf_check_num_bounds, 0, NGX_HTTP_XMPP_CM_BOSH_HOLD_MAX
};


static ngx_command_t  ngx_http_xmpp_cm_bosh_commands[] = {

    { ngx_string("xmpp_cm_bosh"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_xmpp_cm_bosh,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("xmpp_cm_bosh_allow_origin"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF
          |NGX_CONF_1MORE,
      ngx_http_xmpp_cm_bosh_origin,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("xmpp_cm_bosh_max_wait"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_xmpp_cm_bosh_loc_conf_t, max_wait),
      NULL },

    { ngx_string("xmpp_cm_bosh_inactivity"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_xmpp_cm_bosh_loc_conf_t, inactivity),
      NULL },

    { ngx_string("xmpp_cm_bosh_max_hold"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_xmpp_cm_bosh_loc_conf_t, max_hold),
      &ngx_http_xmpp_cm_bosh_hold_bounds },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_xmpp_cm_bosh_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    ngx_http_xmpp_cm_bosh_create_main_conf, /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_xmpp_cm_bosh_create_loc_conf, /* create location configuration */
    ngx_http_xmpp_cm_bosh_merge_loc_conf   /* merge location configuration */
};


ngx_module_t  ngx_http_xmpp_cm_bosh_module = {
    NGX_MODULE_V1,
    &ngx_http_xmpp_cm_bosh_module_ctx,     /* module context */
    ngx_http_xmpp_cm_bosh_commands,        /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_xmpp_cm_bosh_init_module,     /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static const ngx_xmpp_cm_transport_handler_t  ngx_xmpp_cm_bosh_transport = {
    ngx_xmpp_cm_bosh_input,
    ngx_xmpp_cm_bosh_output,
    ngx_xmpp_cm_bosh_pending,
    ngx_xmpp_cm_bosh_finalize
};


/* the transport lookup of the other web transports: BOSH sits in front */
static ngx_xmpp_cm_transport_t  *(*ngx_http_xmpp_cm_bosh_next_of)(
    ngx_connection_t *c);


static void *
ngx_http_xmpp_cm_bosh_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_xmpp_cm_bosh_main_conf_t  *bmcf;

    bmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_xmpp_cm_bosh_main_conf_t));
    if (bmcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&bmcf->locs, cf->pool, 2,
                       sizeof(ngx_http_xmpp_cm_bosh_loc_conf_t *))
        != NGX_OK)
    {
        return NULL;
    }

    /* each worker has its own copy: a session lives in one worker */
    ngx_rbtree_init(&bmcf->sessions, &bmcf->sentinel,
                    ngx_str_rbtree_insert_value);

    return bmcf;
}


static void *
ngx_http_xmpp_cm_bosh_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_xmpp_cm_bosh_loc_conf_t  *blcf;

    blcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_xmpp_cm_bosh_loc_conf_t));
    if (blcf == NULL) {
        return NULL;
    }

    blcf->origins = NGX_CONF_UNSET_PTR;
    blcf->max_wait = NGX_CONF_UNSET_MSEC;
    blcf->inactivity = NGX_CONF_UNSET_MSEC;
    blcf->max_hold = NGX_CONF_UNSET_UINT;

    return blcf;
}


static char *
ngx_http_xmpp_cm_bosh_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child)
{
    ngx_http_xmpp_cm_bosh_loc_conf_t *prev = parent;
    ngx_http_xmpp_cm_bosh_loc_conf_t *conf = child;

    ngx_conf_merge_ptr_value(conf->origins, prev->origins, NULL);
    ngx_conf_merge_msec_value(conf->max_wait, prev->max_wait, 60000);
    ngx_conf_merge_msec_value(conf->inactivity, prev->inactivity, 60000);
    ngx_conf_merge_uint_value(conf->max_hold, prev->max_hold, 1);

    if (conf->max_wait < 1000 || conf->inactivity < 1000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"xmpp_cm_bosh_max_wait\" and "
                           "\"xmpp_cm_bosh_inactivity\" must be at least 1s "
                           "(BOSH counts them in seconds)");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_xmpp_cm_bosh(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_xmpp_cm_bosh_loc_conf_t *blcf = conf;

    ngx_str_t                           *value;
    ngx_http_core_loc_conf_t            *clcf;
    ngx_http_xmpp_cm_bosh_loc_conf_t   **loc;
    ngx_http_xmpp_cm_bosh_main_conf_t   *bmcf;

    if (blcf->name.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 0 || value[1].len > NGX_XMPP_CM_CM_NAME_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"xmpp_cm_bosh\" \"%V\": the "
                           "xmpp_cm_name of a stream server (up to %d "
                           "characters)", &value[1], NGX_XMPP_CM_CM_NAME_MAX);
        return NGX_CONF_ERROR;
    }

    /* xmpp_cm_name is kept in lower case */
    blcf->name = value[1];
    ngx_strlow(blcf->name.data, blcf->name.data, blcf->name.len);
    blcf->file = cf->conf_file->file.name;
    blcf->line = cf->conf_file->line;

    bmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_xmpp_cm_bosh_module);

    loc = ngx_array_push(&bmcf->locs);
    if (loc == NULL) {
        return NGX_CONF_ERROR;
    }

    *loc = blcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_xmpp_cm_bosh_handler;

    return NGX_CONF_OK;
}


/* xmpp_cm_bosh_allow_origin * | ORIGIN ...; (scheme://host[:port]) */

static char *
ngx_http_xmpp_cm_bosh_origin(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_xmpp_cm_bosh_loc_conf_t *blcf = conf;

    ngx_str_t   *value, *o;
    ngx_uint_t   i;

    if (blcf->origins != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    blcf->origins = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                     sizeof(ngx_str_t));
    if (blcf->origins == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 1; i < cf->args->nelts; i++) {

        if (!(value[i].len == 1 && value[i].data[0] == '*')
            && ((value[i].len <= 7
                 || ngx_strncmp(value[i].data, "http://", 7) != 0)
                && (value[i].len <= 8
                    || ngx_strncmp(value[i].data, "https://", 8) != 0)))
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid \"xmpp_cm_bosh_allow_origin\" "
                               "\"%V\": \"*\" or an origin such as "
                               "https://chat.example.com", &value[i]);
            return NGX_CONF_ERROR;
        }

        if (value[i].data[value[i].len - 1] == '/') {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid \"xmpp_cm_bosh_allow_origin\" "
                               "\"%V\": an origin has no path (no "
                               "trailing \"/\")", &value[i]);
            return NGX_CONF_ERROR;
        }

        o = ngx_array_push(blcf->origins);
        if (o == NULL) {
            return NGX_CONF_ERROR;
        }

        *o = value[i];
    }

    return NGX_CONF_OK;
}


/*
 * Names resolve once both blocks are parsed (stream{} may follow http{}):
 * init_module runs after the whole configuration, at nginx -t too.
 */

static ngx_int_t
ngx_http_xmpp_cm_bosh_init_module(ngx_cycle_t *cycle)
{
    ngx_uint_t                           i;
    ngx_http_xmpp_cm_bosh_loc_conf_t   **loc;
    ngx_http_xmpp_cm_bosh_main_conf_t   *bmcf;

    /* in front of the other web transports' lookup (the WebSocket's) */

    if (ngx_xmpp_cm_transport_of != ngx_http_xmpp_cm_bosh_of) {
        ngx_http_xmpp_cm_bosh_next_of = ngx_xmpp_cm_transport_of;
        ngx_xmpp_cm_transport_of = ngx_http_xmpp_cm_bosh_of;
    }

    /* requests of this worker's sessions that reached another one */
    ngx_xmpp_cm_handoff_bosh = ngx_http_xmpp_cm_bosh_relayed;

    if (cycle->conf_ctx[ngx_http_module.index] == NULL) {
        return NGX_OK;
    }

    bmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_xmpp_cm_bosh_module);
    if (bmcf == NULL) {
        return NGX_OK;
    }

    loc = bmcf->locs.elts;

    for (i = 0; i < bmcf->locs.nelts; i++) {

        loc[i]->conf = ngx_stream_xmpp_cm_find_name(cycle, &loc[i]->name);

        if (loc[i]->conf == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                          "\"xmpp_cm_bosh %V\" in %V:%ui: no stream "
                          "server with xmpp_cm_pass has the xmpp_cm_name "
                          "\"%V\"", &loc[i]->name, &loc[i]->file,
                          loc[i]->line, &loc[i]->name);
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_xmpp_cm_transport_t *
ngx_http_xmpp_cm_bosh_of(ngx_connection_t *c)
{
    ngx_http_xmpp_cm_bosh_t  *bs;

    bs = c->data;

    if (bs->signature == NGX_HTTP_XMPP_CM_BOSH_SIGNATURE) {
        return &bs->t;
    }

    return ngx_http_xmpp_cm_bosh_next_of ? ngx_http_xmpp_cm_bosh_next_of(c)
                                         : NULL;
}


/* POST a <body/>; OPTIONS is a CORS preflight */

static ngx_int_t
ngx_http_xmpp_cm_bosh_handler(ngx_http_request_t *r)
{
    ngx_int_t                          rc;
    ngx_http_xmpp_cm_bosh_loc_conf_t  *blcf;

    blcf = ngx_http_get_module_loc_conf(r, ngx_http_xmpp_cm_bosh_module);

    if (r != r->main) {
        return NGX_HTTP_NOT_FOUND;
    }

    if (r->method == NGX_HTTP_OPTIONS) {
        return ngx_http_xmpp_cm_bosh_preflight(r, blcf);
    }

    if (r->method != NGX_HTTP_POST) {
        /* XEP-0124 no GET: a page for a person who opens the URL */
        return NGX_HTTP_NOT_ALLOWED;
    }

    if (blcf->conf->up == NULL || blcf->conf->up->worker == NULL) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    if (r->headers_in.content_length_n
        > (off_t) (blcf->conf->max_stanza + NGX_HTTP_XMPP_CM_BOSH_WRAPPER))
    {
        /* not read: refused as the body handler would refuse it */
        r->request_body_in_single_buf = 0;
        r->discard_body = 0;

        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "xmpp_cm: BOSH body of %O bytes over %uz",
                      r->headers_in.content_length_n,
                      blcf->conf->max_stanza + NGX_HTTP_XMPP_CM_BOSH_WRAPPER);

        (void) ngx_http_xmpp_cm_bosh_cors(r, blcf);
        r->main->count++;
        ngx_http_xmpp_cm_bosh_refuse(r, "policy-violation");
        return NGX_DONE;
    }

    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r,
                                      ngx_http_xmpp_cm_bosh_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static ngx_int_t
ngx_http_xmpp_cm_bosh_preflight(ngx_http_request_t *r,
    ngx_http_xmpp_cm_bosh_loc_conf_t *blcf)
{
    ngx_int_t  rc;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    rc = ngx_http_xmpp_cm_bosh_cors(r, blcf);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED) {
        /* no such origin here: no CORS headers, the browser refuses */
        return NGX_HTTP_FORBIDDEN;
    }

    if (ngx_http_xmpp_cm_bosh_add_header(r, "Access-Control-Allow-Methods",
                                         (u_char *) "POST, OPTIONS", 13)
        != NGX_OK
        || ngx_http_xmpp_cm_bosh_add_header(r, "Access-Control-Allow-Headers",
                                            (u_char *) "Content-Type", 12)
           != NGX_OK
        || ngx_http_xmpp_cm_bosh_add_header(r, "Access-Control-Max-Age",
                                            (u_char *) "86400", 5)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;

    return ngx_http_send_header(r);
}


/*
 * Access-Control-Allow-Origin for an allowed Origin.  NGX_DECLINED: the
 * request has an Origin that is not allowed, or CORS is off.
 */

static ngx_int_t
ngx_http_xmpp_cm_bosh_cors(ngx_http_request_t *r,
    ngx_http_xmpp_cm_bosh_loc_conf_t *blcf)
{
    ngx_str_t        *o, origin;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    if (blcf->origins == NULL) {
        return NGX_DECLINED;
    }

    ngx_str_null(&origin);

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == 6
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Origin", 6) == 0)
        {
            origin = h[i].value;
            break;
        }
    }

    if (origin.len == 0) {
        return NGX_DECLINED;
    }

    o = blcf->origins->elts;

    for (i = 0; i < blcf->origins->nelts; i++) {
        if ((o[i].len == 1 && o[i].data[0] == '*')
            || (o[i].len == origin.len
                && ngx_strncasecmp(o[i].data, origin.data, origin.len) == 0))
        {
            if (ngx_http_xmpp_cm_bosh_add_header(r,
                                    "Access-Control-Allow-Origin",
                                    origin.data, origin.len)
                != NGX_OK
                || ngx_http_xmpp_cm_bosh_add_header(r, "Vary",
                                                    (u_char *) "Origin", 6)
                   != NGX_OK)
            {
                return NGX_ERROR;
            }

            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_xmpp_cm_bosh_add_header(ngx_http_request_t *r, char *name,
    u_char *value, size_t len)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value.data = value;
    h->value.len = len;

    return NGX_OK;
}


/* the whole body is read: a request of a session, or a new session */

static void
ngx_http_xmpp_cm_bosh_body_handler(ngx_http_request_t *r)
{
    u_char                             *p;
    size_t                              len, max;
    ngx_int_t                           owner;
    ngx_str_t                           sid;
    ngx_pool_cleanup_t                 *cln;
    ngx_http_xmpp_cm_bosh_t            *bs;
    ngx_http_xmpp_cm_bosh_req_t        *req;
    ngx_http_xmpp_cm_bosh_loc_conf_t   *blcf;
    ngx_http_xmpp_cm_bosh_main_conf_t  *bmcf;

    blcf = ngx_http_get_module_loc_conf(r, ngx_http_xmpp_cm_bosh_module);
    bmcf = ngx_http_get_module_main_conf(r, ngx_http_xmpp_cm_bosh_module);

    (void) ngx_http_xmpp_cm_bosh_cors(r, blcf);

    /* the largest stanza, and the wrapper around it */
    max = blcf->conf->max_stanza + NGX_HTTP_XMPP_CM_BOSH_WRAPPER;

    switch (ngx_http_xmpp_cm_bosh_read_body(r, max, &p, &len)) {

    case NGX_OK:
        break;

    case NGX_DECLINED:
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "xmpp_cm: BOSH body over %uz bytes", max);
        ngx_http_xmpp_cm_bosh_refuse(r, "policy-violation");
        return;

    default:
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    req = ngx_pcalloc(r->pool, sizeof(ngx_http_xmpp_cm_bosh_req_t));
    if (req == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    req->r = r;
    req->pool = r->pool;
    req->log = r->connection->log;
    req->body.pool = r->pool;

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    cln->handler = ngx_http_xmpp_cm_bosh_req_cleanup;
    cln->data = req;

    if (ngx_http_xmpp_cm_bosh_parse(&req->body, p, len) != NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "xmpp_cm: BOSH request is not a <body/> of %s",
                      NGX_XMPP_NS_HTTPBIND);

        sid = req->body.sid;
        bs = NULL;

        if (sid.len) {
            bs = ngx_http_xmpp_cm_bosh_find(bmcf, &sid);
        }

        if (bs && !bs->closed) {
            req->bs = bs;
            ngx_http_xmpp_cm_bosh_terminate(bs, req, "bad-request");
            return;
        }

        ngx_http_xmpp_cm_bosh_refuse(r, "bad-request");
        return;
    }

    if (ngx_http_xmpp_cm_bosh_number(&req->body.rid,
                                     NGX_HTTP_XMPP_CM_BOSH_RID_MAX,
                                     &req->body.rid_n)
        != NGX_OK
        || req->body.rid_n == 0)
    {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "xmpp_cm: BOSH request without a valid rid");
        ngx_http_xmpp_cm_bosh_refuse(r, "bad-request");
        return;
    }

    req->rid = req->body.rid_n;

    sid = req->body.sid;

    if (sid.len == 0) {
        ngx_http_xmpp_cm_bosh_create(req, blcf);
        return;
    }

    bs = ngx_http_xmpp_cm_bosh_find(bmcf, &sid);

    if (bs == NULL) {
        owner = NGX_ERROR;

        if (sid.len == NGX_HTTP_XMPP_CM_BOSH_SID_LEN) {
            owner = ngx_hextoi(sid.data, 8);
        }

        if (owner > 0 && (ngx_pid_t) owner != ngx_pid) {
            /* the session lives in another worker: it answers there */
            ngx_http_xmpp_cm_bosh_forward(r, (ngx_pid_t) owner, p, len);
            return;

        } else {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "xmpp_cm: BOSH request for unknown session "
                          "\"%V\"", &sid);
        }

        ngx_http_xmpp_cm_bosh_refuse(r, "item-not-found");
        return;
    }

    req->bs = bs;

    ngx_xmpp_cm_metrics_bosh(bs->up, 0);
    ngx_http_xmpp_cm_bosh_request(bs, req);
}


static ngx_http_xmpp_cm_bosh_t *
ngx_http_xmpp_cm_bosh_find(ngx_http_xmpp_cm_bosh_main_conf_t *bmcf,
    ngx_str_t *sid)
{
    ngx_str_node_t  *n;

    n = ngx_str_rbtree_lookup(&bmcf->sessions, sid,
                              ngx_crc32_short(sid->data, sid->len));
    if (n == NULL) {
        return NULL;
    }

    return (ngx_http_xmpp_cm_bosh_t *)
           ((u_char *) n - offsetof(ngx_http_xmpp_cm_bosh_t, node));
}


/*
 * The body, in one piece: in r->pool, or read from the temporary file a
 * large one was written to.  NGX_DECLINED: over max.
 */

static ngx_int_t
ngx_http_xmpp_cm_bosh_read_body(ngx_http_request_t *r, size_t max,
    u_char **p, size_t *len)
{
    u_char       *buf, *q;
    off_t         size;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    *p = NULL;
    *len = 0;

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    size = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;
        size += b->in_file ? b->file_last - b->file_pos : b->last - b->pos;
    }

    if (size > (off_t) max) {
        return NGX_DECLINED;
    }

    buf = ngx_pnalloc(r->pool, (size_t) size + 1);
    if (buf == NULL) {
        return NGX_ERROR;
    }

    q = buf;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (b->in_file) {
            n = ngx_read_file(b->file, q, (size_t) (b->file_last
                                                    - b->file_pos),
                              b->file_pos);
            if (n != b->file_last - b->file_pos) {
                return NGX_ERROR;
            }

            q += n;

        } else if (b->last != b->pos) {
            q = ngx_cpymem(q, b->pos, b->last - b->pos);
        }
    }

    *p = buf;
    *len = q - buf;

    return NGX_OK;
}


/*
 * <body xmlns='http://jabber.org/protocol/httpbind' .../>: its attributes
 * and the bytes of its children, which the engine's framer checks as it
 * checks a TCP client's stream.  No DTD (no entities to expand).
 */

static ngx_int_t
ngx_http_xmpp_cm_bosh_parse(ngx_http_xmpp_cm_bosh_body_t *b, u_char *p,
    size_t len)
{
    ngx_int_t  rc;

    if (len == 0) {
        return NGX_ERROR;
    }

    b->parser = XML_ParserCreateNS("UTF-8", '\n');
    if (b->parser == NULL) {
        return NGX_ERROR;
    }

    XML_SetUserData(b->parser, b);
    XML_SetElementHandler(b->parser, ngx_http_xmpp_cm_bosh_start,
                          ngx_http_xmpp_cm_bosh_end);
    XML_SetDoctypeDeclHandler(b->parser, ngx_http_xmpp_cm_bosh_doctype,
                              NULL);

    rc = NGX_OK;

    if (XML_Parse(b->parser, (const char *) p, (int) len, 1)
        != XML_STATUS_OK
        || b->bad || !b->root)
    {
        rc = NGX_ERROR;
    }

    XML_ParserFree(b->parser);
    b->parser = NULL;

    if (rc == NGX_OK && b->inner_len) {
        /* the whole body was parsed at once: indexes are offsets */
        b->inner = p + b->inner_start;

        /* only white space between the tags: nothing to feed */

        for (p = b->inner; p < b->inner + b->inner_len; p++) {
            if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
                return NGX_OK;
            }
        }

        b->inner_len = 0;
    }

    return rc;
}


static void XMLCALL
ngx_http_xmpp_cm_bosh_start(void *data, const XML_Char *name,
    const XML_Char **attrs)
{
    ngx_http_xmpp_cm_bosh_body_t *b = data;

    size_t       n;
    ngx_str_t   *dst, v;
    ngx_uint_t   i;

    if (b->depth++ > 0) {
        return;
    }

    if (ngx_strcmp(name, NGX_XMPP_NS_HTTPBIND "\nbody") != 0) {
        b->bad = 1;
        (void) XML_StopParser(b->parser, XML_FALSE);
        return;
    }

    b->root = 1;
    b->inner_start = XML_GetCurrentByteIndex(b->parser)
                     + XML_GetCurrentByteCount(b->parser);

    for (i = 0; attrs[i]; i += 2) {

        if (ngx_strcmp(attrs[i], "sid") == 0) {
            dst = &b->sid;

        } else if (ngx_strcmp(attrs[i], "rid") == 0) {
            dst = &b->rid;

        } else if (ngx_strcmp(attrs[i], "to") == 0) {
            dst = &b->to;

        } else if (ngx_strcmp(attrs[i], "wait") == 0) {
            dst = &b->wait;

        } else if (ngx_strcmp(attrs[i], "hold") == 0) {
            dst = &b->hold;

        } else if (ngx_strcmp(attrs[i], "type") == 0) {
            dst = &b->type;

        } else if (ngx_strcmp(attrs[i], NGX_XMPP_NS_XML "\nlang") == 0) {
            dst = &b->lang;

        } else if (ngx_strcmp(attrs[i], NGX_XMPP_NS_XBOSH "\nrestart") == 0) {
            dst = &b->restart;

        } else if (ngx_strcmp(attrs[i], NGX_XMPP_NS_XBOSH "\nversion") == 0) {
            dst = &b->version;

        } else {
            continue;
        }

        n = ngx_strlen(attrs[i + 1]);

        v.data = ngx_pnalloc(b->pool, n);
        if (v.data == NULL) {
            b->bad = 1;
            (void) XML_StopParser(b->parser, XML_FALSE);
            return;
        }

        ngx_memcpy(v.data, attrs[i + 1], n);
        v.len = n;
        *dst = v;
    }
}


static void XMLCALL
ngx_http_xmpp_cm_bosh_end(void *data, const XML_Char *name)
{
    ngx_http_xmpp_cm_bosh_body_t *b = data;

    XML_Index  end;

    if (--b->depth > 0) {
        return;
    }

    end = XML_GetCurrentByteIndex(b->parser);

    if (end > b->inner_start) {
        /* the input buffer is the whole body: indexes are offsets */
        b->inner_len = end - b->inner_start;
    }
}


static void XMLCALL
ngx_http_xmpp_cm_bosh_doctype(void *data, const XML_Char *name,
    const XML_Char *sysid, const XML_Char *pubid, int has_internal_subset)
{
    ngx_http_xmpp_cm_bosh_body_t *b = data;

    b->bad = 1;
    (void) XML_StopParser(b->parser, XML_FALSE);
}


static ngx_int_t
ngx_http_xmpp_cm_bosh_number(ngx_str_t *s, uint64_t max, uint64_t *n)
{
    size_t    i;
    uint64_t  v;

    if (s->len == 0 || s->len > 16) {
        return NGX_ERROR;
    }

    v = 0;

    for (i = 0; i < s->len; i++) {
        if (s->data[i] < '0' || s->data[i] > '9') {
            return NGX_ERROR;
        }

        v = v * 10 + (s->data[i] - '0');
    }

    if (v > max) {
        return NGX_ERROR;
    }

    *n = v;

    return NGX_OK;
}


/*
 * XEP-0124 7.1, XEP-0206 4: a new session.  Its socketless connection
 * carries the client's address (after realip) for Openfire's <create>.
 */

static void
ngx_http_xmpp_cm_bosh_create(ngx_http_xmpp_cm_bosh_req_t *req,
    ngx_http_xmpp_cm_bosh_loc_conf_t *blcf)
{
    u_char                              raw[16];
    uint32_t                            w;
    uint64_t                            v;
    ngx_pool_t                         *pool;
    ngx_connection_t                   *c, *hc;
    ngx_http_request_t                 *r;
    ngx_xmpp_cm_client_t               *cl;
    ngx_http_xmpp_cm_bosh_t            *bs;
    ngx_http_xmpp_cm_bosh_main_conf_t  *bmcf;

    r = req->r;
    hc = r->connection;
    bmcf = ngx_http_get_module_main_conf(r, ngx_http_xmpp_cm_bosh_module);

    pool = ngx_create_pool(1024, ngx_cycle->log);
    if (pool == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    bs = ngx_pcalloc(pool, sizeof(ngx_http_xmpp_cm_bosh_t));
    c = ngx_pcalloc(pool, sizeof(ngx_connection_t));

    if (bs == NULL || c == NULL) {
        goto failed;
    }

    c->read = ngx_pcalloc(pool, sizeof(ngx_event_t));
    c->write = ngx_pcalloc(pool, sizeof(ngx_event_t));
    c->sockaddr = ngx_palloc(pool, hc->socklen);
    c->addr_text.data = ngx_pnalloc(pool, hc->addr_text.len);

    if (c->read == NULL || c->write == NULL || c->sockaddr == NULL
        || c->addr_text.data == NULL)
    {
        goto failed;
    }

    bs->signature = NGX_HTTP_XMPP_CM_BOSH_SIGNATURE;
    bs->t.handler = &ngx_xmpp_cm_bosh_transport;
    bs->pool = pool;
    bs->c = c;
    bs->up = blcf->conf->up;
    bs->bmcf = bmcf;
    bs->blcf = blcf;

    ngx_queue_init(&bs->held);
    ngx_queue_init(&bs->ahead);

    bs->log = *ngx_cycle->log;
    bs->log.handler = NULL;
    bs->log.data = NULL;
    pool->log = &bs->log;

    /*
     * A connection with no socket: the engine's timers and posted events
     * run on its events; "active" keeps ngx_handle_read_event() and
     * ngx_handle_write_event() from adding fd -1 to epoll.
     */

    c->fd = (ngx_socket_t) -1;
    c->data = bs;
    c->pool = pool;
    c->log = &bs->log;
    c->number = ngx_atomic_fetch_add(ngx_connection_counter, 1);
    bs->log.connection = c->number;
    c->recv = ngx_http_xmpp_cm_bosh_recv;
    c->send_chain = ngx_http_xmpp_cm_bosh_send_chain;
    c->socklen = hc->socklen;
    ngx_memcpy(c->sockaddr, hc->sockaddr, hc->socklen);
    c->addr_text.len = hc->addr_text.len;
    ngx_memcpy(c->addr_text.data, hc->addr_text.data, hc->addr_text.len);

    c->read->data = c;
    c->read->log = c->log;
    c->read->active = 1;
    c->write->data = c;
    c->write->log = c->log;
    c->write->active = 1;
    c->write->write = 1;

    /*
     * A graceful quit (a reload) does not wait for BOSH sessions: the
     * listening sockets are closed, so no request of theirs comes to this
     * worker again.  Their timers are cancelable and the worker's exit
     * ends them (system-shutdown, what waits goes back to Openfire).
     */

    c->read->cancelable = 1;
    c->write->cancelable = 1;

    bs->inactive.handler = ngx_http_xmpp_cm_bosh_inactive_handler;
    bs->inactive.data = bs;
    bs->inactive.log = c->log;
    bs->inactive.cancelable = 1;
    bs->flush.handler = ngx_http_xmpp_cm_bosh_flush_handler;
    bs->flush.data = bs;
    bs->flush.log = c->log;

    /* XEP-0124 7.1: the client's wait and hold, within ours */

    bs->wait = blcf->max_wait;

    if (ngx_http_xmpp_cm_bosh_number(&req->body.wait, 86400, &v) == NGX_OK
        && v > 0 && v * 1000 < bs->wait)
    {
        bs->wait = v * 1000;
    }

    bs->hold = 1;

    if (ngx_http_xmpp_cm_bosh_number(&req->body.hold, 1000, &v) == NGX_OK) {
        bs->hold = (ngx_uint_t) v;
    }

    bs->hold = ngx_min(bs->hold, blcf->max_hold);
    bs->requests = bs->hold + 1;
    bs->inactivity = blcf->inactivity;

    bs->cache = ngx_pcalloc(pool, bs->requests
                                  * sizeof(ngx_http_xmpp_cm_bosh_cache_t));
    if (bs->cache == NULL) {
        goto failed;
    }

    /*
     * The session id: the worker's pid, then 12 random bytes (not
     * guessable).  A session lives in one worker: the pid tells another
     * worker where to relay its requests (docs/bosh.md, workers).
     */

    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        ngx_ssl_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "xmpp_cm: RAND_bytes() failed");
        goto failed;
    }

    w = htonl((uint32_t) ngx_pid);
    (void) ngx_hex_dump(ngx_hex_dump(bs->sid, (u_char *) &w, 4), raw,
                        sizeof(raw) - 4);

    bs->node.str.data = bs->sid;
    bs->node.str.len = NGX_HTTP_XMPP_CM_BOSH_SID_LEN;
    bs->node.node.key = ngx_crc32_short(bs->sid,
                                        NGX_HTTP_XMPP_CM_BOSH_SID_LEN);

    /* the engine, as for a TCP client; from here it owns the pool */

    cl = ngx_xmpp_cm_client_create(c, blcf->conf, NULL);
    if (cl == NULL) {
        goto failed;
    }

    bs->t.client = cl;
    bs->cl = cl;

    ngx_rbtree_insert(&bmcf->sessions, &bs->node.node);
    ngx_xmpp_cm_metrics_bosh(bs->up, 1);

    ngx_log_error(NGX_LOG_INFO, &bs->log, 0,
                  "xmpp_cm: BOSH session %*s created (wait %M, hold %ui)",
                  (size_t) NGX_HTTP_XMPP_CM_BOSH_SID_LEN, bs->sid,
                  bs->wait / 1000, bs->hold);

    req->bs = bs;
    req->create = 1;
    bs->rid = req->rid;
    bs->to = req->body.to;
    bs->lang = req->body.lang;

    if (bs->to.len) {
        bs->to.data = ngx_pstrdup(pool, &req->body.to);
    }

    if (bs->lang.len) {
        bs->lang.data = ngx_pstrdup(pool, &req->body.lang);
    }

    bs->header = 1;

    if (ngx_http_xmpp_cm_bosh_stream_header(bs, &req->body) == NGX_OK) {
        /* the engine's timers (the authentication deadline) */
        c->read->handler(c->read);
    }

    ngx_http_xmpp_cm_bosh_hold(bs, req);

    return;

failed:

    ngx_destroy_pool(pool);
    ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
}


/*
 * XEP-0124 14.1-14.3: requests are taken in rid order within the window
 * of "requests"; a rid taken already gets its response again.
 */

static void
ngx_http_xmpp_cm_bosh_request(ngx_http_xmpp_cm_bosh_t *bs,
    ngx_http_xmpp_cm_bosh_req_t *req)
{
    u_char                         *p;
    ngx_uint_t                      i;
    ngx_queue_t                    *q;
    ngx_http_xmpp_cm_bosh_req_t    *old, *next;
    ngx_http_xmpp_cm_bosh_cache_t  *rc;

    if (bs->closed) {
        ngx_http_xmpp_cm_bosh_respond(req, 0, 1,
                                      bs->cond ? bs->cond : "item-not-found");
        return;
    }

    if (req->rid <= bs->rid) {

        for (i = 0; i < bs->requests; i++) {
            rc = &bs->cache[i];

            if (rc->data && rc->rid == req->rid) {
                ngx_log_error(NGX_LOG_INFO, &bs->log, 0,
                              "xmpp_cm: BOSH rid %uL repeated, its response "
                              "sent again", req->rid);

                /* a copy: the kept one may be replaced while this goes */
                p = ngx_pnalloc(req->pool, rc->len);
                if (p == NULL) {
                    ngx_http_xmpp_cm_bosh_fail(req);
                    return;
                }

                ngx_memcpy(p, rc->data, rc->len);
                ngx_http_xmpp_cm_bosh_answer(req, p, rc->len);
                return;
            }
        }

        /* held still: the new request takes the old one's place */

        for (q = ngx_queue_head(&bs->held);
             q != ngx_queue_sentinel(&bs->held);
             q = ngx_queue_next(q))
        {
            old = ngx_queue_data(q, ngx_http_xmpp_cm_bosh_req_t, queue);

            if (old->rid == req->rid) {
                ngx_http_xmpp_cm_bosh_respond(old, 0, 0, NULL);
                ngx_http_xmpp_cm_bosh_hold(bs, req);
                return;
            }
        }

        ngx_log_error(NGX_LOG_INFO, &bs->log, 0,
                      "xmpp_cm: BOSH rid %uL is behind %uL and its response "
                      "is not kept", req->rid, bs->rid);
        ngx_http_xmpp_cm_bosh_terminate(bs, req, "item-not-found");
        return;
    }

    if (req->rid > bs->rid + bs->requests) {
        ngx_log_error(NGX_LOG_INFO, &bs->log, 0,
                      "xmpp_cm: BOSH rid %uL out of the window after %uL",
                      req->rid, bs->rid);
        ngx_http_xmpp_cm_bosh_terminate(bs, req, "item-not-found");
        return;
    }

    if (bs->nheld + bs->nahead >= bs->requests) {
        ngx_log_error(NGX_LOG_INFO, &bs->log, 0,
                      "xmpp_cm: BOSH client has more than %ui requests "
                      "open", bs->requests);
        ngx_http_xmpp_cm_bosh_terminate(bs, req, "policy-violation");
        return;
    }

    if (req->rid > bs->rid + 1) {
        /* a request before it is missing: it waits for that one */
        ngx_queue_insert_tail(&bs->ahead, &req->queue);
        req->queued = 1;
        req->ahead = 1;
        bs->nahead++;

        if (req->r) {
            req->r->read_event_handler = ngx_http_test_reading;
        }

        /* the missing one has "wait" to come (XEP-0124 14.2) */
        req->wait.handler = ngx_http_xmpp_cm_bosh_wait_handler;
        req->wait.data = req;
        req->wait.log = req->log;
        req->wait.cancelable = 1;
        ngx_add_timer(&req->wait, bs->wait);
        return;
    }

    ngx_http_xmpp_cm_bosh_run(bs, req);

    /* the ones that waited for it, in rid order */

    for ( ;; ) {
        next = NULL;

        for (q = ngx_queue_head(&bs->ahead);
             q != ngx_queue_sentinel(&bs->ahead);
             q = ngx_queue_next(q))
        {
            old = ngx_queue_data(q, ngx_http_xmpp_cm_bosh_req_t, queue);

            if (old->rid == bs->rid + 1) {
                next = old;
                break;
            }
        }

        if (next == NULL || bs->closed) {
            break;
        }

        ngx_http_xmpp_cm_bosh_unqueue(next);
        ngx_http_xmpp_cm_bosh_run(bs, next);
    }
}


/* one request in order: its children go to the engine, then it is held */

static void
ngx_http_xmpp_cm_bosh_run(ngx_http_xmpp_cm_bosh_t *bs,
    ngx_http_xmpp_cm_bosh_req_t *req)
{
    ngx_int_t                      rc;
    ngx_http_xmpp_cm_bosh_body_t  *b;

    b = &req->body;
    bs->rid = req->rid;

    if (bs->closed) {
        ngx_http_xmpp_cm_bosh_respond(req, 0, 1, bs->cond);
        return;
    }

    if (b->restart.len) {
        if (!ngx_xmpp_cm_str_is(&b->restart, "true")
            || ngx_xmpp_cm_client_opened(bs->cl))
        {
            ngx_log_error(NGX_LOG_INFO, &bs->log, 0,
                          "xmpp_cm: BOSH restart while the stream is open");
            ngx_http_xmpp_cm_bosh_terminate(bs, req, "bad-request");
            return;
        }

        /* XEP-0206 5: a restart has no payload */

        bs->header = 1;

        if (ngx_http_xmpp_cm_bosh_stream_header(bs, b) != NGX_OK) {
            ngx_http_xmpp_cm_bosh_hold(bs, req);
            return;
        }

    } else if (b->inner_len) {

        /* whole elements only: a partial one would wait in the framer */

        rc = ngx_xmpp_cm_xml_fragment(&bs->log, bs->up->worker->parking,
                                      b->inner, b->inner_len, 0,
                                      b->inner_len, NGX_MAX_UINT32_VALUE,
                                      NULL, NULL);
        if (rc == NGX_ERROR) {
            ngx_http_xmpp_cm_bosh_fail(req);
            return;
        }

        if (rc != NGX_OK) {
            ngx_log_error(NGX_LOG_INFO, &bs->log, 0,
                          "xmpp_cm: BOSH body's children are not complete "
                          "elements declaring their prefixes");
            ngx_http_xmpp_cm_bosh_terminate(bs, req, "bad-request");
            return;
        }

        if (ngx_xmpp_cm_client_feed(bs->cl, b->inner, b->inner_len)
            != NGX_OK)
        {
            /* the engine ends the stream: the end answers the request */
            ngx_http_xmpp_cm_bosh_hold(bs, req);
            return;
        }
    }

    if (ngx_xmpp_cm_str_is(&b->type, "terminate")) {
        /* XEP-0124 12: what the client has not taken goes back */
        bs->bounce = 1;
        bs->cond = NULL;
        ngx_http_xmpp_cm_bosh_respond(req, 0, 1, NULL);
        ngx_xmpp_cm_client_error(bs->cl, NULL, NULL);
        return;
    }

    if (!bs->closed) {
        /* a request is traffic: the engine's idle timer starts again */
        bs->c->read->handler(bs->c->read);
    }

    ngx_http_xmpp_cm_bosh_hold(bs, req);
}


/* the stream header a TCP client would send, from the body's attributes */

static ngx_int_t
ngx_http_xmpp_cm_bosh_stream_header(ngx_http_xmpp_cm_bosh_t *bs,
    ngx_http_xmpp_cm_bosh_body_t *b)
{
    u_char     *p, *hdr;
    size_t      len;
    ngx_str_t  *to, *lang;

    static u_char  open[] = "<stream:stream xmlns=\"" NGX_XMPP_NS_CLIENT
                            "\" xmlns:stream=\"" NGX_XMPP_NS_STREAMS
                            "\" version=\"1.0\"";

    /* a restart may leave them out (XEP-0206 5 has them): the session's */

    to = b->to.len ? &b->to : &bs->to;
    lang = b->lang.len ? &b->lang : &bs->lang;

    if ((to->len && to->data == NULL) || (lang->len && lang->data == NULL)) {
        return NGX_ERROR;
    }

    len = sizeof(open) - 1 + sizeof(" to=\"\" xml:lang=\"\">") - 1
          + ngx_xmpp_cm_escape(NULL, to->data, to->len)
          + ngx_xmpp_cm_escape(NULL, lang->data, lang->len);

    hdr = ngx_pnalloc(b->pool, len);
    if (hdr == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(hdr, open, sizeof(open) - 1);

    if (to->len) {
        p = ngx_cpymem(p, " to=\"", 5);
        p += ngx_xmpp_cm_escape(p, to->data, to->len);
        *p++ = '"';
    }

    if (lang->len) {
        p = ngx_cpymem(p, " xml:lang=\"", 11);
        p += ngx_xmpp_cm_escape(p, lang->data, lang->len);
        *p++ = '"';
    }

    *p++ = '>';

    return ngx_xmpp_cm_client_feed(bs->cl, hdr, p - hdr);
}


/* XEP-0124 10: a request waits for data, at most "wait" */

static void
ngx_http_xmpp_cm_bosh_hold(ngx_http_xmpp_cm_bosh_t *bs,
    ngx_http_xmpp_cm_bosh_req_t *req)
{
    ngx_queue_insert_tail(&bs->held, &req->queue);
    req->queued = 1;
    bs->nheld++;

    req->wait.handler = ngx_http_xmpp_cm_bosh_wait_handler;
    req->wait.data = req;
    req->wait.log = req->log;
    req->wait.cancelable = 1;
    ngx_add_timer(&req->wait, bs->wait);

    /* a client that goes away ends its request (499) */
    if (req->r) {
        req->r->read_event_handler = ngx_http_test_reading;
    }

    ngx_http_xmpp_cm_bosh_release(bs);
}


/*
 * XEP-0124 11: no more than "hold" requests are held, the oldest goes
 * first, and data goes out at once in the oldest held request.  The
 * inactivity timer runs while none is held.
 */

static void
ngx_http_xmpp_cm_bosh_release(ngx_http_xmpp_cm_bosh_t *bs)
{
    ngx_queue_t                  *q;
    ngx_http_xmpp_cm_bosh_req_t  *req;

    if (!bs->closed) {
        while (bs->nheld > bs->hold || (bs->nheld && bs->out_len))         {
            q = ngx_queue_head(&bs->held);
            req = ngx_queue_data(q, ngx_http_xmpp_cm_bosh_req_t, queue);
            ngx_http_xmpp_cm_bosh_respond(req, 1, 0, NULL);
        }
    }

    if (bs->nheld || bs->closed) {
        if (bs->inactive.timer_set) {
            ngx_del_timer(&bs->inactive);
        }

    } else {
        ngx_add_timer(&bs->inactive, bs->inactivity);
    }
}


static void
ngx_http_xmpp_cm_bosh_unqueue(ngx_http_xmpp_cm_bosh_req_t *req)
{
    if (!req->queued) {
        return;
    }

    req->queued = 0;
    ngx_queue_remove(&req->queue);

    if (req->ahead) {
        req->ahead = 0;
        req->bs->nahead--;

    } else {
        req->bs->nheld--;
    }

    if (req->wait.timer_set) {
        ngx_del_timer(&req->wait);
    }
}


/*
 * A response: data takes what waits for the client; terminate with cond
 * (or the stream error the engine ended with).  Kept for a repeat while
 * the session goes on.
 */

static void
ngx_http_xmpp_cm_bosh_respond(ngx_http_xmpp_cm_bosh_req_t *req,
    ngx_uint_t data, ngx_uint_t terminate, const char *cond)
{
    u_char                         *buf, *p, *d;
    size_t                          len, dlen, elen;
    ngx_pool_t                     *pool;
    ngx_http_xmpp_cm_bosh_t        *bs;
    ngx_http_xmpp_cm_bosh_cache_t  *rc;

    static u_char  head[] = "<body xmlns=\"" NGX_XMPP_NS_HTTPBIND "\"";
    static u_char  create[] = " xmlns:xmpp=\"" NGX_XMPP_NS_XBOSH "\""
                              " xmpp:version=\"1.0\" xmpp:restartlogic="
                              "\"true\" ver=\"1.11\" polling=\"2\"";

    pool = req->pool;
    bs = req->bs;

    ngx_http_xmpp_cm_bosh_unqueue(req);

    dlen = 0;
    d = NULL;

    if (data && bs && bs->out_len) {
        if (ngx_http_xmpp_cm_bosh_qualify(bs, pool, &d, &dlen) != NGX_OK) {
            ngx_http_xmpp_cm_bosh_fail(req);
            return;
        }
    }

    elen = 0;

    if (terminate && cond == NULL && bs && bs->err_len && bs->cond == NULL) {
        /* XEP-0206 7: the stream error inside */
        cond = "remote-stream-error";
        elen = bs->err_len;
    }

    len = sizeof(head) - 1
          + sizeof(" xmlns:stream=\"" NGX_XMPP_NS_STREAMS "\"") - 1
          + sizeof(" type=\"terminate\" condition=\"\"") - 1
          + (cond ? ngx_strlen(cond) : 0)
          + sizeof("></body>") - 1 + dlen + elen;

    if (req->create && bs) {
        len += sizeof(create) - 1
               + sizeof(" sid=\"\" wait=\"\" hold=\"\" requests=\"\""
                        " inactivity=\"\" from=\"\" authid=\"\"") - 1
               + NGX_HTTP_XMPP_CM_BOSH_SID_LEN + 4 * NGX_INT_T_LEN
               + bs->from.len + bs->authid.len;
    }

    buf = ngx_pnalloc(pool, len);
    if (buf == NULL) {
        ngx_http_xmpp_cm_bosh_fail(req);
        return;
    }

    p = ngx_cpymem(buf, head, sizeof(head) - 1);
    p = ngx_cpymem(p, " xmlns:stream=\"" NGX_XMPP_NS_STREAMS "\"",
                   sizeof(" xmlns:stream=\"" NGX_XMPP_NS_STREAMS "\"") - 1);

    if (req->create && bs) {
        p = ngx_cpymem(p, create, sizeof(create) - 1);
        p = ngx_sprintf(p, " sid=\"%*s\" wait=\"%M\" hold=\"%ui\""
                        " requests=\"%ui\" inactivity=\"%M\"",
                        (size_t) NGX_HTTP_XMPP_CM_BOSH_SID_LEN, bs->sid,
                        bs->wait / 1000, bs->hold, bs->requests,
                        bs->inactivity / 1000);

        if (bs->from.len) {
            p = ngx_sprintf(p, " from=\"%V\"", &bs->from);
        }

        if (bs->authid.len) {
            p = ngx_sprintf(p, " authid=\"%V\"", &bs->authid);
        }
    }

    if (terminate) {
        p = ngx_cpymem(p, " type=\"terminate\"", 17);

        if (cond) {
            p = ngx_sprintf(p, " condition=\"%s\"", cond);
        }
    }

    if (dlen == 0 && elen == 0) {
        *p++ = '/';
        *p++ = '>';

    } else {
        *p++ = '>';

        if (dlen) {
            p = ngx_cpymem(p, d, dlen);
        }

        if (elen) {
            p = ngx_cpymem(p, bs->err, elen);
        }

        p = ngx_cpymem(p, "</body>", 7);

        if (dlen) {
            /* an idle session holds no buffer */
            bs->out_len = 0;
            bs->out_cap = 0;
            ngx_free(bs->out);
            bs->out = NULL;
        }
    }

    len = p - buf;

    if (bs && !terminate && !bs->closed) {
        rc = &bs->cache[req->rid % bs->requests];

        if (rc->data) {
            ngx_free(rc->data);
        }

        rc->data = ngx_alloc(len, &bs->log);

        if (rc->data) {
            ngx_memcpy(rc->data, buf, len);
            rc->len = len;
            rc->rid = req->rid;
        }
    }

    ngx_http_xmpp_cm_bosh_answer(req, buf, len);
}


/*
 * XEP-0206 6: the stanzas in a <body/> are qualified by jabber:client,
 * which Openfire's payloads inherit in a TCP client's stream: inside
 * <body xmlns=httpbind> each top-level element without an xmlns of its
 * own gets one.  The engine's queue is complete elements, one fragment,
 * checked already (the framer's tree mode: no client rules).
 */

typedef struct {
    u_char                          *src;      /* the queue */
    u_char                          *done;     /* copied up to here */
    u_char                          *dst;
    XML_Index                        base;     /* index of src[0] */
    ngx_uint_t                       first;
} ngx_http_xmpp_cm_bosh_qualify_t;


static ngx_int_t
ngx_http_xmpp_cm_bosh_qualify(ngx_http_xmpp_cm_bosh_t *bs, ngx_pool_t *pool,
    u_char **data, size_t *len)
{
    u_char                           *p, *end, *buf;
    size_t                            n;
    ngx_int_t                         rc;
    ngx_http_xmpp_cm_bosh_qualify_t   qf;

    end = bs->out + bs->out_len;
    n = 0;

    for (p = bs->out; p < end; p++) {
        if (*p == '<') {
            n++;
        }
    }

    buf = ngx_pnalloc(pool, bs->out_len
                            + n * (sizeof(" xmlns=\"" NGX_XMPP_NS_CLIENT "\"")
                                   - 1));
    if (buf == NULL) {
        return NGX_ERROR;
    }

    qf.src = bs->out;
    qf.done = bs->out;
    qf.dst = buf;
    qf.first = 1;

    rc = ngx_xmpp_cm_xml_fragment(&bs->log, bs->up->worker->parking,
                                  bs->out, bs->out_len, 1, bs->out_len,
                                  NGX_MAX_UINT32_VALUE,
                                  ngx_http_xmpp_cm_bosh_qualify_one, &qf);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rc != NGX_OK) {
        /* cannot be: the engine writes whole elements; send as is */
        ngx_log_error(NGX_LOG_ALERT, &bs->log, 0,
                      "xmpp_cm: the queue of BOSH session %*s is not "
                      "complete elements",
                      (size_t) NGX_HTTP_XMPP_CM_BOSH_SID_LEN, bs->sid);
        *data = bs->out;
        *len = bs->out_len;
        return NGX_OK;
    }

    qf.dst = ngx_cpymem(qf.dst, qf.done, end - qf.done);

    *data = buf;
    *len = qf.dst - buf;

    return NGX_OK;
}


static ngx_int_t
ngx_http_xmpp_cm_bosh_qualify_one(void *data, ngx_xmpp_cm_elem_t *e)
{
    ngx_http_xmpp_cm_bosh_qualify_t *qf = data;

    u_char  *p;

    static u_char  xmlns[] = " xmlns=\"" NGX_XMPP_NS_CLIENT "\"";

    if (qf->first) {
        /* the first element starts at the first '<' of the queue */
        for (p = qf->src; *p != '<'; p++) { /* void */ }

        qf->base = e->start - (XML_Index) (p - qf->src);
        qf->first = 0;
    }

    if (e->has_xmlns || !ngx_xmpp_cm_str_is(&e->ns, NGX_XMPP_NS_CLIENT)) {
        return NGX_OK;
    }

    /* after "<" and the name */

    p = qf->src + (e->start - qf->base) + 1 + e->name.len;

    qf->dst = ngx_cpymem(qf->dst, qf->done, p - qf->done);
    qf->dst = ngx_cpymem(qf->dst, xmlns, sizeof(xmlns) - 1);
    qf->done = p;

    return NGX_OK;
}


static void
ngx_http_xmpp_cm_bosh_send(ngx_http_request_t *r, u_char *p, size_t len)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    r->read_event_handler = ngx_http_block_reading;

    if (ngx_exiting || ngx_terminate) {
        /*
         * Answered from the worker's exit (the engine ends every session):
         * no keepalive and no lingering close, which would leave the
         * connection open after exit_process.
         */
        r->keepalive = 0;
        r->connection->read->ready = 0;
        r->header_in->pos = r->header_in->last;
    }

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = len;
    ngx_str_set(&r->headers_out.content_type, "text/xml; charset=utf-8");
    r->headers_out.content_type_len = sizeof("text/xml") - 1;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        ngx_http_finalize_request(r, rc);
        return;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    b->pos = p;
    b->last = p + len;
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    ngx_http_finalize_request(r, ngx_http_output_filter(r, &out));
}


/* the response goes to the HTTP request, or back to the relaying worker */

static void
ngx_http_xmpp_cm_bosh_answer(ngx_http_xmpp_cm_bosh_req_t *req, u_char *p,
    size_t len)
{
    ngx_buf_t         *b;
    ngx_connection_t  *c;

    if (req->r) {
        ngx_http_xmpp_cm_bosh_send(req->r, p, len);
        return;
    }

    c = req->relay;

    b = ngx_calloc_buf(req->pool);
    if (b == NULL) {
        ngx_http_xmpp_cm_bosh_fail(req);
        return;
    }

    b->pos = p;
    b->last = p + len;
    c->buffer = b;

    ngx_http_xmpp_cm_bosh_relay_write(c->write);
}


static void
ngx_http_xmpp_cm_bosh_fail(ngx_http_xmpp_cm_bosh_req_t *req)
{
    ngx_pool_t  *pool;

    if (req->r) {
        ngx_http_finalize_request(req->r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    /* the request's cleanup runs with its pool, the connection's */
    pool = req->relay->pool;
    ngx_close_connection(req->relay);
    ngx_destroy_pool(pool);
}


/*
 * The accepting worker's side of a request of another worker's session
 * (the sid's first 8 hex digits are the owner's pid): the body goes to
 * the owner's local socket, its response comes back and is this HTTP
 * request's answer.  Nothing back: no such session there.
 */

typedef struct {
    ngx_http_request_t              *r;
    ngx_connection_t                *c;
    ngx_buf_t                       *in;
    ngx_pid_t                        owner;
} ngx_http_xmpp_cm_bosh_fwd_t;


static void
ngx_http_xmpp_cm_bosh_forward(ngx_http_request_t *r, ngx_pid_t owner,
    u_char *p, size_t len)
{
    ngx_str_t                          body;
    ngx_connection_t                  *c;
    ngx_pool_cleanup_t                *cln;
    ngx_http_xmpp_cm_bosh_fwd_t       *fw;
    ngx_http_xmpp_cm_bosh_loc_conf_t  *blcf;

    blcf = ngx_http_get_module_loc_conf(r, ngx_http_xmpp_cm_bosh_module);

    body.data = p;
    body.len = len;

    c = ngx_xmpp_cm_handoff_bosh_connect(owner, &r->connection->addr_text,
                                         &body, r->pool, r->connection->log);
    if (c == NULL) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "xmpp_cm: BOSH request for a session of worker %P, "
                      "which is gone", owner);
        ngx_http_xmpp_cm_bosh_refuse(r, "item-not-found");
        return;
    }

    fw = ngx_pcalloc(r->pool, sizeof(ngx_http_xmpp_cm_bosh_fwd_t));
    cln = ngx_pool_cleanup_add(r->pool, 0);

    if (fw) {
        fw->in = ngx_create_temp_buf(r->pool, 4096);
    }

    if (fw == NULL || cln == NULL || fw->in == NULL) {
        ngx_close_connection(c);
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    fw->r = r;
    fw->c = c;
    fw->owner = owner;
    cln->handler = ngx_http_xmpp_cm_bosh_forward_cleanup;
    cln->data = fw;

    c->data = fw;
    c->read->handler = ngx_http_xmpp_cm_bosh_forward_read;
    c->write->handler = ngx_http_xmpp_cm_bosh_forward_write;

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "xmpp_cm: BOSH request relayed to worker %P", owner);

    /* a client that goes away ends its request (499), and the relay */
    r->read_event_handler = ngx_http_test_reading;

    /* the owner holds it at most the session's wait (<= max_wait) */
    ngx_add_timer(c->read, blcf->max_wait + 10000);

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_close_connection(c);
        fw->c = NULL;
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_http_xmpp_cm_bosh_forward_write(c->write);
}


static void
ngx_http_xmpp_cm_bosh_forward_write(ngx_event_t *wev)
{
    ssize_t                       n;
    ngx_buf_t                    *b;
    ngx_connection_t             *c;
    ngx_http_xmpp_cm_bosh_fwd_t  *fw;

    c = wev->data;
    fw = c->data;
    b = c->buffer;

    while (b->pos < b->last) {
        n = c->send(c, b->pos, b->last - b->pos);

        if (n == NGX_AGAIN) {
            if (ngx_handle_write_event(wev, 0) == NGX_OK) {
                return;
            }

            n = NGX_ERROR;
        }

        if (n == NGX_ERROR) {
            ngx_close_connection(c);
            fw->c = NULL;
            ngx_http_xmpp_cm_bosh_refuse(fw->r, "internal-server-error");
            return;
        }

        b->pos += n;
    }
}


static void
ngx_http_xmpp_cm_bosh_forward_read(ngx_event_t *rev)
{
    size_t                        size;
    ssize_t                       n;
    ngx_buf_t                    *b, *in;
    ngx_connection_t             *c;
    ngx_http_request_t           *r;
    ngx_http_xmpp_cm_bosh_fwd_t  *fw;

    c = rev->data;
    fw = c->data;
    r = fw->r;

    if (rev->timedout) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, NGX_ETIMEDOUT,
                      "xmpp_cm: worker %P did not answer a relayed BOSH "
                      "request in time", fw->owner);
        goto failed;
    }

    for ( ;; ) {
        in = fw->in;

        if (in->last == in->end) {
            size = 2 * (size_t) (in->end - in->start);

            if (size > NGX_XMPP_CM_RELAY_ANSWER_MAX) {
                ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                              "xmpp_cm: relayed BOSH response too long");
                goto failed;
            }

            b = ngx_create_temp_buf(r->pool, size);
            if (b == NULL) {
                goto failed;
            }

            b->last = ngx_cpymem(b->last, in->pos, in->last - in->pos);
            fw->in = b;
            in = b;
        }

        n = c->recv(c, in->last, in->end - in->last);

        if (n == NGX_AGAIN) {
            if (ngx_handle_read_event(rev, 0) != NGX_OK) {
                goto failed;
            }

            return;
        }

        if (n == NGX_ERROR) {
            goto failed;
        }

        if (n == 0) {
            break;
        }

        in->last += n;
    }

    ngx_close_connection(c);
    fw->c = NULL;

    if (in->last == in->pos) {
        /* the owner has no such session (any more) */
        ngx_http_xmpp_cm_bosh_refuse(r, "item-not-found");
        return;
    }

    ngx_http_xmpp_cm_bosh_send(r, in->pos, in->last - in->pos);
    return;

failed:

    ngx_close_connection(c);
    fw->c = NULL;
    ngx_http_xmpp_cm_bosh_refuse(r, "internal-server-error");
}


static void
ngx_http_xmpp_cm_bosh_forward_cleanup(void *data)
{
    ngx_http_xmpp_cm_bosh_fwd_t *fw = data;

    if (fw->c) {
        ngx_close_connection(fw->c);
        fw->c = NULL;
    }
}


/*
 * The owner's side: another worker relayed a request of one of this
 * worker's sessions (ngx_stream_xmpp_cm_handoff.c); it is taken as a
 * request of this worker, held as any, and its response written back.
 */

static void
ngx_http_xmpp_cm_bosh_relayed(ngx_connection_t *c, ngx_str_t *addr,
    ngx_str_t *body)
{
    ngx_str_t                           sid;
    ngx_pool_cleanup_t                 *cln;
    ngx_http_xmpp_cm_bosh_t            *bs;
    ngx_http_xmpp_cm_bosh_req_t        *req;
    ngx_http_xmpp_cm_bosh_main_conf_t  *bmcf;

    bmcf = NULL;

    if (ngx_cycle->conf_ctx[ngx_http_module.index]) {
        bmcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                                ngx_http_xmpp_cm_bosh_module);
    }

    req = ngx_pcalloc(c->pool, sizeof(ngx_http_xmpp_cm_bosh_req_t));
    cln = ngx_pool_cleanup_add(c->pool, 0);

    if (bmcf == NULL || req == NULL || cln == NULL) {
        goto close;
    }

    req->relay = c;
    req->pool = c->pool;
    req->log = c->log;
    req->body.pool = c->pool;

    cln->handler = ngx_http_xmpp_cm_bosh_req_cleanup;
    cln->data = req;

    c->data = req;
    c->buffer = NULL;
    c->read->handler = ngx_http_xmpp_cm_bosh_relay_read;
    c->write->handler = ngx_http_xmpp_cm_bosh_relay_write;

    /* the relaying worker parsed it already: nothing here is the client's */

    if (ngx_http_xmpp_cm_bosh_parse(&req->body, body->data, body->len)
        != NGX_OK
        || ngx_http_xmpp_cm_bosh_number(&req->body.rid,
                                        NGX_HTTP_XMPP_CM_BOSH_RID_MAX,
                                        &req->body.rid_n)
           != NGX_OK)
    {
        goto close;
    }

    req->rid = req->body.rid_n;
    sid = req->body.sid;

    bs = sid.len ? ngx_http_xmpp_cm_bosh_find(bmcf, &sid) : NULL;

    ngx_log_error(NGX_LOG_INFO, c->log, 0,
                  "xmpp_cm: BOSH request rid %uL of session \"%V\" from "
                  "client %V relayed by another worker%s", req->rid, &sid,
                  addr, bs ? "" : ", no such session");

    if (bs == NULL) {
        goto close;
    }

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        goto close;
    }

    req->bs = bs;

    ngx_xmpp_cm_metrics_bosh(bs->up, 0);
    ngx_http_xmpp_cm_bosh_request(bs, req);
    return;

close:

    {
        ngx_pool_t  *pool = c->pool;

        ngx_close_connection(c);
        ngx_destroy_pool(pool);
    }
}


static void
ngx_http_xmpp_cm_bosh_relay_write(ngx_event_t *wev)
{
    ssize_t                       n;
    ngx_buf_t                    *b;
    ngx_connection_t             *c;
    ngx_http_xmpp_cm_bosh_req_t  *req;

    c = wev->data;
    req = c->data;
    b = c->buffer;

    if (b == NULL) {
        return;
    }

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "xmpp_cm: relayed BOSH response not taken in time");
        ngx_http_xmpp_cm_bosh_fail(req);
        return;
    }

    while (b->pos < b->last) {
        n = c->send(c, b->pos, b->last - b->pos);

        if (n == NGX_AGAIN) {
            if (ngx_handle_write_event(wev, 0) != NGX_OK) {
                ngx_http_xmpp_cm_bosh_fail(req);
                return;
            }

            ngx_add_timer(wev, NGX_HTTP_XMPP_CM_BOSH_RELAY_TIMEOUT);
            return;
        }

        if (n == NGX_ERROR) {
            ngx_http_xmpp_cm_bosh_fail(req);
            return;
        }

        b->pos += n;
    }

    /* all written: the close tells the relaying worker it is whole */
    ngx_http_xmpp_cm_bosh_fail(req);
}


/* the relaying worker went away (its client did): as a 499 */

static void
ngx_http_xmpp_cm_bosh_relay_read(ngx_event_t *rev)
{
    u_char                        ch;
    ssize_t                       n;
    ngx_connection_t             *c;
    ngx_http_xmpp_cm_bosh_req_t  *req;

    c = rev->data;
    req = c->data;

    n = c->recv(c, &ch, 1);

    if (n == NGX_AGAIN) {
        if (ngx_handle_read_event(rev, 0) == NGX_OK) {
            return;
        }
    }

    if (c->buffer) {
        /* answering: the writer ends it */
        return;
    }

    ngx_http_xmpp_cm_bosh_fail(req);
}


/* XEP-0124 17.2: a terminal condition in an HTTP 200 */

static void
ngx_http_xmpp_cm_bosh_refuse(ngx_http_request_t *r, const char *cond)
{
    u_char  *buf, *p;
    size_t   len;

    len = sizeof("<body xmlns=\"" NGX_XMPP_NS_HTTPBIND "\" type=\"terminate\""
                 " condition=\"\"/>") - 1 + ngx_strlen(cond);

    buf = ngx_pnalloc(r->pool, len);
    if (buf == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    p = ngx_sprintf(buf, "<body xmlns=\"" NGX_XMPP_NS_HTTPBIND "\""
                    " type=\"terminate\" condition=\"%s\"/>", cond);

    ngx_http_xmpp_cm_bosh_send(r, buf, p - buf);
}


/*
 * The CM ends a session for a BOSH rule: this request and the held ones
 * get the condition, what waits for the client goes back to Openfire,
 * and the engine closes the stream.
 */

static void
ngx_http_xmpp_cm_bosh_terminate(ngx_http_xmpp_cm_bosh_t *bs,
    ngx_http_xmpp_cm_bosh_req_t *req, const char *cond)
{
    bs->cond = cond;
    bs->bounce = 1;

    if (req) {
        ngx_http_xmpp_cm_bosh_respond(req, 0, 1, cond);
    }

    ngx_xmpp_cm_client_error(bs->cl, NULL, NULL);
}


static void
ngx_http_xmpp_cm_bosh_wait_handler(ngx_event_t *ev)
{
    ngx_http_xmpp_cm_bosh_t      *bs;
    ngx_http_xmpp_cm_bosh_req_t  *req;

    req = ev->data;
    bs = req->bs;

    if (req->ahead) {
        /* XEP-0124 14.2: the missing request never came */
        ngx_log_error(NGX_LOG_INFO, &bs->log, 0,
                      "xmpp_cm: BOSH rid %uL still missing", bs->rid + 1);
        ngx_http_xmpp_cm_bosh_terminate(bs, req, "item-not-found");
        return;
    }

    ngx_http_xmpp_cm_bosh_respond(req, 1, 0, NULL);
    ngx_http_xmpp_cm_bosh_release(bs);
}


/* XEP-0124 7.1 "inactivity": no request held for that long */

static void
ngx_http_xmpp_cm_bosh_inactive_handler(ngx_event_t *ev)
{
    ngx_http_xmpp_cm_bosh_t *bs = ev->data;

    ngx_log_error(NGX_LOG_INFO, &bs->log, 0,
                  "xmpp_cm: BOSH session %*s inactive for %M s, ending it",
                  (size_t) NGX_HTTP_XMPP_CM_BOSH_SID_LEN, bs->sid,
                  bs->inactivity / 1000);

    bs->cond = "item-not-found";
    bs->bounce = 1;

    ngx_xmpp_cm_client_error(bs->cl, "connection-timeout",
                             "BOSH session inactive");
}


/* what the engine wrote goes out, outside the engine's call */

static void
ngx_http_xmpp_cm_bosh_flush_handler(ngx_event_t *ev)
{
    ngx_http_xmpp_cm_bosh_t *bs = ev->data;

    ngx_http_xmpp_cm_bosh_release(bs);
}


/* the request is freed (answered, or its client went away) */

static void
ngx_http_xmpp_cm_bosh_req_cleanup(void *data)
{
    ngx_http_xmpp_cm_bosh_req_t *req = data;

    ngx_http_xmpp_cm_bosh_t  *bs;

    if (!req->queued) {
        if (req->wait.timer_set) {
            ngx_del_timer(&req->wait);
        }

        return;
    }

    bs = req->bs;

    ngx_http_xmpp_cm_bosh_unqueue(req);
    ngx_http_xmpp_cm_bosh_release(bs);
}


/*
 * What waits for the client when its session ends goes back to Openfire
 * as for a closed stream (openfire-cm-protocol.md 5.4): each message in
 * <session><failed>, before the engine's <close/> on the stream's socket.
 */

typedef struct {
    ngx_http_xmpp_cm_bosh_t         *bs;
    ngx_xmpp_cm_sock_t              *sock;
    XML_Index                        base;     /* of out[0] */
    ngx_uint_t                       first;
    ngx_uint_t                       returned;
    ngx_uint_t                       dropped;
} ngx_http_xmpp_cm_bosh_bounce_t;


static void
ngx_http_xmpp_cm_bosh_bounce(ngx_http_xmpp_cm_bosh_t *bs)
{
    ngx_xmpp_cm_stream_t            *s;
    ngx_http_xmpp_cm_bosh_bounce_t   bb;

    if (bs->out_len == 0) {
        return;
    }

    ngx_memzero(&bb, sizeof(ngx_http_xmpp_cm_bosh_bounce_t));
    bb.bs = bs;
    bb.first = 1;

    s = bs->authid.len ? ngx_xmpp_cm_stream_find(bs->up, &bs->authid) : NULL;

    if (s && s->sock && s->sock->state == NGX_XMPP_CM_SOCK_READY) {
        bb.sock = s->sock;

    } else {
        bb.sock = ngx_xmpp_cm_upstream_pick(bs->up);
    }

    if (bb.sock == NULL || bs->authid.len == 0) {
        ngx_log_error(NGX_LOG_WARN, &bs->log, 0,
                      "xmpp_cm: %uz bytes for BOSH session %*s lost: no "
                      "Openfire socket to return them on", bs->out_len,
                      (size_t) NGX_HTTP_XMPP_CM_BOSH_SID_LEN, bs->sid);
        bs->out_len = 0;
        return;
    }

    if (ngx_xmpp_cm_xml_fragment(&bs->log, bs->up->worker->parking,
                                 bs->out, bs->out_len, 1, bs->out_len,
                                 NGX_MAX_UINT32_VALUE,
                                 ngx_http_xmpp_cm_bosh_bounce_one, &bb)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ALERT, &bs->log, 0,
                      "xmpp_cm: the queue of BOSH session %*s is not "
                      "complete elements", (size_t) NGX_HTTP_XMPP_CM_BOSH_SID_LEN,
                      bs->sid);
    }

    ngx_log_error(NGX_LOG_INFO, &bs->log, 0,
                  "xmpp_cm: BOSH session %*s ended with %ui messages "
                  "returned to Openfire, %ui other elements dropped",
                  (size_t) NGX_HTTP_XMPP_CM_BOSH_SID_LEN, bs->sid,
                  bb.returned, bb.dropped);

    bs->out_len = 0;
}


static ngx_int_t
ngx_http_xmpp_cm_bosh_bounce_one(void *data, ngx_xmpp_cm_elem_t *e)
{
    ngx_http_xmpp_cm_bosh_bounce_t *bb = data;

    u_char                   *p, *buf, *start;
    size_t                    len, n;
    ngx_int_t                 rc;
    ngx_http_xmpp_cm_bosh_t  *bs;

    static u_char  xmlns[] = " xmlns=\"" NGX_XMPP_NS_CLIENT "\"";

    bs = bb->bs;

    if (bb->first) {
        /* the first element starts at the first '<' of the queue */
        for (p = bs->out; p < bs->out + bs->out_len && *p != '<'; p++) {
            /* void */
        }

        bb->base = e->start - (XML_Index) (p - bs->out);
        bb->first = 0;
    }

    if (!ngx_xmpp_cm_str_is(&e->name, "message")) {
        bb->dropped++;
        return NGX_OK;
    }

    start = bs->out + (e->start - bb->base);
    len = (size_t) (e->end - e->start);

    /* openfire-cm-protocol.md 5.4: jabber:client on the wrapped message */

    n = e->has_xmlns ? 0 : sizeof(xmlns) - 1;

    buf = ngx_alloc(len + n, &bs->log);
    if (buf == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(buf, start, sizeof("<message") - 1);
    p = ngx_cpymem(p, xmlns, n);
    p = ngx_cpymem(p, start + sizeof("<message") - 1,
                   len - (sizeof("<message") - 1));

    rc = ngx_xmpp_cm_route_session_iq(bs->up, bb->sock, &bs->authid,
                                      NGX_XMPP_CM_IQ_FAILED, NULL,
                                      buf, p - buf);
    ngx_xmpp_cm_metrics_returned(bs->up, rc);
    ngx_free(buf);

    if (rc == NGX_OK) {
        bb->returned++;

    } else {
        bb->dropped++;
    }

    return NGX_OK;
}


/* the transport's side of the engine */

static ngx_int_t
ngx_xmpp_cm_bosh_input(ngx_xmpp_cm_transport_t *t, u_char *p, size_t n)
{
    /* nothing is read from a socket: bodies are fed whole */
    return NGX_OK;
}


static size_t
ngx_xmpp_cm_bosh_pending(ngx_xmpp_cm_transport_t *t, XML_Index *base)
{
    return 0;
}


/*
 * The XMPP stream the engine writes for the client: the stream header
 * gives the session's authid and from, </stream:stream> ends it, a
 * <stream:error> is kept for the terminating response; the rest waits
 * for a request.  The engine writes each of those in one call.
 */

static ngx_int_t
ngx_xmpp_cm_bosh_output(ngx_xmpp_cm_transport_t *t, u_char *p, size_t n)
{
    ngx_http_xmpp_cm_bosh_t *bs = (ngx_http_xmpp_cm_bosh_t *)
                                  ((u_char *) t
                                   - offsetof(ngx_http_xmpp_cm_bosh_t, t));

    u_char     *a, *v, *end, *nb;
    size_t      cap;
    ngx_str_t  *dst;

    if (bs->header && n > 5 && ngx_strncmp(p, "<?xml", 5) == 0) {
        bs->header = 0;

        if (bs->authid.len) {
            return NGX_OK;
        }

        /* the engine's own header: id="..." and from="..." */

        end = p + n;

        for (a = p; a < end; a++) {

            if (end - a > 5 && ngx_strncmp(a, " id=\"", 5) == 0) {
                dst = &bs->authid;
                v = a + 5;

            } else if (end - a > 7 && ngx_strncmp(a, " from=\"", 7) == 0) {
                dst = &bs->from;
                v = a + 7;

            } else {
                continue;
            }

            for (a = v; a < end && *a != '"'; a++) { /* void */ }

            dst->data = ngx_pnalloc(bs->pool, a - v);
            if (dst->data == NULL) {
                return NGX_ERROR;
            }

            dst->len = a - v;
            ngx_memcpy(dst->data, v, dst->len);
        }

        return NGX_OK;
    }

    if (n == 16 && ngx_strncmp(p, "</stream:stream>", 16) == 0) {
        bs->closed = 1;

        /* before the engine detaches and the stream's <close/> goes */

        if (bs->bounce || bs->nheld == 0) {
            ngx_http_xmpp_cm_bosh_bounce(bs);
        }

        ngx_post_event(&bs->flush, &ngx_posted_events);
        return NGX_OK;
    }

    if (n > 13 && ngx_strncmp(p, "<stream:error", 13) == 0) {
        bs->err = ngx_pnalloc(bs->pool, n);
        if (bs->err == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(bs->err, p, n);
        bs->err_len = n;
        return NGX_OK;
    }

    if (bs->out_len + n > bs->blcf->conf->client_output_limit) {
        /* xmpp_cm_client_output_limit: a client that does not poll */
        ngx_log_error(NGX_LOG_INFO, &bs->log, 0,
                      "xmpp_cm: BOSH client is not taking its data: %uz "
                      "bytes queued (xmpp_cm_client_output_limit)",
                      bs->out_len);
        bs->cond = "policy-violation";
        return NGX_ERROR;
    }

    if (bs->out_len + n > bs->out_cap) {
        cap = ngx_max(bs->out_cap * 2, bs->out_len + n);
        cap = ngx_max(cap, 1024);

        nb = ngx_alloc(cap, &bs->log);
        if (nb == NULL) {
            return NGX_ERROR;
        }

        if (bs->out) {
            ngx_memcpy(nb, bs->out, bs->out_len);
            ngx_free(bs->out);
        }

        bs->out = nb;
        bs->out_cap = cap;
    }

    if (n) {
        /* p may be NULL then (an empty piece), and bs->out too */
        ngx_memcpy(bs->out + bs->out_len, p, n);
        bs->out_len += n;
    }

    ngx_post_event(&bs->flush, &ngx_posted_events);

    return NGX_OK;
}


/*
 * The engine is done with the session (the stream ended, or could not
 * go on): the held requests get the end, and the session goes.
 */

static void
ngx_xmpp_cm_bosh_finalize(ngx_xmpp_cm_transport_t *t)
{
    ngx_http_xmpp_cm_bosh_t *bs = (ngx_http_xmpp_cm_bosh_t *)
                                  ((u_char *) t
                                   - offsetof(ngx_http_xmpp_cm_bosh_t, t));

    ngx_queue_t                  *q;
    ngx_http_xmpp_cm_bosh_req_t  *req;

    if (bs->finalized) {
        return;
    }

    bs->finalized = 1;

    if (!bs->closed) {
        /* ended without </stream:stream>: it could not take more output */
        bs->closed = 1;
        bs->bounce = 1;

        if (bs->cond == NULL && bs->err_len == 0) {
            bs->cond = "policy-violation";
        }
    }

    if (bs->bounce) {
        ngx_http_xmpp_cm_bosh_bounce(bs);
    }

    while (!ngx_queue_empty(&bs->held)) {
        q = ngx_queue_head(&bs->held);
        req = ngx_queue_data(q, ngx_http_xmpp_cm_bosh_req_t, queue);
        ngx_http_xmpp_cm_bosh_respond(req, 1, 1, bs->cond);
    }

    while (!ngx_queue_empty(&bs->ahead)) {
        q = ngx_queue_head(&bs->ahead);
        req = ngx_queue_data(q, ngx_http_xmpp_cm_bosh_req_t, queue);
        ngx_http_xmpp_cm_bosh_respond(req, 0, 1,
                                      bs->cond ? bs->cond : "item-not-found");
    }

    /* the last data no request took */
    ngx_http_xmpp_cm_bosh_bounce(bs);

    ngx_http_xmpp_cm_bosh_destroy(bs);
}


static void
ngx_http_xmpp_cm_bosh_destroy(ngx_http_xmpp_cm_bosh_t *bs)
{
    ngx_uint_t         i;
    ngx_event_t       *evs[4];
    ngx_connection_t  *c;

    c = bs->c;

    ngx_log_error(NGX_LOG_INFO, &bs->log, 0,
                  "xmpp_cm: BOSH session %*s ended",
                  (size_t) NGX_HTTP_XMPP_CM_BOSH_SID_LEN, bs->sid);

    ngx_rbtree_delete(&bs->bmcf->sessions, &bs->node.node);
    ngx_xmpp_cm_metrics_bosh(bs->up, -1);

    evs[0] = c->read;
    evs[1] = c->write;
    evs[2] = &bs->inactive;
    evs[3] = &bs->flush;

    for (i = 0; i < 4; i++) {
        if (evs[i]->timer_set) {
            ngx_del_timer(evs[i]);
        }

        if (evs[i]->posted) {
            ngx_delete_posted_event(evs[i]);
        }
    }

    for (i = 0; i < bs->requests; i++) {
        if (bs->cache[i].data) {
            ngx_free(bs->cache[i].data);
        }
    }

    if (bs->out) {
        ngx_free(bs->out);
    }

    /* the engine's cleanup detaches its stream, if not done yet */
    ngx_destroy_pool(bs->pool);
}


static ssize_t
ngx_http_xmpp_cm_bosh_recv(ngx_connection_t *c, u_char *buf, size_t size)
{
    c->read->ready = 0;

    return NGX_AGAIN;
}


static ngx_chain_t *
ngx_http_xmpp_cm_bosh_send_chain(ngx_connection_t *c, ngx_chain_t *in,
    off_t limit)
{
    /* the engine's output chain stays empty with a transport */
    return NGX_CHAIN_ERROR;
}
