
/*
 * XEP-0198 state (src/ngx_stream_xmpp_cm_sm.c): both counts wrap at 2^32
 * as the XEP says (a client's h past what was sent, or going back, is
 * refused across the wrap too), h follows Openfire's confirmations and
 * the stanzas answered at the CM in their turn, and the account a SASL
 * message names.
 */

#include "unit.h"


static ngx_str_t  sm_jid = ngx_string("Alice@Localhost/res");


UNIT_TEST(sm_h_follows_confirmations_across_the_wrap)
{
    ngx_xmpp_cm_sm_t      *sm;
    ngx_xmpp_cm_stream_t   s;

    ngx_memzero(&s, sizeof(s));
    s.routed = 0xfffffffe;
    s.confirmed = 0xfffffffe;

    sm = ngx_xmpp_cm_sm_create(&s, &sm_jid, &fuzz_log);
    CHECK(sm != NULL);
    if (sm == NULL) {
        return;
    }

    s.sm = sm;
    CHECK_STR(sm->account.data, sm->account.len, "alice@localhost");

    /* three routed (the count wraps), one answered at the CM, one more */

    s.routed++;
    ngx_xmpp_cm_sm_received(&s, 0);
    s.routed++;
    ngx_xmpp_cm_sm_received(&s, 0);
    s.routed++;
    ngx_xmpp_cm_sm_received(&s, 0);
    ngx_xmpp_cm_sm_received(&s, 1);
    s.routed++;
    ngx_xmpp_cm_sm_received(&s, 0);

    CHECK_INT(s.routed, 2);
    CHECK_INT(sm->received, 5);
    CHECK_INT(sm->h, 0);

    /* <r/> now: not answered until Openfire confirmed the first four */

    CHECK_INT(ngx_xmpp_cm_sm_request(&s), 0);

    s.confirmed += 2;
    CHECK_INT(ngx_xmpp_cm_sm_advance(&s), 0);
    CHECK_INT(sm->h, 2);

    s.confirmed += 1;
    CHECK_INT(ngx_xmpp_cm_sm_advance(&s), 0);
    CHECK_INT(sm->h, 4);                     /* the local one with it */

    s.confirmed += 1;
    CHECK_INT(ngx_xmpp_cm_sm_advance(&s), 1);
    CHECK_INT(sm->h, 5);
    CHECK_INT(s.confirmed, 2);

    /* a local one with nothing unconfirmed counts at once */

    ngx_xmpp_cm_sm_received(&s, 1);
    CHECK_INT(sm->h, 6);

    ngx_xmpp_cm_sm_free(sm);
}


UNIT_TEST(sm_acks_wrap_and_bad_h_is_refused)
{
    u_char                 *p;
    ngx_uint_t              i;
    ngx_xmpp_cm_sm_t       *sm;
    ngx_xmpp_cm_stream_t    s;
    static u_char           big[20000];

    ngx_memzero(&s, sizeof(s));

    sm = ngx_xmpp_cm_sm_create(&s, &sm_jid, &fuzz_log);
    CHECK(sm != NULL);
    if (sm == NULL) {
        return;
    }

    sm->sent = 0xfffffffe;
    sm->acked = 0xfffffffe;

    for (i = 0; i < 4; i++) {
        CHECK_INT(ngx_xmpp_cm_sm_queue(sm, (u_char *) "<m/>", 4, NULL, 0),
                  NGX_OK);
    }

    /* a stanza larger than a chunk, in two pieces */
    CHECK_INT(ngx_xmpp_cm_sm_queue(sm, big, 10000, big, 10000), NGX_OK);

    CHECK_INT(sm->sent, 3);
    CHECK_INT(sm->count, 5);
    CHECK_INT(sm->size, 16 + 20000);

    CHECK_INT(ngx_xmpp_cm_sm_ack(sm, 4), NGX_DECLINED);        /* too high */
    CHECK_INT(ngx_xmpp_cm_sm_ack(sm, 0xfffffffd), NGX_DECLINED); /* back */
    CHECK_INT(sm->count, 5);

    CHECK_INT(ngx_xmpp_cm_sm_ack(sm, 1), NGX_OK);     /* 3 across 2^32 */
    CHECK_INT(sm->count, 2);
    CHECK_INT(sm->size, 4 + 20000);
    CHECK_INT(ngx_xmpp_cm_sm_ack(sm, 0), NGX_DECLINED);
    CHECK_INT(ngx_xmpp_cm_sm_ack(sm, 1), NGX_OK);     /* the same again */

    p = (u_char *) "x";
    CHECK_INT(ngx_xmpp_cm_sm_ack(sm, 3), NGX_OK);
    CHECK_INT(sm->count, 0);
    CHECK_INT(sm->size, 0);
    CHECK(sm->head == NULL && sm->tail == NULL);

    CHECK_INT(ngx_xmpp_cm_sm_queue(sm, p, 1, NULL, 0), NGX_OK);
    CHECK_INT(sm->count, 1);

    ngx_xmpp_cm_sm_free(sm);
}


