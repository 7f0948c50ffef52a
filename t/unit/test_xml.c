
/*
 * The framer (src/ngx_stream_xmpp_cm_xml.c) on a client stream: stanzas
 * whatever the reads, and the stream error conditions of its limits and
 * of restricted XML, as docs/directives.md lists them ("Stream errors").
 */

#include "unit.h"


/*
 * After the stream header, bytes that must end the stream: the feed
 * returns NGX_ERROR with the condition (and the stanzas before it).
 */

static void
ux_error(ngx_uint_t header, size_t max_size, ngx_uint_t max_depth,
    const char *bytes, size_t step, const char *cond, ngx_uint_t nstanzas,
    const char *file, int line)
{
    ngx_int_t       rc;
    const char     *err, *text;
    unit_stanzas_t  us;

    if (header) {
        unit_framer_open(&us, max_size, max_depth);

    } else {
        unit_framer_new(&us, max_size, max_depth);
    }

    rc = unit_framer_feed(&us, bytes, step);
    err = ngx_xmpp_cm_xml_error(us.x, &text);

    if (rc != NGX_ERROR) {
        unit_fail_int(file, line, bytes, NGX_ERROR, rc);

    } else if (err == NULL || strcmp(err, cond) != 0) {
        unit_fail_str(file, line, bytes, cond, strlen(cond),
                      (u_char *) (err ? err : "(null)"),
                      strlen(err ? err : "(null)"));

    } else if (us.n != nstanzas) {
        unit_fail_int(file, line, "stanzas before the error", nstanzas,
                      us.n);
    }

    unit_framer_close(&us);
}

#define CHECK_STREAM_ERROR(bytes, cond)                                      \
    ux_error(1, 0, 0, bytes, 0, cond, 0, __FILE__, __LINE__)


UNIT_TEST(stanzas_in_any_reads)
{
    size_t          step;
    unit_stanzas_t  us;

    static const char  in[] =
        "<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq> \n"
        "<message to='a@b'><body>\xe2\x82\xac</body></message>\t"
        "<presence/>";

    for (step = 1; step <= 9; step += 4) {
        unit_framer_open(&us, 0, 0);

        CHECK_INT(unit_framer_feed(&us, in, step), NGX_OK);
        CHECK_INT(us.n, 3);

        if (us.n == 3) {
            CHECK_CSTR(us.s[0].raw, "<iq type='get' id='1'>"
                                    "<ping xmlns='urn:xmpp:ping'/></iq>");
            CHECK_CSTR(us.s[0].name, "iq");
            CHECK_CSTR(us.s[0].ns, "jabber:client");
            CHECK_CSTR(us.s[1].raw, "<message to='a@b'>"
                                    "<body>\xe2\x82\xac</body></message>");
            CHECK_CSTR(us.s[2].raw, "<presence/>");
            CHECK_INT(us.s[2].has_xmlns, 0);
        }

        unit_framer_close(&us);
    }
}


UNIT_TEST(stanza_size_limit)
{
    char            *stanza;
    size_t           len;
    ngx_uint_t       step;
    unit_stanzas_t   us;

    static const char  open[] = "<message><body>";
    static const char  close[] = "</body></message>";

    /* xmpp_cm_max_stanza_size 512: 512 bytes pass, 513 end the stream */

    stanza = malloc(514);

    for (step = 0; step <= 7; step += 7) {
        for (len = 512; len <= 513; len++) {
            ngx_memcpy(stanza, open, sizeof(open) - 1);
            ngx_memset(stanza + sizeof(open) - 1, 'a',
                       len - (sizeof(open) - 1) - (sizeof(close) - 1));
            ngx_memcpy(stanza + len - (sizeof(close) - 1), close,
                       sizeof(close));

            if (len == 512) {
                unit_framer_open(&us, 512, 0);
                CHECK_INT(unit_framer_feed(&us, stanza, step), NGX_OK);
                CHECK_INT(us.n, 1);
                unit_framer_close(&us);

            } else {
                ux_error(1, 512, 0, stanza, step, "policy-violation", 0,
                         __FILE__, __LINE__);
            }
        }
    }

    /* an unfinished stanza is limited too: nothing grows past the limit */

    ngx_memcpy(stanza, "<message><body>", 15);
    ngx_memset(stanza + 15, 'a', 513 - 15);
    stanza[513] = '\0';
    ux_error(1, 512, 0, stanza, 100, "policy-violation", 0, __FILE__,
             __LINE__);

    free(stanza);
}


