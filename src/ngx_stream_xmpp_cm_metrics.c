
/*
 * Metrics for Prometheus, summed over all workers when scraped (the HTTP
 * handler is in ngx_http_xmpp_cm_metrics_module.c).
 *
 * A shared memory zone, sized and created at configuration time, holds a
 * table of CM names and, per worker slot and CM name, one record of
 * 64-bit values that only the slot's worker writes: counting is a plain
 * increment, no atomics, no lock.  A worker takes a free slot when it
 * starts; when it exits it adds its counters to the name's "retired"
 * record and frees the slot (its gauges leave with it), so that totals
 * never go down across reloads and worker exits.  A slot left behind by
 * a worker that died without exiting is folded the same way by the next
 * worker that takes it, and its gauges are not counted meanwhile.
 *
 * The zone survives a reload that keeps its size (nginx reuses a zone of
 * the same name, size and tag); its size depends on the number of CM
 * names (rounded up to 8) and on xmpp_cm_metrics_slots.
 */


#include "ngx_stream_xmpp_cm.h"


#define NGX_XMPP_CM_METRICS_NAME_LEN  100    /* xmpp_cm_name's limit */
#define NGX_XMPP_CM_METRICS_LINE      320    /* a sample's line, at most */
#define NGX_XMPP_CM_METRICS_HEAD      512    /* a family's HELP and TYPE */


typedef struct {
    size_t                           len;
    u_char                           data[NGX_XMPP_CM_METRICS_NAME_LEN];
} ngx_xmpp_cm_metrics_name_t;


typedef struct {
    ngx_uint_t                       nnames;     /* room for names */
    ngx_uint_t                       nslots;     /* room for workers */
    ngx_uint_t                       used;       /* names in the table */
    ngx_xmpp_cm_metrics_name_t      *names;
    ngx_atomic_t                    *pids;       /* a slot's owner, 0: free */
    ngx_xmpp_cm_metrics_t           *recs;       /* [nslots + 1][nnames] */
} ngx_xmpp_cm_metrics_sh_t;


typedef struct {
    ngx_xmpp_cm_metrics_sh_t        *sh;
    ngx_slab_pool_t                 *shpool;
    ngx_stream_xmpp_cm_main_conf_t  *cmcf;
    ngx_uint_t                       nnames;
} ngx_xmpp_cm_metrics_ctx_t;


typedef struct {
    char                            *name;
    char                            *type;
    char                            *help;
    char                            *label;
    ngx_uint_t                       first;
    ngx_uint_t                       n;
    char                           **values;
} ngx_xmpp_cm_metrics_family_t;


static ngx_int_t ngx_xmpp_cm_metrics_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_xmpp_cm_metrics_name(ngx_xmpp_cm_metrics_sh_t *sh,
    ngx_str_t *name, ngx_uint_t add);
static void ngx_xmpp_cm_metrics_fold(ngx_xmpp_cm_metrics_sh_t *sh,
    ngx_uint_t slot);
static ngx_uint_t ngx_xmpp_cm_metrics_alive(ngx_pid_t pid);


/*
 * The worker context holds this worker's slot (NGX_ERROR until it has
 * one) and metrics_void, where counting goes when there is no zone, no
 * free slot, or after the worker left its slot.
 */


/* RFC 6120 4.9.3, in the order of NGX_XMPP_CM_M_STREAM_ERROR + i */

static char  *ngx_xmpp_cm_metrics_conds[NGX_XMPP_CM_M_CONDS] = {
    "bad-format", "bad-namespace-prefix", "conflict", "connection-timeout",
    "host-gone", "host-unknown", "improper-addressing",
    "internal-server-error", "invalid-from", "invalid-namespace",
    "invalid-xml", "not-authorized", "not-well-formed", "policy-violation",
    "remote-connection-failed", "reset", "resource-constraint",
    "restricted-xml", "see-other-host", "system-shutdown",
    "undefined-condition", "unsupported-encoding", "unsupported-feature",
    "unsupported-stanza-type", "unsupported-version", "other"
};

static char  *ngx_xmpp_cm_metrics_states[] = {
    "authenticating", "bound", "detached"
};

static char  *ngx_xmpp_cm_metrics_sock_states[] = {
    "connecting", "handshake", "ready"
};

static char  *ngx_xmpp_cm_metrics_units[] = {
    "stanzas", "bytes"
};

