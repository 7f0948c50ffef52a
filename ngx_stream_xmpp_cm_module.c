
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
static char *ngx_stream_xmpp_cm_backoff(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_stream_xmpp_cm_watermarks(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_stream_xmpp_cm_limit_rate(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_stream_xmpp_cm_window(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_stream_xmpp_cm_same_cm(ngx_stream_xmpp_cm_srv_conf_t *a,
    ngx_stream_xmpp_cm_srv_conf_t *b);
static ngx_int_t ngx_stream_xmpp_cm_shared_agree(ngx_conf_t *cf,
    ngx_stream_xmpp_cm_srv_conf_t *a, ngx_stream_xmpp_cm_srv_conf_t *b);
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


/*
 * The settings of a CM: servers with the same xmpp_cm_name share one
 * group of Openfire sockets per worker (ngx_xmpp_cm_upstream_t), which reads
 * them from the first such server's conf.  nginx -t checks that the
 * others agree.
 */

#define NGX_XMPP_CM_SHARED_PASS        0
#define NGX_XMPP_CM_SHARED_SECRET      1
#define NGX_XMPP_CM_SHARED_DOMAIN      2   /* the first xmpp_cm_domain */
#define NGX_XMPP_CM_SHARED_NUM         3
#define NGX_XMPP_CM_SHARED_FLAG        4
#define NGX_XMPP_CM_SHARED_ENUM        5
#define NGX_XMPP_CM_SHARED_BITMASK     6
#define NGX_XMPP_CM_SHARED_STR         7
#define NGX_XMPP_CM_SHARED_MSEC        8
#define NGX_XMPP_CM_SHARED_BACKOFF     9
#define NGX_XMPP_CM_SHARED_WATERMARKS  10
#define NGX_XMPP_CM_SHARED_WINDOW      11


/* the default of xmpp_cm_confirm_window */
#define NGX_XMPP_CM_CONFIRM_STANZAS    4096
#define NGX_XMPP_CM_CONFIRM_BYTES      (2 * 1024 * 1024)


typedef struct {
    ngx_str_t                        name;      /* the directive */
    ngx_uint_t                       type;
    size_t                           offset;
    void                            *values;    /* enum or bitmask names */
    ngx_uint_t                       tls_only;  /* unused with TLS off */
} ngx_stream_xmpp_cm_shared_t;


#define ngx_stream_xmpp_cm_shared(name, type, field, values, tls_only)        \
    { ngx_string(name), NGX_XMPP_CM_SHARED_##type,                           \
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, field), values, tls_only }

static ngx_stream_xmpp_cm_shared_t  ngx_stream_xmpp_cm_shared_settings[] = {
    ngx_stream_xmpp_cm_shared("xmpp_cm_pass", PASS, upstream, NULL, 0),
    ngx_stream_xmpp_cm_shared("xmpp_cm_secret", SECRET, secret, NULL, 0),
    ngx_stream_xmpp_cm_shared("xmpp_cm_domain", DOMAIN, domains, NULL, 0),
    ngx_stream_xmpp_cm_shared("xmpp_cm_connections", NUM, connections,
                              NULL, 0),
    ngx_stream_xmpp_cm_shared("xmpp_cm_keepalive", MSEC, keepalive, NULL, 0),
    ngx_stream_xmpp_cm_shared("xmpp_cm_upstream_timeout", MSEC,
                              upstream_timeout, NULL, 0),
    ngx_stream_xmpp_cm_shared("xmpp_cm_connect_timeout", MSEC,
                              connect_timeout, NULL, 0),
    ngx_stream_xmpp_cm_shared("xmpp_cm_reconnect", BACKOFF, reconnect,
                              NULL, 0),
    ngx_stream_xmpp_cm_shared("xmpp_cm_upstream_watermarks", WATERMARKS,
                              upstream_watermarks, NULL, 0),
    ngx_stream_xmpp_cm_shared("xmpp_cm_close_delay", MSEC, close_delay,
                              NULL, 0),
    ngx_stream_xmpp_cm_shared("xmpp_cm_confirm", FLAG, confirm, NULL, 0),
    ngx_stream_xmpp_cm_shared("xmpp_cm_confirm_window", WINDOW,
                              confirm_window, NULL, 0),
    ngx_stream_xmpp_cm_shared("xmpp_cm_confirm_delay", MSEC, confirm_delay,
                              NULL, 0),
    ngx_stream_xmpp_cm_shared("xmpp_cm_upstream_tls", ENUM, upstream_tls,
                              ngx_stream_xmpp_cm_upstream_tls_values, 0),
#if (NGX_SSL)
    ngx_stream_xmpp_cm_shared("xmpp_cm_upstream_ssl_protocols", BITMASK,
                              upstream_ssl_protocols,
                              ngx_stream_xmpp_cm_ssl_protocols, 1),
    ngx_stream_xmpp_cm_shared("xmpp_cm_upstream_ssl_ciphers", STR,
                              upstream_ssl_ciphers, NULL, 1),
    ngx_stream_xmpp_cm_shared("xmpp_cm_upstream_ssl_verify", FLAG,
                              upstream_ssl_verify, NULL, 1),
    ngx_stream_xmpp_cm_shared("xmpp_cm_upstream_ssl_verify_depth", NUM,
                              upstream_ssl_verify_depth, NULL, 1),
    ngx_stream_xmpp_cm_shared("xmpp_cm_upstream_ssl_name", STR,
                              upstream_ssl_name, NULL, 1),
    ngx_stream_xmpp_cm_shared("xmpp_cm_upstream_ssl_server_name", FLAG,
                              upstream_ssl_server_name, NULL, 1),
    ngx_stream_xmpp_cm_shared("xmpp_cm_upstream_ssl_trusted_certificate",
                              STR, upstream_ssl_trusted_certificate, NULL, 1),
    ngx_stream_xmpp_cm_shared("xmpp_cm_upstream_ssl_crl", STR,
                              upstream_ssl_crl, NULL, 1),
    ngx_stream_xmpp_cm_shared("xmpp_cm_upstream_ssl_certificate", STR,
                              upstream_ssl_certificate, NULL, 1),
    ngx_stream_xmpp_cm_shared("xmpp_cm_upstream_ssl_certificate_key", STR,
                              upstream_ssl_certificate_key, NULL, 1),
    ngx_stream_xmpp_cm_shared("xmpp_cm_upstream_ssl_session_reuse", FLAG,
                              upstream_ssl_session_reuse, NULL, 1),
#endif
    { ngx_null_string, 0, 0, NULL, 0 }
};


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
      ngx_stream_xmpp_cm_backoff,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, reconnect),
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

    { ngx_string("xmpp_cm_stream_management"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, sm),
      NULL },

    { ngx_string("xmpp_cm_resume_timeout"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, resume_timeout),
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

    { ngx_string("xmpp_cm_csi_hold_limit"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, csi_hold_limit),
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
      ngx_stream_xmpp_cm_watermarks,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, upstream_watermarks),
      NULL },

    { ngx_string("xmpp_cm_confirm"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, confirm),
      NULL },

    { ngx_string("xmpp_cm_confirm_window"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE2,
      ngx_stream_xmpp_cm_window,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, confirm_window),
      NULL },

    { ngx_string("xmpp_cm_confirm_delay"),
      NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_STREAM_SRV_CONF_OFFSET,
      offsetof(ngx_stream_xmpp_cm_srv_conf_t, confirm_delay),
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
     *     conf->reconnect.max = 0;
     *     conf->upstream_watermarks.low = 0;
     *     conf->up = NULL;
     */

    conf->domains = NGX_CONF_UNSET_PTR;
    conf->connections = NGX_CONF_UNSET_UINT;
    conf->keepalive = NGX_CONF_UNSET_MSEC;
    conf->upstream_timeout = NGX_CONF_UNSET_MSEC;
    conf->connect_timeout = NGX_CONF_UNSET_MSEC;
    conf->reconnect.min = NGX_CONF_UNSET_MSEC;
    conf->auth_timeout = NGX_CONF_UNSET_MSEC;
    conf->idle_timeout = NGX_CONF_UNSET_MSEC;
    conf->stanza_timeout = NGX_CONF_UNSET_MSEC;
    conf->close_delay = NGX_CONF_UNSET_MSEC;
    conf->resume_timeout = NGX_CONF_UNSET_MSEC;
    conf->sm = NGX_CONF_UNSET;
    conf->max_stanza = NGX_CONF_UNSET_SIZE;
    conf->preauth_max_stanza = NGX_CONF_UNSET_SIZE;
    conf->max_depth = NGX_CONF_UNSET_UINT;
    conf->client_output_limit = NGX_CONF_UNSET_SIZE;
    conf->csi_hold_limit = NGX_CONF_UNSET_SIZE;
    conf->upstream_watermarks.high = NGX_CONF_UNSET_SIZE;
    conf->confirm = NGX_CONF_UNSET;
    conf->confirm_window.stanzas = NGX_CONF_UNSET_UINT;
    conf->confirm_delay = NGX_CONF_UNSET_MSEC;
    conf->limit_rate.rate = NGX_CONF_UNSET_SIZE;
    conf->limit_rate.burst = NGX_CONF_UNSET_SIZE;
    conf->preauth_limit_rate.rate = NGX_CONF_UNSET_SIZE;
    conf->preauth_limit_rate.burst = NGX_CONF_UNSET_SIZE;
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

    /* the two values of a pair directive are set and inherited together */

    if (conf->reconnect.min == NGX_CONF_UNSET_MSEC) {
        conf->reconnect = prev->reconnect;
    }

    if (conf->reconnect.min == NGX_CONF_UNSET_MSEC) {
        conf->reconnect.min = 1000;
        conf->reconnect.max = 60000;
    }

    ngx_conf_merge_msec_value(conf->auth_timeout, prev->auth_timeout, 60000);
    ngx_conf_merge_msec_value(conf->idle_timeout, prev->idle_timeout,
                              600000);
    ngx_conf_merge_msec_value(conf->stanza_timeout, prev->stanza_timeout,
                              60000);
    ngx_conf_merge_msec_value(conf->close_delay, prev->close_delay, 0);
    ngx_conf_merge_msec_value(conf->resume_timeout, prev->resume_timeout,
                              300000);
    ngx_conf_merge_value(conf->sm, prev->sm, 1);
    ngx_conf_merge_size_value(conf->max_stanza, prev->max_stanza,
                              256 * 1024);
    ngx_conf_merge_size_value(conf->preauth_max_stanza,
                              prev->preauth_max_stanza,
                              ngx_min(16 * 1024, conf->max_stanza));
    ngx_conf_merge_uint_value(conf->max_depth, prev->max_depth, 32);
    ngx_conf_merge_size_value(conf->client_output_limit,
                              prev->client_output_limit, 1024 * 1024);
    ngx_conf_merge_size_value(conf->csi_hold_limit, prev->csi_hold_limit,
                              128 * 1024);

    if (conf->upstream_watermarks.high == NGX_CONF_UNSET_SIZE) {
        conf->upstream_watermarks = prev->upstream_watermarks;
    }

    if (conf->upstream_watermarks.high == NGX_CONF_UNSET_SIZE) {
        conf->upstream_watermarks.high = 1024 * 1024;
        conf->upstream_watermarks.low = 256 * 1024;
    }

    ngx_conf_merge_value(conf->confirm, prev->confirm, 1);

    if (conf->confirm_window.stanzas == NGX_CONF_UNSET_UINT) {
        conf->confirm_window = prev->confirm_window;
    }

    if (conf->confirm_window.stanzas == NGX_CONF_UNSET_UINT) {
        conf->confirm_window.stanzas = NGX_XMPP_CM_CONFIRM_STANZAS;
        conf->confirm_window.size = NGX_XMPP_CM_CONFIRM_BYTES;
    }

    ngx_conf_merge_msec_value(conf->confirm_delay, prev->confirm_delay, 50);

    /*
     * A rate and its burst go together: a server that sets the rate does
     * not inherit the burst.  The burst defaults to one second at the
     * rate; before authentication the rate and burst default to those
     * after it.
     */

    if (conf->limit_rate.rate == NGX_CONF_UNSET_SIZE) {
        conf->limit_rate = prev->limit_rate;
    }

    if (conf->limit_rate.rate == NGX_CONF_UNSET_SIZE) {
        conf->limit_rate.rate = 0;
    }

    if (conf->limit_rate.burst == NGX_CONF_UNSET_SIZE) {
        conf->limit_rate.burst = conf->limit_rate.rate;
    }

    if (conf->preauth_limit_rate.rate == NGX_CONF_UNSET_SIZE) {
        conf->preauth_limit_rate = prev->preauth_limit_rate;
    }

    if (conf->preauth_limit_rate.rate == NGX_CONF_UNSET_SIZE) {
        conf->preauth_limit_rate = conf->limit_rate;
    }

    if (conf->preauth_limit_rate.burst == NGX_CONF_UNSET_SIZE) {
        conf->preauth_limit_rate.burst = conf->preauth_limit_rate.rate;
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

    if (conf->reconnect.min == 0 || conf->reconnect.min > conf->reconnect.max)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"xmpp_cm_reconnect\" needs 0 < min <= max");
        return NGX_CONF_ERROR;
    }

    if (conf->upstream_watermarks.low >= conf->upstream_watermarks.high) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"xmpp_cm_upstream_watermarks\" needs "
                           "low < high");
        return NGX_CONF_ERROR;
    }

    /* a barrier goes out at a quarter of the window: room for four */

    if (conf->confirm_window.stanzas < 16
        || conf->confirm_window.size < 64 * 1024)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"xmpp_cm_confirm_window\" needs at least 16 "
                           "stanzas and 64k");
        return NGX_CONF_ERROR;
    }

    if (conf->confirm_delay == 0 || conf->confirm_delay > 10000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"xmpp_cm_confirm_delay\" must be between 1ms "
                           "and 10s");
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

    if (conf->resume_timeout > 86400000) {
        /* XEP-0198's max is in seconds; a day is long for a phone */
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"xmpp_cm_resume_timeout\" must be at most 1d");
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

        /* the first server of the CM: the others were checked with it */

        for (j = 0; j < i; j++) {
            b = srv[j];

            if (ngx_stream_xmpp_cm_same_cm(a, b)) {
                if (ngx_stream_xmpp_cm_shared_agree(cf, b, a) != NGX_OK) {
                    return NGX_ERROR;
                }

                break;
            }
        }
    }

    if (cmcf->servers.nelts && ngx_xmpp_cm_metrics_conf(cf, cmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* servers with the same xmpp_cm_name share one CM */

static ngx_int_t
ngx_stream_xmpp_cm_same_cm(ngx_stream_xmpp_cm_srv_conf_t *a,
    ngx_stream_xmpp_cm_srv_conf_t *b)
{
    return a->name.len == b->name.len
           && ngx_strncmp(a->name.data, b->name.data, a->name.len) == 0;
}


static ngx_int_t
ngx_stream_xmpp_cm_shared_equal(ngx_stream_xmpp_cm_shared_t *sh,
    ngx_stream_xmpp_cm_srv_conf_t *a, ngx_stream_xmpp_cm_srv_conf_t *b)
{
    char                      *pa, *pb;
    ngx_str_t                 *sa, *sb;
    ngx_xmpp_cm_backoff_t     *ba, *bb;
    ngx_xmpp_cm_watermarks_t  *wa, *wb;

    pa = (char *) a + sh->offset;
    pb = (char *) b + sh->offset;

    switch (sh->type) {

    case NGX_XMPP_CM_SHARED_PASS:
        return a->upstream == b->upstream;

    case NGX_XMPP_CM_SHARED_DOMAIN:
        sa = a->domains->elts;
        sb = b->domains->elts;
        break;

    case NGX_XMPP_CM_SHARED_SECRET:
    case NGX_XMPP_CM_SHARED_STR:
        sa = (ngx_str_t *) pa;
        sb = (ngx_str_t *) pb;
        break;

    case NGX_XMPP_CM_SHARED_FLAG:
        return *(ngx_flag_t *) pa == *(ngx_flag_t *) pb;

    case NGX_XMPP_CM_SHARED_MSEC:
        return *(ngx_msec_t *) pa == *(ngx_msec_t *) pb;

    case NGX_XMPP_CM_SHARED_BACKOFF:
        ba = (ngx_xmpp_cm_backoff_t *) pa;
        bb = (ngx_xmpp_cm_backoff_t *) pb;
        return ba->min == bb->min && ba->max == bb->max;

    case NGX_XMPP_CM_SHARED_WATERMARKS:
        wa = (ngx_xmpp_cm_watermarks_t *) pa;
        wb = (ngx_xmpp_cm_watermarks_t *) pb;
        return wa->high == wb->high && wa->low == wb->low;

    case NGX_XMPP_CM_SHARED_WINDOW:
        return ((ngx_xmpp_cm_window_t *) pa)->stanzas
               == ((ngx_xmpp_cm_window_t *) pb)->stanzas
               && ((ngx_xmpp_cm_window_t *) pa)->size
                  == ((ngx_xmpp_cm_window_t *) pb)->size;

    default: /* NUM, ENUM, BITMASK */
        return *(ngx_uint_t *) pa == *(ngx_uint_t *) pb;
    }

    return sa->len == sb->len && ngx_memcmp(sa->data, sb->data, sa->len) == 0;
}


/* 30s, 1500ms; 1m, 256k, 1000: as they may be written */

static u_char *
ngx_stream_xmpp_cm_msec_text(u_char *p, ngx_msec_t ms)
{
    if (ms == 0) {
        return ngx_sprintf(p, "0");
    }

    return (ms % 1000) ? ngx_sprintf(p, "%Mms", ms)
                       : ngx_sprintf(p, "%Ms", ms / 1000);
}


static u_char *
ngx_stream_xmpp_cm_size_text(u_char *p, size_t size)
{
    if (size && size % (1024 * 1024) == 0) {
        return ngx_sprintf(p, "%uzm", size / (1024 * 1024));
    }

    if (size && size % 1024 == 0) {
        return ngx_sprintf(p, "%uzk", size / 1024);
    }

    return ngx_sprintf(p, "%uz", size);
}


/* a setting's value for the nginx -t message (the secret is not shown) */

static ngx_int_t
ngx_stream_xmpp_cm_shared_text(ngx_conf_t *cf, ngx_stream_xmpp_cm_shared_t *sh,
    ngx_stream_xmpp_cm_srv_conf_t *conf, ngx_str_t *text)
{
    char                      *field;
    u_char                    *p;
    size_t                     len;
    ngx_uint_t                 v;
    ngx_conf_enum_t           *e;
    ngx_conf_bitmask_t        *m;
    ngx_xmpp_cm_backoff_t     *b;
    ngx_xmpp_cm_watermarks_t  *w;

    field = (char *) conf + sh->offset;

    switch (sh->type) {

    case NGX_XMPP_CM_SHARED_PASS:
        *text = conf->pass;
        return NGX_OK;

    case NGX_XMPP_CM_SHARED_DOMAIN:
        *text = *(ngx_str_t *) conf->domains->elts;
        return NGX_OK;

    case NGX_XMPP_CM_SHARED_STR:
        *text = *(ngx_str_t *) field;
        return NGX_OK;

    case NGX_XMPP_CM_SHARED_FLAG:
        if (*(ngx_flag_t *) field) {
            ngx_str_set(text, "on");

        } else {
            ngx_str_set(text, "off");
        }

        return NGX_OK;

    case NGX_XMPP_CM_SHARED_ENUM:
        v = *(ngx_uint_t *) field;

        for (e = sh->values; e->name.len; e++) {
            if (e->value == v) {
                *text = e->name;
                return NGX_OK;
            }
        }

        break;

    case NGX_XMPP_CM_SHARED_BITMASK:
        v = *(ngx_uint_t *) field;
        len = 0;

        for (m = sh->values; m->name.len; m++) {
            if (v & m->mask) {
                len += m->name.len + 1;
            }
        }

        p = ngx_pnalloc(cf->pool, len);
        if (p == NULL) {
            return NGX_ERROR;
        }

        text->data = p;

        for (m = sh->values; m->name.len; m++) {
            if (v & m->mask) {
                p = ngx_sprintf(p, "%V ", &m->name);
            }
        }

        text->len = len ? len - 1 : 0;
        return NGX_OK;

    default:
        break;
    }

    /* numbers: two at most, each with a unit */

    p = ngx_pnalloc(cf->pool, 2 * (NGX_INT64_LEN + sizeof("ms")));
    if (p == NULL) {
        return NGX_ERROR;
    }

    text->data = p;

    switch (sh->type) {

    case NGX_XMPP_CM_SHARED_MSEC:
        p = ngx_stream_xmpp_cm_msec_text(p, *(ngx_msec_t *) field);
        break;

    case NGX_XMPP_CM_SHARED_BACKOFF:
        b = (ngx_xmpp_cm_backoff_t *) field;
        p = ngx_stream_xmpp_cm_msec_text(p, b->min);
        *p++ = ' ';
        p = ngx_stream_xmpp_cm_msec_text(p, b->max);
        break;

    case NGX_XMPP_CM_SHARED_WATERMARKS:
        w = (ngx_xmpp_cm_watermarks_t *) field;
        p = ngx_stream_xmpp_cm_size_text(p, w->high);
        *p++ = ' ';
        p = ngx_stream_xmpp_cm_size_text(p, w->low);
        break;

    case NGX_XMPP_CM_SHARED_WINDOW:
        p = ngx_sprintf(p, "%ui ",
                        ((ngx_xmpp_cm_window_t *) field)->stanzas);
        p = ngx_stream_xmpp_cm_size_text(p,
                                  ((ngx_xmpp_cm_window_t *) field)->size);
        break;

    default: /* NUM, an ENUM value without a name */
        p = ngx_sprintf(p, "%ui", *(ngx_uint_t *) field);
        break;
    }

    text->len = p - text->data;

    return NGX_OK;
}


/*
 * The servers a (the first of its CM) and b share a CM: each setting in
 * ngx_stream_xmpp_cm_shared_settings must be the same in both.
 */

static ngx_int_t
ngx_stream_xmpp_cm_shared_agree(ngx_conf_t *cf,
    ngx_stream_xmpp_cm_srv_conf_t *a, ngx_stream_xmpp_cm_srv_conf_t *b)
{
    ngx_str_t                     va, vb;
    ngx_stream_xmpp_cm_shared_t  *sh;

    for (sh = ngx_stream_xmpp_cm_shared_settings; sh->name.len; sh++) {

        /* the xmpp_cm_upstream_tls entry came first: it agrees */

        if (sh->tls_only
            && a->upstream_tls == NGX_XMPP_CM_UPSTREAM_TLS_OFF)
        {
            continue;
        }

        if (ngx_stream_xmpp_cm_shared_equal(sh, a, b)) {
            continue;
        }

        if (sh->type == NGX_XMPP_CM_SHARED_SECRET) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"xmpp_cm_name\" \"%V\" is used in %V:%ui and "
                          "%V:%ui with a different \"%V\"; give each its "
                          "own name or the same secret", &a->name,
                          &a->conf_file, a->conf_line, &b->conf_file,
                          b->conf_line, &sh->name);
            return NGX_ERROR;
        }

        if (ngx_stream_xmpp_cm_shared_text(cf, sh, a, &va) != NGX_OK
            || ngx_stream_xmpp_cm_shared_text(cf, sh, b, &vb) != NGX_OK)
        {
            return NGX_ERROR;
        }

        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"xmpp_cm_name\" \"%V\" is used in %V:%ui and %V:%ui "
                      "with a different %s\"%V\"; give each its own name or "
                      "the same value (\"%V\" and \"%V\")", &a->name,
                      &a->conf_file, a->conf_line, &b->conf_file,
                      b->conf_line,
                      sh->type == NGX_XMPP_CM_SHARED_DOMAIN
                      ? "first name in " : "",
                      &sh->name, &va, &vb);
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


/* xmpp_cm_reconnect min max */

static char *
ngx_stream_xmpp_cm_backoff(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    ngx_str_t              *value;
    ngx_msec_t              t[2];
    ngx_uint_t              i;
    ngx_xmpp_cm_backoff_t  *b;

    b = (ngx_xmpp_cm_backoff_t *) (p + cmd->offset);

    if (b->min != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }

    value = cf->args->elts;

    for (i = 0; i < 2; i++) {
        t[i] = ngx_parse_time(&value[i + 1], 0);
        if (t[i] == (ngx_msec_t) NGX_ERROR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid time \"%V\" in \"%V\"",
                               &value[i + 1], &cmd->name);
            return NGX_CONF_ERROR;
        }
    }

    b->min = t[0];
    b->max = t[1];

    return NGX_CONF_OK;
}


