
/*
 * XMPP over WebSocket (RFC 7395) into the connection manager:
 *
 *     location = /xmpp-websocket { xmpp_cm_websocket NAME; }
 *
 * in any http server of the same nginx, NAME being the xmpp_cm_name of a
 * stream server with xmpp_cm_pass.  The handler checks the upgrade
 * (RFC 6455 4.2.1, the "xmpp" subprotocol), answers 101 and takes the
 * connection over, as ngx_http_upstream_upgrade() does: the request stays
 * alive (r->main->count) until the client engine finalizes it.  From then
 * on the connection is the client engine's (ngx_stream_xmpp_cm_client.c),
 * with this file as its transport (ngx_xmpp_cm_transport_t): input is
 * deframed here, checked to be one complete element per message, and fed
 * to the engine as such (an <open/> becomes a stream header); the
 * engine's output, the XMPP stream it writes for a TCP client, is cut
 * here into its top-level elements, each sent as one text frame (the
 * stream header as <open/>, its end as <close/> and a close frame).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <openssl/sha.h>
#include "ngx_stream_xmpp_cm.h"


#define NGX_XMPP_NS_FRAMING  "urn:ietf:params:xml:ns:xmpp-framing"

#define NGX_XMPP_CM_WS_GUID  "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* the largest frame header: 2, 8 bytes of length, 4 of mask */
#define NGX_XMPP_CM_WS_HEADER_MAX  14

/* RFC 6455 7.4.1 */
#define NGX_XMPP_CM_WS_NORMAL       1000
#define NGX_XMPP_CM_WS_PROTOCOL     1002
#define NGX_XMPP_CM_WS_UNSUPPORTED  1003
#define NGX_XMPP_CM_WS_INVALID      1007
#define NGX_XMPP_CM_WS_TOO_BIG      1009

#define NGX_XMPP_CM_WS_CONT    0x0
#define NGX_XMPP_CM_WS_TEXT    0x1
#define NGX_XMPP_CM_WS_BINARY  0x2
#define NGX_XMPP_CM_WS_CLOSE   0x8
#define NGX_XMPP_CM_WS_PING    0x9
#define NGX_XMPP_CM_WS_PONG    0xa


/*
 * A lexical scan of XML, enough to find where each top-level element (a
 * "unit" at depth 0) starts and ends: tags, quoted attribute values,
 * CDATA, comments, processing instructions.  It does not validate: the
 * engine's framer (expat) does that for input, and output is the
 * engine's own well-formed stream.
 */

#define NGX_XMPP_CM_SCAN_TEXT     0
#define NGX_XMPP_CM_SCAN_LT       1
#define NGX_XMPP_CM_SCAN_STAG     2
#define NGX_XMPP_CM_SCAN_QUOTE    3
#define NGX_XMPP_CM_SCAN_ETAG     4
#define NGX_XMPP_CM_SCAN_PI       5
#define NGX_XMPP_CM_SCAN_BANG     6
#define NGX_XMPP_CM_SCAN_CDATA    7
#define NGX_XMPP_CM_SCAN_COMMENT  8
#define NGX_XMPP_CM_SCAN_DECL     9

/* what ended a unit */
#define NGX_XMPP_CM_UNIT_ELEMENT  0
#define NGX_XMPP_CM_UNIT_OPEN     1     /* <stream:stream ...> */
#define NGX_XMPP_CM_UNIT_CLOSE    2     /* an end tag at depth 0 */
#define NGX_XMPP_CM_UNIT_OTHER    3     /* PI, comment, declaration */

/* scan events */
#define NGX_XMPP_CM_SCAN_NONE     0
#define NGX_XMPP_CM_SCAN_START    1
#define NGX_XMPP_CM_SCAN_END      2

#define NGX_XMPP_CM_SCAN_NAME     16

typedef struct {
    ngx_uint_t                       state;
    ngx_uint_t                       depth;
    ngx_uint_t                       kind;        /* of the unit that ended */
    u_char                           quote;
    u_char                           prev[2];
    u_char                           name[NGX_XMPP_CM_SCAN_NAME];
    size_t                           name_len;    /* > NAME: too long */
    unsigned                         in_name:1;
    unsigned                         slash:1;
    unsigned                         text:1;      /* text at depth 0 */
} ngx_xmpp_cm_scan_t;


typedef struct {
    ngx_xmpp_cm_transport_t          t;           /* first */
    ngx_http_request_t              *r;
    ngx_connection_t                *c;
    ngx_xmpp_cm_client_t            *cl;
    ngx_xmpp_cm_upstream_t          *up;

    /* input: a frame not complete yet, the fragments of a message */
    u_char                          *in;
    size_t                           in_len;
    size_t                           in_cap;
    u_char                          *msg;
    size_t                           msg_len;
    size_t                           msg_cap;
    ngx_uint_t                       frames;      /* pending()'s base */

    /* output: the unit being cut from the engine's stream */
    ngx_xmpp_cm_scan_t               scan;
    u_char                          *unit;        /* its start, this call */
    u_char                          *obuf;        /* its earlier bytes */
    size_t                           olen;
    size_t                           ocap;

    ngx_uint_t                       close_code;
    unsigned                         in_unit:1;
    unsigned                         fragmented:1;
    unsigned                         closed:1;    /* close frame queued */
} ngx_xmpp_cm_ws_t;


typedef struct {
    ngx_str_t                        name;
    ngx_stream_xmpp_cm_srv_conf_t   *conf;        /* resolved at init */
    ngx_str_t                        file;
    ngx_uint_t                       line;
} ngx_http_xmpp_cm_websocket_loc_conf_t;


typedef struct {
    ngx_array_t                      locs;        /* loc_conf_t * */
} ngx_http_xmpp_cm_websocket_main_conf_t;


