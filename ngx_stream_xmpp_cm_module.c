
/*
 * ngx_stream_xmpp_cm_module: directives, configuration and module glue.
 * The engine lives in src/.
 */


#include "ngx_stream_xmpp_cm.h"


static ngx_int_t ngx_stream_xmpp_cm_add_variables(ngx_conf_t *cf);
static ngx_int_t ngx_stream_xmpp_cm_variable(ngx_stream_session_t *s,
    ngx_stream_variable_value_t *v, uintptr_t data);
static void *ngx_stream_xmpp_cm_create_main_conf(ngx_conf_t *cf);
static void *ngx_stream_xmpp_cm_create_srv_conf(ngx_conf_t *cf);
static char *ngx_stream_xmpp_cm_merge_srv_conf(ngx_conf_t *cf, void *parent,
    void *child);
static ngx_int_t ngx_stream_xmpp_cm_postconfiguration(ngx_conf_t *cf);
static char *ngx_stream_xmpp_cm_pass(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_stream_xmpp_cm_domain(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_stream_xmpp_cm_name(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_stream_xmpp_cm_secret(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_stream_xmpp_cm_msec_pair(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_stream_xmpp_cm_size_pair(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_stream_xmpp_cm_limit_rate(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_stream_xmpp_cm_init_process(ngx_cycle_t *cycle);
static void ngx_stream_xmpp_cm_exit_process(ngx_cycle_t *cycle);


static char *ngx_stream_xmpp_cm_bounds(ngx_conf_t *cf, void *post,
    void *data);

static ngx_conf_num_bounds_t  ngx_stream_xmpp_cm_connections_bounds = {
    ngx_stream_xmpp_cm_bounds, 1, 64
};

static ngx_conf_num_bounds_t  ngx_stream_xmpp_cm_depth_bounds = {
    ngx_stream_xmpp_cm_bounds, 2, 1000
};


static ngx_conf_enum_t  ngx_stream_xmpp_cm_starttls_values[] = {
    { ngx_string("off"), NGX_XMPP_CM_TLS_OFF },
    { ngx_string("optional"), NGX_XMPP_CM_TLS_OPTIONAL },
    { ngx_string("required"), NGX_XMPP_CM_TLS_REQUIRED },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_stream_xmpp_cm_upstream_tls_values[] = {
    { ngx_string("off"), NGX_XMPP_CM_UPSTREAM_TLS_OFF },
    { ngx_string("starttls"), NGX_XMPP_CM_UPSTREAM_TLS_STARTTLS },
    { ngx_string("direct"), NGX_XMPP_CM_UPSTREAM_TLS_DIRECT },
    { ngx_null_string, 0 }
};


#if (NGX_SSL)

static ngx_conf_bitmask_t  ngx_stream_xmpp_cm_ssl_protocols[] = {
    { ngx_string("SSLv2"), NGX_SSL_SSLv2 },
    { ngx_string("SSLv3"), NGX_SSL_SSLv3 },
    { ngx_string("TLSv1"), NGX_SSL_TLSv1 },
    { ngx_string("TLSv1.1"), NGX_SSL_TLSv1_1 },
    { ngx_string("TLSv1.2"), NGX_SSL_TLSv1_2 },
    { ngx_string("TLSv1.3"), NGX_SSL_TLSv1_3 },
    { ngx_null_string, 0 }
};

#endif


static ngx_command_t  ngx_stream_xmpp_cm_commands[] = {

    { ngx_string("xmpp_cm_pass"),
      NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_stream_xmpp_cm_pass,
      NGX_STREAM_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("xmpp_cm_domain"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_1MORE,
      ngx_stream_xmpp_cm_domain,
      NGX_STREAM_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("xmpp_cm_name"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_stream_xmpp_cm_name,
      NGX_STREAM_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("xmpp_cm_secret"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_stream_xmpp_cm_secret,
      NGX_STREAM_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("xmpp_cm_connections"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, connections),
      &ngx_stream_xmpp_cm_connections_bounds },

    { ngx_string("xmpp_cm_keepalive"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, keepalive),
      NULL },

    { ngx_string("xmpp_cm_upstream_timeout"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, upstream_timeout),
      NULL },

    { ngx_string("xmpp_cm_connect_timeout"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, connect_timeout),
      NULL },

    { ngx_string("xmpp_cm_reconnect"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE2,
      ngx_stream_xmpp_cm_msec_pair,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, reconnect_min),
      NULL },

    { ngx_string("xmpp_cm_auth_timeout"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, auth_timeout),
      NULL },

    { ngx_string("xmpp_cm_idle_timeout"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, idle_timeout),
      NULL },

    { ngx_string("xmpp_cm_stanza_timeout"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, stanza_timeout),
      NULL },

    { ngx_string("xmpp_cm_close_delay"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, close_delay),
      NULL },

    { ngx_string("xmpp_cm_max_stanza_size"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, max_stanza),
      NULL },

    { ngx_string("xmpp_cm_preauth_max_stanza_size"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, preauth_max_stanza),
      NULL },

    { ngx_string("xmpp_cm_max_depth"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, max_depth),
      &ngx_stream_xmpp_cm_depth_bounds },

    { ngx_string("xmpp_cm_client_output_limit"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, client_output_limit),
      NULL },

    { ngx_string("xmpp_cm_starttls"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, starttls),
      &ngx_stream_xmpp_cm_starttls_values },

    { ngx_string("xmpp_cm_compression"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, compression),
      NULL },

    { ngx_string("xmpp_cm_upstream_watermarks"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE2,
      ngx_stream_xmpp_cm_size_pair,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, upstream_high),
      NULL },

    { ngx_string("xmpp_cm_limit_rate"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE12,
      ngx_stream_xmpp_cm_limit_rate,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, limit_rate),
      NULL },

    { ngx_string("xmpp_cm_preauth_limit_rate"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE12,
      ngx_stream_xmpp_cm_limit_rate,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, preauth_limit_rate),
      NULL },

    { ngx_string("xmpp_cm_upstream_tls"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, upstream_tls),
      &ngx_stream_xmpp_cm_upstream_tls_values },

#if (NGX_SSL)

    { ngx_string("xmpp_cm_upstream_ssl_protocols"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_1MORE,
      ngx_conf_set_bitmask_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, upstream_ssl_protocols),
      &ngx_stream_xmpp_cm_ssl_protocols },

    { ngx_string("xmpp_cm_upstream_ssl_ciphers"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, upstream_ssl_ciphers),
      NULL },

    { ngx_string("xmpp_cm_upstream_ssl_verify"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, upstream_ssl_verify),
      NULL },

    { ngx_string("xmpp_cm_upstream_ssl_verify_depth"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, upstream_ssl_verify_depth),
      NULL },

    { ngx_string("xmpp_cm_upstream_ssl_name"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, upstream_ssl_name),
      NULL },

    { ngx_string("xmpp_cm_upstream_ssl_server_name"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, upstream_ssl_server_name),
      NULL },

    { ngx_string("xmpp_cm_upstream_ssl_trusted_certificate"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t,
               upstream_ssl_trusted_certificate),
      NULL },

    { ngx_string("xmpp_cm_upstream_ssl_crl"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, upstream_ssl_crl),
      NULL },

    { ngx_string("xmpp_cm_upstream_ssl_certificate"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, upstream_ssl_certificate),
      NULL },

    { ngx_string("xmpp_cm_upstream_ssl_certificate_key"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, upstream_ssl_certificate_key),
      NULL },

    { ngx_string("xmpp_cm_upstream_ssl_session_reuse"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, upstream_ssl_session_reuse),
      NULL },

#endif

    { ngx_string("xmpp_cm_metrics_slots"),
      NGX_STREAM_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_xmpp_cm_metrics_slots,
      NGX_STREAM_MAIN_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_stream_variable_t  ngx_stream_xmpp_cm_vars[] = {

    { ngx_string("xmpp_cm_streamid"), NULL, ngx_stream_xmpp_cm_variable,
      0, NGX_STREAM_VAR_NOCACHEABLE, 0 },

    { ngx_string("xmpp_cm_jid"), NULL, ngx_stream_xmpp_cm_variable,
      1, NGX_STREAM_VAR_NOCACHEABLE, 0 },

      ngx_stream_null_variable
};


static ngx_stream_module_t  ngx_stream_xmpp_cm_module_ctx = {
    ngx_stream_xmpp_cm_add_variables,      /* preconfiguration */
    ngx_stream_xmpp_cm_postconfiguration,  /* postconfiguration */

    ngx_stream_xmpp_cm_create_main_conf,   /* create main configuration */
    NULL,                                  /* init main configuration */

    ngx_stream_xmpp_cm_create_srv_conf,    /* create server configuration */
    ngx_stream_xmpp_cm_merge_srv_conf      /* merge server configuration */
};


ngx_module_t  ngx_stream_xmpp_cm_module = {
    NGX_MODULE_V1,
    &ngx_stream_xmpp_cm_module_ctx,        /* module context */
    ngx_stream_xmpp_cm_commands,           /* module directives */
    NGX_STREAM_MODULE,                     /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_stream_xmpp_cm_init_process,       /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_stream_xmpp_cm_exit_process,       /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_stream_xmpp_cm_add_variables(ngx_conf_t *cf)
{
    ngx_stream_variable_t  *var, *v;

    for (v = ngx_stream_xmpp_cm_vars; v->name.len; v++) {
        var = ngx_stream_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


/* $xmpp_cm_streamid, $xmpp_cm_jid (the JID Openfire bound) */

static ngx_int_t
ngx_stream_xmpp_cm_variable(ngx_stream_session_t *s,
    ngx_stream_variable_value_t *v, uintptr_t data)
{
    ngx_str_t  value;

    if (ngx_xmpp_cm_client_variable(s, data, &value) != NGX_OK
        || value.len == 0)
    {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = value.len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    v->data = value.data;

    return NGX_OK;
}


static void *
ngx_stream_xmpp_cm_create_main_conf(ngx_conf_t *cf)
{
    ngx_stream_xmpp_cm_main_conf_t  *cmcf;

    cmcf = ngx_pcalloc(cf->pool, sizeof(ngx_stream_xmpp_cm_main_conf_t));
    if (cmcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&cmcf->servers, cf->pool, 4,
                       sizeof(ngx_stream_xmpp_cm_srv_conf_t *))
        != NGX_OK)
    {
        return NULL;
    }

    return cmcf;
}


static void *
ngx_stream_xmpp_cm_create_srv_conf(ngx_conf_t *cf)
{
    ngx_stream_xmpp_cm_srv_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_stream_xmpp_cm_srv_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->upstream = NULL;
     *     conf->pass = { 0, NULL };
     *     conf->name = { 0, NULL };
     *     conf->secret = { 0, NULL };
     *     conf->pool = NULL;
     */

    conf->domains = NGX_CONF_UNSET_PTR;
    conf->connections = NGX_CONF_UNSET_UINT;
    conf->keepalive = NGX_CONF_UNSET_MSEC;
    conf->upstream_timeout = NGX_CONF_UNSET_MSEC;
    conf->connect_timeout = NGX_CONF_UNSET_MSEC;
    conf->reconnect_min = NGX_CONF_UNSET_MSEC;
    conf->reconnect_max = NGX_CONF_UNSET_MSEC;
    conf->auth_timeout = NGX_CONF_UNSET_MSEC;
    conf->idle_timeout = NGX_CONF_UNSET_MSEC;
    conf->stanza_timeout = NGX_CONF_UNSET_MSEC;
    conf->close_delay = NGX_CONF_UNSET_MSEC;
    conf->max_stanza = NGX_CONF_UNSET_SIZE;
    conf->preauth_max_stanza = NGX_CONF_UNSET_SIZE;
    conf->max_depth = NGX_CONF_UNSET_UINT;
    conf->client_output_limit = NGX_CONF_UNSET_SIZE;
    conf->upstream_high = NGX_CONF_UNSET_SIZE;
    conf->upstream_low = NGX_CONF_UNSET_SIZE;
    conf->limit_rate = NGX_CONF_UNSET_SIZE;
    conf->limit_burst = NGX_CONF_UNSET_SIZE;
    conf->preauth_limit_rate = NGX_CONF_UNSET_SIZE;
    conf->preauth_limit_burst = NGX_CONF_UNSET_SIZE;
    conf->starttls = NGX_CONF_UNSET_UINT;
    conf->compression = NGX_CONF_UNSET;
    conf->upstream_tls = NGX_CONF_UNSET_UINT;

#if (NGX_SSL)
    /*
     * set by ngx_pcalloc():
     *
     *     conf->upstream_ssl = NULL;
     *     conf->upstream_ssl_protocols = 0;
     *     conf->upstream_ssl_ciphers = { 0, NULL };
     *     conf->upstream_ssl_name = { 0, NULL };
     *     conf->upstream_ssl_trusted_certificate = { 0, NULL };
     *     conf->upstream_ssl_crl = { 0, NULL };
     *     conf->upstream_ssl_certificate = { 0, NULL };
     *     conf->upstream_ssl_certificate_key = { 0, NULL };
     */

    conf->upstream_ssl_verify = NGX_CONF_UNSET;
    conf->upstream_ssl_verify_depth = NGX_CONF_UNSET_UINT;
    conf->upstream_ssl_server_name = NGX_CONF_UNSET;
    conf->upstream_ssl_session_reuse = NGX_CONF_UNSET;
#endif

    return conf;
}


static char *
ngx_stream_xmpp_cm_merge_srv_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_stream_xmpp_cm_srv_conf_t *prev = parent;
    ngx_stream_xmpp_cm_srv_conf_t *conf = child;

    ngx_stream_core_srv_conf_t  *cscf;

    ngx_conf_merge_ptr_value(conf->domains, prev->domains, NULL);
    ngx_conf_merge_str_value(conf->name, prev->name, "nginx-cm");
    ngx_conf_merge_str_value(conf->secret, prev->secret, "");
    ngx_conf_merge_uint_value(conf->connections, prev->connections, 4);
    ngx_conf_merge_msec_value(conf->keepalive, prev->keepalive, 30000);
    ngx_conf_merge_msec_value(conf->upstream_timeout,
                              prev->upstream_timeout, 120000);
    ngx_conf_merge_msec_value(conf->connect_timeout,
                              prev->connect_timeout, 10000);
    ngx_conf_merge_msec_value(conf->reconnect_min, prev->reconnect_min, 1000);
    ngx_conf_merge_msec_value(conf->reconnect_max, prev->reconnect_max,
                              60000);
    ngx_conf_merge_msec_value(conf->auth_timeout, prev->auth_timeout, 60000);
    ngx_conf_merge_msec_value(conf->idle_timeout, prev->idle_timeout,
                              600000);
    ngx_conf_merge_msec_value(conf->stanza_timeout, prev->stanza_timeout,
                              60000);
    ngx_conf_merge_msec_value(conf->close_delay, prev->close_delay, 0);
    ngx_conf_merge_size_value(conf->max_stanza, prev->max_stanza,
                              256 * 1024);
    ngx_conf_merge_size_value(conf->preauth_max_stanza,
                              prev->preauth_max_stanza,
                              ngx_min(16 * 1024, conf->max_stanza));
    ngx_conf_merge_uint_value(conf->max_depth, prev->max_depth, 32);
    ngx_conf_merge_size_value(conf->client_output_limit,
                              prev->client_output_limit, 1024 * 1024);
    ngx_conf_merge_size_value(conf->upstream_high, prev->upstream_high,
                              1024 * 1024);
    ngx_conf_merge_size_value(conf->upstream_low, prev->upstream_low,
                              256 * 1024);

    /*
     * A rate and its burst go together: a server that sets the rate does
     * not inherit the burst.  The burst defaults to one second at the
     * rate; before authentication the rate and burst default to those
     * after it.
     */

    if (conf->limit_rate == NGX_CONF_UNSET_SIZE) {
        conf->limit_rate = prev->limit_rate;
        conf->limit_burst = prev->limit_burst;
    }

    if (conf->limit_rate == NGX_CONF_UNSET_SIZE) {
        conf->limit_rate = 0;
    }

    if (conf->limit_burst == NGX_CONF_UNSET_SIZE) {
        conf->limit_burst = conf->limit_rate;
    }

    if (conf->preauth_limit_rate == NGX_CONF_UNSET_SIZE) {
        conf->preauth_limit_rate = prev->preauth_limit_rate;
        conf->preauth_limit_burst = prev->preauth_limit_burst;
    }

    if (conf->preauth_limit_rate == NGX_CONF_UNSET_SIZE) {
        conf->preauth_limit_rate = conf->limit_rate;
        conf->preauth_limit_burst = conf->limit_burst;
    }

    if (conf->preauth_limit_burst == NGX_CONF_UNSET_SIZE) {
        conf->preauth_limit_burst = conf->preauth_limit_rate;
    }

    ngx_conf_merge_uint_value(conf->starttls, prev->starttls,
                              NGX_XMPP_CM_TLS_OFF);
    ngx_conf_merge_value(conf->compression, prev->compression, 0);
    ngx_conf_merge_uint_value(conf->upstream_tls, prev->upstream_tls,
                              NGX_XMPP_CM_UPSTREAM_TLS_OFF);

#if (NGX_SSL)
    ngx_conf_merge_bitmask_value(conf->upstream_ssl_protocols,
                                 prev->upstream_ssl_protocols,
                                 (NGX_CONF_BITMASK_SET|NGX_SSL_TLSv1_2
                                  |NGX_SSL_TLSv1_3));
    ngx_conf_merge_str_value(conf->upstream_ssl_ciphers,
                             prev->upstream_ssl_ciphers, "DEFAULT");
    ngx_conf_merge_value(conf->upstream_ssl_verify,
                         prev->upstream_ssl_verify, 0);
    ngx_conf_merge_uint_value(conf->upstream_ssl_verify_depth,
                              prev->upstream_ssl_verify_depth, 1);
    ngx_conf_merge_str_value(conf->upstream_ssl_name,
                             prev->upstream_ssl_name, "");
    ngx_conf_merge_value(conf->upstream_ssl_server_name,
                         prev->upstream_ssl_server_name, 0);
    ngx_conf_merge_str_value(conf->upstream_ssl_trusted_certificate,
                             prev->upstream_ssl_trusted_certificate, "");
    ngx_conf_merge_str_value(conf->upstream_ssl_crl, prev->upstream_ssl_crl,
                             "");
    ngx_conf_merge_str_value(conf->upstream_ssl_certificate,
                             prev->upstream_ssl_certificate, "");
    ngx_conf_merge_str_value(conf->upstream_ssl_certificate_key,
                             prev->upstream_ssl_certificate_key, "");
    ngx_conf_merge_value(conf->upstream_ssl_session_reuse,
                         prev->upstream_ssl_session_reuse, 1);
#endif

#if !(NGX_STREAM_SSL)
    if (conf->starttls != NGX_XMPP_CM_TLS_OFF) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"xmpp_cm_starttls\" needs nginx built with "
                           "--with-stream_ssl_module");
        return NGX_CONF_ERROR;
    }
#endif

    if (conf->max_stanza > NGX_XMPP_CM_MAX_STANZA) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"xmpp_cm_max_stanza_size\" must not exceed %uz "
                           "bytes: a whole <route> must stay below "
                           "Openfire's 1 MiB xmpp.parser.buffer.size",
                           (size_t) NGX_XMPP_CM_MAX_STANZA);
        return NGX_CONF_ERROR;
    }

    if (conf->max_stanza < 1024) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"xmpp_cm_max_stanza_size\" must be at least 1k");
        return NGX_CONF_ERROR;
    }

    if (conf->preauth_max_stanza > conf->max_stanza
        || conf->preauth_max_stanza < 512)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"xmpp_cm_preauth_max_stanza_size\" must be "
                           "between 512 and \"xmpp_cm_max_stanza_size\"");
        return NGX_CONF_ERROR;
    }

    if (conf->reconnect_min == 0 || conf->reconnect_min > conf->reconnect_max)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"xmpp_cm_reconnect\" needs 0 < min <= max");
        return NGX_CONF_ERROR;
    }

    if (conf->upstream_low >= conf->upstream_high) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"xmpp_cm_upstream_watermarks\" needs "
                           "low < high");
        return NGX_CONF_ERROR;
    }

    if (conf->keepalive == 0 || conf->upstream_timeout == 0
        || conf->connect_timeout == 0 || conf->auth_timeout == 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"xmpp_cm_keepalive\", "
                           "\"xmpp_cm_upstream_timeout\", "
                           "\"xmpp_cm_connect_timeout\" and "
                           "\"xmpp_cm_auth_timeout\" must not be 0");
        return NGX_CONF_ERROR;
    }

    if (conf->client_output_limit < conf->max_stanza) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"xmpp_cm_client_output_limit\" must be at least "
                           "\"xmpp_cm_max_stanza_size\"");
        return NGX_CONF_ERROR;
    }

    if (conf->upstream == NULL) {
        return NGX_CONF_OK;
    }

    cscf = ngx_stream_conf_get_module_srv_conf(cf, ngx_stream_core_module);

    if (cscf->handler != ngx_stream_xmpp_cm_handler) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"xmpp_cm_pass\" in %V:%ui conflicts with another "
                      "content handler (proxy_pass, return, ...) in the "
                      "same server", &conf->conf_file, conf->conf_line);
        return NGX_CONF_ERROR;
    }

    if (conf->domains == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "no \"xmpp_cm_domain\" is defined for the server "
                      "with \"xmpp_cm_pass\" in %V:%ui",
                      &conf->conf_file, conf->conf_line);
        return NGX_CONF_ERROR;
    }

    if (conf->secret.len == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "no \"xmpp_cm_secret\" is defined for the server "
                      "with \"xmpp_cm_pass\" in %V:%ui (set it to "
                      "Openfire's xmpp.multiplex.defaultSecret)",
                      &conf->conf_file, conf->conf_line);
        return NGX_CONF_ERROR;
    }

    if (conf->upstream_tls != NGX_XMPP_CM_UPSTREAM_TLS_OFF) {
#if (NGX_SSL)
        if (ngx_xmpp_cm_upstream_ssl_conf(cf, conf) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
#else
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"xmpp_cm_upstream_tls\" needs nginx built with "
                      "OpenSSL");
        return NGX_CONF_ERROR;
#endif
    }

    return NGX_CONF_OK;
}