static char  *ngx_xmpp_cm_metrics_directions[] = {
    "to_openfire", "to_client"
};

static char  *ngx_xmpp_cm_metrics_reasons[] = {
    "bad_route", "no_socket", "closed_stream", "too_large", "unparseable"
};

static char  *ngx_xmpp_cm_metrics_results[] = {
    "success", "failure"
};

static char  *ngx_xmpp_cm_metrics_resumptions[] = {
    "resumed", "failed"
};

static char  *ngx_xmpp_cm_metrics_up[] = {
    "up", "down"
};


/* "workers" is computed at a scrape: two values after the record's */

#define NGX_XMPP_CM_M_WORKERS_UP  NGX_XMPP_CM_M_N
#define NGX_XMPP_CM_M_SUMS        (NGX_XMPP_CM_M_N + 2)


static ngx_xmpp_cm_metrics_family_t  ngx_xmpp_cm_metrics_families[] = {

    { "xmpp_cm_streams", "gauge",
      "Client streams now: authenticating (connected, not authenticated "
      "yet), bound (authenticated), detached (a session on Openfire with "
      "no client connection, e.g. during xmpp_cm_close_delay).",
      "state", NGX_XMPP_CM_M_AUTHENTICATING, 3,
      ngx_xmpp_cm_metrics_states },

    { "xmpp_cm_streams_opened_total", "counter",
      "Client streams opened (a session created on Openfire for a "
      "client's stream header).",
      NULL, NGX_XMPP_CM_M_OPENED, 1, NULL },

    { "xmpp_cm_stream_errors_total", "counter",
      "Stream errors the connection manager sent to clients, by condition.",
      "condition", NGX_XMPP_CM_M_STREAM_ERROR, NGX_XMPP_CM_M_CONDS,
      ngx_xmpp_cm_metrics_conds },

    { "xmpp_cm_upstream_sockets", "gauge",
      "Sockets to Openfire now: connecting (TCP), handshake (stream, TLS "
      "and secret handshake under way), ready (carrying sessions).",
      "state", NGX_XMPP_CM_M_SOCK_CONNECTING, 3,
      ngx_xmpp_cm_metrics_sock_states },

    { "xmpp_cm_upstream_unconfirmed", "gauge",
      "Stanzas written to Openfire and not confirmed by a barrier yet "
      "(xmpp_cm_confirm), kept to be sent again if their socket resets: "
      "how many (stanzas) and their size (bytes).",
      "unit", NGX_XMPP_CM_M_UNCONFIRMED, 2, ngx_xmpp_cm_metrics_units },

    { "xmpp_cm_upstream_reconnects_total", "counter",
      "Connection attempts to Openfire after a socket closed or failed.",
      NULL, NGX_XMPP_CM_M_RECONNECTS, 1, NULL },

    { "xmpp_cm_upstream_handshake_failures_total", "counter",
      "Sockets to Openfire that closed during the TLS or the secret "
      "handshake (wrong secret or CM name, certificate, TLS settings).",
      NULL, NGX_XMPP_CM_M_HANDSHAKE_FAILURES, 1, NULL },

    { "xmpp_cm_stanzas_total", "counter",
      "Top-level elements relayed, by direction.",
      "direction", NGX_XMPP_CM_M_STANZAS_TO_OPENFIRE, 2,
      ngx_xmpp_cm_metrics_directions },

    { "xmpp_cm_bytes_total", "counter",
      "Size in bytes of the elements relayed, as the CM framed them "
      "(before compression and TLS, without the route), by direction.",
      "direction", NGX_XMPP_CM_M_BYTES_TO_OPENFIRE, 2,
      ngx_xmpp_cm_metrics_directions },

    { "xmpp_cm_failed_returned_total", "counter",
      "Messages for a client that was gone, handed back to Openfire in "
      "<failed/> (stored offline).",
      NULL, NGX_XMPP_CM_M_FAILED_RETURNED, 1, NULL },

    { "xmpp_cm_dropped_total", "counter",
      "Elements from Openfire dropped, by reason.",
      "reason", NGX_XMPP_CM_M_DROP_BAD_ROUTE, 5,
      ngx_xmpp_cm_metrics_reasons },

    { "xmpp_cm_logins_total", "counter",
      "Client authentications (SASL or jabber:iq:auth), by result.",
      "result", NGX_XMPP_CM_M_LOGIN_SUCCESS, 2,
      ngx_xmpp_cm_metrics_results },

    { "xmpp_cm_flow_control_pauses_total", "counter",
      "Client reads paused because the Openfire socket's queue passed the "
      "high mark of xmpp_cm_upstream_watermarks.",
      NULL, NGX_XMPP_CM_M_FLOW_PAUSES, 1, NULL },

    { "xmpp_cm_websocket_connections", "gauge",
      "Client connections over WebSocket now (xmpp_cm_websocket), from "
      "the upgrade to the close; they are counted in xmpp_cm_streams "
      "too.",
      NULL, NGX_XMPP_CM_M_WEBSOCKET, 1, NULL },

    { "xmpp_cm_websocket_upgrades_total", "counter",
      "WebSocket upgrades taken (101 answered) for XMPP (RFC 7395).",
      NULL, NGX_XMPP_CM_M_WEBSOCKET_OPENED, 1, NULL },
    { "xmpp_cm_upstream_barriers_total", "counter",
      "Barrier IQs sent to Openfire to confirm the stanzas written before "
      "them (xmpp_cm_confirm).",
      NULL, NGX_XMPP_CM_M_BARRIERS, 1, NULL },

    { "xmpp_cm_upstream_barrier_answers_total", "counter",
      "Answers to barrier IQs that confirmed elements written to Openfire.",
      NULL, NGX_XMPP_CM_M_CONFIRMS, 1, NULL },

    { "xmpp_cm_upstream_confirm_wait_seconds_total", "counter",
      "For each barrier answer, the time from the first element it "
      "confirmed being queued to the answer, summed (millisecond "
      "resolution): divided by the answers, the mean wait of the oldest "
      "element of a barrier for its confirmation.",
      NULL, NGX_XMPP_CM_M_CONFIRM_WAIT_MS, 1, NULL },

    { "xmpp_cm_upstream_resent_total", "counter",
      "Stanzas sent again on another socket because the socket they were "
      "written to reset before Openfire confirmed them.",
      NULL, NGX_XMPP_CM_M_RESENT, 1, NULL },

    { "xmpp_cm_bosh_sessions", "gauge",
      "BOSH sessions now (xmpp_cm_bosh), from their creation to their "
      "end; they are counted in xmpp_cm_streams too.",
      NULL, NGX_XMPP_CM_M_BOSH, 1, NULL },

    { "xmpp_cm_bosh_sessions_total", "counter",
      "BOSH sessions created (XEP-0124 7.1).",
      NULL, NGX_XMPP_CM_M_BOSH_OPENED, 1, NULL },

    { "xmpp_cm_bosh_requests_total", "counter",
      "HTTP requests of BOSH sessions taken, the creation included.",
      NULL, NGX_XMPP_CM_M_BOSH_REQUESTS, 1, NULL },

    { "xmpp_cm_sm_streams", "gauge",
      "Client streams with XEP-0198 stream management enabled now, "
      "detached ones waiting for resumption included.",
      NULL, NGX_XMPP_CM_M_SM, 1, NULL },

    { "xmpp_cm_sm_held_streams", "gauge",
      "Streams whose connection dropped, held for a resumption now "
      "(xmpp_cm_resume_timeout), keeping what Openfire routes to them.",
      NULL, NGX_XMPP_CM_M_SM_HELD, 1, NULL },

    { "xmpp_cm_sm_resumptions_total", "counter",
      "XEP-0198 resumptions asked at this worker, by result: resumed, or "
      "failed (unknown or expired previd, another account, a bad h).",
      "result", NGX_XMPP_CM_M_SM_RESUMED, 2,
      ngx_xmpp_cm_metrics_resumptions },

    { "xmpp_cm_sm_expired_total", "counter",
      "Held streams that ended without a resumption when their wait "
      "(xmpp_cm_resume_timeout) was over.",
      NULL, NGX_XMPP_CM_M_SM_EXPIRED, 1, NULL },

    { "xmpp_cm_sm_resent_total", "counter",
      "Stanzas sent again to a client after a resumption (not "
      "acknowledged before the drop, or routed while it was held).",
      NULL, NGX_XMPP_CM_M_SM_RESENT, 1, NULL },

    { "xmpp_cm_workers", "gauge",
      "Worker processes with at least one ready socket to Openfire (up) "
      "and with none (down).",
      "upstream", NGX_XMPP_CM_M_WORKERS_UP, 2, ngx_xmpp_cm_metrics_up }
};