static char *ngx_http_xmpp_cm_websocket(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static void *ngx_http_xmpp_cm_websocket_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_xmpp_cm_websocket_create_loc_conf(ngx_conf_t *cf);
static ngx_int_t ngx_http_xmpp_cm_websocket_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_xmpp_cm_websocket_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_xmpp_cm_websocket_refuse(ngx_http_request_t *r,
    ngx_uint_t status, char *line, char *why);
static ngx_table_elt_t *ngx_http_xmpp_cm_websocket_header(
    ngx_http_request_t *r, char *name, const ngx_table_elt_t *from);
static ngx_uint_t ngx_http_xmpp_cm_websocket_token(ngx_http_request_t *r,
    char *name, char *token, ngx_uint_t caseless);

static ngx_int_t ngx_xmpp_cm_ws_input(ngx_xmpp_cm_transport_t *t, u_char *p,
    size_t n);
static ngx_int_t ngx_xmpp_cm_ws_output(ngx_xmpp_cm_transport_t *t,
    u_char *p, size_t n);
static size_t ngx_xmpp_cm_ws_pending(ngx_xmpp_cm_transport_t *t,
    XML_Index *base);
static void ngx_xmpp_cm_ws_finalize(ngx_xmpp_cm_transport_t *t);
static void ngx_xmpp_cm_ws_cleanup(void *data);
static ngx_int_t ngx_xmpp_cm_ws_frame(ngx_xmpp_cm_ws_t *ws, u_char *p,
    size_t len, ngx_uint_t *used);
static ngx_int_t ngx_xmpp_cm_ws_message(ngx_xmpp_cm_ws_t *ws, u_char *p,
    size_t len);
static ngx_int_t ngx_xmpp_cm_ws_open(ngx_xmpp_cm_ws_t *ws, u_char *p,
    size_t len);
static ngx_int_t ngx_xmpp_cm_ws_fail(ngx_xmpp_cm_ws_t *ws, ngx_uint_t code,
    char *cond, char *text);
static ngx_int_t ngx_xmpp_cm_ws_keep(u_char **buf, size_t *len,
    size_t *cap, u_char *p, size_t n, ngx_log_t *log);
static ngx_int_t ngx_xmpp_cm_ws_unit(ngx_xmpp_cm_ws_t *ws, u_char *p,
    size_t len);
static ngx_int_t ngx_xmpp_cm_ws_send(ngx_xmpp_cm_ws_t *ws, ngx_uint_t op,
    ngx_str_t *parts, ngx_uint_t n);
static ngx_uint_t ngx_xmpp_cm_scan(ngx_xmpp_cm_scan_t *sc, u_char **pos,
    u_char *last);
static u_char *ngx_xmpp_cm_ws_attr(u_char *p, const u_char *last,
    ngx_str_t *name, ngx_str_t *value);
static ngx_uint_t ngx_xmpp_cm_ws_utf8(u_char *p, size_t len);


static ngx_command_t  ngx_http_xmpp_cm_websocket_commands[] = {

    { ngx_string("xmpp_cm_websocket"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_xmpp_cm_websocket,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_xmpp_cm_websocket_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    ngx_http_xmpp_cm_websocket_create_main_conf, /* create main conf */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_xmpp_cm_websocket_create_loc_conf, /* create location conf */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_http_xmpp_cm_websocket_module = {
    NGX_MODULE_V1,
    &ngx_http_xmpp_cm_websocket_module_ctx, /* module context */
    ngx_http_xmpp_cm_websocket_commands,   /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_xmpp_cm_websocket_init_module, /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static const ngx_xmpp_cm_transport_handler_t  ngx_xmpp_cm_ws_transport = {
    ngx_xmpp_cm_ws_input,
    ngx_xmpp_cm_ws_output,
    ngx_xmpp_cm_ws_pending,
    ngx_xmpp_cm_ws_finalize
};


static void *
ngx_http_xmpp_cm_websocket_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_xmpp_cm_websocket_main_conf_t  *wmcf;

    wmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_xmpp_cm_websocket_main_conf_t));
    if (wmcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&wmcf->locs, cf->pool, 2,
                       sizeof(ngx_http_xmpp_cm_websocket_loc_conf_t *))
        != NGX_OK)
    {
        return NULL;
    }

    return wmcf;
}


static void *
ngx_http_xmpp_cm_websocket_create_loc_conf(ngx_conf_t *cf)
{
    return ngx_pcalloc(cf->pool,
                       sizeof(ngx_http_xmpp_cm_websocket_loc_conf_t));
}


static char *
ngx_http_xmpp_cm_websocket(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_xmpp_cm_websocket_loc_conf_t *wlcf = conf;

    ngx_str_t                                *value;
    ngx_http_core_loc_conf_t                 *clcf;
    ngx_http_xmpp_cm_websocket_loc_conf_t   **loc;
    ngx_http_xmpp_cm_websocket_main_conf_t   *wmcf;

    if (wlcf->name.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 0 || value[1].len > NGX_XMPP_CM_CM_NAME_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"xmpp_cm_websocket\" \"%V\": the "
                           "xmpp_cm_name of a stream server (up to %d "
                           "characters)", &value[1], NGX_XMPP_CM_CM_NAME_MAX);
        return NGX_CONF_ERROR;
    }

    /* xmpp_cm_name is kept in lower case */
    wlcf->name = value[1];
    ngx_strlow(wlcf->name.data, wlcf->name.data, wlcf->name.len);
    wlcf->file = cf->conf_file->file.name;
    wlcf->line = cf->conf_file->line;

    wmcf = ngx_http_conf_get_module_main_conf(cf,
                                          ngx_http_xmpp_cm_websocket_module);

    loc = ngx_array_push(&wmcf->locs);
    if (loc == NULL) {
        return NGX_CONF_ERROR;
    }

    *loc = wlcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_xmpp_cm_websocket_handler;

    return NGX_CONF_OK;
}


/*
 * Names resolve once both blocks are parsed (stream{} may follow
 * http{}): init_module runs after the whole configuration, at nginx -t
 * too.  A name resolves to the first stream server with that
 * xmpp_cm_name and an xmpp_cm_pass: its socket group, domains, limits and
 * timeouts serve the web sessions.
 */

/* the transport of an upgraded connection, for the client engine */

static ngx_xmpp_cm_transport_t *
ngx_http_xmpp_cm_websocket_of(ngx_connection_t *c)
{
    ngx_http_request_t  *r;

    r = c->data;

    return ngx_http_get_module_ctx(r, ngx_http_xmpp_cm_websocket_module);
}