/* servers sharing a CM name share one pool: their settings must agree */

static ngx_int_t
ngx_stream_xmpp_cm_postconfiguration(ngx_conf_t *cf)
{
    ngx_uint_t                        i, j;
    ngx_stream_xmpp_cm_srv_conf_t   **srv, *a, *b;
    ngx_stream_xmpp_cm_main_conf_t   *cmcf;

    cmcf = ngx_stream_conf_get_module_main_conf(cf, ngx_stream_xmpp_cm_module);
    srv = cmcf->servers.elts;

    for (i = 0; i < cmcf->servers.nelts; i++) {
        a = srv[i];

#if (NGX_STREAM_SSL)
        /* after every merge: the ssl_* settings are final here */

        if (a->starttls != NGX_XMPP_CM_TLS_OFF
            && ngx_xmpp_cm_tls_conf(cf, a,
                   a->ctx->srv_conf[ngx_stream_ssl_module.ctx_index])
               != NGX_OK)
        {
            return NGX_ERROR;
        }
#endif

        for (j = 0; j < i; j++) {
            b = srv[j];

            if (a->name.len != b->name.len
                || ngx_strncmp(a->name.data, b->name.data, a->name.len) != 0)
            {
                continue;
            }

            if (a->upstream != b->upstream
                || a->connections != b->connections
                || a->upstream_tls != b->upstream_tls
                || a->secret.len != b->secret.len
                || ngx_strncmp(a->secret.data, b->secret.data, a->secret.len)
                   != 0)
            {
                ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                              "\"xmpp_cm_name\" \"%V\" is used in %V:%ui and "
                              "%V:%ui with a different \"xmpp_cm_pass\", "
                              "\"xmpp_cm_secret\", "
                              "\"xmpp_cm_connections\" or "
                              "\"xmpp_cm_upstream_tls\"; give each its own "
                              "name", &a->name, &b->conf_file, b->conf_line,
                              &a->conf_file, a->conf_line);
                return NGX_ERROR;
            }
        }
    }

    if (cmcf->servers.nelts && ngx_xmpp_cm_metrics_conf(cf, cmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static char *
ngx_stream_xmpp_cm_pass(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_stream_xmpp_cm_srv_conf_t *xcf = conf;

    ngx_url_t                        u;
    ngx_str_t                       *value;
    ngx_stream_xmpp_cm_srv_conf_t  **srv;
    ngx_stream_core_srv_conf_t      *cscf;
    ngx_stream_xmpp_cm_main_conf_t  *cmcf;

    if (xcf->upstream) {
        return "is duplicate";
    }

    value = cf->args->elts;

    cscf = ngx_stream_conf_get_module_srv_conf(cf, ngx_stream_core_module);

    if (cscf->handler) {
        return "conflicts with another content handler (proxy_pass?)";
    }

    cscf->handler = ngx_stream_xmpp_cm_handler;

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = value[1];
    u.no_resolve = 1;

    xcf->upstream = ngx_stream_upstream_add(cf, &u, 0);
    if (xcf->upstream == NULL) {
        return NGX_CONF_ERROR;
    }

    xcf->pass = value[1];
    xcf->ctx = cf->ctx;
    xcf->conf_file = cf->conf_file->file.name;
    xcf->conf_line = cf->conf_file->line;

    cmcf = ngx_stream_conf_get_module_main_conf(cf, ngx_stream_xmpp_cm_module);

    srv = ngx_array_push(&cmcf->servers);
    if (srv == NULL) {
        return NGX_CONF_ERROR;
    }

    *srv = xcf;

    return NGX_CONF_OK;
}


/* ngx_conf_check_num_bounds(), with the directive's name in the error */

static char *
ngx_stream_xmpp_cm_bounds(ngx_conf_t *cf, void *post, void *data)
{
    ngx_conf_num_bounds_t  *bounds = post;
    ngx_int_t              *np = data;

    ngx_str_t  *value;

    if (*np >= bounds->low && *np <= bounds->high) {
        return NGX_CONF_OK;
    }

    value = cf->args->elts;

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "\"%V\" must be between %i and %i",
                       &value[0], bounds->low, bounds->high);

    return NGX_CONF_ERROR;
}


static ngx_int_t
ngx_stream_xmpp_cm_label_ok(ngx_str_t *s, ngx_uint_t dots)
{
    size_t  i;
    u_char  ch;

    if (s->len == 0 || s->len > NGX_XMPP_CM_DOMAIN_MAX) {
        return 0;
    }

    for (i = 0; i < s->len; i++) {
        ch = s->data[i];

        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')
            || (ch >= '0' && ch <= '9') || ch == '-'
            || (dots && ch == '.'))
        {
            continue;
        }

        return 0;
    }

    return 1;
}


