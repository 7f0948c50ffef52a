
/*
 * Output queues: a list of blocks that many producers append to and one
 * connection drains with a single send_chain() per pass.  Standard-size
 * blocks come from a per-worker free list, so an idle session holds no
 * output memory at all and the hot path does not allocate.
 */


#include "ngx_stream_xmpp_cm.h"


#define NGX_XMPP_CM_BLOCK     8192
#define NGX_XMPP_CM_FREE_MAX  512
#define NGX_XMPP_CM_IOVS      64


static ngx_xmpp_cm_block_t  *ngx_xmpp_cm_free_blocks;
static ngx_uint_t            ngx_xmpp_cm_nfree;


static ngx_xmpp_cm_block_t *
ngx_xmpp_cm_block_get(size_t n)
{
    size_t                size;
    ngx_xmpp_cm_block_t  *b;

    if (n <= NGX_XMPP_CM_BLOCK && ngx_xmpp_cm_free_blocks) {
        b = ngx_xmpp_cm_free_blocks;
        ngx_xmpp_cm_free_blocks = b->next;
        ngx_xmpp_cm_nfree--;

    } else {
        size = n > NGX_XMPP_CM_BLOCK ? n : NGX_XMPP_CM_BLOCK;

        b = ngx_alloc(sizeof(ngx_xmpp_cm_block_t) + size, ngx_cycle->log);
        if (b == NULL) {
            return NULL;
        }

        b->size = size;
    }

    b->next = NULL;
    b->pos = (u_char *) b + sizeof(ngx_xmpp_cm_block_t);
    b->last = b->pos;
    b->end = b->pos + b->size;

    return b;
}


static void
ngx_xmpp_cm_block_put(ngx_xmpp_cm_block_t *b)
{
    if (b->size == NGX_XMPP_CM_BLOCK
        && ngx_xmpp_cm_nfree < NGX_XMPP_CM_FREE_MAX)
    {
        b->next = ngx_xmpp_cm_free_blocks;
        ngx_xmpp_cm_free_blocks = b;
        ngx_xmpp_cm_nfree++;
        return;
    }

    ngx_free(b);
}


u_char *
ngx_xmpp_cm_queue_alloc(ngx_xmpp_cm_queue_t *q, size_t n)
{
    u_char               *p;
    ngx_xmpp_cm_block_t  *b;

    b = q->tail;

    if (b == NULL || (size_t) (b->end - b->last) < n) {
        b = ngx_xmpp_cm_block_get(n);
        if (b == NULL) {
            return NULL;
        }

        if (q->tail) {
            q->tail->next = b;

        } else {
            q->head = b;
        }

        q->tail = b;
    }

    p = b->last;
    b->last += n;
    q->size += n;

    return p;
}


ngx_int_t
ngx_xmpp_cm_queue_append(ngx_xmpp_cm_queue_t *q, u_char *data, size_t n)
{
    u_char  *p;

    if (n == 0) {
        return NGX_OK;
    }

    p = ngx_xmpp_cm_queue_alloc(q, n);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(p, data, n);

    return NGX_OK;
}


static void
ngx_xmpp_cm_queue_consume(ngx_xmpp_cm_queue_t *q, size_t n)
{
    size_t                size;
    ngx_xmpp_cm_block_t  *b;

    while (n && q->head) {
        b = q->head;
        size = b->last - b->pos;

        if (n < size) {
            b->pos += n;
            q->size -= n;
            return;
        }

        n -= size;
        q->size -= size;
        q->head = b->next;

        if (q->head == NULL) {
            q->tail = NULL;
        }

        ngx_xmpp_cm_block_put(b);
    }
}


/*
 * Writes as much of the queue as the socket takes, with one send_chain()
 * (writev, or SSL_write for TLS connections) per call.
 */

ngx_int_t
ngx_xmpp_cm_queue_send(ngx_connection_t *c, ngx_xmpp_cm_queue_t *q)
{
    off_t                 sent;
    ngx_uint_t            i;
    ngx_buf_t             bufs[NGX_XMPP_CM_IOVS];
    ngx_chain_t           chain[NGX_XMPP_CM_IOVS], *rc;
    ngx_xmpp_cm_block_t  *b;

    while (q->size) {

        i = 0;

        for (b = q->head; b && i < NGX_XMPP_CM_IOVS; b = b->next) {
            if (b->last == b->pos) {
                continue;
            }

            ngx_memzero(&bufs[i], sizeof(ngx_buf_t));
            bufs[i].pos = b->pos;
            bufs[i].last = b->last;
            bufs[i].start = b->pos;
            bufs[i].end = b->last;
            bufs[i].memory = 1;

            chain[i].buf = &bufs[i];
            chain[i].next = NULL;

            if (i > 0) {
                chain[i - 1].next = &chain[i];
            }

            i++;
        }

        if (i == 0) {
            break;
        }

        sent = c->sent;

        rc = c->send_chain(c, chain, 0);

        if (rc == NGX_CHAIN_ERROR) {
            c->error = 1;
            return NGX_ERROR;
        }

        ngx_xmpp_cm_queue_consume(q, (size_t) (c->sent - sent));

        if (rc != NULL || !c->write->ready) {
            return q->size ? NGX_AGAIN : NGX_OK;
        }
    }

    return NGX_OK;
}


/*
 * Moves the unsent blocks of a dead connection to another queue.  A block
 * that was partly written cannot be resent without a half stanza: it is
 * dropped and counted.
 */

void
ngx_xmpp_cm_queue_move(ngx_xmpp_cm_queue_t *to, ngx_xmpp_cm_queue_t *from,
    size_t *dropped)
{
    ngx_xmpp_cm_block_t  *b;

    *dropped = 0;

    b = from->head;

    if (b && b->pos != (u_char *) b + sizeof(ngx_xmpp_cm_block_t)) {
        *dropped = b->last - b->pos;
        from->head = b->next;
        from->size -= *dropped;
        ngx_xmpp_cm_block_put(b);

        if (from->head == NULL) {
            from->tail = NULL;
        }
    }

    if (from->head == NULL) {
        return;
    }

    if (to->tail) {
        to->tail->next = from->head;

    } else {
        to->head = from->head;
    }

    to->tail = from->tail;
    to->size += from->size;

    from->head = NULL;
    from->tail = NULL;
    from->size = 0;
}


void
ngx_xmpp_cm_queue_free(ngx_xmpp_cm_queue_t *q)
{
    ngx_xmpp_cm_block_t  *b, *next;

    for (b = q->head; b; b = next) {
        next = b->next;
        ngx_xmpp_cm_block_put(b);
    }

    q->head = NULL;
    q->tail = NULL;
    q->size = 0;
}


/* worker exit: give the free list back */

void
ngx_xmpp_cm_queue_release_free(void)
{
    ngx_xmpp_cm_block_t  *b;

    while (ngx_xmpp_cm_free_blocks) {
        b = ngx_xmpp_cm_free_blocks;
        ngx_xmpp_cm_free_blocks = b->next;
        ngx_free(b);
    }

    ngx_xmpp_cm_nfree = 0;
}
