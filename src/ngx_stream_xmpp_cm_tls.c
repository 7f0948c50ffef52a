
/*
 * TLS for client streams: the SSL context STARTTLS uses, and the
 * handshake on an accepted plaintext connection.
 *
 * One set of stream ssl_* directives serves STARTTLS and direct TLS.
 * nginx 1.22's stream ssl module builds an SSL context only for a server
 * {} that has a "listen ... ssl"; a server that offers STARTTLS without
 * one gets a context built here, at configuration time, from the same
 * merged ssl_* settings (certificates, with variables such as
 * $ssl_server_name for SNI, protocols, ciphers, session cache).
 *
 * This runs at postconfiguration, after every merge: the ssl module's
 * merge has set every setting it merges before its "listen ... ssl"
 * check (protocols, ciphers, certificates, passwords, session timeout,
 * conf commands, handshake timeout); the session cache and tickets are
 * merged only for a "listen ... ssl" server, so they may still be unset.
 */


#include "ngx_stream_xmpp_cm.h"


#if (NGX_STREAM_SSL)

static ngx_int_t ngx_xmpp_cm_tls_certificates(ngx_conf_t *cf,
    ngx_stream_xmpp_cm_srv_conf_t *conf, ngx_stream_ssl_conf_t *sscf);
#ifdef SSL_R_CERT_CB_ERROR
static ngx_int_t ngx_xmpp_cm_tls_cert_values(ngx_conf_t *cf,
    ngx_stream_xmpp_cm_srv_conf_t *conf, ngx_stream_ssl_conf_t *sscf);
static int ngx_xmpp_cm_tls_cert_cb(ngx_ssl_conn_t *ssl_conn, void *arg);
#endif


static ngx_str_t  ngx_xmpp_cm_sess_id_ctx = ngx_string("XMPP_CM");


ngx_int_t
ngx_xmpp_cm_tls_conf(ngx_conf_t *cf, ngx_stream_xmpp_cm_srv_conf_t *conf,
    ngx_stream_ssl_conf_t *sscf)
{
    ssize_t              builtin;
    ngx_ssl_t           *ssl;
    ngx_pool_cleanup_t  *cln;

    if (sscf->ssl.ctx) {
        /* the server has a "listen ... ssl": share nginx's own context */
        conf->ssl = &sscf->ssl;
        return NGX_OK;
    }

    if (sscf->certificates == NULL || sscf->certificates->nelts == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"xmpp_cm_starttls\" in %V:%ui needs "
                      "\"ssl_certificate\" and \"ssl_certificate_key\" "
                      "in the same server", &conf->conf_file,
                      conf->conf_line);
        return NGX_ERROR;
    }

    if (sscf->certificate_keys == NULL
        || sscf->certificate_keys->nelts < sscf->certificates->nelts)
    {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "no \"ssl_certificate_key\" is defined for "
                      "certificate \"%V\" used by \"xmpp_cm_starttls\" "
                      "in %V:%ui",
                      ((ngx_str_t *) sscf->certificates->elts)
                      + sscf->certificates->nelts - 1,
                      &conf->conf_file, conf->conf_line);
        return NGX_ERROR;
    }

    ssl = &conf->own_ssl;
    ssl->log = cf->log;

    if (ngx_ssl_create(ssl, sscf->protocols, NULL) != NGX_OK) {
        return NGX_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        ngx_ssl_cleanup_ctx(ssl);
        return NGX_ERROR;
    }

    cln->handler = ngx_ssl_cleanup_ctx;
    cln->data = ssl;

    if (ngx_ssl_ciphers(cf, ssl, &sscf->ciphers, sscf->prefer_server_ciphers)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_xmpp_cm_tls_certificates(cf, conf, sscf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_ssl_dhparam(cf, ssl, &sscf->dhparam) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_ssl_ecdh_curve(cf, ssl, &sscf->ecdh_curve) != NGX_OK) {
        return NGX_ERROR;
    }

    builtin = sscf->builtin_session_cache;

    if (builtin == NGX_CONF_UNSET) {
        builtin = NGX_SSL_NONE_SCACHE;
    }

    if (ngx_ssl_session_cache(ssl, &ngx_xmpp_cm_sess_id_ctx,
                              sscf->certificates, builtin, sscf->shm_zone,
                              sscf->session_timeout)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_ssl_session_ticket_keys(cf, ssl,
                                    sscf->session_ticket_keys
                                    == NGX_CONF_UNSET_PTR
                                    ? NULL : sscf->session_ticket_keys)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (sscf->session_tickets == 0) {
        SSL_CTX_set_options(ssl->ctx, SSL_OP_NO_TICKET);
    }

    if (ngx_ssl_conf_commands(cf, ssl, sscf->conf_commands) != NGX_OK) {
        return NGX_ERROR;
    }

    conf->ssl = ssl;

    return NGX_OK;
}


static ngx_int_t
ngx_xmpp_cm_tls_certificates(ngx_conf_t *cf,
    ngx_stream_xmpp_cm_srv_conf_t *conf, ngx_stream_ssl_conf_t *sscf)
{
    ngx_str_t   *cert, *key;
    ngx_uint_t   i, nelts;

    cert = sscf->certificates->elts;
    key = sscf->certificate_keys->elts;
    nelts = sscf->certificates->nelts;

    for (i = 0; i < nelts; i++) {
        if (ngx_stream_script_variables_count(&cert[i])
            || ngx_stream_script_variables_count(&key[i]))
        {
            goto variables;
        }
    }

    return ngx_ssl_certificates(cf, &conf->own_ssl, sscf->certificates,
                                sscf->certificate_keys, sscf->passwords);

variables:

#ifdef SSL_R_CERT_CB_ERROR

    return ngx_xmpp_cm_tls_cert_values(cf, conf, sscf);

#else

    ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                  "variables in \"ssl_certificate\" are not supported with "
                  "\"xmpp_cm_starttls\" on this platform");
    return NGX_ERROR;

#endif
}