static char *
ngx_stream_xmpp_cm_domain(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_stream_xmpp_cm_srv_conf_t *xcf = conf;

    ngx_str_t   *value, *d;
    ngx_uint_t   i;

    if (xcf->domains != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    xcf->domains = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                    sizeof(ngx_str_t));
    if (xcf->domains == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {
        if (!ngx_stream_xmpp_cm_label_ok(&value[i], 1)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid XMPP domain \"%V\" in "
                               "\"xmpp_cm_domain\"", &value[i]);
            return NGX_CONF_ERROR;
        }

        d = ngx_array_push(xcf->domains);
        if (d == NULL) {
            return NGX_CONF_ERROR;
        }

        *d = value[i];
        ngx_strlow(d->data, d->data, d->len);
    }

    return NGX_CONF_OK;
}


static char *
ngx_stream_xmpp_cm_name(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_stream_xmpp_cm_srv_conf_t *xcf = conf;

    ngx_str_t  *value;

    if (xcf->name.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (!ngx_stream_xmpp_cm_label_ok(&value[1], 1)
        || value[1].len > NGX_XMPP_CM_CM_NAME_MAX)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"xmpp_cm_name\" \"%V\": use up to 100 "
                           "letters, digits, '-' and '.' (it becomes a JID "
                           "domain part)", &value[1]);
        return NGX_CONF_ERROR;
    }

    xcf->name = value[1];
    ngx_strlow(xcf->name.data, xcf->name.data, xcf->name.len);

    return NGX_CONF_OK;
}


