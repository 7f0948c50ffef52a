
/*
 * XML framing over expat.
 *
 * The framer feeds whatever bytes a read returned to expat and reports the
 * stream root (its attributes), every complete top-level element (stanza)
 * as a byte span of the original input, and the end of the stream.  Only
 * the bytes of an unfinished stanza are kept between reads (in "pend");
 * the caller's read buffer is shared by all connections of a worker.
 *
 * Client streams are restricted XML (RFC 6120 section 11): no DTD, entity
 * declarations, processing instructions or comments; nesting and stanza
 * size are limited; a stanza may not use a namespace prefix declared
 * outside itself, because its bytes are copied into another document.
 *
 * In tree mode (the trusted Openfire side) a small tree of the stanza's
 * first levels is built in a scratch pool that is reset after each stanza.
 *
 * Idle client streams hold no expat parser.  Between stanzas every client
 * parser is in the same state: inside an open
 * <stream:stream xmlns="jabber:client" xmlns:stream=...> root, at depth 1.
 * So at a stanza boundary with nothing pending the parser is "parked" in
 * the worker's list (ngx_xmpp_cm_parking_t, in the worker context), and
 * the next read of any such stream adopts one: no reset and no re-parse
 * per stanza, only the parser's byte count is carried over.  A stream
 * whose header used another prefix for the streams namespace or declared
 * extra prefixes keeps its own parser.
 */


#include "ngx_stream_xmpp_cm.h"


#define NGX_XMPP_CM_SEP        '\n'
#define NGX_XMPP_CM_TREE_DEPTH 6
#define NGX_XMPP_CM_PARK_MAX   64
#define NGX_XMPP_CM_PARK_BIG   16384
#define NGX_XMPP_CM_PFX_MAX    8
#define NGX_XMPP_CM_PFX_LEN    16


/*
 * What the framer needs only while a stanza is being parsed.  It travels
 * with the expat parser: an idle stream that parked its parser holds
 * neither (about 350 bytes less per idle session).
 */

typedef struct {
    ngx_xmpp_cm_elem_t               elem;
    u_char                           name[NGX_XMPP_CM_NAME_MAX];
    u_char                           ns[NGX_XMPP_CM_NS_MAX];
    u_char                           cond[NGX_XMPP_CM_NAME_MAX];
    ngx_uint_t                       npfx;
    u_char                           pfx[NGX_XMPP_CM_PFX_MAX]
                                        [NGX_XMPP_CM_PFX_LEN];
    ngx_uint_t                       pfx_depth[NGX_XMPP_CM_PFX_MAX];
} ngx_xmpp_cm_scratch_t;


/*
 * A client framer (!tree) applies the client rules and may park its
 * parser; a tree framer (the trusted Openfire side) builds the tree.
 */

struct ngx_xmpp_cm_xml_s {
    XML_Parser                       parser;
    ngx_log_t                       *log;
    ngx_xmpp_cm_xml_handlers_t      *handlers;
    void                            *data;

    size_t                           max_size;
    ngx_uint_t                       max_depth;
    ngx_uint_t                       depth;

    const char                      *error;        /* stream error cond. */
    const char                      *error_text;
    ngx_int_t                        rc;           /* from a callback */

    /* raw byte tracking */
    XML_Index                        fed;
    XML_Index                        base;
    u_char                          *data_buf;
    size_t                           data_len;
    u_char                          *pend;
    size_t                           pend_len;
    size_t                           pend_size;
    XML_Index                        pend_base;
    XML_Index                        mark;
    XML_Index                        last_start_end;

    /* the stanza being parsed: lives with the parser */
    ngx_xmpp_cm_scratch_t           *st;
    ngx_xmpp_cm_parking_t           *parking;      /* the worker's, or NULL */

    /* the root's default namespace: expat's, read during open() only */
    const XML_Char                  *root_ns;
    size_t                           root_ns_len;

    /* tree mode: the tree lives in tmp, reset after each stanza */
    ngx_pool_t                      *tmp;
    ngx_xmpp_cm_node_t              *cur;
    ngx_str_t                        xmlns_pending;

    unsigned                         tree:1;
    unsigned                         stopped:1;
    unsigned                         in_stanza:1;
    unsigned                         opened:1;
    unsigned                         has_default_pending:1;
    unsigned                         root_has_default:1;
    unsigned                         root_extra_ns:1;
    unsigned                         parkable:1;
    unsigned                         synthetic:1;
    unsigned                         restarted:1;
};


typedef struct {
    XML_Parser              parser;
    ngx_xmpp_cm_scratch_t  *st;
    XML_Index               fed;
} ngx_xmpp_cm_parked_t;


struct ngx_xmpp_cm_parking_s {
    ngx_uint_t              n;
    ngx_xmpp_cm_parked_t    parked[NGX_XMPP_CM_PARK_MAX];
};


static u_char  ngx_xmpp_cm_synthetic[] =
    "<stream:stream xmlns=\"" NGX_XMPP_NS_CLIENT "\" xmlns:stream=\""
    NGX_XMPP_NS_STREAMS "\">";


static void ngx_xmpp_cm_parser_handlers(ngx_xmpp_cm_xml_t *x);
static ngx_int_t ngx_xmpp_cm_parser_new(ngx_xmpp_cm_xml_t *x);
static void ngx_xmpp_cm_parser_free(ngx_xmpp_cm_xml_t *x);
static void ngx_xmpp_cm_stanza_done(ngx_xmpp_cm_elem_t *e);
static ngx_int_t ngx_xmpp_cm_xml_acquire(ngx_xmpp_cm_xml_t *x);
static void ngx_xmpp_cm_xml_park(ngx_xmpp_cm_xml_t *x);
static void ngx_xmpp_cm_xml_fail(ngx_xmpp_cm_xml_t *x, const char *cond,
    const char *text);
static ngx_int_t ngx_xmpp_cm_xml_keep(ngx_xmpp_cm_xml_t *x);
static void XMLCALL ngx_xmpp_cm_xml_start(void *data, const XML_Char *name,
    const XML_Char **atts);
static void ngx_xmpp_cm_xml_open_root(ngx_xmpp_cm_xml_t *x,
    ngx_str_t *local, ngx_str_t *ns, ngx_str_t *prefix,
    const XML_Char **atts);
static ngx_int_t ngx_xmpp_cm_xml_stanza_start(ngx_xmpp_cm_xml_t *x,
    XML_Index idx, ngx_str_t *local, ngx_str_t *ns, const XML_Char **atts);