#ifdef SSL_R_CERT_CB_ERROR

/* loaded per handshake, e.g. by $ssl_server_name (SNI) */

static ngx_int_t
ngx_xmpp_cm_tls_cert_values(ngx_conf_t *cf,
    ngx_stream_xmpp_cm_srv_conf_t *conf, ngx_stream_ssl_conf_t *sscf)
{
    ngx_str_t                           *cert, *key;
    ngx_uint_t                           i, nelts;
    ngx_stream_complex_value_t          *cv;
    ngx_stream_compile_complex_value_t   ccv;

    cert = sscf->certificates->elts;
    key = sscf->certificate_keys->elts;
    nelts = sscf->certificates->nelts;

    conf->cert_values = ngx_array_create(cf->pool, nelts,
                                         sizeof(ngx_stream_complex_value_t));
    conf->key_values = ngx_array_create(cf->pool, nelts,
                                        sizeof(ngx_stream_complex_value_t));
    if (conf->cert_values == NULL || conf->key_values == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < nelts; i++) {
        cv = ngx_array_push(conf->cert_values);
        if (cv == NULL) {
            return NGX_ERROR;
        }

        ngx_memzero(&ccv, sizeof(ngx_stream_compile_complex_value_t));
        ccv.cf = cf;
        ccv.value = &cert[i];
        ccv.complex_value = cv;
        ccv.zero = 1;

        if (ngx_stream_compile_complex_value(&ccv) != NGX_OK) {
            return NGX_ERROR;
        }

        cv = ngx_array_push(conf->key_values);
        if (cv == NULL) {
            return NGX_ERROR;
        }

        ngx_memzero(&ccv, sizeof(ngx_stream_compile_complex_value_t));
        ccv.cf = cf;
        ccv.value = &key[i];
        ccv.complex_value = cv;
        ccv.zero = 1;

        if (ngx_stream_compile_complex_value(&ccv) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    conf->passwords = ngx_ssl_preserve_passwords(cf, sscf->passwords);
    if (conf->passwords == NULL) {
        return NGX_ERROR;
    }

    SSL_CTX_set_cert_cb(conf->own_ssl.ctx, ngx_xmpp_cm_tls_cert_cb, conf);

    return NGX_OK;
}


static int
ngx_xmpp_cm_tls_cert_cb(ngx_ssl_conn_t *ssl_conn, void *arg)
{
    ngx_stream_xmpp_cm_srv_conf_t *conf = arg;

    ngx_str_t                    cert, key;
    ngx_uint_t                   i;
    ngx_connection_t            *c;
    ngx_stream_session_t        *s;
    ngx_stream_complex_value_t  *certs, *keys;

    c = ngx_ssl_get_connection(ssl_conn);

    if (c->ssl->handshaked) {
        return 0;
    }

    s = c->data;
    certs = conf->cert_values->elts;
    keys = conf->key_values->elts;

    for (i = 0; i < conf->cert_values->nelts; i++) {

        if (ngx_stream_complex_value(s, &certs[i], &cert) != NGX_OK
            || ngx_stream_complex_value(s, &keys[i], &key) != NGX_OK)
        {
            return 0;
        }

        ngx_log_debug2(NGX_LOG_DEBUG_STREAM, c->log, 0,
                       "xmpp_cm: ssl cert \"%s\", key \"%s\"",
                       cert.data, key.data);

        if (ngx_ssl_connection_certificate(c, c->pool, &cert, &key,
                                           conf->passwords)
            != NGX_OK)
        {
            return 0;
        }
    }

    return 1;
}

#endif


/*
 * Starts TLS on a plaintext client connection after <proceed/> went out.
 * NGX_AGAIN: the handshake goes on and calls handler when done.
 */

ngx_int_t
ngx_xmpp_cm_tls_start(ngx_connection_t *c,
    ngx_stream_xmpp_cm_srv_conf_t *conf, ngx_connection_handler_pt handler)
{
    ngx_int_t               rc;
    ngx_stream_session_t   *s;
    ngx_stream_ssl_conf_t  *sscf;

    if (ngx_ssl_create_connection(conf->ssl, c, 0) != NGX_OK) {
        return NGX_ERROR;
    }

    rc = ngx_ssl_handshake(c);

    if (rc == NGX_AGAIN) {
        if (c->read->timer_set) {
            ngx_del_timer(c->read);
        }

        /* as ngx_stream_ssl_init_connection() for "listen ... ssl" */

        s = c->data;
        sscf = ngx_stream_get_module_srv_conf(s, ngx_stream_ssl_module);

        ngx_add_timer(c->read, sscf->handshake_timeout);
        c->ssl->handler = handler;
    }

    return rc;
}

#endif


#if (NGX_SSL)

/*
 * TLS to Openfire (xmpp_cm_upstream_tls): a client context built as the
 * stream proxy builds proxy_ssl's, from the xmpp_cm_upstream_ssl_*
 * directives.  The name to verify defaults to the XMPP domain: that is
 * the identity Openfire's certificates carry (RFC 6120, 13.7.2.1).
 */

ngx_int_t
ngx_xmpp_cm_upstream_ssl_conf(ngx_conf_t *cf,
    ngx_stream_xmpp_cm_srv_conf_t *conf)
{
    u_char              *p;
    ngx_str_t           *name;
    ngx_ssl_t           *ssl;
    ngx_pool_cleanup_t  *cln;

    name = conf->upstream_ssl_name.len ? &conf->upstream_ssl_name
                                       : conf->domains->elts;

    /* null-terminated, for SSL_set_tlsext_host_name() */

    p = ngx_pnalloc(cf->pool, name->len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    (void) ngx_cpystrn(p, name->data, name->len + 1);
    conf->upstream_ssl_name.len = name->len;
    conf->upstream_ssl_name.data = p;

    ssl = ngx_pcalloc(cf->pool, sizeof(ngx_ssl_t));
    if (ssl == NULL) {
        return NGX_ERROR;
    }

    ssl->log = cf->log;

    if (ngx_ssl_create(ssl, conf->upstream_ssl_protocols, NULL) != NGX_OK) {
        return NGX_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        ngx_ssl_cleanup_ctx(ssl);
        return NGX_ERROR;
    }

    cln->handler = ngx_ssl_cleanup_ctx;
    cln->data = ssl;

    if (ngx_ssl_ciphers(cf, ssl, &conf->upstream_ssl_ciphers, 0) != NGX_OK) {
        return NGX_ERROR;
    }

    if (conf->upstream_ssl_certificate.len) {

        if (conf->upstream_ssl_certificate_key.len == 0) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "no \"xmpp_cm_upstream_ssl_certificate_key\" is "
                          "defined for certificate \"%V\"",
                          &conf->upstream_ssl_certificate);
            return NGX_ERROR;
        }

        if (ngx_ssl_certificate(cf, ssl, &conf->upstream_ssl_certificate,
                                &conf->upstream_ssl_certificate_key, NULL)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (conf->upstream_ssl_verify) {
        if (conf->upstream_ssl_trusted_certificate.len == 0) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "no \"xmpp_cm_upstream_ssl_trusted_certificate\" "
                          "for \"xmpp_cm_upstream_ssl_verify\" in %V:%ui "
                          "(the CA that signed Openfire's certificate, "
                          "in PEM)", &conf->conf_file, conf->conf_line);
            return NGX_ERROR;
        }

        if (ngx_ssl_trusted_certificate(cf, ssl,
                                        &conf->upstream_ssl_trusted_certificate,
                                        conf->upstream_ssl_verify_depth)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (ngx_ssl_crl(cf, ssl, &conf->upstream_ssl_crl) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (ngx_ssl_client_session_cache(cf, ssl,
                                     conf->upstream_ssl_session_reuse)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    conf->upstream_ssl = ssl;

    return NGX_OK;
}

#endif
