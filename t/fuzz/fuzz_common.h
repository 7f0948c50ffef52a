
/*
 * Shared pieces of the libFuzzer targets: nginx core set-up without a
 * running nginx, a deterministic PRNG driven by the input, and the
 * invariant checks on what the module would send to Openfire.
 *
 * The targets link the module's real objects and nginx's real core
 * objects (build/fuzz/nginx/objs, ASan+UBSan+coverage); nothing of
 * nginx is stubbed.  Only the event loop does not run: posted events and
 * timers are cleared after every input.
 */

#ifndef _FUZZ_COMMON_H_INCLUDED_
#define _FUZZ_COMMON_H_INCLUDED_

#include "ngx_stream_xmpp_cm.h"
#include <stdio.h>
#include <stdlib.h>


#define FUZZ_FAIL(...)                                                       \
    do {                                                                     \
        fprintf(stderr, "\nFUZZ INVARIANT FAILED (%s:%d): ", __FILE__,      \
                __LINE__);                                                   \
        fprintf(stderr, __VA_ARGS__);                                        \
        fprintf(stderr, "\n");                                               \
        abort();                                                             \
    } while (0)


extern ngx_log_t              fuzz_log;
extern ngx_xmpp_cm_worker_t  *fuzz_worker;   /* as init_process builds it */

void fuzz_init(void);
void fuzz_events_clear(void);


/* xorshift32, seeded from the input */

typedef struct {
    uint32_t  s;
} fuzz_rng_t;

static ngx_inline uint32_t
fuzz_rand(fuzz_rng_t *r)
{
    uint32_t  x = r->s ? r->s : 0x9e3779b9;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    r->s = x;

    return x;
}


/*
 * A fake pool with one READY socket that has no connection: what the
 * module writes to Openfire accumulates in sock->out.
 */

typedef struct {
    ngx_stream_xmpp_cm_srv_conf_t   conf;
    ngx_xmpp_cm_upstream_t          up;
    ngx_xmpp_cm_sock_t              socks[2];
    ngx_str_t                       domain;
    u_char                          closed[NGX_XMPP_CM_CLOSED_RING
                                           * NGX_XMPP_CM_ID_LEN];
    ngx_xmpp_cm_metrics_t           metrics;      /* the worker's record */
} fuzz_upstream_t;

void fuzz_upstream_init(fuzz_upstream_t *fp);

/*
 * The head of an input for the targets with a pool: byte 0 is flags,
 * bytes 1-2 seed the RNG; initialises the target and the pool and
 * advances data past the head.  NGX_DECLINED: too short to use.
 */
ngx_int_t fuzz_begin(fuzz_upstream_t *fp, const uint8_t **data, size_t *size,
    uint8_t *flags, fuzz_rng_t *rng);
/* the bytes queued on a socket, as one malloc()ed string (caller frees) */
u_char *fuzz_queue_take(ngx_xmpp_cm_output_t *o, size_t *len);


/*
 * Openfire's CM splitter tracks double quotes only: check that the bytes
 * split into complete top-level fragments exactly, with no '-quoted
 * attribute, no '>' in text, no CDATA / comment / PI.  nfrag gets the
 * number of fragments.  Returns NULL or what is wrong.
 */
const char *fuzz_splitter_check(const u_char *p, size_t len,
    ngx_uint_t *nfrag);

/*
 * Well-formedness with expat: the bytes inside <wrap> (namespaced: the
 * wrapper declares xmlns=jabber:client when ns is set).
 * Returns NULL or expat's error string.
 */
const char *fuzz_wellformed(const u_char *p, size_t len, ngx_uint_t ns);

/*
 * The canonical event string of the single element in p (parsed inside
 * <w xmlns="jabber:client">): start names with namespaces, attributes,
 * coalesced character data, ends.  NULL if it does not parse; the result
 * is malloc()ed.  With check_xmlns, *xmlns_ok says whether the top
 * element declares a default namespace on itself.
 */
char *fuzz_events(const u_char *p, size_t len, const char *wrap_open,
    const char *wrap_close, size_t *out_len, ngx_uint_t *xmlns_ok);

/* the events of a stanza the framer accepted; it must be well-formed */
char *fuzz_stanza_events(const u_char *orig, size_t olen, size_t *len);

/*
 * A route made of the stanza orig: one fragment for Openfire's splitter,
 * well-formed, and (same) declaring a default namespace and giving the
 * stanza's events ev_orig.
 */
void fuzz_route_check(const u_char *orig, size_t olen, const char *ev_orig,
    size_t l1, const u_char *route, size_t rlen, ngx_uint_t same);

/*
 * Feeds the next read of an input to a framer: 1-8 bytes (mode 0), 1-64
 * (1), 1-max (2) or the rest (3), copied to a buffer of its own that is
 * freed right after, as the worker's shared read buffer is reused.
 */
ngx_int_t fuzz_feed_next(ngx_xmpp_cm_xml_t *x, const uint8_t *data,
    size_t size, size_t *off, ngx_uint_t mode, size_t max, fuzz_rng_t *rng);

#endif