static ngx_int_t
ngx_http_xmpp_cm_websocket_init_module(ngx_cycle_t *cycle)
{
    ngx_uint_t                                i;
    ngx_http_xmpp_cm_websocket_loc_conf_t   **loc;
    ngx_http_xmpp_cm_websocket_main_conf_t   *wmcf;

    ngx_xmpp_cm_transport_of = ngx_http_xmpp_cm_websocket_of;

    if (cycle->conf_ctx[ngx_http_module.index] == NULL) {
        return NGX_OK;
    }

    wmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                           ngx_http_xmpp_cm_websocket_module);
    if (wmcf == NULL) {
        return NGX_OK;
    }

    loc = wmcf->locs.elts;

    for (i = 0; i < wmcf->locs.nelts; i++) {
        loc[i]->conf = ngx_stream_xmpp_cm_find_name(cycle, &loc[i]->name);

        if (loc[i]->conf == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                          "\"xmpp_cm_websocket %V\" in %V:%ui: no stream "
                          "server with xmpp_cm_pass has the xmpp_cm_name "
                          "\"%V\"", &loc[i]->name, &loc[i]->file,
                          loc[i]->line, &loc[i]->name);
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* the upgrade (RFC 6455 4.2.1, RFC 7395 3.1), then the client engine */

static ngx_int_t
ngx_http_xmpp_cm_websocket_handler(ngx_http_request_t *r)
{
    u_char                                  *p;
    size_t                                   n;
    ngx_str_t                                key;
    ngx_table_elt_t                         *h;
    ngx_connection_t                        *c;
    ngx_pool_cleanup_t                      *cln;
    ngx_xmpp_cm_ws_t                        *ws;
    ngx_xmpp_cm_client_t                    *cl;
    ngx_stream_xmpp_cm_srv_conf_t           *conf;
    ngx_http_core_loc_conf_t                *clcf;
    ngx_http_xmpp_cm_websocket_loc_conf_t   *wlcf;
    u_char                                   raw[ngx_base64_decoded_length(
                                                 24)];
    u_char                                   sha[SHA_DIGEST_LENGTH];
    u_char                                   kbuf[24 + sizeof(
                                                 NGX_XMPP_CM_WS_GUID)];
    u_char                                   accept[ngx_base64_encoded_length(
                                                 SHA_DIGEST_LENGTH)];
    ngx_str_t                                src, dst;
    u_char                                   resp[sizeof(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Accept: \r\n"
        "Sec-WebSocket-Protocol: xmpp\r\n\r\n") + 32];

    wlcf = ngx_http_get_module_loc_conf(r, ngx_http_xmpp_cm_websocket_module);
    conf = wlcf->conf;
    c = r->connection;

    if (r != r->main) {
        return NGX_HTTP_NOT_FOUND;
    }

    if (r->method != NGX_HTTP_GET) {
        return ngx_http_xmpp_cm_websocket_refuse(r, NGX_HTTP_NOT_ALLOWED,
                                   NULL, "not a GET");
    }

    if (r->http_version < NGX_HTTP_VERSION_11
#if (NGX_HTTP_V2)
        || r->stream
#endif
       )
    {
        return ngx_http_xmpp_cm_websocket_refuse(r, NGX_HTTP_BAD_REQUEST,
                                   NULL, "WebSocket needs HTTP/1.1");
    }

    if (!ngx_http_xmpp_cm_websocket_token(r, "Upgrade", "websocket", 1)
        || !ngx_http_xmpp_cm_websocket_token(r, "Connection", "upgrade", 1))
    {
        return ngx_http_xmpp_cm_websocket_refuse(r, 426,
                                   "426 Upgrade Required",
                                   "not a WebSocket upgrade");
    }

    h = ngx_http_xmpp_cm_websocket_header(r, "Sec-WebSocket-Version", NULL);

    if (h == NULL || h->value.len != 2
        || ngx_strncmp(h->value.data, "13", 2) != 0
        || ngx_http_xmpp_cm_websocket_header(r, "Sec-WebSocket-Version", h))
    {
        return ngx_http_xmpp_cm_websocket_refuse(r, 426,
                                   "426 Upgrade Required",
                                   "WebSocket version 13 is required");
    }

    h = ngx_http_xmpp_cm_websocket_header(r, "Sec-WebSocket-Key", NULL);

    /* RFC 6455 4.2.1: base64 of 16 bytes; one such header */

    if (h == NULL || h->value.len != 24
        || ngx_http_xmpp_cm_websocket_header(r, "Sec-WebSocket-Key", h))
    {
        return ngx_http_xmpp_cm_websocket_refuse(r, NGX_HTTP_BAD_REQUEST,
                                   NULL, "bad Sec-WebSocket-Key");
    }

    key = h->value;
    src = key;
    dst.data = raw;

    if (ngx_decode_base64(&dst, &src) != NGX_OK || dst.len != 16) {
        return ngx_http_xmpp_cm_websocket_refuse(r, NGX_HTTP_BAD_REQUEST,
                                   NULL, "bad Sec-WebSocket-Key");
    }

    if (!ngx_http_xmpp_cm_websocket_token(r, "Sec-WebSocket-Protocol",
                                          "xmpp", 0))
    {
        return ngx_http_xmpp_cm_websocket_refuse(r, NGX_HTTP_BAD_REQUEST,
                                   NULL, "the \"xmpp\" subprotocol is "
                                   "required (RFC 7395 3.1)");
    }

    if (r->headers_in.content_length_n > 0 || r->headers_in.chunked) {
        return ngx_http_xmpp_cm_websocket_refuse(r, NGX_HTTP_BAD_REQUEST,
                                   NULL, "an upgrade request with a body");
    }

    if (conf->up == NULL || conf->up->worker == NULL) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    /* Sec-WebSocket-Accept: base64(SHA-1(key GUID)) */

    p = ngx_cpymem(kbuf, key.data, key.len);
    p = ngx_cpymem(p, NGX_XMPP_CM_WS_GUID, sizeof(NGX_XMPP_CM_WS_GUID) - 1);
    SHA1(kbuf, p - kbuf, sha);

    src.data = sha;
    src.len = SHA_DIGEST_LENGTH;
    dst.data = accept;
    ngx_encode_base64(&dst, &src);

    /* the connection becomes the client engine's */

    ws = ngx_pcalloc(c->pool, sizeof(ngx_xmpp_cm_ws_t));
    if (ws == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(c->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_xmpp_cm_ws_cleanup;
    cln->data = ws;

    ws->t.handler = &ngx_xmpp_cm_ws_transport;
    ws->r = r;
    ws->c = c;
    ws->close_code = NGX_XMPP_CM_WS_NORMAL;

    /* c->data stays r, as nginx expects: the engine finds ws from it */

    ngx_http_set_ctx(r, ws, ngx_http_xmpp_cm_websocket_module);

    /* after the cleanup above: pool cleanups run last in, first out */

    cl = ngx_xmpp_cm_client_create(c, conf, NULL);
    if (cl == NULL) {
        ngx_http_set_ctx(r, NULL, ngx_http_xmpp_cm_websocket_module);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ws->t.client = cl;
    ws->cl = cl;
    ws->up = conf->up;

    r->main->count++;
    r->keepalive = 0;
    r->lingering_close = 0;
    r->headers_out.status = NGX_HTTP_SWITCHING_PROTOCOLS;
    r->header_sent = 1;

    ngx_xmpp_cm_metrics_websocket(conf->up, 1);

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (clcf->tcp_nodelay) {
        (void) ngx_tcp_nodelay(c);
    }

    p = ngx_sprintf(resp, "HTTP/1.1 101 Switching Protocols\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Accept: %V\r\n"
                    "Sec-WebSocket-Protocol: xmpp\r\n\r\n", &dst);

    if (ngx_xmpp_cm_output_append(ngx_xmpp_cm_client_output(cl), resp,
                                  p - resp)
        != NGX_OK)
    {
        c->error = 1;
    }

    ngx_post_event(c->write, &ngx_posted_events);

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "xmpp_cm: websocket upgraded");

    /*
     * Frames the client sent right behind its request; then the engine
     * reads from a posted event, so that nothing ends the request before
     * this handler has returned.
     */

    if (r->header_in && r->header_in->pos < r->header_in->last) {
        p = r->header_in->pos;
        n = r->header_in->last - r->header_in->pos;
        r->header_in->pos = r->header_in->last;

        (void) ngx_xmpp_cm_ws_input(&ws->t, p, n);
    }

    ngx_post_event(c->read, &ngx_posted_events);

    return NGX_DONE;
}


static ngx_int_t
ngx_http_xmpp_cm_websocket_refuse(ngx_http_request_t *r, ngx_uint_t status,
    char *line, char *why)
{
    ngx_int_t         rc;
    ngx_table_elt_t  *h;

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "xmpp_cm: websocket upgrade refused: %s", why);

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (status != 426) {
        return status;
    }

    /* no page of its own in nginx: the status line and the version */

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Sec-WebSocket-Version");
    ngx_str_set(&h->value, "13");

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Upgrade");
    ngx_str_set(&h->value, "websocket");

    r->headers_out.status = status;
    r->headers_out.status_line.data = (u_char *) line;
    r->headers_out.status_line.len = ngx_strlen(line);
    r->headers_out.content_length_n = 0;
    r->header_only = 1;

    return ngx_http_send_header(r);
}


/* the next request header called name after from (NULL: the first) */

static ngx_table_elt_t *
ngx_http_xmpp_cm_websocket_header(ngx_http_request_t *r, char *name,
    const ngx_table_elt_t *from)
{
    size_t            len;
    ngx_uint_t        i, seen;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    len = ngx_strlen(name);
    seen = (from == NULL);
    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (!seen) {
            seen = (&h[i] == from);
            continue;
        }

        if (h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0)
        {
            return &h[i];
        }
    }
}


/* whether a comma-separated header (any of its lines) lists token */

static ngx_uint_t
ngx_http_xmpp_cm_websocket_token(ngx_http_request_t *r, char *name,
    char *token, ngx_uint_t caseless)
{
    u_char           *p, *last, *t;
    size_t            len;
    ngx_table_elt_t  *h;

    len = ngx_strlen(token);

    for (h = ngx_http_xmpp_cm_websocket_header(r, name, NULL);
         h;
         h = ngx_http_xmpp_cm_websocket_header(r, name, h))
    {
        p = h->value.data;
        last = p + h->value.len;

        while (p < last) {
            while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
                p++;
            }

            t = p;

            while (p < last && *p != ',' && *p != ' ' && *p != '\t') {
                p++;
            }

            if ((size_t) (p - t) == len
                && (caseless ? ngx_strncasecmp(t, (u_char *) token, len)
                             : ngx_strncmp(t, token, len)) == 0)
            {
                return 1;
            }
        }
    }

    return 0;
}


