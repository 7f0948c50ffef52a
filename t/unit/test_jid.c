
/*
 * JIDs and the stanza checks (src/ngx_stream_xmpp_cm_jid.c), and the
 * stanza errors the CM answers with (ngx_xmpp_cm_stanza_error() in
 * route.c): RFC 7622 syntax with the stringprep rules that need no
 * tables, domain normalisation with punycode (RFC 3492), the stanza types
 * Openfire knows.  The JIDs are those of t/test_stanza_checks.py.
 */

#include "unit.h"


#define UJ_HOST_MAX  253


static void
uj_parse(const char *jid, ngx_int_t want, const char *file, int line)
{
    ngx_xmpp_cm_jid_t  j;

    if (ngx_xmpp_cm_jid_parse((u_char *) jid, strlen(jid), &j) != want) {
        unit_fail_str(file, line, "ngx_xmpp_cm_jid_parse()",
                      want == NGX_OK ? "NGX_OK" : "NGX_DECLINED",
                      want == NGX_OK ? 6 : 12, (u_char *) jid, strlen(jid));
    }
}

#define CHECK_JID_VALID(jid)      uj_parse(jid, NGX_OK, __FILE__, __LINE__)
#define CHECK_JID_MALFORMED(jid)  uj_parse(jid, NGX_DECLINED, __FILE__,     \
                                           __LINE__)


