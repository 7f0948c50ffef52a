
/*
 * The unit test runner (see unit.h): runs every suite, prints one line
 * per test and the summary line "N passed, M failed".
 *
 *   unit [substring]    only the tests whose name contains it
 */

#include "unit.h"


ngx_uint_t          unit_failures;

static ngx_uint_t   unit_passed;
static ngx_uint_t   unit_failed;
static const char  *unit_filter;


const char  unit_header[] =
    "<stream:stream xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' "
    "version='1.0'>";


void
unit_run(const char *name, void (*test)(void))
{
    if (unit_filter && strstr(name, unit_filter) == NULL) {
        return;
    }

    unit_failures = 0;

    test();

    fuzz_events_clear();

    if (unit_failures) {
        unit_failed++;
        printf("FAIL %s\n", name);

    } else {
        unit_passed++;
        printf("ok   %s\n", name);
    }

    fflush(stdout);
}


static void
unit_print_bytes(const char *label, const u_char *p, size_t len)
{
    size_t  i;

    printf("    %s (%zu bytes): \"", label, len);

    for (i = 0; i < len; i++) {
        if (p[i] == '"' || p[i] == '\\') {
            printf("\\%c", p[i]);

        } else if (p[i] >= 0x20 && p[i] < 0x7f) {
            putchar(p[i]);

        } else {
            printf("\\x%02x", p[i]);
        }
    }

    printf("\"\n");
}


void
unit_fail(const char *file, int line, const char *expr)
{
    unit_failures++;
    printf("  %s:%d: CHECK(%s) failed\n", file, line, expr);
}


void
unit_fail_int(const char *file, int line, const char *expr, long long want,
    long long got)
{
    unit_failures++;
    printf("  %s:%d: %s\n    expected: %lld\n    got:      %lld\n", file,
           line, expr, want, got);
}


void
unit_fail_str(const char *file, int line, const char *expr,
    const char *want, size_t wlen, const u_char *got, size_t glen)
{
    unit_failures++;
    printf("  %s:%d: %s\n", file, line, expr);
    unit_print_bytes("expected", (const u_char *) want, wlen);
    unit_print_bytes("got     ", got ? got : (const u_char *) "", glen);
}


void
unit_check_cstr(const char *file, int line, const char *expr,
    const char *got, const char *want)
{
    if (got == NULL && want == NULL) {
        return;
    }

    if (got == NULL || want == NULL || strcmp(got, want) != 0) {
        got = got ? got : "(null)";
        want = want ? want : "(null)";
        unit_fail_str(file, line, expr, want, strlen(want),
                      (const u_char *) got, strlen(got));
    }
}


/* ------------------------------------------------------------ framer */

static ngx_int_t
unit_open(void *data, ngx_str_t *name, ngx_str_t *ns, const XML_Char **attrs)
{
    return NGX_OK;
}


static ngx_int_t
unit_start(void *data, ngx_xmpp_cm_elem_t *e)
{
    unit_stanzas_t *us = data;

    return us->start ? us->start(us, e) : NGX_OK;
}


static ngx_int_t
unit_close(void *data)
{
    return NGX_DONE;
}


static ngx_int_t
unit_element(void *data, ngx_xmpp_cm_elem_t *e)
{
    unit_stanzas_t *us = data;

    size_t          len;
    unit_stanza_t  *s;

    if (us->n == UNIT_MAX_STANZAS) {
        return NGX_ERROR;
    }

    s = &us->s[us->n++];

    ngx_memcpy(s->name, e->name.data, e->name.len);
    s->name[e->name.len] = '\0';
    ngx_memcpy(s->ns, e->ns.data, e->ns.len);
    s->ns[e->ns.len] = '\0';
    s->has_xmlns = e->has_xmlns;

    /* the stanza's bytes live until the callback returns: copy them */

    len = ngx_xmpp_cm_xml_copy(us->x, NULL, e->start, e->end);
    s->raw = malloc(len + 1);
    (void) ngx_xmpp_cm_xml_copy(us->x, (u_char *) s->raw, e->start, e->end);
    s->raw[len] = '\0';

    /* as ngx_xmpp_cm_route_client() does: xmlns added if it has none */

    len = ngx_xmpp_cm_sanitize(us->x, NULL, e->start, e->end, !e->has_xmlns);
    s->route = malloc(len + 1);
    s->route_len = ngx_xmpp_cm_sanitize(us->x, (u_char *) s->route, e->start,
                                        e->end, !e->has_xmlns);
    s->route[len] = '\0';

    if (s->route_len != len) {
        unit_fail_int(__FILE__, __LINE__, "sanitize: written vs counted",
                      len, s->route_len);
    }

    return us->hook ? us->hook(us, e) : NGX_OK;
}


ngx_int_t
unit_framer_open(unit_stanzas_t *us, size_t max_size, ngx_uint_t max_depth)
{
    unit_framer_new(us, max_size, max_depth);

    return unit_framer_feed(us, unit_header, 0);
}


void
unit_framer_new(unit_stanzas_t *us, size_t max_size, ngx_uint_t max_depth)
{
    static ngx_xmpp_cm_xml_handlers_t  handlers = {
        unit_open, unit_start, unit_element, unit_close
    };

    ngx_memzero(us, sizeof(unit_stanzas_t));

    us->pool = ngx_create_pool(1024, &fuzz_log);
    us->x = ngx_xmpp_cm_xml_create(us->pool, &fuzz_log, 0,
                                   fuzz_worker->parking);

    ngx_xmpp_cm_xml_handlers(us->x, &handlers, us);
    ngx_xmpp_cm_xml_limits(us->x,
                           max_size ? max_size : NGX_XMPP_CM_MAX_STANZA,
                           max_depth ? max_depth : 1000);
}


ngx_int_t
unit_framer_feed(unit_stanzas_t *us, const char *s, size_t step)
{
    u_char     *buf;
    size_t      len, n;
    ngx_int_t   rc;

    len = strlen(s);
    rc = NGX_OK;

    if (step == 0) {
        step = len;
    }

    /* each read in a buffer of its own, gone after the read */

    while (len && rc == NGX_OK) {
        n = len < step ? len : step;
        buf = malloc(n);
        ngx_memcpy(buf, s, n);

        rc = ngx_xmpp_cm_xml_feed(us->x, buf, n);

        free(buf);
        s += n;
        len -= n;
    }

    return rc;
}


void
unit_framer_close(unit_stanzas_t *us)
{
    ngx_uint_t  i;

    for (i = 0; i < us->n; i++) {
        free(us->s[i].raw);
        free(us->s[i].route);
    }

    ngx_xmpp_cm_xml_free(us->x);
    ngx_destroy_pool(us->pool);
}


int
main(int argc, char **argv)
{
    unit_filter = argc > 1 ? argv[1] : NULL;

    /* nginx's core set up as for the fuzz targets; logs to /dev/null */

    fuzz_init();

    unit_suite_route();
    unit_suite_xml();
    unit_suite_session_id();
    unit_suite_features();
    unit_suite_jid();
    unit_suite_output();
    unit_suite_sm();

    printf("%lu passed, %lu failed\n", (unsigned long) unit_passed,
           (unsigned long) unit_failed);

    return unit_failed ? 1 : 0;
}