/*
 * Input: the bytes read, as frames (RFC 6455 5.2).  A frame that ends
 * beyond this read is kept (malloc'd, at most the phase's stanza limit
 * and a header) until the rest comes.
 */

static ngx_int_t
ngx_xmpp_cm_ws_input(ngx_xmpp_cm_transport_t *t, u_char *p, size_t n)
{
    ngx_xmpp_cm_ws_t *ws = (ngx_xmpp_cm_ws_t *) t;

    u_char      *data;
    size_t       len, pos;
    ngx_int_t    rc;
    ngx_uint_t   used;

    if (ws->in_len) {
        if (ngx_xmpp_cm_ws_keep(&ws->in, &ws->in_len, &ws->in_cap, p, n,
                                ws->c->log)
            != NGX_OK)
        {
            return ngx_xmpp_cm_ws_fail(ws, NGX_XMPP_CM_WS_TOO_BIG,
                                       "internal-server-error", NULL);
        }

        data = ws->in;
        len = ws->in_len;

    } else {
        data = p;
        len = n;
    }

    pos = 0;
    rc = NGX_OK;

    while (pos < len) {
        rc = ngx_xmpp_cm_ws_frame(ws, data + pos, len - pos, &used);

        if (rc != NGX_OK) {
            break;
        }

        pos += used;
    }

    if (rc == NGX_AGAIN) {
        /* a frame not complete: keep its bytes */

        if (data == ws->in) {
            ngx_memmove(ws->in, ws->in + pos, len - pos);
            ws->in_len = len - pos;
            return NGX_OK;
        }

        if (ngx_xmpp_cm_ws_keep(&ws->in, &ws->in_len, &ws->in_cap,
                                data + pos, len - pos, ws->c->log)
            != NGX_OK)
        {
            return ngx_xmpp_cm_ws_fail(ws, NGX_XMPP_CM_WS_TOO_BIG,
                                       "internal-server-error", NULL);
        }

        return NGX_OK;
    }

    if (ws->in) {
        ngx_free(ws->in);
        ws->in = NULL;
        ws->in_len = 0;
        ws->in_cap = 0;
    }

    return rc;
}


/* appends n bytes at p to a malloc'd buffer */

static ngx_int_t
ngx_xmpp_cm_ws_keep(u_char **buf, size_t *len, size_t *cap, u_char *p,
    size_t n, ngx_log_t *log)
{
    u_char  *nb;
    size_t   size;

    if (*len + n > *cap) {
        /* doubling, by a read's size at most */
        size = ngx_max(*len + n,
                       ngx_min(2 * *cap, *len + n + NGX_XMPP_CM_CLIENT_READ));

        nb = ngx_alloc(size, log);
        if (nb == NULL) {
            return NGX_ERROR;
        }

        if (*len) {
            ngx_memcpy(nb, *buf, *len);
        }

        if (*buf) {
            ngx_free(*buf);
        }

        *buf = nb;
        *cap = size;
    }

    ngx_memcpy(*buf + *len, p, n);
    *len += n;

    return NGX_OK;
}


/*
 * One frame at p: NGX_AGAIN if it is not all there, NGX_OK with *used
 * its size once handled, else the stream ended.
 */

