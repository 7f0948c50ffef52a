
/*
 * Shared pieces of the fuzz targets (see fuzz_common.h).
 */

#include "fuzz_common.h"
#include <fcntl.h>
#include <unistd.h>


ngx_log_t               fuzz_log;
ngx_xmpp_cm_worker_t   *fuzz_worker;
static ngx_pool_t      *fuzz_tmp;
static ngx_open_file_t  fuzz_log_file;
static ngx_cycle_t      fuzz_cycle;


void
fuzz_init(void)
{
    static int  done;
    char       *lv;

    if (done) {
        return;
    }

    done = 1;

    ngx_pagesize = getpagesize();
    for (ngx_pagesize_shift = 0; (1 << ngx_pagesize_shift) < ngx_pagesize;
         ngx_pagesize_shift++) { /* void */ }
    ngx_cacheline_size = 64;
    ngx_ncpu = 1;
    ngx_pid = getpid();

    ngx_time_init();

    /*
     * Everything is logged (and formatted) by default: the module's log
     * lines print fuzzed strings with %V.  FUZZ_LOG=stderr shows them.
     */

    lv = getenv("FUZZ_LOG");
    fuzz_log_file.fd = (lv && ngx_strcmp(lv, "stderr") == 0)
                       ? STDERR_FILENO : open("/dev/null", O_WRONLY);
    fuzz_log.file = &fuzz_log_file;
    fuzz_log.log_level = NGX_LOG_DEBUG_ALL | NGX_LOG_DEBUG;

    ngx_use_stderr = (lv && ngx_strcmp(lv, "stderr") == 0);

    if (lv && ngx_strcmp(lv, "off") == 0) {
        fuzz_log.log_level = NGX_LOG_STDERR;
    }

    /*
     * ngx_alloc() and the module log to ngx_cycle->log; the output chains'
     * bufs come from ngx_cycle->pool
     */

    fuzz_cycle.log = &fuzz_log;
    fuzz_cycle.pool = ngx_create_pool(NGX_CYCLE_POOL_SIZE, &fuzz_log);
    ngx_cycle = &fuzz_cycle;

    ngx_queue_init(&ngx_posted_events);
    ngx_queue_init(&ngx_posted_next_events);
    ngx_event_timer_init(&fuzz_log);

    /* the worker context, as init_process builds it */

    fuzz_worker = ngx_calloc(sizeof(ngx_xmpp_cm_worker_t), &fuzz_log);
    if (fuzz_worker == NULL) {
        FUZZ_FAIL("worker context");
    }

    ngx_queue_init(&fuzz_worker->clients);
    fuzz_worker->metrics_slot = NGX_ERROR;
    fuzz_worker->parking = ngx_xmpp_cm_xml_parking(
                               ngx_create_pool(4096, &fuzz_log));
    if (fuzz_worker->parking == NULL) {
        FUZZ_FAIL("parking");
    }

    fuzz_tmp = ngx_create_pool(4096, &fuzz_log);
    if (fuzz_tmp == NULL) {
        FUZZ_FAIL("scratch pool");
    }
}


/* no event loop runs: forget what the code posted and its timers */

void
fuzz_events_clear(void)
{
    ngx_queue_t  *q;
    ngx_event_t  *ev;

    while (!ngx_queue_empty(&ngx_posted_events)) {
        q = ngx_queue_head(&ngx_posted_events);
        ev = ngx_queue_data(q, ngx_event_t, queue);
        ngx_delete_posted_event(ev);
    }

    while (ngx_event_timer_rbtree.root != ngx_event_timer_rbtree.sentinel) {
        ngx_rbtree_node_t  *node;

        node = ngx_rbtree_min(ngx_event_timer_rbtree.root,
                              ngx_event_timer_rbtree.sentinel);
        ev = ngx_rbtree_data(node, ngx_event_t, timer);
        ngx_del_timer(ev);
    }
}


static ngx_str_t  fuzz_peer_name = ngx_string("127.0.0.1:5262");


