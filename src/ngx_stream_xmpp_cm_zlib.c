
/*
 * XEP-0138 stream compression (zlib) for client streams.
 *
 * Output is deflated when it is queued, with a sync flush per stanza, and
 * handed to the caller chunk by chunk, so the client's output chain holds
 * compressed bytes and the send path is the same as without compression.
 * Input is inflated into a buffer shared by the worker (its context's
 * zlib_in) and fed to the framer chunk by chunk.
 *
 * Memory per session: the deflate side uses a 1 KiB window and memLevel 2
 * (zlib's formula: (1 << (10 + 2)) + (1 << (2 + 9)) = 6 KiB, plus its
 * state); the inflate side must accept whatever window the client chose,
 * up to zlib's 32 KiB, which zlib allocates on first use.
 */


#include "ngx_stream_xmpp_cm.h"
#include <zlib.h>


#define NGX_XMPP_CM_ZLIB_WBITS   10
#define NGX_XMPP_CM_ZLIB_MEMLVL  2
#define NGX_XMPP_CM_ZLIB_LEVEL   1


struct ngx_xmpp_cm_zlib_s {
    z_stream   in;
    z_stream   out;
    ngx_log_t *log;
    u_char    *ibuf;      /* the worker's, NGX_XMPP_CM_ZLIB_CHUNK each */
    u_char    *obuf;
    unsigned   in_init:1;
    unsigned   out_init:1;
};


static void *
ngx_xmpp_cm_zlib_alloc(void *opaque, u_int items, u_int size)
{
    return ngx_alloc(items * size, opaque);
}


static void
ngx_xmpp_cm_zlib_free_cb(void *opaque, void *address)
{
    ngx_free(address);
}


ngx_xmpp_cm_zlib_t *
ngx_xmpp_cm_zlib_create(ngx_pool_t *pool, ngx_log_t *log,
    ngx_xmpp_cm_worker_t *worker)
{
    ngx_xmpp_cm_zlib_t  *z;

    z = ngx_pcalloc(pool, sizeof(ngx_xmpp_cm_zlib_t));
    if (z == NULL) {
        return NULL;
    }

    z->log = log;

    /*
     * Two buffers: output for a client may be deflated while the framer
     * is still parsing an inflated chunk (its own replies, e.g. the header).
     */

    z->ibuf = worker->zlib_in;
    z->obuf = worker->zlib_out;

    z->in.zalloc = ngx_xmpp_cm_zlib_alloc;
    z->in.zfree = ngx_xmpp_cm_zlib_free_cb;
    z->in.opaque = log;

    if (inflateInit2(&z->in, MAX_WBITS) != Z_OK) {
        return NULL;
    }

    z->in_init = 1;

    z->out.zalloc = ngx_xmpp_cm_zlib_alloc;
    z->out.zfree = ngx_xmpp_cm_zlib_free_cb;
    z->out.opaque = log;

    if (deflateInit2(&z->out, NGX_XMPP_CM_ZLIB_LEVEL, Z_DEFLATED,
                     NGX_XMPP_CM_ZLIB_WBITS, NGX_XMPP_CM_ZLIB_MEMLVL,
                     Z_DEFAULT_STRATEGY)
        != Z_OK)
    {
        ngx_xmpp_cm_zlib_free(z);
        return NULL;
    }

    z->out_init = 1;

    return z;
}


void
ngx_xmpp_cm_zlib_free(ngx_xmpp_cm_zlib_t *z)
{
    if (z->in_init) {
        inflateEnd(&z->in);
        z->in_init = 0;
    }

    if (z->out_init) {
        deflateEnd(&z->out);
        z->out_init = 0;
    }
}


/* deflates and hands each chunk on; flush ends a stanza (Z_SYNC_FLUSH) */

ngx_int_t
ngx_xmpp_cm_zlib_deflate(ngx_xmpp_cm_zlib_t *z, u_char *p, size_t len,
    ngx_uint_t flush, ngx_xmpp_cm_zlib_pt handler, void *data)
{
    int     rc;
    size_t  n;

    z->out.next_in = p;
    z->out.avail_in = len;

    for ( ;; ) {
        z->out.next_out = z->obuf;
        z->out.avail_out = NGX_XMPP_CM_ZLIB_CHUNK;

        rc = deflate(&z->out, flush ? Z_SYNC_FLUSH : Z_NO_FLUSH);

        if (rc != Z_OK && rc != Z_BUF_ERROR) {
            ngx_log_error(NGX_LOG_ALERT, z->log, 0,
                          "xmpp_cm: deflate() failed: %d", rc);
            return NGX_ERROR;
        }

        n = NGX_XMPP_CM_ZLIB_CHUNK - z->out.avail_out;

        if (n && handler(data, z->obuf, n) != NGX_OK) {
            return NGX_ERROR;
        }

        if (z->out.avail_in == 0 && z->out.avail_out != 0) {
            return NGX_OK;
        }
    }
}


/*
 * Inflates what the client sent and hands each chunk to the framer.
 * NGX_ERROR: the compressed stream is broken (a stream error for the
 * client); other results are the handler's.
 */

ngx_int_t
ngx_xmpp_cm_zlib_inflate(ngx_xmpp_cm_zlib_t *z, u_char *p, size_t len,
    ngx_xmpp_cm_zlib_pt handler, void *data)
{
    int        rc;
    size_t     n;
    ngx_int_t  hrc;

    z->in.next_in = p;
    z->in.avail_in = len;

    while (z->in.avail_in) {
        z->in.next_out = z->ibuf;
        z->in.avail_out = NGX_XMPP_CM_ZLIB_CHUNK;

        rc = inflate(&z->in, Z_SYNC_FLUSH);

        if (rc != Z_OK && rc != Z_BUF_ERROR) {
            ngx_log_error(NGX_LOG_INFO, z->log, 0,
                          "xmpp_cm: client sent bad compressed data (%d)",
                          rc);
            return NGX_ERROR;
        }

        n = NGX_XMPP_CM_ZLIB_CHUNK - z->in.avail_out;

        if (n == 0 && rc == Z_BUF_ERROR) {
            break;
        }

        if (n) {
            hrc = handler(data, z->ibuf, n);

            if (hrc != NGX_OK) {
                return hrc;
            }
        }
    }

    return NGX_OK;
}