/* configuration: the zone, sized for the CM names of this configuration */

ngx_int_t
ngx_xmpp_cm_metrics_conf(ngx_conf_t *cf, ngx_stream_xmpp_cm_main_conf_t *cmcf)
{
    size_t                           size;
    ngx_str_t                        name = ngx_string("xmpp_cm_metrics");
    ngx_uint_t                       i, j, names, slots;
    ngx_core_conf_t                 *ccf;
    ngx_stream_xmpp_cm_srv_conf_t  **srv;
    ngx_xmpp_cm_metrics_ctx_t       *ctx;

    srv = cmcf->servers.elts;
    names = 0;

    for (i = 0; i < cmcf->servers.nelts; i++) {
        for (j = 0; j < i; j++) {
            if (srv[j]->name.len == srv[i]->name.len
                && ngx_strncmp(srv[j]->name.data, srv[i]->name.data,
                               srv[i]->name.len) == 0)
            {
                break;
            }
        }

        if (j == i) {
            names++;
        }
    }

    slots = cmcf->metrics_slots;

    if (slots == 0) {
        /* the workers of two generations at once, with room to spare */

        ccf = (ngx_core_conf_t *) ngx_get_conf(cf->cycle->conf_ctx,
                                               ngx_core_module);
        slots = ngx_max(ngx_ncpu, 1);

        if (ccf && ccf->worker_processes != NGX_CONF_UNSET
            && (ngx_uint_t) ccf->worker_processes > slots)
        {
            slots = ccf->worker_processes;
        }

        slots = ngx_max(4 * slots, 32);
    }

    names = ngx_align(names + 1, 8);

    size = sizeof(ngx_xmpp_cm_metrics_sh_t)
           + names * sizeof(ngx_xmpp_cm_metrics_name_t)
           + slots * sizeof(ngx_atomic_t)
           + (slots + 1) * names * sizeof(ngx_xmpp_cm_metrics_t);

    /* the slab pool's page descriptors and its own header */
    size += size / 32 + 16 * ngx_pagesize;

    size = ngx_align(size, ngx_pagesize);

    ctx = ngx_pcalloc(cf->pool, sizeof(ngx_xmpp_cm_metrics_ctx_t));
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    ctx->cmcf = cmcf;
    ctx->nnames = names;

    cmcf->metrics_zone = ngx_shared_memory_add(cf, &name, size,
                                               &ngx_stream_xmpp_cm_module);
    if (cmcf->metrics_zone == NULL) {
        return NGX_ERROR;
    }

    if (cmcf->metrics_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "shared memory zone \"%V\" is already used",
                           &name);
        return NGX_ERROR;
    }

    cmcf->metrics_zone->init = ngx_xmpp_cm_metrics_init_zone;
    cmcf->metrics_zone->data = ctx;
    cmcf->metrics_slots = slots;

    return NGX_OK;
}