static ngx_int_t
ngx_xmpp_cm_ws_frame(ngx_xmpp_cm_ws_t *ws, u_char *p, size_t len,
    ngx_uint_t *used)
{
    u_char      *mask, *payload;
    size_t       hlen, max, i;
    uint64_t     plen;
    ngx_int_t    rc;
    ngx_str_t    part;
    ngx_uint_t   op, fin;

    if (len < 2) {
        return NGX_AGAIN;
    }

    fin = p[0] & 0x80;
    op = p[0] & 0x0f;

    if (p[0] & 0x70) {
        return ngx_xmpp_cm_ws_fail(ws, NGX_XMPP_CM_WS_PROTOCOL, "bad-format",
                                   "WebSocket: reserved bits set");
    }

    if (!(p[1] & 0x80)) {
        /* RFC 6455 5.1: a client masks every frame */
        return ngx_xmpp_cm_ws_fail(ws, NGX_XMPP_CM_WS_PROTOCOL, "bad-format",
                                   "WebSocket: unmasked client frame");
    }

    plen = p[1] & 0x7f;
    hlen = 2;

    if (plen == 126) {
        if (len < 4) {
            return NGX_AGAIN;
        }

        plen = ((uint64_t) p[2] << 8) | p[3];
        hlen = 4;

    } else if (plen == 127) {
        if (len < 10) {
            return NGX_AGAIN;
        }

        plen = 0;

        for (i = 2; i < 10; i++) {
            plen = (plen << 8) | p[i];
        }

        hlen = 10;
    }

    switch (op) {

    case NGX_XMPP_CM_WS_CLOSE:
    case NGX_XMPP_CM_WS_PING:
    case NGX_XMPP_CM_WS_PONG:
        if (!fin || plen > 125) {
            return ngx_xmpp_cm_ws_fail(ws, NGX_XMPP_CM_WS_PROTOCOL,
                                       "bad-format",
                                       "WebSocket: bad control frame");
        }

        break;

    case NGX_XMPP_CM_WS_TEXT:
    case NGX_XMPP_CM_WS_CONT:
        if ((op == NGX_XMPP_CM_WS_CONT) != ws->fragmented) {
            return ngx_xmpp_cm_ws_fail(ws, NGX_XMPP_CM_WS_PROTOCOL,
                                       "bad-format",
                                       "WebSocket: bad continuation");
        }

        /* a message is one element: the framer's limit of the phase */

        max = ngx_xmpp_cm_client_max(ws->cl);

        if (plen > max || ws->msg_len + plen > max) {
            ngx_log_error(NGX_LOG_INFO, ws->c->log, 0,
                          "xmpp_cm: websocket message over %uz bytes",
                          max);
            return ngx_xmpp_cm_ws_fail(ws, NGX_XMPP_CM_WS_TOO_BIG,
                                       "policy-violation",
                                       "stanza too large");
        }

        break;

    case NGX_XMPP_CM_WS_BINARY:
        /* RFC 7395 3.2: XMPP goes in text messages */
        return ngx_xmpp_cm_ws_fail(ws, NGX_XMPP_CM_WS_UNSUPPORTED,
                                   "bad-format",
                                   "WebSocket: binary frames are not XMPP");

    default:
        return ngx_xmpp_cm_ws_fail(ws, NGX_XMPP_CM_WS_PROTOCOL, "bad-format",
                                   "WebSocket: unknown opcode");
    }

    if (len - hlen < 4 || len - hlen - 4 < plen) {
        return NGX_AGAIN;
    }

    mask = p + hlen;
    payload = mask + 4;

    for (i = 0; i < plen; i++) {
        payload[i] ^= mask[i & 3];
    }

    *used = hlen + 4 + plen;
    ws->frames++;
    rc = NGX_OK;

    switch (op) {

    case NGX_XMPP_CM_WS_PING:
        part.data = payload;
        part.len = plen;
        rc = ngx_xmpp_cm_ws_send(ws, NGX_XMPP_CM_WS_PONG, &part, 1);
        ngx_post_event(ws->c->write, &ngx_posted_events);
        break;

    case NGX_XMPP_CM_WS_PONG:
        break;

    case NGX_XMPP_CM_WS_CLOSE:
        /* the client closes: as its end of stream (RFC 7395 3.6) */
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ws->c->log, 0,
                       "xmpp_cm: websocket close from the client");
        ngx_xmpp_cm_client_error(ws->cl, NULL, NULL);
        return NGX_DONE;

    default:
        if (fin && !ws->fragmented) {
            rc = ngx_xmpp_cm_ws_message(ws, payload, plen);
            break;
        }

        if (ngx_xmpp_cm_ws_keep(&ws->msg, &ws->msg_len, &ws->msg_cap,
                                payload, plen, ws->c->log)
            != NGX_OK)
        {
            return ngx_xmpp_cm_ws_fail(ws, NGX_XMPP_CM_WS_TOO_BIG,
                                       "internal-server-error", NULL);
        }

        ws->fragmented = !fin;

        if (fin) {
            rc = ngx_xmpp_cm_ws_message(ws, ws->msg, ws->msg_len);
            ngx_free(ws->msg);
            ws->msg = NULL;
            ws->msg_len = 0;
            ws->msg_cap = 0;
        }
    }

    return rc == NGX_OK ? NGX_OK : NGX_DONE;
}


/*
 * A text message: RFC 7395 3.3.1, exactly one complete element (white
 * space around it is let go).  <open/> and <close/> are the stream's
 * header and end; anything else is fed to the engine's framer as a
 * stanza of the open stream.
 */

static ngx_int_t
ngx_xmpp_cm_ws_message(ngx_xmpp_cm_ws_t *ws, u_char *p, size_t len)
{
    u_char              *pos, *last, *start;
    ngx_uint_t           ev, units;
    ngx_xmpp_cm_scan_t   sc;

    if (!ngx_xmpp_cm_ws_utf8(p, len)) {
        return ngx_xmpp_cm_ws_fail(ws, NGX_XMPP_CM_WS_INVALID,
                                   "unsupported-encoding",
                                   "the message is not UTF-8");
    }

    ngx_memzero(&sc, sizeof(ngx_xmpp_cm_scan_t));

    pos = p;
    last = p + len;
    start = NULL;
    units = 0;

    for ( ;; ) {
        ev = ngx_xmpp_cm_scan(&sc, &pos, last);

        if (ev == NGX_XMPP_CM_SCAN_NONE) {
            break;
        }

        if (ev == NGX_XMPP_CM_SCAN_START) {
            if (start == NULL) {
                start = pos - 1;
            }

            continue;
        }

        units++;
    }

    if (start == NULL && sc.state == NGX_XMPP_CM_SCAN_TEXT && !sc.text) {
        /* white space only: a keepalive, nothing for the stream */
        return NGX_OK;
    }

    if (units > 1) {
        return ngx_xmpp_cm_ws_fail(ws, NGX_XMPP_CM_WS_NORMAL, "bad-format",
                                   "one element per WebSocket message "
                                   "(RFC 7395 3.3.1)");
    }

    if (units == 0 || start == NULL || sc.state != NGX_XMPP_CM_SCAN_TEXT
        || sc.text)
    {
        return ngx_xmpp_cm_ws_fail(ws, NGX_XMPP_CM_WS_NORMAL,
                                   "not-well-formed",
                                   "a WebSocket message must hold one "
                                   "complete element (RFC 7395 3.3.1)");
    }

    if (sc.kind != NGX_XMPP_CM_UNIT_ELEMENT) {
        return ngx_xmpp_cm_ws_fail(ws, NGX_XMPP_CM_WS_NORMAL,
                                   "restricted-xml", NULL);
    }

    if ((sc.name_len == 4 && ngx_strncmp(sc.name, "open", 4) == 0)
        || (sc.name_len == 5 && ngx_strncmp(sc.name, "close", 5) == 0))
    {
        return ngx_xmpp_cm_ws_open(ws, start, last - start);
    }

    if (!ngx_xmpp_cm_client_opened(ws->cl)) {
        return ngx_xmpp_cm_ws_fail(ws, NGX_XMPP_CM_WS_NORMAL, "bad-format",
                                   "expected <open/> (RFC 7395 3.4)");
    }

    if (ngx_xmpp_cm_client_feed(ws->cl, start, last - start) != NGX_OK) {
        return NGX_DONE;
    }

    return NGX_OK;
}


/*
 * <open/>: the stream header, RFC 7395 3.4, as a stream:stream start tag
 * with the same attributes for the engine; <close/>: the client's end.
 * The element is checked to be well-formed first (the attributes are
 * copied with their quotes, and the engine's framer parses them again).
 */

