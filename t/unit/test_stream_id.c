
/*
 * Stream ids (src/ngx_stream_xmpp_cm_stream.c): the ids the CM makes are
 * "w<pid>-<16 hex>" (docs/directives.md, $xmpp_cm_streamid), unique, and
 * pass the check every id from Openfire gets before it is written back.
 */

#include "unit.h"


#define US_N  1000

static fuzz_upstream_t             us_fp;
static ngx_xmpp_cm_stream_t  *us_streams[US_N];


static int
us_cmp(const void *a, const void *b)
{
    ngx_xmpp_cm_stream_t  *sa = *(ngx_xmpp_cm_stream_t **) a;
    ngx_xmpp_cm_stream_t  *sb = *(ngx_xmpp_cm_stream_t **) b;

    return ngx_memn2cmp(sa->node.str.data, sb->node.str.data,
                        sa->node.str.len, sb->node.str.len);
}


UNIT_TEST(stream_ids_have_the_documented_form)
{
    char                  prefix[32], *out, *want;
    u_char                copy[NGX_XMPP_CM_ID_LEN];
    size_t                plen, len, wlen;
    ngx_str_t             *id, gone;
    ngx_uint_t            j, bad;
    ngx_xmpp_cm_stream_t  *s;

    fuzz_upstream_init(&us_fp);

    plen = snprintf(prefix, sizeof(prefix), "w%ld-", (long) ngx_pid);

    s = ngx_xmpp_cm_stream_create(&us_fp.up, NULL, NULL);
    CHECK(s != NULL);

    if (s == NULL) {
        return;
    }

    id = &s->node.str;

    CHECK_INT(id->len, plen + 16);
    CHECK(id->len < NGX_XMPP_CM_ID_LEN);
    CHECK(ngx_strncmp(id->data, prefix, plen) == 0);

    bad = 0;
    for (j = plen; j < id->len; j++) {
        bad += !((id->data[j] >= '0' && id->data[j] <= '9')
                 || (id->data[j] >= 'a' && id->data[j] <= 'f'));
    }

    CHECK_INT(bad, 0);
    CHECK(ngx_xmpp_cm_stream_id_ok(id));
    CHECK(ngx_xmpp_cm_stream_find(&us_fp.up, id) == s);

    /* Openfire learns of it by a create IQ on the session's socket */

    CHECK_INT(us_fp.up.nstreams, 1);
    CHECK(s->sock != NULL);

    if (s->sock) {
        out = (char *) fuzz_queue_take(&s->sock->out, &len);
        wlen = sizeof("<iq type=\"set\" id=\"c1\" to=\"localhost\" "
                      "from=\"/s0-1\"><session xmlns=\"" NGX_XMPP_NS_CMPROTO
                      "\" id=\"\"><create/></session></iq>") + id->len
               + us_fp.up.name.len;
        want = malloc(wlen);
        snprintf(want, wlen, "<iq type=\"set\" id=\"c1\" to=\"localhost\" "
                 "from=\"%.*s/%.*s\"><session xmlns=\"" NGX_XMPP_NS_CMPROTO
                 "\" id=\"%.*s\"><create/></session></iq>",
                 (int) us_fp.up.name.len, us_fp.up.name.data,
                 (int) s->sock->resource.len, s->sock->resource.data,
                 (int) id->len, id->data);
        CHECK_CSTR(out, want);
        free(want);
        free(out);
    }

    gone.data = copy;
    gone.len = ngx_min(id->len, sizeof(copy));
    ngx_memcpy(copy, id->data, gone.len);

    ngx_xmpp_cm_stream_forget(s);
    CHECK_INT(us_fp.up.nstreams, 0);
    CHECK(ngx_xmpp_cm_stream_find(&us_fp.up, &gone) == NULL);
}


UNIT_TEST(stream_ids_are_unique)
{
    size_t      len;
    ngx_uint_t  i, dup, n;

    fuzz_upstream_init(&us_fp);

    for (n = 0; n < US_N; n++) {
        us_streams[n] = ngx_xmpp_cm_stream_create(&us_fp.up, NULL, NULL);

        if (us_streams[n] == NULL) {
            break;
        }

        /* the create IQs are not what is tested here */

        free(fuzz_queue_take(&us_streams[n]->sock->out, &len));
    }

    CHECK_INT(n, US_N);
    CHECK_INT(us_fp.up.nstreams, n);

    qsort(us_streams, n, sizeof(ngx_xmpp_cm_stream_t *), us_cmp);

    dup = 0;
    for (i = 1; i < n; i++) {
        dup += us_cmp(&us_streams[i - 1], &us_streams[i]) == 0;
    }

    CHECK_INT(dup, 0);

    /* both sockets of the pool get sessions */

    for (i = 0; i < n; i++) {
        if (us_streams[i]->sock != us_streams[0]->sock) {
            break;
        }
    }

    CHECK(i < n);

    for (i = 0; i < n; i++) {
        ngx_xmpp_cm_stream_forget(us_streams[i]);
    }

    CHECK_INT(us_fp.up.nstreams, 0);
}


static void
us_id_ok(const char *id, ngx_int_t want, const char *file, int line)
{
    ngx_str_t  s;

    s.data = (u_char *) id;
    s.len = strlen(id);

    if (ngx_xmpp_cm_stream_id_ok(&s) != want) {
        unit_fail_int(file, line, id, want, !want);
    }
}

#define CHECK_ID_OK(id, want)  us_id_ok(id, want, __FILE__, __LINE__)


UNIT_TEST(stream_id_check)
{
    /* letters, digits, '-', '_', '.', shorter than NGX_XMPP_CM_ID_LEN */

    CHECK_ID_OK("w123-0123456789abcdef", 1);
    CHECK_ID_OK("A_b.c-9", 1);
    CHECK_ID_OK("x", 1);
    CHECK_ID_OK("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 1);     /* 39 */
    CHECK_ID_OK("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 0);    /* 40 */
    CHECK_ID_OK("", 0);
    CHECK_ID_OK("a b", 0);
    CHECK_ID_OK("a\"/><x", 0);
    CHECK_ID_OK("a&amp;", 0);
    CHECK_ID_OK("caf\xc3\xa9", 0);
    CHECK(!ngx_xmpp_cm_stream_id_ok(NULL));
}


void
unit_suite_session_id(void)
{
    UNIT_RUN(stream_ids_have_the_documented_form);
    UNIT_RUN(stream_ids_are_unique);
    UNIT_RUN(stream_id_check);
}