/* xmpp_cm_metrics_slots number; (stream main context) */

char *
ngx_xmpp_cm_metrics_slots(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_stream_xmpp_cm_main_conf_t *cmcf = conf;

    ngx_int_t   n;
    ngx_str_t  *value;

    if (cmcf->metrics_slots) {
        return "is duplicate";
    }

    value = cf->args->elts;
    n = ngx_atoi(value[1].data, value[1].len);

    if (n < 2 || n > 65536) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"xmpp_cm_metrics_slots\" \"%V\": use "
                           "2 to 65536", &value[1]);
        return NGX_CONF_ERROR;
    }

    cmcf->metrics_slots = n;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_xmpp_cm_metrics_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_xmpp_cm_metrics_ctx_t *octx = data;

    u_char                           *p;
    size_t                            size;
    ngx_uint_t                        i, names;
    ngx_xmpp_cm_metrics_sh_t         *sh;
    ngx_xmpp_cm_metrics_ctx_t        *ctx;
    ngx_stream_xmpp_cm_srv_conf_t   **srv;

    ctx = shm_zone->data;
    ctx->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (octx) {
        /* a reload with the same size: the old counts go on */
        ctx->sh = octx->sh;

    } else if (shm_zone->shm.exists) {
        ctx->sh = ctx->shpool->data;

    } else {
        names = ctx->nnames;

        size = sizeof(ngx_xmpp_cm_metrics_sh_t)
               + names * sizeof(ngx_xmpp_cm_metrics_name_t)
               + ctx->cmcf->metrics_slots * sizeof(ngx_atomic_t)
               + (ctx->cmcf->metrics_slots + 1) * names
                 * sizeof(ngx_xmpp_cm_metrics_t)
               + 64;

        p = ngx_slab_calloc(ctx->shpool, size);
        if (p == NULL) {
            ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                          "xmpp_cm: the metrics zone is too small for %ui "
                          "slots", ctx->cmcf->metrics_slots);
            return NGX_ERROR;
        }

        sh = (ngx_xmpp_cm_metrics_sh_t *) p;
        p += sizeof(ngx_xmpp_cm_metrics_sh_t);

        sh->nnames = names;
        sh->nslots = ctx->cmcf->metrics_slots;

        sh->names = (ngx_xmpp_cm_metrics_name_t *) p;
        p += names * sizeof(ngx_xmpp_cm_metrics_name_t);

        sh->pids = (ngx_atomic_t *) p;
        p += sh->nslots * sizeof(ngx_atomic_t);

        /* records on cache lines of their own: no false sharing */
        sh->recs = (ngx_xmpp_cm_metrics_t *) ngx_align_ptr(p, 64);

        ctx->sh = sh;
        ctx->shpool->data = sh;
    }

    /* the names of this configuration; those of older ones stay */

    sh = ctx->sh;
    srv = ctx->cmcf->servers.elts;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    for (i = 0; i < ctx->cmcf->servers.nelts; i++) {
        if (ngx_xmpp_cm_metrics_name(sh, &srv[i]->name, 1) == NGX_ERROR) {
            ngx_log_error(NGX_LOG_WARN, shm_zone->shm.log, 0,
                          "xmpp_cm: no room for the metrics of CM name "
                          "\"%V\" in the zone kept across the reload; "
                          "restart nginx to have them", &srv[i]->name);
        }
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    return NGX_OK;
}