void
fuzz_upstream_init(fuzz_upstream_t *fp)
{
    ngx_uint_t  i;

    fuzz_init();

    ngx_memzero(fp, sizeof(fuzz_upstream_t));

    fp->conf.upstream_watermarks.high = 16 * 1024 * 1024;
    fp->conf.upstream_watermarks.low = 1024 * 1024;
    fp->conf.client_output_limit = 1024 * 1024;
    fp->conf.close_delay = 0;
    ngx_str_set(&fp->conf.secret, "cmsecret");
    ngx_str_set(&fp->conf.name, "cm1");
    ngx_str_set(&fp->conf.conf_file, "/etc/nginx/nginx.conf");
    fp->conf.conf_line = 42;
    fp->conf.up = &fp->up;

    fp->up.conf = &fp->conf;
    fp->up.metrics = &fp->metrics;
    fp->up.worker = fuzz_worker;
    fp->up.tmp = fuzz_tmp;
    ngx_reset_pool(fuzz_tmp);
    fp->up.log = fuzz_log;
    ngx_str_set(&fp->up.name, "cm1-4242-a1b2c3");
    ngx_str_set(&fp->up.domain, "localhost");
    ngx_rbtree_init(&fp->up.ids, &fp->up.sentinel,
                    ngx_str_rbtree_insert_value);
    fp->up.streams = &ngx_xmpp_cm_streams;
    fp->up.closed = fp->closed;
    fp->up.socks = fp->socks;
    fp->up.nsocks = 2;
    fp->up.ready = 2;
    fp->up.configured = 1;
    fp->up.was_up = 1;

    for (i = 0; i < 2; i++) {
        fp->socks[i].up = &fp->up;
        fp->socks[i].log = &fp->up.log;
        fp->socks[i].index = i;
        fp->socks[i].state = NGX_XMPP_CM_SOCK_READY;
        ngx_queue_init(&fp->socks[i].paused);
        ngx_xmpp_cm_output_init(&fp->socks[i].out, fuzz_worker);
        fp->socks[i].pc.name = &fuzz_peer_name;
        fp->socks[i].resource.data = fp->socks[i].resbuf;
        fp->socks[i].resource.len =
            ngx_sprintf(fp->socks[i].resbuf, "s%ui-1", i)
            - fp->socks[i].resbuf;
    }
}


ngx_int_t
fuzz_begin(fuzz_upstream_t *fp, const uint8_t **data, size_t *size,
    uint8_t *flags, fuzz_rng_t *rng)
{
    const uint8_t  *d = *data;

    if (*size < 3) {
        return NGX_DECLINED;
    }

    fuzz_init();
    fuzz_upstream_init(fp);

    *flags = d[0];
    rng->s = 0x10000u | d[1] | (d[2] << 8);
    *data = d + 3;
    *size -= 3;

    return NGX_OK;
}


u_char *
fuzz_queue_take(ngx_xmpp_cm_output_t *o, size_t *len)
{
    u_char       *p, *d;
    size_t        n;
    ngx_chain_t  *cl;

    n = 0;
    for (cl = o->out; cl; cl = cl->next) {
        n += cl->buf->last - cl->buf->pos;

        if (cl->next == NULL && cl != o->tail) {
            FUZZ_FAIL("the chain's tail is not its last link");
        }
    }

    if (n != o->size) {
        FUZZ_FAIL("output size %zu != sum of bufs %zu", o->size, n);
    }

    p = malloc(n + 1);
    d = p;

    for (cl = o->out; cl; cl = cl->next) {
        d = ngx_cpymem(d, cl->buf->pos, cl->buf->last - cl->buf->pos);
    }

    *d = '\0';
    *len = n;

    ngx_xmpp_cm_output_free(o);

    return p;
}


/* ------------------------------------------------------------ splitter */

const char *
fuzz_splitter_check(const u_char *p, size_t len, ngx_uint_t *nfrag)
{
    enum { t_text, t_lt, t_open, t_dq, t_close } st;
    size_t      i, depth;
    u_char      ch, prev;

    st = t_text;
    depth = 0;
    prev = 0;
    *nfrag = 0;

    for (i = 0; i < len; i++) {
        ch = p[i];

        switch (st) {

        case t_text:
            if (ch == '<') {
                st = t_lt;

            } else if (depth == 0) {
                if (ch != ' ' && ch != '\n' && ch != '\r' && ch != '\t') {
                    return "text outside any fragment";
                }

            } else if (ch == '>') {
                return "'>' in text";
            }
            break;

        case t_lt:
            if (ch == '/') {
                st = t_close;

            } else if (ch == '!' || ch == '?') {
                return "CDATA, comment or PI";

            } else {
                st = t_open;
                prev = ch;
            }
            break;

        case t_open:
            if (ch == '"') {
                st = t_dq;

            } else if (ch == '\'') {
                return "single quote in a tag outside a \"-quoted value";

            } else if (ch == '>') {
                st = t_text;

                if (prev != '/') {
                    depth++;

                } else if (depth == 0) {
                    (*nfrag)++;
                }

            } else if (ch == '<') {
                return "'<' in a tag";
            }

            prev = ch;
            break;

        case t_dq:
            if (ch == '"') {
                st = t_open;
                prev = ch;

            } else if (ch == '<') {
                return "'<' in an attribute value";

            } else if (ch == '>') {
                return "'>' in an attribute value";
            }
            break;

        case t_close:
            if (ch == '>') {
                if (depth == 0) {
                    return "close tag at depth 0";
                }

                depth--;
                st = t_text;

                if (depth == 0) {
                    (*nfrag)++;
                }
            }
            break;
        }
    }

    if (st != t_text || depth != 0) {
        return "unfinished fragment";
    }

    return NULL;
}