UNIT_TEST(jid_valid)
{
    char  *long_jid;

    CHECK_JID_VALID("bob@localhost/r@s/t");      /* '@' and '/' in it */
    CHECK_JID_VALID("bob@localhost/with space");
    CHECK_JID_VALID("bob@[::1]");
    CHECK_JID_VALID("bob@[2001:db8::1]/r");
    CHECK_JID_VALID("bob@127.0.0.1");
    CHECK_JID_VALID("j\xc3\xbcrgen@localhost");
    CHECK_JID_VALID("\xc3\xa9l\xc3\xa8ve@b\xc3\xbc" "cher.example/\xc3\xa9");
    CHECK_JID_VALID("localhost");
    CHECK_JID_VALID("bob@localhost");
    CHECK_JID_VALID("bob@aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                    "aaaaaaaaaa.com");                        /* 63 */
    CHECK_JID_VALID("BOB@LocalHost./Phone");

    /* 1023 bytes of localpart and of resourcepart */

    long_jid = malloc(1023 + 11 + 1023 + 1);
    ngx_memset(long_jid, 'n', 1023);
    ngx_memcpy(long_jid + 1023, "@localhost/", 11);
    ngx_memset(long_jid + 1034, 'r', 1023);
    long_jid[1034 + 1023] = '\0';
    CHECK_JID_VALID(long_jid);
    free(long_jid);
}


UNIT_TEST(jid_malformed)
{
    char  *long_jid;

    CHECK_JID_MALFORMED("");
    CHECK_JID_MALFORMED("a@b@localhost");
    CHECK_JID_MALFORMED("@localhost");
    CHECK_JID_MALFORMED("bob@@localhost");
    CHECK_JID_MALFORMED("bob@localhost/");
    CHECK_JID_MALFORMED("bob@");
    CHECK_JID_MALFORMED("b<b@localhost");
    CHECK_JID_MALFORMED("bob b@localhost");
    CHECK_JID_MALFORMED("bob@local_host");
    CHECK_JID_MALFORMED("bob@-localhost");
    CHECK_JID_MALFORMED("bob@a..b");
    CHECK_JID_MALFORMED("bob@aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                        "aaaaaaaaaaaaaa.com");                /* 64 */
    CHECK_JID_MALFORMED("bob@[::1");
    CHECK_JID_MALFORMED("bob@[1::2::3]");
    CHECK_JID_MALFORMED("bob\xc2\xa0x@localhost");           /* U+00A0 */
    CHECK_JID_MALFORMED("bob@localhost/a\x7f" "b");
    CHECK_JID_MALFORMED("bob\xff@localhost");                /* not UTF-8 */

    /* 1024 bytes of localpart, of resourcepart */

    long_jid = malloc(1024 + 11 + 1024 + 1);
    ngx_memset(long_jid, 'n', 1024);
    ngx_memcpy(long_jid + 1024, "@localhost", 11);
    CHECK_JID_MALFORMED(long_jid);

    ngx_memcpy(long_jid, "bob@localhost/", 14);
    ngx_memset(long_jid + 14, 'r', 1024);
    long_jid[14 + 1024] = '\0';
    CHECK_JID_MALFORMED(long_jid);
    free(long_jid);
}


UNIT_TEST(jid_parts_and_fold)
{
    u_char             buf[64];
    size_t             n;
    ngx_xmpp_cm_jid_t  j;

    /* the resource follows the first '/', the local part the '@' before */

    CHECK_INT(ngx_xmpp_cm_jid_parse((u_char *) "a@b/c@d/e", 9, &j), NGX_OK);
    CHECK_NGX_STR(&j.local, "a");
    CHECK_NGX_STR(&j.domain, "b");
    CHECK_NGX_STR(&j.resource, "c@d/e");
    CHECK_INT(j.fold, 0);

    CHECK_INT(ngx_xmpp_cm_jid_parse((u_char *) "localhost", 9, &j), NGX_OK);
    CHECK_INT(j.has_local, 0);
    CHECK_INT(j.has_resource, 0);
    CHECK_NGX_STR(&j.domain, "localhost");

    /* what stringprep would change: ASCII case, the final dot */

    CHECK_INT(ngx_xmpp_cm_jid_parse((u_char *) "BOB@LocalHost./Phone", 20,
                                    &j),
              NGX_OK);
    CHECK_INT(j.fold, 1);
    n = ngx_xmpp_cm_jid_fold(&j, NULL);
    CHECK_INT(n, 19);
    CHECK_INT(ngx_xmpp_cm_jid_fold(&j, buf), n);
    CHECK_STR(buf, n, "bob@localhost/Phone");

    CHECK_INT(ngx_xmpp_cm_jid_parse((u_char *) "bob@localhost/Phone", 19,
                                    &j),
              NGX_OK);
    CHECK_INT(j.fold, 0);
}


/* RFC 3492 section 7.1, as domain labels ("xn--", lower case) */

static const struct {
    const char  *u;
    const char  *a;       /* NULL: longer than a label may be */
} uj_rfc3492[] = {
    /* (A) Arabic (Egyptian) */
    { "\xd9\x84\xd9\x8a\xd9\x87\xd9\x85\xd8\xa7\xd8\xa8\xd8"
      "\xaa\xd9\x83\xd9\x84\xd9\x85\xd9\x88\xd8\xb4\xd8\xb9"
      "\xd8\xb1\xd8\xa8\xd9\x8a\xd8\x9f",
      "xn--egbpdaj6bu4bxfgehfvwxn" },
    /* (B) Chinese (simplified) */
    { "\xe4\xbb\x96\xe4\xbb\xac\xe4\xb8\xba\xe4\xbb\x80\xe4"
      "\xb9\x88\xe4\xb8\x8d\xe8\xaf\xb4\xe4\xb8\xad\xe6\x96"
      "\x87",
      "xn--ihqwcrb4cv8a8dqg056pqjye" },
    /* (C) Chinese (traditional) */
    { "\xe4\xbb\x96\xe5\x80\x91\xe7\x88\xb2\xe4\xbb\x80\xe9"
      "\xba\xbd\xe4\xb8\x8d\xe8\xaa\xaa\xe4\xb8\xad\xe6\x96"
      "\x87",
      "xn--ihqwctvzc91f659drss3x8bo0yb" },
    /* (D) Czech */
    { "Pro\xc4\x8dprost\xc4\x9bnemluv\xc3\xad\xc4\x8d" "esky",
      "xn--proprostnemluvesky-uyb24dma41a" },
    /* (E) Hebrew */
    { "\xd7\x9c\xd7\x9e\xd7\x94\xd7\x94\xd7\x9d\xd7\xa4\xd7"
      "\xa9\xd7\x95\xd7\x98\xd7\x9c\xd7\x90\xd7\x9e\xd7\x93"
      "\xd7\x91\xd7\xa8\xd7\x99\xd7\x9d\xd7\xa2\xd7\x91\xd7"
      "\xa8\xd7\x99\xd7\xaa",
      "xn--4dbcagdahymbxekheh6e0a7fei0b" },
    /* (F) Hindi (Devanagari) */
    { "\xe0\xa4\xaf\xe0\xa4\xb9\xe0\xa4\xb2\xe0\xa5\x8b\xe0"
      "\xa4\x97\xe0\xa4\xb9\xe0\xa4\xbf\xe0\xa4\xa8\xe0\xa5"
      "\x8d\xe0\xa4\xa6\xe0\xa5\x80\xe0\xa4\x95\xe0\xa5\x8d"
      "\xe0\xa4\xaf\xe0\xa5\x8b\xe0\xa4\x82\xe0\xa4\xa8\xe0"
      "\xa4\xb9\xe0\xa5\x80\xe0\xa4\x82\xe0\xa4\xac\xe0\xa5"
      "\x8b\xe0\xa4\xb2\xe0\xa4\xb8\xe0\xa4\x95\xe0\xa4\xa4"
      "\xe0\xa5\x87\xe0\xa4\xb9\xe0\xa5\x88\xe0\xa4\x82",
      "xn--i1baa7eci9glrd9b2ae1bj0hfcgg6iyaf8o0a1dig0cd" },
    /* (G) Japanese (kanji and hiragana) */
    { "\xe3\x81\xaa\xe3\x81\x9c\xe3\x81\xbf\xe3\x82\x93\xe3"
      "\x81\xaa\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x82"
      "\x92\xe8\xa9\xb1\xe3\x81\x97\xe3\x81\xa6\xe3\x81\x8f"
      "\xe3\x82\x8c\xe3\x81\xaa\xe3\x81\x84\xe3\x81\xae\xe3"
      "\x81\x8b",
      "xn--n8jok5ay5dzabd5bym9f0cm5685rrjetr6pdxa" },
    /* (H) Korean (Hangul syllables) */
    { "\xec\x84\xb8\xea\xb3\x84\xec\x9d\x98\xeb\xaa\xa8\xeb"
      "\x93\xa0\xec\x82\xac\xeb\x9e\x8c\xeb\x93\xa4\xec\x9d"
      "\xb4\xed\x95\x9c\xea\xb5\xad\xec\x96\xb4\xeb\xa5\xbc"
      "\xec\x9d\xb4\xed\x95\xb4\xed\x95\x9c\xeb\x8b\xa4\xeb"
      "\xa9\xb4\xec\x96\xbc\xeb\xa7\x88\xeb\x82\x98\xec\xa2"
      "\x8b\xec\x9d\x84\xea\xb9\x8c",
      NULL },
    /* (I) Russian (Cyrillic) */
    { "\xd0\xbf\xd0\xbe\xd1\x87\xd0\xb5\xd0\xbc\xd1\x83\xd0"
      "\xb6\xd0\xb5\xd0\xbe\xd0\xbd\xd0\xb8\xd0\xbd\xd0\xb5"
      "\xd0\xb3\xd0\xbe\xd0\xb2\xd0\xbe\xd1\x80\xd1\x8f\xd1"
      "\x82\xd0\xbf\xd0\xbe\xd1\x80\xd1\x83\xd1\x81\xd1\x81"
      "\xd0\xba\xd0\xb8",
      "xn--b1abfaaepdrnnbgefbadotcwatmq2g4l" },
    /* (J) Spanish */
    { "Porqu\xc3\xa9nopuedensimplementehablarenEspa\xc3\xb1ol",
      "xn--porqunopuedensimplementehablarenespaol-fmd56a" },
    /* (K) Vietnamese */
    { "T\xe1\xba\xa1isaoh\xe1\xbb\x8dkh\xc3\xb4ngth\xe1\xbb"
      "\x83" "ch\xe1\xbb\x89n\xc3\xb3iti\xe1\xba\xbfngVi\xe1"
      "\xbb\x87t",
      "xn--tisaohkhngthchnitingvit-kjcr8268qyxafd2f1b9g" },
    /* (L) 3<nen>B<gumi><kinpachi><sensei> */
    { "3\xe5\xb9\xb4" "B\xe7\xb5\x84\xe9\x87\x91\xe5\x85\xab"
      "\xe5\x85\x88\xe7\x94\x9f",
      "xn--3b-ww4c5e180e575a65lsy2b" },
    /* (M) <amuro><namie>-with-SUPER-MONKEYS */
    { "\xe5\xae\x89\xe5\xae\xa4\xe5\xa5\x88\xe7\xbe\x8e\xe6"
      "\x81\xb5-with-SUPER-MONKEYS",
      "xn---with-super-monkeys-pc58ag80a8qai00g7n9n" },
    /* (N) Hello-Another-Way-<sorezore><no><basho> */
    { "Hello-Another-Way-\xe3\x81\x9d\xe3\x82\x8c\xe3\x81\x9e"
      "\xe3\x82\x8c\xe3\x81\xae\xe5\xa0\xb4\xe6\x89\x80",
      "xn--hello-another-way--fc4qua05auwb3674vfr0b" },
    /* (O) <hitotsu><yane><no><shita>2 */
    { "\xe3\x81\xb2\xe3\x81\xa8\xe3\x81\xa4\xe5\xb1\x8b\xe6"
      "\xa0\xb9\xe3\x81\xae\xe4\xb8\x8b" "2",
      "xn--2-u9tlzr9756bt3uc0v" },
    /* (P) Maji<de>Koi<suru>5<byou><mae> */
    { "Maji\xe3\x81\xa7Koi\xe3\x81\x99\xe3\x82\x8b" "5\xe7\xa7"
      "\x92\xe5\x89\x8d",
      "xn--majikoi5-783gue6qz075azm5e" },
    /* (Q) <pafii>de<runba> */
    { "\xe3\x83\x91\xe3\x83\x95\xe3\x82\xa3\xe3\x83\xbc" "de"
      "\xe3\x83\xab\xe3\x83\xb3\xe3\x83\x90",
      "xn--de-jg4avhby1noc0d" },
    /* (R) <sono><supiido><de> */
    { "\xe3\x81\x9d\xe3\x81\xae\xe3\x82\xb9\xe3\x83\x94\xe3"
      "\x83\xbc\xe3\x83\x89\xe3\x81\xa7",
      "xn--d9juau41awczczp" },
    /* (S) -> $1.00 <- : all ASCII, and not a host name */
    { "-> $1.00 <-", NULL },
};


static void
uj_domain(const char *u, const char *a, const char *file, int line)
{
    u_char  buf[UJ_HOST_MAX];
    size_t  n;

    if (ngx_xmpp_cm_jid_domain((u_char *) u, strlen(u), buf, &n)
        != (a ? NGX_OK : NGX_DECLINED))
    {
        unit_fail_str(file, line, "ngx_xmpp_cm_jid_domain()",
                      a ? a : "NGX_DECLINED", strlen(a ? a : "NGX_DECLINED"),
                      (u_char *) u, strlen(u));
        return;
    }

    if (a && (n != strlen(a) || memcmp(buf, a, n) != 0)) {
        unit_fail_str(file, line, u, a, strlen(a), buf, n);
    }
}

#define CHECK_DOMAIN(u, a)  uj_domain(u, a, __FILE__, __LINE__)


UNIT_TEST(domain_punycode_rfc3492)
{
    ngx_uint_t  i;

    for (i = 0; i < sizeof(uj_rfc3492) / sizeof(uj_rfc3492[0]); i++) {
        CHECK_DOMAIN(uj_rfc3492[i].u, uj_rfc3492[i].a);
    }
}


UNIT_TEST(domain_normalised)
{
    ngx_str_t  given, conf;

    /* the header domains of t/test_stanza_checks.py */

    CHECK_DOMAIN("\xe4\xbe\x8b\xe3\x81\x88.example", "xn--r8jz45g.example");
    CHECK_DOMAIN("ma\xc3\xb1" "ana-\xc3\xb1u.example",
                 "xn--maana-u-5zae.example");
    CHECK_DOMAIN("\xc3\xbcn\xc3\xaf-\xc3\xa7\xc3\xb6" "d\xc3\xa9-stra\xc3\x9f"
                 "e.x", "xn--n-d-strae-n1a5fza8e2ezd.x");
    CHECK_DOMAIN("\xf0\x9f\x98\x80x.x", "xn--x-iv3s.x");
    CHECK_DOMAIN("x.\xc3\xb1\xc3\xb1\xc3\xb1\xc3\xb1\xc3\xb1\xc3\xb1\xc3\xb1"
                 "\xc3\xb1\xc3\xb1\xc3\xb1\xc3\xb1\xc3\xb1\xc3\xb1\xc3\xb1"
                 "\xc3\xb1\xc3\xb1\xc3\xb1\xc3\xb1\xc3\xb1\xc3\xb1",
                 "x.xn--idaaaaaaaaaaaaaaaaaaaa");
    CHECK_DOMAIN("B\xc3\xbc" "CHER.example", "xn--bcher-kva.example");
    CHECK_DOMAIN("LOCALHOST", "localhost");
    CHECK_DOMAIN("[::1]", "[::1]");
    CHECK_DOMAIN("localhost.", NULL);          /* the dot is the caller's */
    CHECK_DOMAIN("a..b", NULL);

    /* the stream header's 'to' against xmpp_cm_domain */

#define UJ_EQ(g, c, want)                                                    \
    given.data = (u_char *) g;                                               \
    given.len = strlen(g);                                                   \
    conf.data = (u_char *) c;                                                \
    conf.len = strlen(c);                                                    \
    CHECK_INT(ngx_xmpp_cm_jid_domain_eq(&given, &conf), want)

    UJ_EQ("localhost.", "localhost", 1);
    UJ_EQ("LOCALHOST", "localhost", 1);
    UJ_EQ("b\xc3\xbc" "cher.example", "xn--bcher-kva.example", 1);
    UJ_EQ("B\xc3\xbc" "CHER.example.", "xn--bcher-kva.example", 1);
    UJ_EQ("XN--BCHER-KVA.example", "xn--bcher-kva.example", 1);
    UJ_EQ("localhost..", "localhost", 0);
    UJ_EQ("b\xc3\xbc" "cher.example.com", "xn--bcher-kva.example", 0);
    UJ_EQ("other", "localhost", 0);

#undef UJ_EQ
}


/* ------------------------------------------------------ stanza checks */

static fuzz_upstream_t  uj_fp;


typedef struct {
    ngx_xmpp_cm_stream_t    stream;
    ngx_str_t               jid;        /* the client's, for errors */
    u_char                 *lang;
    const char             *reject;
    ngx_uint_t              is_error;
    char                   *out;        /* the error, or the route */
    size_t                  len;
} uj_client_t;


static ngx_int_t
uj_start(unit_stanzas_t *us, ngx_xmpp_cm_elem_t *e)
{
    /* as the client does at a stanza's start tag */

    ngx_xmpp_cm_stanza_check(e, &fuzz_log);

    return NGX_OK;
}


static ngx_int_t
uj_element(unit_stanzas_t *us, ngx_xmpp_cm_elem_t *e)
{
    uj_client_t  *uc = us->ctx;

    /* as ngx_xmpp_cm_client_reject(): two <show>s are a bad request */

    if (e->reject == NULL && e->nshow > 1) {
        e->reject = "bad-request";
    }

    uc->reject = e->reject;
    uc->is_error = e->is_error;

    if (e->reject) {
        uc->len = ngx_xmpp_cm_stanza_error(us->x, e, &uc->jid, NULL);
        uc->out = malloc(uc->len + 1);
        CHECK_INT(ngx_xmpp_cm_stanza_error(us->x, e, &uc->jid,
                                           (u_char *) uc->out),
                  uc->len);
        uc->out[uc->len] = '\0';

        return NGX_OK;
    }

    CHECK_INT(ngx_xmpp_cm_route_client(&uc->stream, us->x, e, uc->lang),
              NGX_OK);
    uc->out = (char *) fuzz_queue_take(&uj_fp.socks[0].out, &uc->len);

    return NGX_OK;
}


/*
 * A client stanza through the checks: the stanza error the CM answers
 * (reject != NULL), or the route it sends (the stanza in it); want NULL:
 * any bytes.
 */

static void
uj_stanza(const char *stanza, const char *lang, const char *reject,
    const char *want, const char *file, int line)
{
    char            *p;
    size_t           head;
    uj_client_t      uc;
    unit_stanzas_t   us;

    fuzz_upstream_init(&uj_fp);

    ngx_memzero(&uc, sizeof(uj_client_t));
    uc.stream.up = &uj_fp.up;
    uc.stream.sock = &uj_fp.socks[0];
    ngx_str_set(&uc.stream.node.str, "w1-1");
    ngx_str_set(&uc.jid, "alice@localhost/pc");
    uc.lang = (u_char *) lang;

    unit_framer_open(&us, 0, 0);
    us.start = uj_start;
    us.hook = uj_element;
    us.ctx = &uc;

    if (unit_framer_feed(&us, stanza, 0) != NGX_OK || us.n != 1) {
        unit_fail(file, line, "the framer accepts one stanza");
        goto done;
    }

    unit_check_cstr(file, line, "the stanza error condition", uc.reject,
                    reject);

    p = uc.out;

    if (reject == NULL) {
        /* the route's head and tail are test_route.c's business */

        head = sizeof("<route to=\"localhost\" from=\"\" streamid=\"w1-1\">")
               - 1 + uj_fp.up.name.len;

        if (uc.len < head + 8) {
            unit_fail(file, line, "a route");
            goto done;
        }

        p += head;
        uc.len -= head + 8;
    }

    if (want && (uc.len != strlen(want) || memcmp(p, want, uc.len) != 0)) {
        unit_fail_str(file, line, stanza, want, strlen(want), (u_char *) p,
                      uc.len);
    }

    /* what goes back to the client is a well-formed stanza of its own */

    if (reject && fuzz_wellformed((u_char *) p, uc.len, 1)) {
        unit_fail(file, line, "the stanza error is well-formed");
    }

done:

    free(uc.out);
    unit_framer_close(&us);
}

#define CHECK_ROUTED(stanza, lang, want)                                     \
    uj_stanza(stanza, lang, NULL, want, __FILE__, __LINE__)
#define CHECK_REJECTED(stanza, cond, want)                                   \
    uj_stanza(stanza, NULL, cond, want, __FILE__, __LINE__)


UNIT_TEST(stanza_jid_malformed)
{
    /* 'to' back as 'from', to the client, type="error", children kept */

    CHECK_REJECTED("<message to='a@b@localhost' id='j1' type='chat'>"
                   "<body>x</body></message>",
                   "jid-malformed",
                   "<message from='a@b@localhost' id='j1' "
                   "to=\"alice@localhost/pc\" type=\"error\"><body>x</body>"
                   "<error type=\"modify\"><jid-malformed xmlns=\""
                   NGX_XMPP_NS_STANZAS "\"/></error></message>");

    /* a bad 'from' too; the stanza's own namespace declarations stay */

    CHECK_REJECTED("<message xmlns:x='urn:x' from='@localhost' "
                   "to='bob@localhost' x:a='1' id='j20'>"
                   "<x:y>&lt;&#x41;</x:y></message>",
                   "jid-malformed",
                   "<message xmlns:x='urn:x' from='bob@localhost' x:a='1' "
                   "id='j20' to=\"alice@localhost/pc\" type=\"error\">"
                   "<x:y>&lt;&#x41;</x:y><error type=\"modify\">"
                   "<jid-malformed xmlns=\"" NGX_XMPP_NS_STANZAS "\"/>"
                   "</error></message>");

    CHECK_REJECTED("<presence to='x@@localhost'\n from = \"alice@localhost"
                   "/pc\" id='j21'><show>away</show></presence>",
                   "jid-malformed",
                   "<presence from='x@@localhost' id='j21' "
                   "to=\"alice@localhost/pc\" type=\"error\">"
                   "<show>away</show><error type=\"modify\"><jid-malformed "
                   "xmlns=\"" NGX_XMPP_NS_STANZAS "\"/></error></presence>");

    /* an empty 'to' is no address: routed */

    CHECK_ROUTED("<message to='' id='e0'/>", NULL,
                 "<message xmlns=\"jabber:client\" to=\"\" id=\"e0\"/>");
}


UNIT_TEST(stanza_bad_type)
{
    static const char  *bad[] = {
        "<presence type='bogus' id='t1'/>",
        "<message type='bogus' to='bob@localhost' id='t2'><body>x</body>"
        "</message>",
        "<iq type='bogus' id='t3'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<iq id='t4'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<iq type='' id='t5'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<presence type='Unavailable' id='t6'/>",
    };

    ngx_uint_t  i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uj_stanza(bad[i], NULL, "bad-request", NULL, __FILE__, __LINE__);
    }

    CHECK_REJECTED("<iq id='t4'/>", "bad-request",
                   "<iq id='t4' to=\"alice@localhost/pc\" type=\"error\">"
                   "<error type=\"modify\"><bad-request xmlns=\""
                   NGX_XMPP_NS_STANZAS "\"/></error></iq>");

    /* the types Openfire knows */

    CHECK_ROUTED("<message type='headline'/>", NULL,
                 "<message xmlns=\"jabber:client\" type=\"headline\"/>");
    CHECK_ROUTED("<presence type='unsubscribed'/>", NULL,
                 "<presence xmlns=\"jabber:client\" type=\"unsubscribed\"/>");
    CHECK_ROUTED("<iq type='result' id='1'/>", NULL,
                 "<iq xmlns=\"jabber:client\" type=\"result\" id=\"1\"/>");
}


UNIT_TEST(stanza_error_about_an_error)
{
    uj_client_t      uc;
    unit_stanzas_t   us;

    /* an error with a malformed JID: rejected, flagged so it is dropped */

    fuzz_upstream_init(&uj_fp);
    ngx_memzero(&uc, sizeof(uj_client_t));

    unit_framer_open(&us, 0, 0);
    us.start = uj_start;
    us.hook = uj_element;
    us.ctx = &uc;

    CHECK_INT(unit_framer_feed(&us, "<iq to='@localhost' type='error' "
                                    "id='e2'/>", 0),
              NGX_OK);
    CHECK_CSTR(uc.reject, "jid-malformed");
    CHECK_INT(uc.is_error, 1);

    free(uc.out);
    unit_framer_close(&us);
}


UNIT_TEST(stanza_folded_lang_show)
{
    /* 'to' as stringprep would have it; the resource keeps its case */

    CHECK_ROUTED("<message to='BOB@LocalHost./Phone' id='n0'/>", NULL,
                 "<message xmlns=\"jabber:client\" "
                 "to=\"bob@localhost/Phone\" id=\"n0\"/>");

    /* the stream's xml:lang where the stanza has none */

    CHECK_ROUTED("<message to='bob@localhost' id='l1'/>", "de-CH",
                 "<message xmlns=\"jabber:client\" xml:lang=\"de-CH\" "
                 "to=\"bob@localhost\" id=\"l1\"/>");
    CHECK_ROUTED("<message to='bob@localhost' id='l2' xml:lang='fr'/>",
                 "de-CH",
                 "<message xmlns=\"jabber:client\" to=\"bob@localhost\" "
                 "id=\"l2\" xml:lang=\"fr\"/>");

    /* a <show> Openfire does not know is removed, a known one kept */

    CHECK_ROUTED("<presence id='p1'><priority>1</priority><show>bogus</show>"
                 "<status>s</status></presence>", NULL,
                 "<presence xmlns=\"jabber:client\" id=\"p1\">"
                 "<priority>1</priority><status>s</status></presence>");
    CHECK_ROUTED("<presence><show>dnd</show></presence>", NULL,
                 "<presence xmlns=\"jabber:client\"><show>dnd</show>"
                 "</presence>");

    /* two of them: bad-request */

    CHECK_REJECTED("<presence id='k9'><show>away</show><show>dnd</show>"
                   "</presence>", "bad-request", NULL);
}


void
unit_suite_jid(void)
{
    UNIT_RUN(jid_valid);
    UNIT_RUN(jid_malformed);
    UNIT_RUN(jid_parts_and_fold);
    UNIT_RUN(domain_punycode_rfc3492);
    UNIT_RUN(domain_normalised);
    UNIT_RUN(stanza_jid_malformed);
    UNIT_RUN(stanza_bad_type);
    UNIT_RUN(stanza_error_about_an_error);
    UNIT_RUN(stanza_folded_lang_show);
}