/* the index of a CM name in the table, NGX_ERROR if absent (add: taken) */

static ngx_int_t
ngx_xmpp_cm_metrics_name(ngx_xmpp_cm_metrics_sh_t *sh, ngx_str_t *name,
    ngx_uint_t add)
{
    ngx_uint_t  i;

    for (i = 0; i < sh->used; i++) {
        if (sh->names[i].len == name->len
            && ngx_strncmp(sh->names[i].data, name->data, name->len) == 0)
        {
            return i;
        }
    }

    if (!add || sh->used == sh->nnames
        || name->len > NGX_XMPP_CM_METRICS_NAME_LEN)
    {
        return NGX_ERROR;
    }

    ngx_memcpy(sh->names[i].data, name->data, name->len);
    sh->names[i].len = name->len;

    ngx_memory_barrier();

    sh->used++;

    return i;
}


static ngx_uint_t
ngx_xmpp_cm_metrics_alive(ngx_pid_t pid)
{
    if (kill(pid, 0) == -1 && ngx_errno == NGX_ESRCH) {
        return 0;
    }

    return 1;
}


/* with the zone's lock held: a slot's counters go to the retired row */

static void
ngx_xmpp_cm_metrics_fold(ngx_xmpp_cm_metrics_sh_t *sh, ngx_uint_t slot)
{
    ngx_uint_t              n, k;
    ngx_xmpp_cm_metrics_t  *rec, *retired;

    for (n = 0; n < sh->nnames; n++) {
        rec = &sh->recs[slot * sh->nnames + n];
        retired = &sh->recs[sh->nslots * sh->nnames + n];

        for (k = NGX_XMPP_CM_M_GAUGES; k < NGX_XMPP_CM_M_N; k++) {
            retired->v[k] += rec->v[k];
        }

        ngx_memzero(rec, sizeof(ngx_xmpp_cm_metrics_t));
    }
}


/*
 * A worker's record for a CM name (ngx_xmpp_cm_upstream_init()): the first
 * call takes a slot.  Never NULL: without a zone or room, counting goes
 * to a record nobody reads.
 */

