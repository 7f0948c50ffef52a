
/*
 * Feature building (src/ngx_stream_xmpp_cm_upstream.c): Openfire's
 * configuration IQ becomes the pre-authentication features the CM offers,
 * minus EXTERNAL and every channel-binding (-PLUS) mechanism, which cannot
 * succeed through a CM (docs/architecture.md, docs/security.md).
 *
 * The builder and the socket's element callback are static: like
 * t/fuzz/fuzz_upstream.c this file includes upstream.c, so the IQ goes
 * through the socket's real callback, ngx_xmpp_cm_sock_element().
 */

#include "unit.h"
#include "../../src/ngx_stream_xmpp_cm_upstream.c"


static fuzz_upstream_t  uf_fp;


static ngx_int_t
uf_element(void *data, ngx_xmpp_cm_elem_t *e)
{
    return ngx_xmpp_cm_sock_stanza(data, e);
}


/* an IQ from Openfire on a READY socket; what the CM answered */

static char *
uf_iq(const char *iq, size_t *len)
{
    ngx_int_t  rc;

    rc = ngx_xmpp_cm_xml_fragment(&fuzz_log, fuzz_worker->parking,
                                  (u_char *) iq, strlen(iq), 1,
                                  NGX_XMPP_CM_UPSTREAM_MAX_STANZA,
                                  NGX_XMPP_CM_UPSTREAM_MAX_DEPTH, uf_element,
                                  &uf_fp.socks[0]);
    CHECK_INT(rc, NGX_OK);

    return (char *) fuzz_queue_take(&uf_fp.socks[0].out, len);
}


#define UF_CONF(id, body)                                                    \
    "<iq type=\"set\" id=\"" id "\"><configuration "                         \
    "xmlns=\"http://jabber.org/protocol/connectionmanager\">" body           \
    "</configuration></iq>"

#define UF_MECHS(list)                                                       \
    "<mechanisms xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\">" list          \
    "</mechanisms>"


UNIT_TEST(features_from_openfire_4_1_6)
{
    char    *out;
    size_t   len;

    fuzz_upstream_init(&uf_fp);
    uf_fp.up.configured = 0;

    /* the configuration IQ of the Openfire 4.1.6 transcripts */

    out = uf_iq(UF_CONF("877-9",
                "<starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\"/>"
                UF_MECHS("<mechanism>PLAIN</mechanism>"
                         "<mechanism>SCRAM-SHA-1</mechanism>"
                         "<mechanism>EXTERNAL</mechanism>"
                         "<mechanism>CRAM-MD5</mechanism>"
                         "<mechanism>DIGEST-MD5</mechanism>")
                "<compression xmlns=\"http://jabber.org/features/compress\">"
                "<method>zlib</method></compression>"
                "<register xmlns=\"http://jabber.org/features/iq-register\"/>"
                ), &len);

    CHECK_NGX_STR(&uf_fp.up.features,
                  UF_MECHS("<mechanism>PLAIN</mechanism>"
                           "<mechanism>SCRAM-SHA-1</mechanism>"
                           "<mechanism>CRAM-MD5</mechanism>"
                           "<mechanism>DIGEST-MD5</mechanism>")
                  "<register xmlns=\"http://jabber.org/features/"
                  "iq-register\"/>");
    CHECK_INT(uf_fp.up.cfg_tls_required, 0);
    CHECK_INT(uf_fp.up.cfg_compression, 1);
    CHECK_INT(uf_fp.up.configured, 1);

    /* Openfire waits for the result */

    CHECK_CSTR(out, "<iq type=\"result\" id=\"877-9\"/>");

    free(out);
    ngx_free(uf_fp.up.features.data);
}


UNIT_TEST(features_hide_external_and_plus)
{
    char    *out;
    size_t   len;

    fuzz_upstream_init(&uf_fp);

    out = uf_iq(UF_CONF("c1",
                "<starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\">"
                "<required/></starttls>"
                UF_MECHS("<mechanism>SCRAM-SHA-1-PLUS</mechanism>"
                         "<mechanism>EXTERNAL</mechanism>"
                         "<mechanism>SCRAM-SHA-256-PLUS</mechanism>"
                         "<mechanism>SCRAM-SHA-256</mechanism>"
                         "<mechanism></mechanism>"
                         "<mechanism>X-A&lt;B</mechanism>"
                         "<other>PLAIN</other>")
                "<auth xmlns=\"http://jabber.org/features/iq-auth\"/>"),
                &len);

    /* empty and unknown children are dropped, text is escaped again */

    CHECK_NGX_STR(&uf_fp.up.features,
                  UF_MECHS("<mechanism>SCRAM-SHA-256</mechanism>"
                           "<mechanism>X-A&lt;B</mechanism>")
                  "<auth xmlns=\"http://jabber.org/features/iq-auth\"/>");
    CHECK_INT(uf_fp.up.cfg_tls_required, 1);
    CHECK_INT(uf_fp.up.cfg_compression, 0);
    CHECK_CSTR(out, "<iq type=\"result\" id=\"c1\"/>");
    free(out);

    /* a new configuration replaces the old one */

    out = uf_iq(UF_CONF("a&quot;b",
                        UF_MECHS("<mechanism>EXTERNAL</mechanism>")),
                &len);

    CHECK_NGX_STR(&uf_fp.up.features, UF_MECHS(""));
    CHECK_INT(uf_fp.up.cfg_tls_required, 0);
    CHECK_CSTR(out, "<iq type=\"result\" id=\"a&quot;b\"/>");
    free(out);

    out = uf_iq(UF_CONF("c3", ""), &len);
    CHECK_NGX_STR(&uf_fp.up.features, "");
    free(out);

    ngx_free(uf_fp.up.features.data);
}


void
unit_suite_features(void)
{
    UNIT_RUN(features_from_openfire_4_1_6);
    UNIT_RUN(features_hide_external_and_plus);
}