static char *
ngx_stream_xmpp_cm_secret(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_stream_xmpp_cm_srv_conf_t *xcf = conf;

    size_t      i;
    ngx_str_t  *value;

    if (xcf->secret.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 0) {
        return "must not be empty";
    }

    for (i = 0; i < value[1].len; i++) {
        if (value[1].data[i] < 0x21 || value[1].data[i] > 0x7e) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"xmpp_cm_secret\" must be printable ASCII "
                               "(Openfire hashes it in its platform "
                               "charset)");
            return NGX_CONF_ERROR;
        }
    }

    xcf->secret = value[1];

    return NGX_CONF_OK;
}


static char *
ngx_stream_xmpp_cm_msec_pair(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    ngx_str_t   *value;
    ngx_msec_t  *v, t;
    ngx_uint_t   i;

    v = (ngx_msec_t *) (p + cmd->offset);

    if (v[0] != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }

    value = cf->args->elts;

    for (i = 0; i < 2; i++) {
        t = ngx_parse_time(&value[i + 1], 0);
        if (t == (ngx_msec_t) NGX_ERROR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid time \"%V\" in \"%V\"",
                               &value[i + 1], &cmd->name);
            return NGX_CONF_ERROR;
        }

        v[i] = t;
    }

    return NGX_CONF_OK;
}