ngx_xmpp_cm_metrics_t *
ngx_xmpp_cm_metrics_record(ngx_cycle_t *cycle, ngx_str_t *name)
{
    ngx_int_t                        n;
    ngx_pid_t                        pid;
    ngx_uint_t                       i;
    ngx_xmpp_cm_worker_t            *wk;
    ngx_xmpp_cm_metrics_sh_t        *sh;
    ngx_xmpp_cm_metrics_ctx_t       *ctx;
    ngx_stream_xmpp_cm_main_conf_t  *cmcf;

    cmcf = ngx_stream_cycle_get_module_main_conf(cycle,
                                                 ngx_stream_xmpp_cm_module);
    wk = cmcf->worker;

    if (cmcf->metrics_zone == NULL) {
        return &wk->metrics_void;
    }

    ctx = cmcf->metrics_zone->data;
    sh = ctx->sh;

    if (wk->metrics_slot == NGX_ERROR) {

        for (i = 0; i < sh->nslots; i++) {
            pid = sh->pids[i];

            if (pid == 0) {
                if (ngx_atomic_cmp_set(&sh->pids[i], 0, ngx_pid)) {
                    break;
                }

                continue;
            }

            /* a worker that died without exiting (a crash) */

            if (!ngx_xmpp_cm_metrics_alive(pid)
                && ngx_atomic_cmp_set(&sh->pids[i], pid, ngx_pid))
            {
                ngx_shmtx_lock(&ctx->shpool->mutex);
                ngx_xmpp_cm_metrics_fold(sh, i);
                ngx_shmtx_unlock(&ctx->shpool->mutex);
                break;
            }
        }

        if (i == sh->nslots) {
            ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                          "xmpp_cm: all %ui metrics slots are taken, this "
                          "worker's metrics are not exported; raise "
                          "\"xmpp_cm_metrics_slots\"", sh->nslots);
            return &wk->metrics_void;
        }

        wk->metrics_slot = i;
        wk->metrics_ctx = ctx;
    }

    n = ngx_xmpp_cm_metrics_name(sh, name, 0);

    if (n == NGX_ERROR) {
        return &wk->metrics_void;
    }

    return &sh->recs[wk->metrics_slot * sh->nnames + n];
}


/* worker exit: counters to the retired row, gauges gone, slot free */

void
ngx_xmpp_cm_metrics_exit(ngx_cycle_t *cycle)
{
    ngx_uint_t                        i;
    ngx_xmpp_cm_worker_t             *wk;
    ngx_xmpp_cm_metrics_sh_t         *sh;
    ngx_xmpp_cm_metrics_ctx_t        *ctx;
    ngx_stream_xmpp_cm_srv_conf_t   **srv;
    ngx_stream_xmpp_cm_main_conf_t   *cmcf;

    cmcf = ngx_stream_cycle_get_module_main_conf(cycle,
                                                 ngx_stream_xmpp_cm_module);
    if (cmcf == NULL || cmcf->worker == NULL) {
        return;
    }

    wk = cmcf->worker;
    srv = cmcf->servers.elts;

    for (i = 0; i < cmcf->servers.nelts; i++) {
        if (srv[i]->up) {
            srv[i]->up->metrics = &wk->metrics_void;
        }
    }

    ctx = wk->metrics_ctx;

    if (ctx == NULL || wk->metrics_slot == NGX_ERROR) {
        return;
    }

    sh = ctx->sh;

    ngx_shmtx_lock(&ctx->shpool->mutex);
    ngx_xmpp_cm_metrics_fold(sh, wk->metrics_slot);
    ngx_shmtx_unlock(&ctx->shpool->mutex);

    ngx_memory_barrier();

    sh->pids[wk->metrics_slot] = 0;
    wk->metrics_slot = NGX_ERROR;
}


/* the socket gauges, recounted when a socket changes state */

void
ngx_xmpp_cm_metrics_socks(ngx_xmpp_cm_upstream_t *up)
{
    uint64_t                connecting, handshake, ready;
    ngx_uint_t              i;
    ngx_xmpp_cm_metrics_t  *m;

    connecting = 0;
    handshake = 0;
    ready = 0;

    for (i = 0; i < up->nsocks; i++) {
        switch (up->socks[i].state) {

        case NGX_XMPP_CM_SOCK_IDLE:
            break;

        case NGX_XMPP_CM_SOCK_CONNECTING:
            connecting++;
            break;

        case NGX_XMPP_CM_SOCK_READY:
            ready++;
            break;

        default: /* opening, TLS, handshake */
            handshake++;
        }
    }

    m = up->metrics;
    m->v[NGX_XMPP_CM_M_SOCK_CONNECTING] = connecting;
    m->v[NGX_XMPP_CM_M_SOCK_HANDSHAKE] = handshake;
    m->v[NGX_XMPP_CM_M_SOCK_READY] = ready;
}


