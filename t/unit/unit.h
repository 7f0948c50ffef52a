
/*
 * Unit tests of the module's pure parts: the module's real objects and
 * nginx's core objects (build/unit/nginx, gcc, no sanitizers), the set-up
 * and helpers of the fuzz targets (t/fuzz/fuzz_common.h), no running
 * nginx.  scripts/unit.sh builds and runs them.
 *
 * A test is a function without arguments:
 *
 *     UNIT_TEST(escape_quotes)
 *     {
 *         CHECK_STR(got, len, "&quot;");
 *     }
 *
 * listed in its file's suite, which main() runs:
 *
 *     void unit_suite_route(void) { UNIT_RUN(escape_quotes); ... }
 *
 * A failed CHECK prints file:line, what was expected and what came, and
 * the test goes on; the test counts as failed.  The last line of the
 * output is "N passed, M failed" (tests, not checks).
 */

#ifndef _UNIT_H_INCLUDED_
#define _UNIT_H_INCLUDED_

#include "fuzz_common.h"
#include <string.h>


extern ngx_uint_t  unit_failures;     /* failed checks of the running test */


void unit_run(const char *name, void (*test)(void));
void unit_fail_int(const char *file, int line, const char *expr,
    long long want, long long got);
void unit_fail_str(const char *file, int line, const char *expr,
    const char *want, size_t wlen, const u_char *got, size_t glen);
void unit_fail(const char *file, int line, const char *expr);


#define UNIT_TEST(name)  static void name(void)
#define UNIT_RUN(name)   unit_run(#name, name)


#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            unit_fail(__FILE__, __LINE__, #cond);                            \
        }                                                                    \
    } while (0)

/* integers (rc, lengths) */

#define CHECK_INT(got, want)                                                 \
    do {                                                                     \
        long long  unit_g_ = (long long) (got);                              \
        long long  unit_w_ = (long long) (want);                             \
                                                                             \
        if (unit_g_ != unit_w_) {                                            \
            unit_fail_int(__FILE__, __LINE__, #got, unit_w_, unit_g_);       \
        }                                                                    \
    } while (0)

/* bytes (p, len) against a C string */

#define CHECK_STR(p, len, want)                                              \
    do {                                                                     \
        const u_char  *unit_p_ = (const u_char *) (p);                       \
        size_t         unit_l_ = (len);                                      \
        const char    *unit_w_ = (want);                                     \
                                                                             \
        if (unit_p_ == NULL || unit_l_ != strlen(unit_w_)                    \
            || memcmp(unit_p_, unit_w_, unit_l_) != 0)                       \
        {                                                                    \
            unit_fail_str(__FILE__, __LINE__, #p, unit_w_, strlen(unit_w_),  \
                          unit_p_, unit_p_ ? unit_l_ : 0);                   \
        }                                                                    \
    } while (0)

/* an ngx_str_t; a C string, where NULL is a value of its own */

#define CHECK_NGX_STR(s, want)  CHECK_STR((s)->data, (s)->len, want)
#define CHECK_CSTR(s, want)                                                  \
    unit_check_cstr(__FILE__, __LINE__, #s, s, want)

void unit_check_cstr(const char *file, int line, const char *expr,
    const char *got, const char *want);


/*
 * A client framer in a stream opened with the header of a typical client
 * (xmlns='jabber:client', prefix stream:), as the CM's is after the
 * stream header; every complete stanza lands in the unit_stanzas_t.
 */

#define UNIT_MAX_STANZAS  8

typedef struct {
    char                 name[NGX_XMPP_CM_NAME_MAX + 1];
    char                 ns[NGX_XMPP_CM_NS_MAX + 1];
    ngx_uint_t           has_xmlns;
    char                *raw;           /* the stanza's bytes (malloc) */
    char                *route;         /* sanitize()d as for a route */
    size_t               route_len;
} unit_stanza_t;

typedef struct unit_stanzas_s  unit_stanzas_t;

struct unit_stanzas_s {
    ngx_pool_t          *pool;
    ngx_xmpp_cm_xml_t   *x;
    ngx_uint_t           n;
    unit_stanza_t        s[UNIT_MAX_STANZAS];

    /* optional: called for each stanza while its bytes are there */
    ngx_int_t          (*hook)(unit_stanzas_t *us, ngx_xmpp_cm_elem_t *e);
    /* optional: called at each stanza's start tag (e->attrs) */
    ngx_int_t          (*start)(unit_stanzas_t *us, ngx_xmpp_cm_elem_t *e);
    void                *ctx;
};

extern const char  unit_header[];

/* max_size 0 and max_depth 0: the largest the directives allow */
ngx_int_t unit_framer_open(unit_stanzas_t *us, size_t max_size,
    ngx_uint_t max_depth);
/* the same before the stream header: the first bytes are the client's */
void unit_framer_new(unit_stanzas_t *us, size_t max_size,
    ngx_uint_t max_depth);
/* feeds s in reads of at most step bytes (0: at once); the last rc */
ngx_int_t unit_framer_feed(unit_stanzas_t *us, const char *s, size_t step);
void unit_framer_close(unit_stanzas_t *us);


void unit_suite_route(void);
void unit_suite_xml(void);
void unit_suite_session_id(void);
void unit_suite_features(void);
void unit_suite_jid(void);
void unit_suite_output(void);
void unit_suite_sm(void);


#endif /* _UNIT_H_INCLUDED_ */