static ngx_int_t
ngx_xmpp_cm_ws_open(ngx_xmpp_cm_ws_t *ws, u_char *p, size_t len)
{
    u_char      *a, *last, *hp, *hdr;
    size_t       hlen;
    ngx_int_t    rc;
    ngx_str_t    name, value, ns;
    ngx_uint_t   open;

    static u_char  root[] = "<stream:stream xmlns=\"" NGX_XMPP_NS_CLIENT
                            "\" xmlns:stream=\"" NGX_XMPP_NS_STREAMS "\"";

    open = (p[1] == 'o');

    if (ngx_xmpp_cm_xml_fragment(ws->c->log, ws->up->worker->parking,
                                 p, len, 0, len, 2, NULL, NULL)
        != NGX_OK)
    {
        return ngx_xmpp_cm_ws_fail(ws, NGX_XMPP_CM_WS_NORMAL,
                                   "not-well-formed", NULL);
    }

    last = p + len;
    ngx_str_null(&ns);
    hlen = sizeof(root) - 1 + 1;

    for (a = p + 1 + (open ? 4 : 5); ; ) {
        a = ngx_xmpp_cm_ws_attr(a, last, &name, &value);
        if (a == NULL) {
            break;
        }

        if (name.len == 5 && ngx_strncmp(name.data, "xmlns", 5) == 0) {
            ns = value;

        } else if (name.len < 6 || ngx_strncmp(name.data, "xmlns:", 6) != 0)
        {
            /* name="value" with its own quotes: the bytes are the same */
            hlen += 1 + (value.data + value.len + 1 - name.data);
        }
    }

    if (ns.len != sizeof(NGX_XMPP_NS_FRAMING) - 1
        || ngx_strncmp(ns.data, NGX_XMPP_NS_FRAMING, ns.len) != 0)
    {
        return ngx_xmpp_cm_ws_fail(ws, NGX_XMPP_CM_WS_NORMAL,
                                   "invalid-namespace",
                                   "<open/> and <close/> are in "
                                   NGX_XMPP_NS_FRAMING);
    }

    if (!open) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ws->c->log, 0,
                       "xmpp_cm: websocket <close/> from the client");
        ngx_xmpp_cm_client_error(ws->cl, NULL, NULL);
        return NGX_DONE;
    }

    if (ngx_xmpp_cm_client_opened(ws->cl)) {
        /* RFC 7395 3.3.2: only after a restart (SASL success) */
        return ngx_xmpp_cm_ws_fail(ws, NGX_XMPP_CM_WS_NORMAL, "bad-format",
                                   "the stream is open already");
    }

    hdr = ngx_alloc(hlen, ws->c->log);
    if (hdr == NULL) {
        return ngx_xmpp_cm_ws_fail(ws, NGX_XMPP_CM_WS_NORMAL,
                                   "internal-server-error", NULL);
    }

    hp = ngx_cpymem(hdr, root, sizeof(root) - 1);

    for (a = p + 5; ; ) {
        a = ngx_xmpp_cm_ws_attr(a, last, &name, &value);
        if (a == NULL) {
            break;
        }

        if (name.len >= 5 && ngx_strncmp(name.data, "xmlns", 5) == 0
            && (name.len == 5 || name.data[5] == ':'))
        {
            continue;
        }

        *hp++ = ' ';
        hp = ngx_cpymem(hp, name.data, value.data + value.len + 1 - name.data);
    }

    *hp++ = '>';

    rc = ngx_xmpp_cm_client_feed(ws->cl, hdr, hp - hdr);

    ngx_free(hdr);

    return rc == NGX_OK ? NGX_OK : NGX_DONE;
}


/*
 * A rule of RFC 6455 or RFC 7395 broken: the stream error, <close/> and
 * a close frame with code (queued by the output side at <close/>).
 */

static ngx_int_t
ngx_xmpp_cm_ws_fail(ngx_xmpp_cm_ws_t *ws, ngx_uint_t code, char *cond,
    char *text)
{
    ngx_log_error(NGX_LOG_INFO, ws->c->log, 0,
                  "xmpp_cm: websocket client: %s%s%s", cond,
                  text ? ": " : "", text ? text : "");

    ws->close_code = code;
    ngx_xmpp_cm_client_error(ws->cl, cond, text);

    return NGX_DONE;
}


/* a frame not complete yet: for xmpp_cm_stanza_timeout */

static size_t
ngx_xmpp_cm_ws_pending(ngx_xmpp_cm_transport_t *t, XML_Index *base)
{
    ngx_xmpp_cm_ws_t *ws = (ngx_xmpp_cm_ws_t *) t;

    *base = (XML_Index) ws->frames;

    return ws->in_len + ws->msg_len;
}


/*
 * Output: the engine's XMPP stream, cut into its top-level units.  A
 * unit that ends within these bytes is framed from them; one that does
 * not is kept in obuf until its end comes.
 */