/* before a socket closes (its state is still the one it failed in) */

void
ngx_xmpp_cm_metrics_sock_closed(ngx_xmpp_cm_sock_t *sock)
{
    if (sock->state == NGX_XMPP_CM_SOCK_TLS
        || sock->state == NGX_XMPP_CM_SOCK_HANDSHAKE)
    {
        ngx_xmpp_cm_count(sock->up, HANDSHAKE_FAILURES);
    }
}


void
ngx_xmpp_cm_metrics_stream_error(ngx_xmpp_cm_upstream_t *up, char *cond)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_XMPP_CM_M_CONDS - 1; i++) {
        if (ngx_strcmp(cond, ngx_xmpp_cm_metrics_conds[i]) == 0) {
            break;
        }
    }

    up->metrics->v[NGX_XMPP_CM_M_STREAM_ERROR + i]++;
}


/* a client connection: authenticating until it is, or until it closes */

void
ngx_xmpp_cm_metrics_stream_opened(ngx_xmpp_cm_upstream_t *up)
{
    ngx_xmpp_cm_count(up, AUTHENTICATING);
}


/* a WebSocket client connection: from its upgrade to its close */

void
ngx_xmpp_cm_metrics_websocket(ngx_xmpp_cm_upstream_t *up, ngx_uint_t open)
{
    if (open) {
        ngx_xmpp_cm_count(up, WEBSOCKET);
        ngx_xmpp_cm_count(up, WEBSOCKET_OPENED);

    } else {
        ngx_xmpp_cm_uncount(up, WEBSOCKET);
    }
}


/* a BOSH session: 1 created, -1 ended, 0 one more request of it */

void
ngx_xmpp_cm_metrics_bosh(ngx_xmpp_cm_upstream_t *up, ngx_int_t what)
{
    if (what > 0) {
        ngx_xmpp_cm_count(up, BOSH);
        ngx_xmpp_cm_count(up, BOSH_OPENED);
        ngx_xmpp_cm_count(up, BOSH_REQUESTS);

    } else if (what < 0) {
        ngx_xmpp_cm_uncount(up, BOSH);

    } else {
        ngx_xmpp_cm_count(up, BOSH_REQUESTS);
    }
}


/* before the stream's authenticated flag is set: was is its old value */

void
ngx_xmpp_cm_metrics_authenticated(ngx_xmpp_cm_upstream_t *up, ngx_uint_t was)
{
    if (was) {
        return;
    }

    ngx_xmpp_cm_uncount(up, AUTHENTICATING);
    ngx_xmpp_cm_count(up, BOUND);
    ngx_xmpp_cm_count(up, LOGIN_SUCCESS);
}


void
ngx_xmpp_cm_metrics_stream_closed(ngx_xmpp_cm_upstream_t *up,
    ngx_uint_t authenticated)
{
    if (authenticated) {
        ngx_xmpp_cm_uncount(up, BOUND);

    } else {
        ngx_xmpp_cm_uncount(up, AUTHENTICATING);
    }
}


/*
 * A scrape: every CM name in the zone, summed over the live slots (a
 * dead worker's gauges left with it) and the retired row, in the text
 * exposition format, into memory from the request's pool.
 */