UNIT_TEST(depth_limit)
{
    unit_stanzas_t  us;

    /* xmpp_cm_max_depth 3: the stanza is level 1 */

    unit_framer_open(&us, 0, 3);
    CHECK_INT(unit_framer_feed(&us, "<message><a><b/></a></message>", 0),
              NGX_OK);
    CHECK_INT(us.n, 1);
    unit_framer_close(&us);

    ux_error(1, 0, 3, "<presence/><message><a><b><c/></b></a></message>", 0,
             "policy-violation", 1, __FILE__, __LINE__);
}


UNIT_TEST(restricted_xml)
{
    CHECK_STREAM_ERROR("<!-- hi -->", "restricted-xml");
    CHECK_STREAM_ERROR("<message><!-- hi --></message>", "restricted-xml");
    CHECK_STREAM_ERROR("<?php echo 1; ?>", "restricted-xml");

    /* a DTD (and with it entity declarations) before the stream header */

    ux_error(0, 0, 0, "<!DOCTYPE x [<!ENTITY a 'b'>]><stream:stream/>", 0,
             "restricted-xml", 0, __FILE__, __LINE__);
}


UNIT_TEST(not_well_formed)
{
    CHECK_STREAM_ERROR("<message><body></message>", "not-well-formed");
    CHECK_STREAM_ERROR("<message><body>\xff</body></message>",
                       "not-well-formed");
    CHECK_STREAM_ERROR("<message a='1' a='2'/>", "not-well-formed");
    CHECK_STREAM_ERROR("<x:message/>", "not-well-formed");

    /* an XML declaration anywhere but at the start of the stream */

    ux_error(1, 0, 0, "<presence/><?xml version='1.0'?>", 0,
             "not-well-formed", 1, __FILE__, __LINE__);
}


UNIT_TEST(unsupported_encoding)
{
    ux_error(0, 0, 0, "<?xml version='1.0' encoding='ISO-8859-1'?>"
             "<stream:stream/>", 0, "unsupported-encoding", 0, __FILE__,
             __LINE__);
}


UNIT_TEST(text_between_stanzas)
{
    ux_error(1, 0, 0, "<presence/> hello <presence/>", 0, "bad-format", 1,
             __FILE__, __LINE__);
}


UNIT_TEST(namespace_prefixes)
{
    unit_stanzas_t  us;

    /* a stanza's bytes are copied alone: its prefixes must be its own */

    CHECK_STREAM_ERROR("<stream:features/>", "invalid-namespace");
    CHECK_STREAM_ERROR("<message><stream:x/></message>", "invalid-namespace");

    unit_framer_open(&us, 0, 0);
    CHECK_INT(unit_framer_feed(&us, "<message xmlns:a='urn:a'>"
                                    "<a:x/></message>", 0),
              NGX_OK);
    CHECK_INT(us.n, 1);
    unit_framer_close(&us);

    /* at most 8 prefixes in scope, each shorter than 16 characters */

    unit_framer_open(&us, 0, 0);
    CHECK_INT(unit_framer_feed(&us, "<message xmlns:a='urn:a' xmlns:b='b' "
                                    "xmlns:c='c' xmlns:d='d' xmlns:e='e' "
                                    "xmlns:f='f' xmlns:g='g' xmlns:h='h'/>",
                               0),
              NGX_OK);
    CHECK_INT(us.n, 1);
    unit_framer_close(&us);

    CHECK_STREAM_ERROR("<message xmlns:a='urn:a' xmlns:b='b' xmlns:c='c' "
                       "xmlns:d='d' xmlns:e='e' xmlns:f='f' xmlns:g='g' "
                       "xmlns:h='h'><x xmlns:i='i'/></message>",
                       "policy-violation");
    CHECK_STREAM_ERROR("<message xmlns:abcdefghijklmnop='urn:a'/>",
                       "policy-violation");
}


void
unit_suite_xml(void)
{
    UNIT_RUN(stanzas_in_any_reads);
    UNIT_RUN(stanza_size_limit);
    UNIT_RUN(depth_limit);
    UNIT_RUN(restricted_xml);
    UNIT_RUN(not_well_formed);
    UNIT_RUN(unsupported_encoding);
    UNIT_RUN(text_between_stanzas);
    UNIT_RUN(namespace_prefixes);
}