static ngx_int_t
ngx_xmpp_cm_ws_output(ngx_xmpp_cm_transport_t *t, u_char *p, size_t n)
{
    ngx_xmpp_cm_ws_t *ws = (ngx_xmpp_cm_ws_t *) t;

    u_char      *pos, *last, *from;
    ngx_int_t    rc;
    ngx_uint_t   ev;

    /* an empty piece (the second of ngx_xmpp_cm_xml_pieces) may be NULL */

    if (ws->closed || n == 0) {
        return NGX_OK;
    }

    pos = p;
    last = p + n;
    from = p;       /* the first byte of this call's part of the unit */

    while (pos < last) {
        ev = ngx_xmpp_cm_scan(&ws->scan, &pos, last);

        if (ev == NGX_XMPP_CM_SCAN_NONE) {
            break;
        }

        if (ev == NGX_XMPP_CM_SCAN_START) {
            ws->in_unit = 1;
            from = pos - 1;
            continue;
        }

        /* a unit ends before pos */

        ws->in_unit = 0;

        if (ws->olen) {
            if (ngx_xmpp_cm_ws_keep(&ws->obuf, &ws->olen, &ws->ocap, from,
                                    pos - from, ws->c->log)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            rc = ngx_xmpp_cm_ws_unit(ws, ws->obuf, ws->olen);
            ws->olen = 0;

        } else {
            rc = ngx_xmpp_cm_ws_unit(ws, from, pos - from);
        }

        if (rc != NGX_OK) {
            return rc;
        }

        if (ws->closed) {
            return NGX_OK;
        }
    }

    if (ws->in_unit) {
        if (ngx_xmpp_cm_ws_keep(&ws->obuf, &ws->olen, &ws->ocap, from,
                                last - from, ws->c->log)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (ws->olen == 0 && ws->obuf) {
        ngx_free(ws->obuf);
        ws->obuf = NULL;
        ws->ocap = 0;
    }

    return NGX_OK;
}


/*
 * One unit of the engine's stream as one message: the stream header as
 * <open/> (its attributes but the namespace declarations), the end as
 * <close/> and a close frame, an element with the namespace declarations
 * a standalone document needs (RFC 7395 3.3.1: jabber:client as the
 * default, the stream prefix for stream:features and stream:error).
 */

static ngx_int_t
ngx_xmpp_cm_ws_unit(ngx_xmpp_cm_ws_t *ws, u_char *p, size_t len)
{
    u_char      *a, *last, *name_end, code[2];
    ngx_str_t    parts[8], name, value;
    ngx_uint_t   n, has_ns, has_stream, prefixed, stream;

    static u_char  open[] = "<open xmlns=\"" NGX_XMPP_NS_FRAMING "\"";
    static u_char  close[] = "<close xmlns=\"" NGX_XMPP_NS_FRAMING "\"/>";
    static u_char  client_ns[] = " xmlns=\"" NGX_XMPP_NS_CLIENT "\"";
    static u_char  stream_ns[] = " xmlns:stream=\"" NGX_XMPP_NS_STREAMS "\"";

    last = p + len;

    switch (ws->scan.kind) {

    case NGX_XMPP_CM_UNIT_OTHER:
        /* the XML declaration */
        return NGX_OK;

    case NGX_XMPP_CM_UNIT_CLOSE:
        parts[0].data = close;
        parts[0].len = sizeof(close) - 1;

        if (ngx_xmpp_cm_ws_send(ws, NGX_XMPP_CM_WS_TEXT, parts, 1)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        code[0] = (u_char) (ws->close_code >> 8);
        code[1] = (u_char) (ws->close_code & 0xff);
        parts[0].data = code;
        parts[0].len = 2;
        ws->closed = 1;

        return ngx_xmpp_cm_ws_send(ws, NGX_XMPP_CM_WS_CLOSE, parts, 1);

    case NGX_XMPP_CM_UNIT_OPEN:
        parts[0].data = open;
        parts[0].len = sizeof(open) - 1;
        n = 1;

        for (a = p + sizeof("<stream:stream") - 1; n < 7; ) {
            a = ngx_xmpp_cm_ws_attr(a, last, &name, &value);
            if (a == NULL) {
                break;
            }

            if (name.len >= 5 && ngx_strncmp(name.data, "xmlns", 5) == 0
                && (name.len == 5 || name.data[5] == ':'))
            {
                continue;
            }

            /* the space before it, name="value" */
            parts[n].data = name.data - 1;
            parts[n].len = value.data + value.len + 1 - parts[n].data;
            n++;
        }

        parts[n].data = (u_char *) "/>";
        parts[n].len = 2;

        return ngx_xmpp_cm_ws_send(ws, NGX_XMPP_CM_WS_TEXT, parts, n + 1);
    }

    /* an element */

    for (name_end = p + 1;
         name_end < last && !ngx_xmpp_cm_is_space(*name_end)
         && *name_end != '/' && *name_end != '>';
         name_end++)
    {
        /* void */
    }

    prefixed = (ngx_strlchr(p + 1, name_end, ':') != NULL);
    stream = (name_end - p > 7 && ngx_strncmp(p + 1, "stream:", 7) == 0);
    has_ns = 0;
    has_stream = 0;

    for (a = name_end; ; ) {
        a = ngx_xmpp_cm_ws_attr(a, last, &name, &value);
        if (a == NULL) {
            break;
        }

        if (name.len == 5 && ngx_strncmp(name.data, "xmlns", 5) == 0) {
            has_ns = 1;

        } else if (name.len == 12
                   && ngx_strncmp(name.data, "xmlns:stream", 12) == 0)
        {
            has_stream = 1;
        }
    }

    parts[0].data = p;
    parts[0].len = name_end - p;
    n = 1;

    if (!prefixed && !has_ns) {
        parts[n].data = client_ns;
        parts[n].len = sizeof(client_ns) - 1;
        n++;
    }

    if (stream && !has_stream) {
        parts[n].data = stream_ns;
        parts[n].len = sizeof(stream_ns) - 1;
        n++;
    }

    parts[n].data = name_end;
    parts[n].len = last - name_end;

    return ngx_xmpp_cm_ws_send(ws, NGX_XMPP_CM_WS_TEXT, parts, n + 1);
}


/* one unmasked frame (a server's) of the parts into the output chain */

static ngx_int_t
ngx_xmpp_cm_ws_send(ngx_xmpp_cm_ws_t *ws, ngx_uint_t op, ngx_str_t *parts,
    ngx_uint_t n)
{
    u_char      *p;
    size_t       len;
    ngx_uint_t   i;
    ngx_buf_t   *b;

    len = 0;

    for (i = 0; i < n; i++) {
        len += parts[i].len;
    }

    b = ngx_xmpp_cm_output_buf(ngx_xmpp_cm_client_output(ws->cl),
                               len + 10, 1);
    if (b == NULL) {
        return NGX_ERROR;
    }

    p = b->last;
    *p++ = (u_char) (0x80 | op);

    if (len < 126) {
        *p++ = (u_char) len;

    } else if (len < 65536) {
        *p++ = 126;
        *p++ = (u_char) (len >> 8);
        *p++ = (u_char) (len & 0xff);

    } else {
        *p++ = 127;

        for (i = 8; i > 0; i--) {
            *p++ = (u_char) (((uint64_t) len >> ((i - 1) * 8)) & 0xff);
        }
    }

    for (i = 0; i < n; i++) {
        p = ngx_cpymem(p, parts[i].data, parts[i].len);
    }

    /* the buf was sized for the longest header: give back the rest */
    ngx_xmpp_cm_client_output(ws->cl)->size -= b->end - p;
    b->last = p;
    b->end = p;

    return NGX_OK;
}


/*
 * The lexical scan: from *pos up to last, stops after a unit's first '<'
 * (START) or after its last '>' (END, sc->kind says what it was).
 */

static ngx_uint_t
ngx_xmpp_cm_scan(ngx_xmpp_cm_scan_t *sc, u_char **pos, u_char *last)
{
    u_char  *p, ch;

    for (p = *pos; p < last; p++) {
        ch = *p;

        switch (sc->state) {

        case NGX_XMPP_CM_SCAN_TEXT:
            if (ch == '<') {
                sc->state = NGX_XMPP_CM_SCAN_LT;

                if (sc->depth == 0) {
                    *pos = p + 1;
                    return NGX_XMPP_CM_SCAN_START;
                }

            } else if (sc->depth == 0 && !ngx_xmpp_cm_is_space(ch)) {
                sc->text = 1;
            }

            break;

        case NGX_XMPP_CM_SCAN_LT:
            sc->slash = 0;

            if (ch == '/') {
                sc->state = NGX_XMPP_CM_SCAN_ETAG;

            } else if (ch == '?') {
                sc->state = NGX_XMPP_CM_SCAN_PI;

            } else if (ch == '!') {
                sc->state = NGX_XMPP_CM_SCAN_BANG;

            } else {
                sc->state = NGX_XMPP_CM_SCAN_STAG;

                if (sc->depth == 0) {
                    sc->in_name = 1;
                    sc->name[0] = ch;
                    sc->name_len = 1;
                }
            }

            break;

        case NGX_XMPP_CM_SCAN_STAG:
            if (ch == '>') {
                sc->state = NGX_XMPP_CM_SCAN_TEXT;
                sc->in_name = 0;

                if (sc->slash) {
                    if (sc->depth == 0) {
                        sc->kind = NGX_XMPP_CM_UNIT_ELEMENT;
                        *pos = p + 1;
                        return NGX_XMPP_CM_SCAN_END;
                    }

                    break;
                }

                if (sc->depth == 0 && sc->name_len == 13
                    && ngx_strncmp(sc->name, "stream:stream", 13) == 0)
                {
                    sc->kind = NGX_XMPP_CM_UNIT_OPEN;
                    *pos = p + 1;
                    return NGX_XMPP_CM_SCAN_END;
                }

                sc->depth++;
                break;
            }

            if (ch == '"' || ch == '\'') {
                sc->quote = ch;
                sc->state = NGX_XMPP_CM_SCAN_QUOTE;
                sc->in_name = 0;
                sc->slash = 0;
                break;
            }

            sc->slash = (ch == '/');

            if (sc->in_name) {
                if (ngx_xmpp_cm_is_space(ch) || ch == '/') {
                    sc->in_name = 0;

                } else if (sc->name_len < NGX_XMPP_CM_SCAN_NAME) {
                    sc->name[sc->name_len++] = ch;

                } else {
                    sc->name_len = NGX_XMPP_CM_SCAN_NAME + 1;
                }
            }

            break;

        case NGX_XMPP_CM_SCAN_QUOTE:
            if (ch == sc->quote) {
                sc->state = NGX_XMPP_CM_SCAN_STAG;
            }

            break;

        case NGX_XMPP_CM_SCAN_ETAG:
            if (ch == '>') {
                sc->state = NGX_XMPP_CM_SCAN_TEXT;

                if (sc->depth == 0) {
                    sc->kind = NGX_XMPP_CM_UNIT_CLOSE;
                    *pos = p + 1;
                    return NGX_XMPP_CM_SCAN_END;
                }

                if (--sc->depth == 0) {
                    sc->kind = NGX_XMPP_CM_UNIT_ELEMENT;
                    *pos = p + 1;
                    return NGX_XMPP_CM_SCAN_END;
                }
            }

            break;

        case NGX_XMPP_CM_SCAN_BANG:
            sc->state = (ch == '[') ? NGX_XMPP_CM_SCAN_CDATA
                        : (ch == '-') ? NGX_XMPP_CM_SCAN_COMMENT
                        : NGX_XMPP_CM_SCAN_DECL;
            sc->prev[0] = 0;
            sc->prev[1] = 0;
            continue;

        case NGX_XMPP_CM_SCAN_PI:
        case NGX_XMPP_CM_SCAN_CDATA:
        case NGX_XMPP_CM_SCAN_COMMENT:
        case NGX_XMPP_CM_SCAN_DECL:
            if (ch != '>'
                || (sc->state == NGX_XMPP_CM_SCAN_PI && sc->prev[1] != '?')
                || (sc->state == NGX_XMPP_CM_SCAN_CDATA
                    && (sc->prev[0] != ']' || sc->prev[1] != ']'))
                || (sc->state == NGX_XMPP_CM_SCAN_COMMENT
                    && (sc->prev[0] != '-' || sc->prev[1] != '-')))
            {
                sc->prev[0] = sc->prev[1];
                sc->prev[1] = ch;
                continue;
            }

            sc->state = NGX_XMPP_CM_SCAN_TEXT;

            if (sc->depth == 0) {
                sc->kind = NGX_XMPP_CM_UNIT_OTHER;
                *pos = p + 1;
                return NGX_XMPP_CM_SCAN_END;
            }

            break;
        }
    }

    *pos = last;

    return NGX_XMPP_CM_SCAN_NONE;
}


/*
 * The next attribute of a start tag from p (after its name): NULL at
 * the end of the tag.  value is what is between the quotes; the quote
 * follows it.
 */

static u_char *
ngx_xmpp_cm_ws_attr(u_char *p, const u_char *last, ngx_str_t *name,
    ngx_str_t *value)
{
    u_char  quote;

    while (p < last && ngx_xmpp_cm_is_space(*p)) {
        p++;
    }

    if (p >= last || *p == '/' || *p == '>') {
        return NULL;
    }

    name->data = p;

    while (p < last && *p != '=' && !ngx_xmpp_cm_is_space(*p)) {
        p++;
    }

    name->len = p - name->data;

    while (p < last && (*p == '=' || ngx_xmpp_cm_is_space(*p))) {
        p++;
    }

    if (p >= last || (*p != '"' && *p != '\'')) {
        return NULL;
    }

    quote = *p++;
    value->data = p;

    while (p < last && *p != quote) {
        p++;
    }

    if (p >= last) {
        return NULL;
    }

    value->len = p - value->data;

    return p + 1;
}


/* RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF */

static ngx_uint_t
ngx_xmpp_cm_ws_utf8(u_char *p, size_t len)
{
    u_char  *last;
    u_char   c, lo, hi;
    size_t   n, i;

    last = p + len;

    while (p < last) {
        c = *p++;

        if (c < 0x80) {
            continue;
        }

        lo = 0x80;
        hi = 0xbf;

        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;

        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            lo = (c == 0xe0) ? 0xa0 : 0x80;
            hi = (c == 0xed) ? 0x9f : 0xbf;

        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            lo = (c == 0xf0) ? 0x90 : 0x80;
            hi = (c == 0xf4) ? 0x8f : 0xbf;

        } else {
            return 0;
        }

        if ((size_t) (last - p) < n || *p < lo || *p > hi) {
            return 0;
        }

        for (i = 1; i < n; i++) {
            if ((p[i] & 0xc0) != 0x80) {
                return 0;
            }
        }

        p += n;
    }

    return 1;
}


/* the engine is done with the connection: the request ends with it */

static void
ngx_xmpp_cm_ws_finalize(ngx_xmpp_cm_transport_t *t)
{
    ngx_xmpp_cm_ws_t *ws = (ngx_xmpp_cm_ws_t *) t;

    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ws->r;
    c = ws->c;

    /*
     * As ngx_http_close_request() does when its count drops to 0, less
     * the lingering close, which the engine did already: the access log,
     * then the connection, whose pool's cleanup ends the engine.
     */

    r->main->count = 0;

    ngx_http_free_request(r, 0);
    ngx_http_close_connection(c);
}


static void
ngx_xmpp_cm_ws_cleanup(void *data)
{
    ngx_xmpp_cm_ws_t *ws = data;

    if (ws->cl) {
        ngx_xmpp_cm_metrics_websocket(ws->up, 0);
    }

    if (ws->in) {
        ngx_free(ws->in);
    }

    if (ws->msg) {
        ngx_free(ws->msg);
    }

    if (ws->obuf) {
        ngx_free(ws->obuf);
    }
}