static char *
ngx_stream_xmpp_cm_size_pair(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    size_t      *v;
    ssize_t      n;
    ngx_str_t   *value;
    ngx_uint_t   i;

    v = (size_t *) (p + cmd->offset);

    if (v[0] != NGX_CONF_UNSET_SIZE) {
        return "is duplicate";
    }

    value = cf->args->elts;

    for (i = 0; i < 2; i++) {
        n = ngx_parse_size(&value[i + 1]);
        if (n == NGX_ERROR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid size \"%V\" in \"%V\"",
                               &value[i + 1], &cmd->name);
            return NGX_CONF_ERROR;
        }

        v[i] = (size_t) n;
    }

    return NGX_CONF_OK;
}


/*
 * xmpp_cm_limit_rate rate [burst=size]: two size_t at cmd->offset, the
 * rate (bytes per second, 0: off) and the burst (unset: the rate).
 */

static char *
ngx_stream_xmpp_cm_limit_rate(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    size_t      *v;
    ssize_t      n;
    ngx_str_t   *value, s;

    v = (size_t *) (p + cmd->offset);

    if (v[0] != NGX_CONF_UNSET_SIZE) {
        return "is duplicate";
    }

    value = cf->args->elts;

    n = ngx_parse_size(&value[1]);

    if (n == NGX_ERROR || n > NGX_XMPP_CM_RATE_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid rate \"%V\" in \"%V\" (a size in bytes "
                           "per second up to 1024m, 0 for off)",
                           &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    v[0] = (size_t) n;

    if (cf->args->nelts == 2) {
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value[2].data, "burst=", 6) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\" in \"%V\"",
                           &value[2], &cmd->name);
        return NGX_CONF_ERROR;
    }

    s.len = value[2].len - 6;
    s.data = value[2].data + 6;

    n = s.len ? ngx_parse_size(&s) : NGX_ERROR;

    if (n == NGX_ERROR || n > NGX_XMPP_CM_RATE_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid burst \"%V\" in \"%V\" (a size up to "
                           "1024m)", &s, &cmd->name);
        return NGX_CONF_ERROR;
    }

    v[1] = (size_t) n;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_stream_xmpp_cm_init_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                        i, j;
    ngx_xmpp_cm_worker_t             *wk;
    ngx_stream_xmpp_cm_srv_conf_t   **srv;
    ngx_stream_xmpp_cm_main_conf_t   *cmcf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    cmcf = ngx_stream_cycle_get_module_main_conf(cycle,
                                                 ngx_stream_xmpp_cm_module);
    if (cmcf == NULL) {
        return NGX_OK;
    }

    /* the buffers stay uninitialised: only what is used gets touched */

    wk = ngx_palloc(cycle->pool, sizeof(ngx_xmpp_cm_worker_t));
    if (wk == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(wk, offsetof(ngx_xmpp_cm_worker_t, client_buf));

    ngx_queue_init(&wk->clients);
    wk->metrics_slot = NGX_ERROR;

    wk->parking = ngx_xmpp_cm_xml_parking(cycle->pool);
    if (wk->parking == NULL) {
        return NGX_ERROR;
    }

    cmcf->worker = wk;

    srv = cmcf->servers.elts;

    for (i = 0; i < cmcf->servers.nelts; i++) {

        for (j = 0; j < i; j++) {
            if (srv[j]->name.len == srv[i]->name.len
                && ngx_strncmp(srv[j]->name.data, srv[i]->name.data,
                               srv[i]->name.len) == 0)
            {
                srv[i]->pool = srv[j]->pool;
                break;
            }
        }

        if (srv[i]->pool) {
            continue;
        }

        if (ngx_xmpp_cm_pool_init(cycle, srv[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
ngx_stream_xmpp_cm_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                        i;
    ngx_stream_xmpp_cm_srv_conf_t   **srv;
    ngx_stream_xmpp_cm_main_conf_t   *cmcf;

    cmcf = ngx_stream_cycle_get_module_main_conf(cycle,
                                                 ngx_stream_xmpp_cm_module);
    if (cmcf == NULL || cmcf->worker == NULL) {
        return;
    }

    srv = cmcf->servers.elts;

    for (i = 0; i < cmcf->servers.nelts; i++) {
        if (srv[i]->pool) {
            ngx_xmpp_cm_pool_exit(srv[i]->pool);
        }
    }

    ngx_xmpp_cm_client_shutdown_all(cmcf->worker);
    ngx_xmpp_cm_queue_release_free();
    ngx_xmpp_cm_xml_release_parked(cmcf->worker->parking);
    ngx_xmpp_cm_metrics_exit(cycle);
}
