/*
 * strophe_login: a second, independent XMPP client (libstrophe) for the
 * TLS tests of ngx_stream_xmpp_cm.
 *
 *   strophe_login HOST PORT JID PASSWORD CAFILE TO BODY [direct]
 *
 * Connects to HOST:PORT, requires TLS (STARTTLS, or direct TLS with the
 * optional last argument "direct"), verifies the server certificate against
 * CAFILE only (a verification failure is fatal), logs in as JID, sends one
 * chat message with BODY to TO, then a roster get.  When the roster result
 * arrives (so the message went out before it, in order) it prints
 * "CONNECTED" and "SECURED" lines and exits 0.
 *
 * Exit codes: 0 ok, 2 usage, 3 timeout, 4 session not encrypted,
 * 5 disconnected / login failed, 6 certificate rejected.
 * STROPHE_DEBUG=1 in the environment turns on libstrophe's debug log
 * (stderr).
 *
 * Build: cc -o strophe_login strophe_login.c $(pkg-config --cflags --libs libstrophe)
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <strophe.h>

static int  done;
static int  status = 5;
static int  cert_rejected;
static const char *msg_to;
static const char *msg_body;


static int
certfail(const xmpp_tlscert_t *cert, const char *errormsg)
{
    (void) cert;
    fprintf(stderr, "strophe_login: certificate rejected: %s\n", errormsg);
    cert_rejected = 1;
    return 0;   /* do not accept */
}


static int
roster_result(xmpp_conn_t *conn, xmpp_stanza_t *stanza, void *userdata)
{
    const char *type = xmpp_stanza_get_type(stanza);

    (void) userdata;

    if (type == NULL || strcmp(type, "result") != 0) {
        fprintf(stderr, "strophe_login: roster get failed (type %s)\n",
                type ? type : "(none)");
        status = 5;
    } else {
        printf("CONNECTED %s\n", xmpp_conn_get_bound_jid(conn));
        printf("SECURED %d\n", xmpp_conn_is_secured(conn));
        fflush(stdout);
        status = 0;
    }
    xmpp_disconnect(conn);
    return 0;
}


static void
conn_handler(xmpp_conn_t *conn, xmpp_conn_event_t event, int error,
             xmpp_stream_error_t *stream_error, void *userdata)
{
    xmpp_ctx_t     *ctx = userdata;
    xmpp_stanza_t  *msg, *iq, *query;

    if (event == XMPP_CONN_CONNECT) {
        if (!xmpp_conn_is_secured(conn)) {
            fprintf(stderr, "strophe_login: session is not encrypted\n");
            status = 4;
            xmpp_disconnect(conn);
            return;
        }

        msg = xmpp_message_new(ctx, "chat", msg_to, "strophe-m1");
        xmpp_message_set_body(msg, msg_body);
        xmpp_send(conn, msg);
        xmpp_stanza_release(msg);

        iq = xmpp_iq_new(ctx, "get", "strophe-r1");
        query = xmpp_stanza_new(ctx);
        xmpp_stanza_set_name(query, "query");
        xmpp_stanza_set_ns(query, "jabber:iq:roster");
        xmpp_stanza_add_child(iq, query);
        xmpp_stanza_release(query);
        xmpp_id_handler_add(conn, roster_result, "strophe-r1", NULL);
        xmpp_send(conn, iq);
        xmpp_stanza_release(iq);
        return;
    }

    fprintf(stderr, "strophe_login: disconnected (event %d, error %d%s)\n",
            (int) event, error,
            stream_error ? ", stream error" : "");
    if (cert_rejected && status != 0) {
        status = 6;
    }
    done = 1;
}


int
main(int argc, char **argv)
{
    xmpp_ctx_t     *ctx;
    xmpp_conn_t    *conn;
    xmpp_log_t     *log = NULL;
    unsigned short  port;
    long            flags;
    int             direct;
    time_t          deadline;

    if (argc < 8 || argc > 9
        || (argc == 9 && strcmp(argv[8], "direct") != 0))
    {
        fprintf(stderr, "usage: %s HOST PORT JID PASSWORD CAFILE TO BODY "
                "[direct]\n", argv[0]);
        return 2;
    }

    port = (unsigned short) atoi(argv[2]);
    msg_to = argv[6];
    msg_body = argv[7];
    direct = (argc == 9);

    xmpp_initialize();

    if (getenv("STROPHE_DEBUG") != NULL) {
        log = xmpp_get_default_logger(XMPP_LEVEL_DEBUG);
    }

    ctx = xmpp_ctx_new(NULL, log);
    conn = xmpp_conn_new(ctx);

    flags = XMPP_CONN_FLAG_MANDATORY_TLS;
    if (direct) {
        flags |= XMPP_CONN_FLAG_LEGACY_SSL;
    }
    if (xmpp_conn_set_flags(conn, flags) != XMPP_EOK) {
        fprintf(stderr, "strophe_login: xmpp_conn_set_flags failed\n");
        return 5;
    }

    xmpp_conn_set_cafile(conn, argv[5]);
    xmpp_conn_set_certfail_handler(conn, certfail);
    xmpp_conn_set_jid(conn, argv[3]);
    xmpp_conn_set_pass(conn, argv[4]);

    if (xmpp_connect_client(conn, argv[1], port, conn_handler, ctx)
        != XMPP_EOK)
    {
        fprintf(stderr, "strophe_login: xmpp_connect_client failed\n");
        return 5;
    }

    deadline = time(NULL) + 20;

    while (!done) {
        if (time(NULL) > deadline) {
            fprintf(stderr, "strophe_login: timed out\n");
            status = 3;
            break;
        }
        xmpp_run_once(ctx, 100);
    }

    xmpp_conn_release(conn);
    xmpp_ctx_free(ctx);
    xmpp_shutdown();

    return status;
}