/* xmpp_cm_upstream_watermarks high low */

static char *
ngx_stream_xmpp_cm_watermarks(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    ssize_t                    n[2];
    ngx_str_t                 *value;
    ngx_uint_t                 i;
    ngx_xmpp_cm_watermarks_t  *w;

    w = (ngx_xmpp_cm_watermarks_t *) (p + cmd->offset);

    if (w->high != NGX_CONF_UNSET_SIZE) {
        return "is duplicate";
    }

    value = cf->args->elts;

    for (i = 0; i < 2; i++) {
        n[i] = ngx_parse_size(&value[i + 1]);
        if (n[i] == NGX_ERROR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid size \"%V\" in \"%V\"",
                               &value[i + 1], &cmd->name);
            return NGX_CONF_ERROR;
        }
    }

    w->high = (size_t) n[0];
    w->low = (size_t) n[1];

    return NGX_CONF_OK;
}


/* xmpp_cm_confirm_window stanzas size */

static char *
ngx_stream_xmpp_cm_window(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    ssize_t                size;
    ngx_int_t              n;
    ngx_str_t             *value;
    ngx_xmpp_cm_window_t  *w;

    w = (ngx_xmpp_cm_window_t *) (p + cmd->offset);

    if (w->stanzas != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    n = ngx_atoi(value[1].data, value[1].len);
    size = ngx_parse_size(&value[2]);

    if (n == NGX_ERROR || n > 1000000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid number of stanzas \"%V\" in \"%V\" "
                           "(up to 1000000)", &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (size == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid size \"%V\" in \"%V\"",
                           &value[2], &cmd->name);
        return NGX_CONF_ERROR;
    }

    w->stanzas = (ngx_uint_t) n;
    w->size = (size_t) size;

    return NGX_CONF_OK;
}


/*
 * xmpp_cm_limit_rate rate [burst=size]: the rate (bytes per second, 0:
 * off) and the burst (unset: the rate).
 */

static char *
ngx_stream_xmpp_cm_limit_rate(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    ssize_t              n;
    ngx_str_t           *value, s;
    ngx_xmpp_cm_rate_t  *r;

    r = (ngx_xmpp_cm_rate_t *) (p + cmd->offset);

    if (r->rate != NGX_CONF_UNSET_SIZE) {
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

    r->rate = (size_t) n;

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

    r->burst = (size_t) n;

    return NGX_CONF_OK;
}


/*
 * The stream server that an http location's NAME (xmpp_cm_bosh) means:
 * the first with xmpp_cm_pass and that xmpp_cm_name; NULL if none.  For
 * an http module's init_module, when both blocks are parsed (stream{}
 * may follow http{}), so that nginx -t rejects an unknown NAME too.
 */

ngx_stream_xmpp_cm_srv_conf_t *
ngx_stream_xmpp_cm_find_name(ngx_cycle_t *cycle, ngx_str_t *name)
{
    ngx_uint_t                        i;
    ngx_stream_xmpp_cm_srv_conf_t   **srv;
    ngx_stream_xmpp_cm_main_conf_t   *cmcf;

    if (cycle->conf_ctx[ngx_stream_module.index] == NULL) {
        return NULL;
    }

    cmcf = ngx_stream_cycle_get_module_main_conf(cycle,
                                                 ngx_stream_xmpp_cm_module);
    if (cmcf == NULL) {
        return NULL;
    }

    srv = cmcf->servers.elts;

    for (i = 0; i < cmcf->servers.nelts; i++) {
        if (srv[i]->name.len == name->len
            && ngx_strncmp(srv[i]->name.data, name->data, name->len) == 0)
        {
            return srv[i];
        }
    }

    return NULL;
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
            if (ngx_stream_xmpp_cm_same_cm(srv[j], srv[i])) {
                srv[i]->up = srv[j]->up;
                break;
            }
        }

        if (srv[i]->up) {
            continue;
        }

        if (ngx_xmpp_cm_upstream_init(cycle, srv[i]) != NGX_OK
            || ngx_xmpp_cm_stream_init(cycle, srv[i]->up) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    /* XEP-0198 resumptions of this worker's streams at other workers */

    return ngx_xmpp_cm_handoff_init(cycle, wk, ngx_xmpp_cm_client_adopt,
                                    cmcf);
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

    ngx_xmpp_cm_handoff_exit(cmcf->worker);

    srv = cmcf->servers.elts;

    for (i = 0; i < cmcf->servers.nelts; i++) {
        if (srv[i]->up) {
            ngx_xmpp_cm_upstream_exit(srv[i]->up);
        }
    }

    ngx_xmpp_cm_client_shutdown_all(cmcf->worker);
    ngx_xmpp_cm_output_release(&cmcf->worker->output);
    ngx_xmpp_cm_xml_release_parked(cmcf->worker->parking);
    ngx_xmpp_cm_metrics_exit(cycle);
}