static ngx_int_t ngx_xmpp_cm_xml_client_rules(ngx_xmpp_cm_xml_t *x,
    XML_Index idx, ngx_str_t *local, ngx_str_t *ns, ngx_str_t *prefix,
    const XML_Char **atts);
static void ngx_xmpp_cm_xml_tree_node(ngx_xmpp_cm_xml_t *x, XML_Index idx,
    ngx_str_t *local, ngx_str_t *ns, const XML_Char **atts);
static void XMLCALL ngx_xmpp_cm_xml_end(void *data, const XML_Char *name);
static void XMLCALL ngx_xmpp_cm_xml_text(void *data, const XML_Char *s,
    int len);
static void XMLCALL ngx_xmpp_cm_xml_ns_start(void *data,
    const XML_Char *prefix, const XML_Char *uri);
static void XMLCALL ngx_xmpp_cm_xml_ns_end(void *data,
    const XML_Char *prefix);
static void XMLCALL ngx_xmpp_cm_xml_decl(void *data, const XML_Char *version,
    const XML_Char *encoding, int standalone);
static void XMLCALL ngx_xmpp_cm_xml_doctype(void *data,
    const XML_Char *name, const XML_Char *sysid, const XML_Char *pubid,
    int has_internal_subset);
static void XMLCALL ngx_xmpp_cm_xml_entity(void *data,
    const XML_Char *name, int is_param, const XML_Char *value,
    int value_len, const XML_Char *base, const XML_Char *sysid,
    const XML_Char *pubid, const XML_Char *notation);
static void XMLCALL ngx_xmpp_cm_xml_pi(void *data, const XML_Char *target,
    const XML_Char *pidata);
static void XMLCALL ngx_xmpp_cm_xml_comment(void *data,
    const XML_Char *text);
static ngx_int_t ngx_xmpp_cm_fragment_open(void *data, ngx_str_t *name,
    ngx_str_t *ns, const XML_Char **attrs);
static ngx_int_t ngx_xmpp_cm_fragment_element(void *data,
    ngx_xmpp_cm_elem_t *e);
static ngx_int_t ngx_xmpp_cm_fragment_close(void *data);


typedef struct {
    ngx_xmpp_cm_elem_pt     element;
    void                   *data;
    ngx_uint_t              n;
} ngx_xmpp_cm_fragment_t;


ngx_xmpp_cm_parking_t *
ngx_xmpp_cm_xml_parking(ngx_pool_t *pool)
{
    return ngx_pcalloc(pool, sizeof(ngx_xmpp_cm_parking_t));
}


ngx_xmpp_cm_xml_t *
ngx_xmpp_cm_xml_create(ngx_pool_t *pool, ngx_log_t *log, ngx_uint_t tree,
    ngx_xmpp_cm_parking_t *parking)
{
    ngx_xmpp_cm_xml_t  *x;

    x = ngx_pcalloc(pool, sizeof(ngx_xmpp_cm_xml_t));
    if (x == NULL) {
        return NULL;
    }

    x->log = log;
    x->parking = tree ? NULL : parking;
    x->tree = tree ? 1 : 0;

    if (!tree) {
        /* a client framer gets a parser with its first bytes */
        return x;
    }

    if (ngx_xmpp_cm_parser_new(x) != NGX_OK) {
        return NULL;
    }

    x->tmp = ngx_create_pool(4096, log);
    if (x->tmp == NULL) {
        ngx_xmpp_cm_parser_free(x);
        return NULL;
    }

    ngx_xmpp_cm_parser_handlers(x);

    return x;
}


void
ngx_xmpp_cm_xml_handlers(ngx_xmpp_cm_xml_t *x, ngx_xmpp_cm_xml_handlers_t *h,
    void *data)
{
    x->handlers = h;
    x->data = data;
}


void
ngx_xmpp_cm_xml_limits(ngx_xmpp_cm_xml_t *x, size_t max_size,
    ngx_uint_t max_depth)
{
    x->max_size = max_size;
    x->max_depth = max_depth;
}


/*
 * The bytes of an unfinished stanza the framer keeps, 0 between stanzas;
 * *start tells one unfinished stanza from the next.
 */

size_t
ngx_xmpp_cm_xml_pending(ngx_xmpp_cm_xml_t *x, XML_Index *start)
{
    *start = x->pend_base;

    return x->pend_len;
}


/* the bytes of the read being fed that come after pos */

size_t
ngx_xmpp_cm_xml_rest(ngx_xmpp_cm_xml_t *x, XML_Index pos)
{
    return (size_t) (x->fed - pos);
}


/* the stream error condition, or NULL; *text: its text, or NULL */

const char *
ngx_xmpp_cm_xml_error(ngx_xmpp_cm_xml_t *x, const char **text)
{
    *text = x->error_text;

    return x->error;
}


/* during open(): whether the root declares a default namespace, and it */

ngx_uint_t
ngx_xmpp_cm_xml_root_ns(ngx_xmpp_cm_xml_t *x, ngx_str_t *ns)
{
    ns->data = (u_char *) x->root_ns;
    ns->len = x->root_ns ? x->root_ns_len : 0;

    return x->root_has_default;
}


/*
 * A parser for a framer that has none: a parked one if the stream is open
 * (it is at the same point), else one at the start of a document.
 */