/* ------------------------------------------------------------ expat */

const char *
fuzz_wellformed(const u_char *p, size_t len, ngx_uint_t ns)
{
    const char  *err;
    XML_Parser   xp;

    static const char  open_ns[] = "<wrap xmlns=\"jabber:client\">";
    static const char  open_plain[] = "<wrap>";
    static const char  close_w[] = "</wrap>";

    xp = ns ? XML_ParserCreateNS("UTF-8", '\n') : XML_ParserCreate("UTF-8");

    err = NULL;

    if (XML_Parse(xp, ns ? open_ns : open_plain,
                  ns ? sizeof(open_ns) - 1 : sizeof(open_plain) - 1, 0)
            == XML_STATUS_ERROR
        || XML_Parse(xp, (const char *) p, (int) len, 0) == XML_STATUS_ERROR
        || XML_Parse(xp, close_w, sizeof(close_w) - 1, 1) == XML_STATUS_ERROR)
    {
        err = XML_ErrorString(XML_GetErrorCode(xp));
    }

    XML_ParserFree(xp);

    return err;
}


typedef struct {
    char        *buf;
    size_t       len;
    size_t       size;
    char        *text;
    size_t       tlen;
    size_t       tsize;
    ngx_uint_t   depth;
    ngx_uint_t   pending_default;
    ngx_uint_t   top_default;
    ngx_uint_t   top_seen;
} fuzz_ev_t;


static void
fuzz_ev_add(fuzz_ev_t *ev, const char *s, size_t n)
{
    if (ev->len + n + 1 > ev->size) {
        ev->size = (ev->len + n + 1) * 2;
        ev->buf = realloc(ev->buf, ev->size);
    }

    memcpy(ev->buf + ev->len, s, n);
    ev->len += n;
}


static void
fuzz_ev_flush(fuzz_ev_t *ev)
{
    char  num[32];

    if (ev->tlen == 0) {
        return;
    }

    fuzz_ev_add(ev, num, snprintf(num, sizeof(num), "T%zu:", ev->tlen));
    fuzz_ev_add(ev, ev->text, ev->tlen);
    ev->tlen = 0;
}


static void XMLCALL
fuzz_ev_start(void *data, const XML_Char *name, const XML_Char **atts)
{
    fuzz_ev_t  *ev = data;
    ngx_uint_t  i;

    ev->depth++;

    if (ev->depth == 2 && !ev->top_seen) {
        ev->top_seen = 1;
        ev->top_default = ev->pending_default;
    }

    ev->pending_default = 0;

    if (ev->depth < 2) {
        return;
    }

    fuzz_ev_flush(ev);
    fuzz_ev_add(ev, "<", 1);
    fuzz_ev_add(ev, name, strlen(name));

    for (i = 0; atts[i]; i += 2) {
        fuzz_ev_add(ev, " ", 1);
        fuzz_ev_add(ev, atts[i], strlen(atts[i]));
        fuzz_ev_add(ev, "=[", 2);
        {
            char  num[32];
            size_t n = strlen(atts[i + 1]);

            fuzz_ev_add(ev, num, snprintf(num, sizeof(num), "%zu:", n));
            fuzz_ev_add(ev, atts[i + 1], n);
        }
        fuzz_ev_add(ev, "]", 1);
    }

    fuzz_ev_add(ev, ">", 1);
}


static void XMLCALL
fuzz_ev_end(void *data, const XML_Char *name)
{
    fuzz_ev_t  *ev = data;

    if (ev->depth >= 2) {
        fuzz_ev_flush(ev);
        fuzz_ev_add(ev, "</>", 3);
    }

    ev->depth--;
}


static void XMLCALL
fuzz_ev_text(void *data, const XML_Char *s, int len)
{
    fuzz_ev_t  *ev = data;

    if (ev->depth < 2) {
        return;
    }

    if (ev->tlen + len > ev->tsize) {
        ev->tsize = (ev->tlen + len) * 2;
        ev->text = realloc(ev->text, ev->tsize);
    }

    memcpy(ev->text + ev->tlen, s, len);
    ev->tlen += len;
}