static ngx_int_t
sm_account(char *mech, char *data, size_t len, ngx_str_t *out)
{
    ngx_str_t    m, d;
    ngx_pool_t  *pool;
    ngx_int_t    rc;
    static u_char  buf[256];
    ngx_str_t    domain = ngx_string("Localhost");

    pool = ngx_create_pool(1024, &fuzz_log);
    m.data = (u_char *) mech;
    m.len = strlen(mech);
    d.data = (u_char *) data;
    d.len = len;

    rc = ngx_xmpp_cm_sm_account(pool, &m, &d, &domain, out);

    if (rc == NGX_OK) {
        ngx_memcpy(buf, out->data, out->len);
        out->data = buf;
    }

    ngx_destroy_pool(pool);

    return rc;
}


#define SM_ACCOUNT(mech, lit, want)                                          \
    do {                                                                     \
        ngx_str_t  a_;                                                       \
        CHECK_INT(sm_account(mech, lit, sizeof(lit) - 1, &a_), NGX_OK);      \
        CHECK_STR(a_.data, a_.len, want);                                    \
    } while (0)

#define SM_NO_ACCOUNT(mech, lit)                                             \
    do {                                                                     \
        ngx_str_t  a_;                                                       \
        CHECK_INT(sm_account(mech, lit, sizeof(lit) - 1, &a_),               \
                  NGX_DECLINED);                                             \
    } while (0)


UNIT_TEST(sm_account_from_each_mechanism)
{
    SM_ACCOUNT("PLAIN", "\0Alice\0pw", "alice@localhost");
    SM_ACCOUNT("PLAIN", "bob@example.ORG\0alice\0pw", "bob@example.org");
    SM_ACCOUNT("PLAIN", "bob\0alice\0pw", "bob@localhost");
    SM_NO_ACCOUNT("PLAIN", "\0\0pw");
    SM_NO_ACCOUNT("PLAIN", "alice");

    SM_ACCOUNT("SCRAM-", "n,,n=alice,r=abc", "alice@localhost");
    SM_ACCOUNT("SCRAM-", "n,,n=al=2Cice=3D,r=abc", "al,ice=@localhost");
    SM_ACCOUNT("SCRAM-", "y,a=bob@localhost,n=alice,r=abc",
               "bob@localhost");
    SM_ACCOUNT("SCRAM-", "p=tls-unique,,n=alice,r=abc", "alice@localhost");
    SM_NO_ACCOUNT("SCRAM-", "c=biws,r=abc,p=xyz");
    SM_NO_ACCOUNT("SCRAM-", "n,,r=abc");

    SM_ACCOUNT("DIGEST-MD5", "username=\"Alice\",realm=\"example.com\","
               "nonce=\"x,y\",cnonce=\"z\",nc=00000001,qop=auth",
               "alice@example.com");
    SM_ACCOUNT("DIGEST-MD5", "nonce=\"x\", username=\"alice\"",
               "alice@localhost");
    SM_NO_ACCOUNT("DIGEST-MD5", "rspauth=0123");
    SM_NO_ACCOUNT("DIGEST-MD5", "username=\"a\\\"b\"");

    SM_NO_ACCOUNT("ANONYMOUS", "");
    SM_NO_ACCOUNT("EXTERNAL", "alice");
}


UNIT_TEST(sm_previd_names_its_worker)
{
    ngx_pid_t  pid;
    ngx_str_t  id;

    ngx_str_set(&id, "w1234-0123456789abcdef");
    CHECK_INT(ngx_xmpp_cm_sm_previd(&id, &pid), NGX_OK);
    CHECK_INT(pid, 1234);

    ngx_str_set(&id, "w-0123");
    CHECK_INT(ngx_xmpp_cm_sm_previd(&id, &pid), NGX_ERROR);
    ngx_str_set(&id, "x12-0123");
    CHECK_INT(ngx_xmpp_cm_sm_previd(&id, &pid), NGX_ERROR);
    ngx_str_set(&id, "w12a-0123");
    CHECK_INT(ngx_xmpp_cm_sm_previd(&id, &pid), NGX_ERROR);
    ngx_str_set(&id, "w12");
    CHECK_INT(ngx_xmpp_cm_sm_previd(&id, &pid), NGX_ERROR);
}


void
unit_suite_sm(void)
{
    UNIT_RUN(sm_h_follows_confirmations_across_the_wrap);
    UNIT_RUN(sm_acks_wrap_and_bad_h_is_refused);
    UNIT_RUN(sm_account_from_each_mechanism);
    UNIT_RUN(sm_previd_names_its_worker);
}