static ngx_int_t
ngx_xmpp_cm_xml_acquire(ngx_xmpp_cm_xml_t *x)
{
    ngx_xmpp_cm_parked_t   *pk;
    ngx_xmpp_cm_parking_t  *pg;

    pg = x->parking;

    if (x->opened && pg && pg->n) {
        pk = &pg->parked[--pg->n];
        x->parser = pk->parser;
        x->st = pk->st;
        x->st->npfx = 0;
        x->st->elem.root = NULL;
        XML_SetUserData(x->parser, x);

        x->fed = pk->fed;
        x->base = pk->fed;
        x->mark = pk->fed;
        x->pend_base = pk->fed;

        return NGX_OK;
    }

    if (pg && pg->n) {
        pk = &pg->parked[--pg->n];
        x->parser = pk->parser;
        x->st = pk->st;

        if (XML_ParserReset(x->parser, "UTF-8") != XML_TRUE) {
            ngx_xmpp_cm_parser_free(x);

        } else {
            ngx_memzero(x->st, sizeof(ngx_xmpp_cm_scratch_t));
        }
    }

    if (x->parser == NULL && ngx_xmpp_cm_parser_new(x) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_xmpp_cm_parser_handlers(x);

    if (!x->opened) {
        x->fed = 0;
        x->base = 0;
        x->mark = 0;
        x->pend_base = 0;
        return NGX_OK;
    }

    /* an open stream and no parked parser: re-enter the root */

    x->fed = 0;
    x->depth = 0;
    x->synthetic = 1;

    if (XML_Parse(x->parser, (const char *) ngx_xmpp_cm_synthetic,
                  sizeof(ngx_xmpp_cm_synthetic) - 1, 0)
        != XML_STATUS_OK)
    {
        x->synthetic = 0;
        return NGX_ERROR;
    }

    x->synthetic = 0;

    if (x->depth != 1) {
        return NGX_ERROR;
    }

    x->fed = sizeof(ngx_xmpp_cm_synthetic) - 1;
    x->base = x->fed;
    x->mark = x->fed;
    x->pend_base = x->fed;

    return NGX_OK;
}


static void
ngx_xmpp_cm_xml_park(ngx_xmpp_cm_xml_t *x)
{
    ngx_xmpp_cm_parked_t   *pk;
    ngx_xmpp_cm_parking_t  *pg;

    pg = x->parking;

    if (pg == NULL || pg->n == NGX_XMPP_CM_PARK_MAX) {
        return;
    }

    pk = &pg->parked[pg->n++];
    pk->parser = x->parser;
    pk->st = x->st;
    pk->fed = x->fed;

    x->parser = NULL;
    x->st = NULL;
}


static ngx_int_t
ngx_xmpp_cm_parser_new(ngx_xmpp_cm_xml_t *x)
{
    x->st = ngx_calloc(sizeof(ngx_xmpp_cm_scratch_t), x->log);
    if (x->st == NULL) {
        return NGX_ERROR;
    }

    x->parser = XML_ParserCreateNS("UTF-8", NGX_XMPP_CM_SEP);
    if (x->parser == NULL) {
        ngx_free(x->st);
        x->st = NULL;
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * The element's state is the framer's: what the stanza checks (jid.c)
 * left in it goes at the stanza's end.
 */

static void
ngx_xmpp_cm_stanza_done(ngx_xmpp_cm_elem_t *e)
{
    if (e->fold) {
        ngx_free(e->fold);
        e->fold = NULL;
    }

    ngx_str_null(&e->to);
    ngx_str_null(&e->from);
}


static void
ngx_xmpp_cm_parser_free(ngx_xmpp_cm_xml_t *x)
{
    XML_ParserFree(x->parser);
    ngx_xmpp_cm_stanza_done(&x->st->elem);
    ngx_free(x->st);
    x->parser = NULL;
    x->st = NULL;
}


/* worker exit */

void
ngx_xmpp_cm_xml_release_parked(ngx_xmpp_cm_parking_t *pg)
{
    ngx_xmpp_cm_parked_t  *pk;

    while (pg->n) {
        pk = &pg->parked[--pg->n];
        XML_ParserFree(pk->parser);
        ngx_xmpp_cm_stanza_done(&pk->st->elem);
        ngx_free(pk->st);
    }
}


static void
ngx_xmpp_cm_parser_handlers(ngx_xmpp_cm_xml_t *x)
{
    XML_Parser  p;

    p = x->parser;

    XML_SetUserData(p, x);
    XML_SetReturnNSTriplet(p, 1);
    XML_SetElementHandler(p, ngx_xmpp_cm_xml_start, ngx_xmpp_cm_xml_end);
    XML_SetCharacterDataHandler(p, ngx_xmpp_cm_xml_text);
    XML_SetNamespaceDeclHandler(p, ngx_xmpp_cm_xml_ns_start,
                                ngx_xmpp_cm_xml_ns_end);
    XML_SetXmlDeclHandler(p, ngx_xmpp_cm_xml_decl);
    XML_SetStartDoctypeDeclHandler(p, ngx_xmpp_cm_xml_doctype);
    XML_SetEntityDeclHandler(p, ngx_xmpp_cm_xml_entity);
    XML_SetProcessingInstructionHandler(p, ngx_xmpp_cm_xml_pi);
    XML_SetCommentHandler(p, ngx_xmpp_cm_xml_comment);
    XML_SetParamEntityParsing(p, XML_PARAM_ENTITY_PARSING_NEVER);

#if (NGX_STREAM_XMPP_CM_REPARSE_DEFERRAL)
    /*
     * With deferral on, a token split across reads is only reparsed once
     * enough new input arrives, so a stanza can stall in the parser.
     */
    XML_SetReparseDeferralEnabled(p, XML_FALSE);
#endif
}


ngx_int_t
ngx_xmpp_cm_xml_reset(ngx_xmpp_cm_xml_t *x)
{
    if (x->parser) {
        if (XML_ParserReset(x->parser, "UTF-8") != XML_TRUE) {
            return NGX_ERROR;
        }

        ngx_xmpp_cm_parser_handlers(x);
    }

    x->parkable = 0;
    x->restarted = !x->tree;

    x->depth = 0;
    x->error = NULL;
    x->error_text = NULL;
    x->rc = NGX_OK;
    x->fed = 0;
    x->base = 0;
    x->pend_len = 0;
    x->pend_base = 0;
    x->mark = 0;
    x->stopped = 0;
    x->in_stanza = 0;
    x->opened = 0;
    x->has_default_pending = 0;
    x->root_has_default = 0;
    x->root_extra_ns = 0;
    x->root_ns = NULL;
    x->root_ns_len = 0;
    x->cur = NULL;

    if (x->st) {
        x->st->npfx = 0;
        x->st->elem.root = NULL;
    }

    if (x->pend) {
        ngx_free(x->pend);
        x->pend = NULL;
        x->pend_size = 0;
    }

    if (x->tmp) {
        ngx_reset_pool(x->tmp);
    }

    return NGX_OK;
}


void
ngx_xmpp_cm_xml_free(ngx_xmpp_cm_xml_t *x)
{
    if (x->parser && x->parkable && !x->stopped && x->depth == 1
        && !x->in_stanza && x->pend_len == 0)
    {
        ngx_xmpp_cm_xml_park(x);
    }

    if (x->parser) {
        ngx_xmpp_cm_parser_free(x);
    }

    if (x->pend) {
        ngx_free(x->pend);
        x->pend = NULL;
    }

    if (x->tmp) {
        ngx_destroy_pool(x->tmp);
        x->tmp = NULL;
    }
}


ngx_int_t
ngx_xmpp_cm_xml_feed(ngx_xmpp_cm_xml_t *x, u_char *buf, size_t n)
{
    enum XML_Error  code;

    ngx_int_t       rc;

    if (x->stopped) {
        return NGX_DONE;
    }

    if (x->restarted) {

        /*
         * White space before a restarted stream's first '<' (a keepalive
         * the client sent before it saw <success/>): skipped, as Openfire
         * does.  An XML declaration anywhere but at the start of a stream
         * is an expat error, not-well-formed.
         */

        while (n && ngx_xmpp_cm_is_space(*buf)) {
            buf++;
            n--;
        }

        if (n == 0) {
            return NGX_OK;
        }

        x->restarted = 0;
    }

    if (x->parser == NULL && ngx_xmpp_cm_xml_acquire(x) != NGX_OK) {
        x->error = "internal-server-error";
        return NGX_ERROR;
    }

    x->data_buf = buf;
    x->data_len = n;
    x->base = x->fed;
    x->fed += n;
    x->rc = NGX_OK;

    if (XML_Parse(x->parser, (const char *) buf, (int) n, 0)
        == XML_STATUS_ERROR)
    {
        if (x->stopped) {
            return x->error ? NGX_ERROR : x->rc;
        }

        code = XML_GetErrorCode(x->parser);

        switch (code) {

        case XML_ERROR_UNKNOWN_ENCODING:
        case XML_ERROR_INCORRECT_ENCODING:
            x->error = "unsupported-encoding";
            break;

        default:
            x->error = "not-well-formed";
        }

        x->error_text = XML_ErrorString(code);
        x->stopped = 1;

        return NGX_ERROR;
    }

    if (x->stopped) {
        return x->error ? NGX_ERROR : x->rc;
    }

    rc = ngx_xmpp_cm_xml_keep(x);

    if (rc == NGX_OK && x->parkable && x->depth == 1 && !x->in_stanza
        && x->pend_len == 0)
    {
        if ((size_t) (x->st->elem.end - x->st->elem.start)
            > NGX_XMPP_CM_PARK_BIG)
        {
            /* expat keeps its grown buffer: do not pass that around */
            ngx_xmpp_cm_parser_free(x);

        } else {
            ngx_xmpp_cm_xml_park(x);
        }
    }

    return rc;
}


static ngx_inline u_char
ngx_xmpp_cm_xml_byte(ngx_xmpp_cm_xml_t *x, XML_Index i)
{
    if (i >= x->base) {
        return x->data_buf[i - x->base];
    }

    return x->pend[i - x->pend_base];
}


void
ngx_xmpp_cm_xml_pieces(ngx_xmpp_cm_xml_t *x, XML_Index start,
    XML_Index end, ngx_str_t *p1, ngx_str_t *p2)
{
    XML_Index  mid;

    p1->len = 0;
    p2->len = 0;
    p1->data = NULL;
    p2->data = NULL;

    if (start < x->base) {
        mid = end < x->base ? end : x->base;
        p1->data = x->pend + (start - x->pend_base);
        p1->len = (size_t) (mid - start);
        start = mid;
    }

    if (start < end) {
        p2->data = x->data_buf + (start - x->base);
        p2->len = (size_t) (end - start);
    }
}


size_t
ngx_xmpp_cm_xml_copy(ngx_xmpp_cm_xml_t *x, u_char *dst, XML_Index start,
    XML_Index end)
{
    ngx_str_t  p1, p2;

    ngx_xmpp_cm_xml_pieces(x, start, end, &p1, &p2);

    if (dst) {
        if (p1.len) {
            dst = ngx_cpymem(dst, p1.data, p1.len);
        }

        if (p2.len) {
            ngx_memcpy(dst, p2.data, p2.len);
        }
    }

    return p1.len + p2.len;
}


/*
 * After a read: keep the bytes a later read may still need, that is the
 * unfinished stanza or unfinished tag, and nothing else.
 */

static ngx_int_t
ngx_xmpp_cm_xml_keep(ngx_xmpp_cm_xml_t *x)
{
    u_char     *nb, c;
    size_t      len, size;
    XML_Index   keep;

    keep = x->in_stanza ? x->st->elem.start : x->mark;

    if (!x->in_stanza) {
        /*
         * White space between stanzas is never needed again; what came
         * before pend_base was such white space, already dropped.
         */

        if (keep < x->pend_base) {
            keep = x->pend_base;
        }

        while (keep < x->fed) {
            c = ngx_xmpp_cm_xml_byte(x, keep);
            if (!ngx_xmpp_cm_is_space(c)) {
                break;
            }
            keep++;
        }

        x->mark = keep;
    }

    if (keep >= x->fed) {
        x->pend_len = 0;
        x->pend_base = x->fed;

        if (x->pend) {
            ngx_free(x->pend);
            x->pend = NULL;
            x->pend_size = 0;
        }

        return NGX_OK;
    }

    len = (size_t) (x->fed - keep);

    if (len > x->max_size) {
        ngx_xmpp_cm_xml_fail(x, "policy-violation", "stanza too large");
        return NGX_ERROR;
    }

    if (len > x->pend_size) {
        size = x->pend_size * 2;
        if (size < len) {
            size = len;
        }
        if (size < 256) {
            size = 256;
        }
        if (size > x->max_size && len <= x->max_size) {
            size = x->max_size;
        }

        nb = ngx_alloc(size, x->log);
        if (nb == NULL) {
            x->error = "internal-server-error";
            return NGX_ERROR;
        }

        ngx_xmpp_cm_xml_copy(x, nb, keep, x->fed);

        if (x->pend) {
            ngx_free(x->pend);
        }

        x->pend = nb;
        x->pend_size = size;

    } else if (keep < x->base) {
        ngx_memmove(x->pend, x->pend + (keep - x->pend_base),
                    (size_t) (x->base - keep));
        ngx_memcpy(x->pend + (x->base - keep), x->data_buf, x->data_len);

    } else {
        ngx_memcpy(x->pend, x->data_buf + (keep - x->base), len);
    }

    x->pend_base = keep;
    x->pend_len = len;

    return NGX_OK;
}


static void
ngx_xmpp_cm_xml_fail(ngx_xmpp_cm_xml_t *x, const char *cond,
    const char *text)
{
    if (x->error == NULL) {
        x->error = cond;
        x->error_text = text;
    }

    if (!x->stopped) {
        x->stopped = 1;
        XML_StopParser(x->parser, XML_FALSE);
    }
}


/* "uri\nlocal\nprefix", "uri\nlocal" or "local" */

static void
ngx_xmpp_cm_split3(const XML_Char *qname, ngx_str_t *ns, ngx_str_t *local,
    ngx_str_t *prefix)
{
    u_char  *p, *q;

    p = (u_char *) qname;
    q = (u_char *) ngx_strchr(p, NGX_XMPP_CM_SEP);

    prefix->len = 0;
    prefix->data = NULL;

    if (q == NULL) {
        ns->len = 0;
        ns->data = (u_char *) "";
        local->data = p;
        local->len = ngx_strlen(p);
        return;
    }

    ns->data = p;
    ns->len = q - p;

    local->data = q + 1;
    q = (u_char *) ngx_strchr(local->data, NGX_XMPP_CM_SEP);

    if (q == NULL) {
        local->len = ngx_strlen(local->data);
        return;
    }

    local->len = q - local->data;
    prefix->data = q + 1;
    prefix->len = ngx_strlen(prefix->data);
}


void
ngx_xmpp_cm_split_name(const XML_Char *qname, ngx_str_t *ns,
    ngx_str_t *local)
{
    ngx_str_t  prefix;

    ngx_xmpp_cm_split3(qname, ns, local, &prefix);
}


static ngx_int_t
ngx_xmpp_cm_xml_prefix_ok(ngx_xmpp_cm_xml_t *x, ngx_str_t *prefix)
{
    ngx_uint_t  i;

    if (prefix->len == 0
        || (prefix->len == 3 && ngx_strncmp(prefix->data, "xml", 3) == 0))
    {
        return 1;
    }

    for (i = 0; i < x->st->npfx; i++) {
        if (ngx_strcmp(x->st->pfx[i], prefix->data) == 0) {
            return 1;
        }
    }

    return 0;
}


/* the one check of the stanza size: NGX_ERROR (and failed) if over */

static ngx_inline ngx_int_t
ngx_xmpp_cm_xml_size(ngx_xmpp_cm_xml_t *x, XML_Index pos)
{
    if ((size_t) (pos - x->st->elem.start) > x->max_size) {
        ngx_xmpp_cm_xml_fail(x, "policy-violation", "stanza too large");
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void XMLCALL
ngx_xmpp_cm_xml_start(void *data, const XML_Char *name,
    const XML_Char **atts)
{
    ngx_xmpp_cm_xml_t *x = data;

    ngx_str_t   ns, local, prefix;
    XML_Index   idx;

    if (x->stopped) {
        return;
    }

    idx = XML_GetCurrentByteIndex(x->parser);
    x->last_start_end = idx + XML_GetCurrentByteCount(x->parser);

    ngx_xmpp_cm_split3(name, &ns, &local, &prefix);

    if (x->depth == 0) {
        ngx_xmpp_cm_xml_open_root(x, &local, &ns, &prefix, atts);
        return;
    }

    x->depth++;

    if (x->depth - 1 > x->max_depth) {
        ngx_xmpp_cm_xml_fail(x, "policy-violation", "nesting too deep");
        return;
    }

    if (x->depth == 2
        && ngx_xmpp_cm_xml_stanza_start(x, idx, &local, &ns, atts) != NGX_OK)
    {
        return;
    }

    if (ngx_xmpp_cm_xml_size(x, x->last_start_end) != NGX_OK) {
        return;
    }

    if (!x->tree) {
        (void) ngx_xmpp_cm_xml_client_rules(x, idx, &local, &ns, &prefix,
                                            atts);
        x->has_default_pending = 0;
        return;
    }

    if (x->depth > NGX_XMPP_CM_TREE_DEPTH) {
        x->has_default_pending = 0;
        return;
    }

    ngx_xmpp_cm_xml_tree_node(x, idx, &local, &ns, atts);
}


/* the stream root: the owner's open() decides */

static void
ngx_xmpp_cm_xml_open_root(ngx_xmpp_cm_xml_t *x, ngx_str_t *local,
    ngx_str_t *ns, ngx_str_t *prefix, const XML_Char **atts)
{
    ngx_int_t  rc;

    x->depth = 1;
    x->opened = 1;
    x->mark = x->last_start_end;
    x->has_default_pending = 0;

    if (x->synthetic) {
        return;
    }

    /* only streams that look like every other one share parsers */

    x->parkable = !x->tree && !x->root_extra_ns
                  && prefix->len == 6
                  && ngx_strncmp(prefix->data, "stream", 6) == 0;

    rc = x->handlers->open(x->data, local, ns, atts);

    /* expat's copy of the URI goes with the start tag */
    x->root_ns = NULL;

    if (rc != NGX_OK) {
        x->rc = rc;
        ngx_xmpp_cm_xml_fail(x, NULL, NULL);
    }
}


/*
 * A stanza's start tag: its name and namespace in the scratch, the
 * per-stanza state reset, and the owner's start() may refuse an unwanted
 * stanza here rather than at its end.
 */

static ngx_int_t
ngx_xmpp_cm_xml_stanza_start(ngx_xmpp_cm_xml_t *x, XML_Index idx,
    ngx_str_t *local, ngx_str_t *ns, const XML_Char **atts)
{
    ngx_int_t            rc;
    ngx_xmpp_cm_elem_t  *e;

    e = &x->st->elem;

    x->in_stanza = 1;
    e->start = idx;
    e->has_xmlns = x->has_default_pending;
    e->root = NULL;

    if (local->len < NGX_XMPP_CM_NAME_MAX && ns->len < NGX_XMPP_CM_NS_MAX) {
        ngx_memcpy(x->st->name, local->data, local->len);
        ngx_memcpy(x->st->ns, ns->data, ns->len);
        e->name.len = local->len;
        e->ns.len = ns->len;

    } else {
        e->name.len = 0;
        e->ns.len = 0;
    }

    e->name.data = x->st->name;
    e->ns.data = x->st->ns;
    e->cond.len = 0;
    e->cond.data = x->st->cond;

    if (!x->tree) {
        ngx_xmpp_cm_stanza_done(e);
        e->body = x->last_start_end;
        e->reject = NULL;
        e->nshow = 0;
        e->in_show = 0;
        e->has_lang = 0;
        e->is_error = 0;
    }

    if (x->handlers->start == NULL) {
        return NGX_OK;
    }

    e->attrs = atts;
    rc = x->handlers->start(x->data, e);
    e->attrs = NULL;

    if (rc != NGX_OK) {
        x->rc = rc;
        ngx_xmpp_cm_xml_fail(x, NULL, NULL);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * Client streams: a presence's first <show> is tracked, the condition of
 * the client's own <stream:error> is read, and every other element and
 * attribute may use only prefixes declared inside the stanza.
 */

static ngx_int_t
ngx_xmpp_cm_xml_client_rules(ngx_xmpp_cm_xml_t *x, XML_Index idx,
    ngx_str_t *local, ngx_str_t *ns, ngx_str_t *prefix,
    const XML_Char **atts)
{
    ngx_str_t            ans, alocal, aprefix;
    ngx_uint_t           i;
    ngx_xmpp_cm_elem_t  *e;

    e = &x->st->elem;

    if (x->depth == 3
        && ngx_xmpp_cm_str_is(local, "show")
        && ngx_xmpp_cm_str_is(&e->name, "presence"))
    {
        /* Openfire reads the first <show> of any namespace (dom4j) */

        if (e->nshow++ == 0) {
            e->show_start = idx;
            e->show_len = 0;
            e->in_show = 1;

        } else {
            e->nshow = 2;
        }
    }

    if (ngx_xmpp_cm_str_is(&e->ns, NGX_XMPP_NS_STREAMS)
        && ngx_xmpp_cm_str_is(&e->name, "error"))
    {

        /*
         * The client's own <stream:error>, its prefix declared on its
         * stream header: never copied anywhere, only its condition is
         * read (for the log).
         */

        if (x->depth == 3 && e->cond.len == 0
            && local->len < NGX_XMPP_CM_NAME_MAX
            && ngx_xmpp_cm_str_is(ns, NGX_XMPP_NS_XSTREAMS)
            && !ngx_xmpp_cm_str_is(local, "text"))
        {
            ngx_memcpy(x->st->cond, local->data, local->len);
            e->cond.len = local->len;
        }

        return NGX_OK;
    }

    if (!ngx_xmpp_cm_xml_prefix_ok(x, prefix)) {
        goto undeclared;
    }

    for (i = 0; atts[i]; i += 2) {
        ngx_xmpp_cm_split3(atts[i], &ans, &alocal, &aprefix);

        if (!ngx_xmpp_cm_xml_prefix_ok(x, &aprefix)) {
            goto undeclared;
        }
    }

    return NGX_OK;

undeclared:

    ngx_xmpp_cm_xml_fail(x, "invalid-namespace",
                         "prefix not declared in the stanza");
    return NGX_ERROR;
}


/* tree mode: the element as a node of the stanza's tree, in x->tmp */

static void
ngx_xmpp_cm_xml_tree_node(ngx_xmpp_cm_xml_t *x, XML_Index idx,
    ngx_str_t *local, ngx_str_t *ns, const XML_Char **atts)
{
    size_t               n;
    ngx_str_t            ans, alocal, prefix, *a;
    ngx_uint_t           i;
    ngx_xmpp_cm_node_t  *node;

    node = ngx_pcalloc(x->tmp, sizeof(ngx_xmpp_cm_node_t));
    if (node == NULL) {
        goto failed;
    }

    node->name.len = local->len;
    node->name.data = ngx_pstrdup(x->tmp, local);
    node->ns.len = ns->len;
    node->ns.data = ngx_pstrdup(x->tmp, ns);
    node->start = idx;

    if (x->has_default_pending) {
        node->has_xmlns = 1;
        node->xmlns = x->xmlns_pending;
    }

    x->has_default_pending = 0;

    for (n = 0; atts[n]; n += 2) { /* void */ }

    if (n) {
        node->attrs = ngx_palloc(x->tmp, n * sizeof(ngx_str_t));
        if (node->attrs == NULL) {
            goto failed;
        }

        for (i = 0; i < n; i += 2) {
            ngx_xmpp_cm_split3(atts[i], &ans, &alocal, &prefix);
            a = &node->attrs[i];
            a[0].len = alocal.len;
            a[0].data = ngx_pstrdup(x->tmp, &alocal);
            a[1].len = ngx_strlen(atts[i + 1]);
            a[1].data = ngx_pnalloc(x->tmp, a[1].len + 1);

            if (a[0].data == NULL || a[1].data == NULL) {
                goto failed;
            }

            ngx_memcpy(a[1].data, atts[i + 1], a[1].len + 1);
        }

        node->nattrs = n / 2;
    }

    if (x->depth == 2) {
        x->st->elem.root = node;

    } else if (x->cur) {
        node->parent = x->cur;

        if (x->cur->last) {
            x->cur->last->next = node;

        } else {
            x->cur->child = node;
        }

        x->cur->last = node;
    }

    x->cur = node;

    return;

failed:

    ngx_xmpp_cm_xml_fail(x, "internal-server-error", NULL);
}


static void XMLCALL
ngx_xmpp_cm_xml_end(void *data, const XML_Char *name)
{
    ngx_xmpp_cm_xml_t *x = data;

    int        cnt;
    ngx_int_t  rc;
    XML_Index  idx, end;

    if (x->stopped) {
        return;
    }

    idx = XML_GetCurrentByteIndex(x->parser);
    cnt = XML_GetCurrentByteCount(x->parser);
    end = cnt ? idx + cnt : x->last_start_end;

    if (x->depth == 1) {
        x->depth = 0;
        x->rc = x->handlers->close(x->data);

        if (x->rc == NGX_OK) {
            x->rc = NGX_DONE;
        }

        ngx_xmpp_cm_xml_fail(x, NULL, NULL);
        return;
    }

    if (x->tree && x->depth <= NGX_XMPP_CM_TREE_DEPTH && x->cur) {
        x->cur->end = end;
        x->cur = x->cur->parent;
    }

    if (!x->tree) {
        if (x->depth == 2) {
            x->st->elem.body_end = cnt ? idx : end;

        } else if (x->depth == 3 && x->st->elem.in_show) {
            x->st->elem.show_end = end;
            x->st->elem.in_show = 0;
        }
    }

    x->depth--;

    if (x->depth != 1) {
        return;
    }

    if (ngx_xmpp_cm_xml_size(x, end) != NGX_OK) {
        return;
    }

    x->st->elem.end = end;
    x->in_stanza = 0;
    x->mark = end;

    rc = x->handlers->element(x->data, &x->st->elem);

    if (!x->tree && x->st) {
        /* a folded 'to' or 'from' lives as long as its stanza */
        ngx_xmpp_cm_stanza_done(&x->st->elem);
    }

    if (x->tree) {
        x->st->elem.root = NULL;
        x->cur = NULL;
        ngx_reset_pool(x->tmp);
    }

    if (rc != NGX_OK) {
        x->rc = rc;
        ngx_xmpp_cm_xml_fail(x, NULL, NULL);
    }
}


static void XMLCALL
ngx_xmpp_cm_xml_text(void *data, const XML_Char *s, int len)
{
    ngx_xmpp_cm_xml_t *x = data;

    u_char              *p;
    size_t               size;
    ngx_int_t            i;
    XML_Index            idx;
    ngx_xmpp_cm_node_t  *n;

    if (x->stopped) {
        return;
    }

    if (x->depth == 1) {
        for (i = 0; i < len; i++) {
            if (!ngx_xmpp_cm_is_space(s[i])) {
                if (!x->tree) {
                    ngx_xmpp_cm_xml_fail(x, "bad-format",
                                         "text between stanzas");
                }
                return;
            }
        }

        /*
         * White space, perhaps written as a character reference (&#32;):
         * parsed, so not kept as the start of an unfinished stanza.
         */

        idx = XML_GetCurrentByteIndex(x->parser)
              + XML_GetCurrentByteCount(x->parser);

        if (idx > x->mark) {
            x->mark = idx;
        }

        return;
    }

    idx = XML_GetCurrentByteIndex(x->parser)
          + XML_GetCurrentByteCount(x->parser);

    if (ngx_xmpp_cm_xml_size(x, idx) != NGX_OK) {
        return;
    }

    if (!x->tree && x->depth == 3 && x->st->elem.in_show) {
        /* the value of a presence's <show>: "chat", "dnd", ... */

        if (x->st->elem.show_len + len <= NGX_XMPP_CM_SHOW_MAX) {
            ngx_memcpy(x->st->elem.show + x->st->elem.show_len, s, len);
            x->st->elem.show_len += len;

        } else {
            x->st->elem.show_len = NGX_XMPP_CM_SHOW_MAX + 1;
        }

        return;
    }

    /*
     * Text is kept for the tree only where it is read: the text payload
     * of a <route> (Openfire 4.8+ escapes raw text), inside IQs to the
     * CM (the configuration's mechanisms), and the <jid> of a bind result;
     * not for the bodies of routed stanzas.
     */

    if (!x->tree || x->cur == NULL || x->depth > NGX_XMPP_CM_TREE_DEPTH
        || (x->depth > 2 && !ngx_xmpp_cm_str_is(&x->st->elem.name, "iq")
            && !ngx_xmpp_cm_str_is(&x->cur->name, "jid")))
    {
        return;
    }

    n = x->cur;

    if (n->text.len + len > n->text_cap) {
        size = n->text_cap ? n->text_cap * 2 : 256;
        while (size < n->text.len + len) {
            size *= 2;
        }

        p = ngx_pnalloc(x->tmp, size);
        if (p == NULL) {
            ngx_xmpp_cm_xml_fail(x, "internal-server-error", NULL);
            return;
        }

        if (n->text.len) {
            ngx_memcpy(p, n->text.data, n->text.len);
        }

        n->text.data = p;
        n->text_cap = size;
    }

    ngx_memcpy(n->text.data + n->text.len, s, len);
    n->text.len += len;
}


static void XMLCALL
ngx_xmpp_cm_xml_ns_start(void *data, const XML_Char *prefix,
    const XML_Char *uri)
{
    ngx_xmpp_cm_xml_t *x = data;

    size_t  len;

    if (x->stopped) {
        return;
    }

    if (x->depth == 0) {
        if (prefix == NULL) {
            /* expat keeps the URI while the root is open */
            x->root_ns = uri;
            x->root_ns_len = uri ? ngx_strlen(uri) : 0;
            x->root_has_default = 1;

        } else if (ngx_strcmp(prefix, "stream") != 0
                   || uri == NULL
                   || ngx_strcmp(uri, NGX_XMPP_NS_STREAMS) != 0)
        {
            x->root_extra_ns = 1;
        }

        return;
    }

    if (prefix == NULL) {
        x->has_default_pending = 1;

        if (x->tree) {
            x->xmlns_pending.len = uri ? ngx_strlen(uri) : 0;
            x->xmlns_pending.data = ngx_pnalloc(x->tmp,
                                                x->xmlns_pending.len + 1);
            if (x->xmlns_pending.data == NULL) {
                ngx_xmpp_cm_xml_fail(x, "internal-server-error", NULL);
                return;
            }

            ngx_memcpy(x->xmlns_pending.data, uri ? uri : "",
                       x->xmlns_pending.len + 1);
        }

        return;
    }

    if (x->tree) {
        return;
    }

    len = ngx_strlen(prefix);

    if (x->st->npfx == NGX_XMPP_CM_PFX_MAX || len >= NGX_XMPP_CM_PFX_LEN) {
        ngx_xmpp_cm_xml_fail(x, "policy-violation",
                             "too many namespace prefixes");
        return;
    }

    ngx_memcpy(x->st->pfx[x->st->npfx], prefix, len + 1);
    x->st->pfx_depth[x->st->npfx] = x->depth + 1;
    x->st->npfx++;
}


static void XMLCALL
ngx_xmpp_cm_xml_ns_end(void *data, const XML_Char *prefix)
{
    ngx_xmpp_cm_xml_t *x = data;

    if (prefix && x->st->npfx
        && x->st->pfx_depth[x->st->npfx - 1] == x->depth + 1)
    {
        x->st->npfx--;
    }
}


static void XMLCALL
ngx_xmpp_cm_xml_decl(void *data, const XML_Char *version,
    const XML_Char *encoding, int standalone)
{
    ngx_xmpp_cm_xml_t *x = data;

    if (encoding
        && ngx_strcasecmp((u_char *) encoding, (u_char *) "UTF-8") != 0)
    {
        ngx_xmpp_cm_xml_fail(x, "unsupported-encoding",
                             "only UTF-8 is supported");
    }
}


static void XMLCALL
ngx_xmpp_cm_xml_doctype(void *data, const XML_Char *name,
    const XML_Char *sysid, const XML_Char *pubid, int has_internal_subset)
{
    ngx_xmpp_cm_xml_fail(data, "restricted-xml", "DTD not allowed");
}


static void XMLCALL
ngx_xmpp_cm_xml_entity(void *data, const XML_Char *name, int is_param,
    const XML_Char *value, int value_len, const XML_Char *base,
    const XML_Char *sysid, const XML_Char *pubid, const XML_Char *notation)
{
    ngx_xmpp_cm_xml_fail(data, "restricted-xml",
                         "entity declarations not allowed");
}


static void XMLCALL
ngx_xmpp_cm_xml_pi(void *data, const XML_Char *target, const XML_Char *pi)
{
    ngx_xmpp_cm_xml_fail(data, "restricted-xml",
                         "processing instructions not allowed");
}


static void XMLCALL
ngx_xmpp_cm_xml_comment(void *data, const XML_Char *text)
{
    ngx_xmpp_cm_xml_fail(data, "restricted-xml", "comments not allowed");
}


/*
 * Bytes that are not a stream but a piece of one: one or more complete
 * elements, as they would stand between stanzas of an open client stream.
 * A framer of its own takes a parser at that point (a parked one, or a
 * fresh one entered into the synthetic root) and is fed the bytes once.
 * With tree == 0 the client rules apply (restricted XML, no text between
 * elements, prefixes declared in the element); with tree == 1 (bytes
 * already checked) element() also gets each element's tree.  NGX_OK if
 * the bytes are exactly that, NGX_DECLINED if not, NGX_ERROR if out of
 * memory.
 */

ngx_int_t
ngx_xmpp_cm_xml_fragment(ngx_log_t *log, ngx_xmpp_cm_parking_t *parking,
    u_char *p, size_t len, ngx_uint_t tree, size_t max_size,
    ngx_uint_t max_depth, ngx_xmpp_cm_elem_pt element, void *data)
{
    ngx_int_t                    rc;
    ngx_xmpp_cm_xml_t            x;
    ngx_xmpp_cm_fragment_t       f;
    ngx_xmpp_cm_xml_handlers_t   h;

    f.element = element;
    f.data = data;
    f.n = 0;

    ngx_memzero(&x, sizeof(ngx_xmpp_cm_xml_t));

    x.log = log;
    x.parking = parking;
    h.open = ngx_xmpp_cm_fragment_open;
    h.start = NULL;
    h.element = ngx_xmpp_cm_fragment_element;
    h.close = ngx_xmpp_cm_fragment_close;
    x.handlers = &h;
    x.data = &f;
    x.max_size = max_size;
    x.max_depth = max_depth;
    x.tree = tree ? 1 : 0;
    x.opened = 1;
    x.depth = 1;
    x.parkable = 1;

    if (tree) {
        x.tmp = ngx_create_pool(4096, log);
        if (x.tmp == NULL) {
            return NGX_ERROR;
        }
    }

    rc = ngx_xmpp_cm_xml_feed(&x, p, len);

    if (rc == NGX_OK) {
        rc = (f.n && x.depth == 1 && !x.in_stanza && x.pend_len == 0)
             ? NGX_OK : NGX_DECLINED;

    } else if (rc != NGX_ERROR || x.error == NULL
               || ngx_strcmp(x.error, "internal-server-error") != 0)
    {
        rc = NGX_DECLINED;
    }

    ngx_xmpp_cm_xml_free(&x);

    return rc;
}


static ngx_int_t
ngx_xmpp_cm_fragment_open(void *data, ngx_str_t *name, ngx_str_t *ns,
    const XML_Char **attrs)
{
    /* the root is open already: this cannot be called */

    return NGX_ERROR;
}


static ngx_int_t
ngx_xmpp_cm_fragment_element(void *data, ngx_xmpp_cm_elem_t *e)
{
    ngx_xmpp_cm_fragment_t *f = data;

    f->n++;

    return f->element ? f->element(f->data, e) : NGX_OK;
}


static ngx_int_t
ngx_xmpp_cm_fragment_close(void *data)
{
    /* </stream:stream> is not an element */

    return NGX_DECLINED;
}


/* small tree helpers for the upstream side */

ngx_str_t *
ngx_xmpp_cm_node_attr(ngx_xmpp_cm_node_t *n, char *name)
{
    ngx_uint_t  i;
    size_t      len;

    len = ngx_strlen(name);

    for (i = 0; i < n->nattrs; i++) {
        if (n->attrs[2 * i].len == len
            && ngx_strncmp(n->attrs[2 * i].data, name, len) == 0)
        {
            return &n->attrs[2 * i + 1];
        }
    }

    return NULL;
}


ngx_xmpp_cm_node_t *
ngx_xmpp_cm_node_child(ngx_xmpp_cm_node_t *n, char *name)
{
    ngx_xmpp_cm_node_t  *c;

    for (c = n->child; c; c = c->next) {
        if (name == NULL || ngx_xmpp_cm_str_is(&c->name, name)) {
            return c;
        }
    }

    return NULL;
}


ngx_int_t
ngx_xmpp_cm_str_is(ngx_str_t *s, char *v)
{
    size_t  len;

    len = ngx_strlen(v);

    return s->len == len && ngx_strncmp(s->data, v, len) == 0;
}


/* XML-escapes an attribute value or text; with dst == NULL counts */

size_t
ngx_xmpp_cm_escape(u_char *dst, u_char *src, size_t len)
{
    size_t   n;
    u_char  *end;

    n = 0;

    if (len == 0) {
        /* src may be NULL (an empty ngx_str_t) */
        return 0;
    }

    for (end = src + len; src < end; src++) {
        switch (*src) {
        case '&':
            if (dst) {
                dst = ngx_cpymem(dst, "&amp;", 5);
            }
            n += 5;
            break;
        case '<':
            if (dst) {
                dst = ngx_cpymem(dst, "&lt;", 4);
            }
            n += 4;
            break;
        case '>':
            if (dst) {
                dst = ngx_cpymem(dst, "&gt;", 4);
            }
            n += 4;
            break;
        case '"':
            if (dst) {
                dst = ngx_cpymem(dst, "&quot;", 6);
            }
            n += 6;
            break;
        default:
            if (dst) {
                *dst++ = *src;
            }
            n++;
        }
    }

    return n;
}