static void XMLCALL
fuzz_ev_ns(void *data, const XML_Char *prefix, const XML_Char *uri)
{
    fuzz_ev_t  *ev = data;

    if (prefix == NULL) {
        ev->pending_default = 1;
    }
}


char *
fuzz_events(const u_char *p, size_t len, const char *wrap_open,
    const char *wrap_close, size_t *out_len, ngx_uint_t *xmlns_ok)
{
    int         ok;
    fuzz_ev_t   ev;
    XML_Parser  xp;

    ngx_memzero(&ev, sizeof(fuzz_ev_t));

    xp = XML_ParserCreateNS("UTF-8", '\n');
    XML_SetUserData(xp, &ev);
    XML_SetElementHandler(xp, fuzz_ev_start, fuzz_ev_end);
    XML_SetCharacterDataHandler(xp, fuzz_ev_text);
    XML_SetStartNamespaceDeclHandler(xp, fuzz_ev_ns);

    ok = XML_Parse(xp, wrap_open, strlen(wrap_open), 0) != XML_STATUS_ERROR
         && XML_Parse(xp, (const char *) p, (int) len, 0) != XML_STATUS_ERROR
         && XML_Parse(xp, wrap_close, strlen(wrap_close), 1)
            != XML_STATUS_ERROR;

    XML_ParserFree(xp);
    free(ev.text);

    if (xmlns_ok) {
        *xmlns_ok = ev.top_default;
    }

    if (!ok) {
        free(ev.buf);
        return NULL;
    }

    fuzz_ev_add(&ev, "", 1);
    *out_len = ev.len - 1;

    return ev.buf;
}


char *
fuzz_stanza_events(const u_char *orig, size_t olen, size_t *len)
{
    char  *ev;

    ev = fuzz_events(orig, olen, "<w xmlns=\"jabber:client\">", "</w>", len,
                     NULL);
    if (ev == NULL) {
        FUZZ_FAIL("the framer accepted a stanza that is not well-formed on "
                  "its own:\n%.*s", (int) olen, orig);
    }

    return ev;
}


void
fuzz_route_check(const u_char *orig, size_t olen, const char *ev_orig,
    size_t l1, const u_char *route, size_t rlen, ngx_uint_t same)
{
    char        *ev_san;
    size_t       l2;
    ngx_uint_t   nfrag, xmlns_ok;
    const char  *err;

    err = fuzz_splitter_check(route, rlen, &nfrag);
    if (err || nfrag != 1) {
        FUZZ_FAIL("route unsafe for Openfire's splitter: %s (%u fragments)"
                  "\n--- client bytes:\n%.*s\n--- route:\n%.*s",
                  err ? err : "", (unsigned) nfrag, (int) olen, orig,
                  (int) rlen, route);
    }

    ev_san = fuzz_events(route, rlen, "", "", &l2, &xmlns_ok);
    if (ev_san == NULL) {
        FUZZ_FAIL("route is not well-formed:\n--- client bytes:\n%.*s\n"
                  "--- route:\n%.*s", (int) olen, orig, (int) rlen, route);
    }

    if (same && !xmlns_ok) {
        FUZZ_FAIL("routed stanza declares no default namespace:\n%.*s",
                  (int) rlen, route);
    }

    if (same && (l1 != l2 || ngx_memcmp(ev_orig, ev_san, l1) != 0)) {
        FUZZ_FAIL("route does not mean what the client sent:\n"
                  "--- client bytes:\n%.*s\n--- route:\n%.*s\n"
                  "--- events (client):\n%s\n--- events (route):\n%s",
                  (int) olen, orig, (int) rlen, route, ev_orig, ev_san);
    }

    free(ev_san);
}


ngx_int_t
fuzz_feed_next(ngx_xmpp_cm_xml_t *x, const uint8_t *data, size_t size,
    size_t *off, ngx_uint_t mode, size_t max, fuzz_rng_t *rng)
{
    u_char     *buf;
    size_t      n;
    ngx_int_t   rc;

    switch (mode) {
    case 0:  n = 1 + fuzz_rand(rng) % 8; break;
    case 1:  n = 1 + fuzz_rand(rng) % 64; break;
    case 2:  n = 1 + fuzz_rand(rng) % max; break;
    default: n = size;
    }

    if (n > size - *off) {
        n = size - *off;
    }

    buf = malloc(n);
    ngx_memcpy(buf, data + *off, n);

    rc = ngx_xmpp_cm_xml_feed(x, buf, n);

    free(buf);
    *off += n;

    return rc;
}