ngx_int_t
ngx_xmpp_cm_metrics_render(ngx_cycle_t *cycle, ngx_pool_t *pool,
    ngx_str_t *out)
{
    u_char                           *p, *last;
    size_t                            len;
    int64_t                          *sums, *sum, v;
    ngx_pid_t                         pid;
    ngx_uint_t                        s, n, k, f, names, nfam;
    ngx_xmpp_cm_metrics_t            *rec;
    ngx_xmpp_cm_metrics_sh_t         *sh;
    ngx_xmpp_cm_metrics_ctx_t        *ctx;
    ngx_xmpp_cm_metrics_name_t       *nm;
    ngx_xmpp_cm_metrics_family_t     *fam;
    ngx_stream_xmpp_cm_main_conf_t   *cmcf;

    names = 0;
    sh = NULL;
    sums = NULL;
    nm = NULL;

    cmcf = ngx_stream_cycle_get_module_main_conf(cycle,
                                                 ngx_stream_xmpp_cm_module);

    if (cmcf && cmcf->metrics_zone) {
        ctx = cmcf->metrics_zone->data;
        sh = ctx->sh;

        ngx_shmtx_lock(&ctx->shpool->mutex);

        names = sh->used;

        sums = ngx_pcalloc(pool, (names + 1) * NGX_XMPP_CM_M_SUMS
                                 * sizeof(int64_t));
        nm = ngx_palloc(pool, (names + 1)
                              * sizeof(ngx_xmpp_cm_metrics_name_t));

        if (sums == NULL || nm == NULL) {
            ngx_shmtx_unlock(&ctx->shpool->mutex);
            return NGX_ERROR;
        }

        ngx_memcpy(nm, sh->names, names * sizeof(ngx_xmpp_cm_metrics_name_t));

        for (s = 0; s <= sh->nslots; s++) {
            pid = (s < sh->nslots) ? (ngx_pid_t) sh->pids[s] : 0;

            if (s < sh->nslots && pid == 0) {
                continue;
            }

            for (n = 0; n < names; n++) {
                rec = &sh->recs[s * sh->nnames + n];
                sum = &sums[n * NGX_XMPP_CM_M_SUMS];

                k = NGX_XMPP_CM_M_GAUGES;

                if (s < sh->nslots && ngx_xmpp_cm_metrics_alive(pid)) {
                    k = 0;

                    if (rec->v[NGX_XMPP_CM_M_SOCK_READY]) {
                        sum[NGX_XMPP_CM_M_WORKERS_UP]++;

                    } else {
                        sum[NGX_XMPP_CM_M_WORKERS_UP + 1]++;
                    }
                }

                for ( /* void */ ; k < NGX_XMPP_CM_M_N; k++) {
                    sum[k] += (int64_t) rec->v[k];
                }
            }
        }

        ngx_shmtx_unlock(&ctx->shpool->mutex);
    }

    /* the length first: every line is bounded */

    nfam = sizeof(ngx_xmpp_cm_metrics_families)
           / sizeof(ngx_xmpp_cm_metrics_family_t);

    len = nfam * NGX_XMPP_CM_METRICS_HEAD
          + names * NGX_XMPP_CM_M_SUMS * NGX_XMPP_CM_METRICS_LINE;

    p = ngx_pnalloc(pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    out->data = p;
    last = p + len;

    for (f = 0; f < nfam; f++) {
        fam = &ngx_xmpp_cm_metrics_families[f];

        p = ngx_slprintf(p, last, "# HELP %s %s\n# TYPE %s %s\n",
                         fam->name, fam->help, fam->name, fam->type);

        for (n = 0; n < names; n++) {
            sum = &sums[n * NGX_XMPP_CM_M_SUMS];

            for (k = 0; k < fam->n; k++) {
                p = ngx_slprintf(p, last, "%s{cm=\"%*s\"", fam->name,
                                 nm[n].len, nm[n].data);

                if (fam->label) {
                    p = ngx_slprintf(p, last, ",%s=\"%s\"", fam->label,
                                     fam->values[k]);
                }

                /* a gauge summed over workers cannot be negative */

                v = ngx_max(sum[fam->first + k], 0);

                if (fam->first == NGX_XMPP_CM_M_CONFIRM_WAIT_MS) {
                    /* counted in milliseconds, shown in seconds */
                    p = ngx_slprintf(p, last, "} %L.%03L\n", v / 1000,
                                     v % 1000);

                } else {
                    p = ngx_slprintf(p, last, "} %L\n", v);
                }
            }
        }
    }

    if (p == last) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "xmpp_cm: metrics output truncated");
        return NGX_ERROR;
    }

    out->len = p - out->data;

    return NGX_OK;
}


/* Openfire's answer to a jabber:iq:auth set: an error is a failed login */

void
ngx_xmpp_cm_metrics_iq_auth(ngx_xmpp_cm_upstream_t *up, ngx_str_t *type)
{
    if (type && ngx_xmpp_cm_str_is(type, "error")) {
        ngx_xmpp_cm_count(up, LOGIN_FAILURE);
    }
}


/* a message for a client that is gone: handed back in <failed/> or not */

void
ngx_xmpp_cm_metrics_returned(ngx_xmpp_cm_upstream_t *up, ngx_int_t rc)
{
    if (rc == NGX_OK) {
        ngx_xmpp_cm_count(up, FAILED_RETURNED);

    } else {
        ngx_xmpp_cm_count(up, DROP_TOO_LARGE);
    }
}
