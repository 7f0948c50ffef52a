
/*
 * Output chains: what a client connection or an Openfire socket has queued
 * and not yet written, as an ngx_chain_t of ngx_buf_t sent with one
 * c->send_chain() per pass and recycled with ngx_chain_update_chains().
 *
 * The bytes live in 8 KiB blocks; several bufs point into one block, and
 * contiguous bufs go out as one iovec (ngx_output_chain_to_iovec), so many
 * small bufs cost no extra writev.  A block is a shadow of the bufs carved
 * from it and goes back to the free list when its last buf (last_shadow)
 * is written, as ngx_event_pipe recycles its raw bufs.
 *
 * On an Openfire socket every routed stanza has a buf of its own, so when
 * the socket dies each queued stanza is known to be written whole, cut, or
 * not written at all.  A client's output is a byte stream (deflated, once
 * compression is on): its bytes are appended to the last buf.
 *
 * Nothing between us and the socket keeps a copy of the chain, so the
 * chain not yet written is both nginx's "out" and its "busy": one list.
 * Bufs and blocks come from the worker's free lists (in its context; each
 * output keeps a pointer to them), so an idle session holds no output
 * memory and the hot path does not allocate.
 */


#include "ngx_stream_xmpp_cm.h"


#define NGX_XMPP_CM_BLOCK     8192
#define NGX_XMPP_CM_FREE_MAX  512


#define ngx_xmpp_cm_output_tag  ((ngx_buf_tag_t) &ngx_stream_xmpp_cm_module)


/*
 * A block: its ngx_buf_t, then the memory it describes.  Free blocks are
 * linked through their shadow pointer, which only the bufs carved from a
 * block use (pointing to it).
 */

static ngx_buf_t *
ngx_xmpp_cm_block_get(ngx_xmpp_cm_output_free_t *fl, size_t size)
{
    ngx_buf_t  *b;

    if (size <= NGX_XMPP_CM_BLOCK && fl->blocks) {
        b = fl->blocks;
        fl->blocks = b->shadow;
        fl->nblocks--;

        return b;
    }

    if (size < NGX_XMPP_CM_BLOCK) {
        size = NGX_XMPP_CM_BLOCK;
    }

    b = ngx_alloc(sizeof(ngx_buf_t) + size, ngx_cycle->log);
    if (b == NULL) {
        return NULL;
    }

    ngx_memzero(b, sizeof(ngx_buf_t));

    b->start = (u_char *) (b + 1);
    b->end = b->start + size;
    b->pos = b->start;
    b->last = b->start;

    return b;
}


static void
ngx_xmpp_cm_block_put(ngx_xmpp_cm_output_free_t *fl, ngx_buf_t *b)
{
    if (b->end - b->start == NGX_XMPP_CM_BLOCK
        && fl->nblocks < NGX_XMPP_CM_FREE_MAX)
    {
        b->shadow = fl->blocks;
        fl->blocks = b;
        fl->nblocks++;
        return;
    }

    ngx_free(b);
}


/* an empty output, drawing on the worker's free lists */

void
ngx_xmpp_cm_output_init(ngx_xmpp_cm_output_t *o, ngx_xmpp_cm_worker_t *worker)
{
    o->out = NULL;
    o->tail = NULL;
    o->size = 0;
    o->free = &worker->output;
}


/*
 * A buf at the end of the chain with room for size bytes at b->last; the
 * caller writes exactly size bytes there and moves b->last.  stanza: a
 * buf of its own (an Openfire socket); otherwise the last buf grows when
 * its block has room (a client's byte stream).
 */

ngx_buf_t *
ngx_xmpp_cm_output_buf(ngx_xmpp_cm_output_t *o, size_t size,
    ngx_uint_t stanza)
{
    u_char       *p;
    ngx_buf_t    *b, *block;
    ngx_uint_t    fresh;
    ngx_chain_t  *cl;

    block = NULL;
    p = NULL;
    fresh = 0;

    if (o->out && !o->tail->buf->last_shadow) {
        b = o->tail->buf;
        block = b->shadow;

        if ((size_t) (block->end - b->last) < size) {
            /* full: it is freed when this buf, its last, is written */
            b->last_shadow = 1;
            block = NULL;

        } else if (!stanza && b->end == block->end) {
            o->size += size;
            return b;

        } else {
            p = b->last;
        }
    }

    if (block == NULL) {
        block = ngx_xmpp_cm_block_get(o->free, size);
        if (block == NULL) {
            return NULL;
        }

        p = block->start;
        fresh = 1;
    }

    cl = ngx_chain_get_free_buf(ngx_cycle->pool, &o->free->bufs);
    if (cl == NULL) {
        if (fresh) {
            ngx_xmpp_cm_block_put(o->free, block);
        }

        return NULL;
    }

    b = cl->buf;

    b->start = p;
    b->pos = p;
    b->last = p;
    b->end = stanza ? p + size : block->end;
    b->shadow = block;
    b->tag = ngx_xmpp_cm_output_tag;
    b->temporary = 1;
    b->last_shadow = 0;
    b->flush = 0;
    b->num = NGX_XMPP_CM_BUF_LINK;

    if (o->out) {
        o->tail->next = cl;

    } else {
        o->out = cl;
    }

    o->tail = cl;
    o->size += size;

    return b;
}


ngx_int_t
ngx_xmpp_cm_output_append(ngx_xmpp_cm_output_t *o, u_char *data, size_t n)
{
    ngx_buf_t  *b;

    if (n == 0) {
        return NGX_OK;
    }

    b = ngx_xmpp_cm_output_buf(o, n, 0);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last = ngx_cpymem(b->last, data, n);

    return NGX_OK;
}


/*
 * The written bufs at the head of a chain go back to the free list, and
 * with the last buf of a block, the block.
 */

static void
ngx_xmpp_cm_output_recycle(ngx_xmpp_cm_output_free_t *fl,
    ngx_chain_t **chain)
{
    ngx_chain_t  *cl, *done, *none;

    done = fl->bufs;
    none = NULL;

    ngx_chain_update_chains(ngx_cycle->pool, &fl->bufs, chain, &none,
                            ngx_xmpp_cm_output_tag);

    for (cl = fl->bufs; cl != done; cl = cl->next) {
        if (cl->buf->last_shadow) {
            ngx_xmpp_cm_block_put(fl, cl->buf->shadow);
            cl->buf->last_shadow = 0;
        }

        cl->buf->shadow = NULL;
    }
}


/* when the whole chain is written, the block being filled goes too */

static void
ngx_xmpp_cm_output_update(ngx_xmpp_cm_output_t *o)
{
    if (o->out == NULL) {
        return;
    }

    if (ngx_buf_size(o->tail->buf) == 0) {
        o->tail->buf->last_shadow = 1;
    }

    ngx_xmpp_cm_output_recycle(o->free, &o->out);

    if (o->out == NULL) {
        o->tail = NULL;
    }
}


/*
 * Writes as much of the chain as the socket takes with one send_chain()
 * (writev, or SSL_write for TLS connections).
 */

ngx_int_t
ngx_xmpp_cm_output_send(ngx_connection_t *c, ngx_xmpp_cm_output_t *o)
{
    off_t         sent;
    ngx_chain_t  *cl;

    if (o->size == 0) {
        return NGX_OK;
    }

    if (o->out) {
        /* a buffering SSL connection writes its buffer at the end */
        o->tail->buf->flush = 1;
    }

    sent = c->sent;

    cl = c->send_chain(c, o->out, 0);

    if (cl == NGX_CHAIN_ERROR) {
        c->error = 1;
        return NGX_ERROR;
    }

    o->size -= (size_t) (c->sent - sent);

    ngx_xmpp_cm_output_update(o);

    return o->size ? NGX_AGAIN : NGX_OK;
}


/* what a socket reset did to one queued stanza */

ngx_uint_t
ngx_xmpp_cm_output_state(ngx_buf_t *b)
{
    if (b->pos == b->last) {
        return NGX_XMPP_CM_WRITTEN;
    }

    if (b->pos == b->start) {
        return NGX_XMPP_CM_UNWRITTEN;
    }

    return NGX_XMPP_CM_CUT;
}


void
ngx_xmpp_cm_output_classify(ngx_xmpp_cm_output_t *o,
    ngx_xmpp_cm_output_sent_t *st)
{
    ngx_chain_t  *cl;

    ngx_memzero(st, sizeof(ngx_xmpp_cm_output_sent_t));

    for (cl = o->out; cl; cl = cl->next) {

        switch (ngx_xmpp_cm_output_state(cl->buf)) {

        case NGX_XMPP_CM_WRITTEN:
            st->written++;
            break;

        case NGX_XMPP_CM_CUT:
            st->cut++;
            st->cut_bytes += ngx_buf_size(cl->buf);
            break;

        default: /* NGX_XMPP_CM_UNWRITTEN */
            st->unwritten++;
            st->unwritten_bytes += ngx_buf_size(cl->buf);
        }
    }
}


/*
 * A dead socket's chain: the stanzas not written at all go to the end of
 * another socket's chain; the stanzas written whole and the one cut by the
 * reset (it cannot be resent without a half stanza) are dropped.  Sends go
 * in order, so the chain is: written, at most one cut, then unwritten.
 * The blocks travel with their bufs; neither chain fills them further.
 */

void
ngx_xmpp_cm_output_move(ngx_xmpp_cm_output_t *to, ngx_xmpp_cm_output_t *from)
{
    ngx_chain_t  *cl, *prev, *head;

    if (from->out == NULL) {
        return;
    }

    from->tail->buf->last_shadow = 1;

    head = from->out;
    prev = NULL;

    for (cl = head; cl; cl = cl->next) {
        if (ngx_xmpp_cm_output_state(cl->buf) == NGX_XMPP_CM_UNWRITTEN) {
            break;
        }

        cl->buf->pos = cl->buf->last;
        prev = cl;
    }

    if (prev) {
        /* a dropped buf frees only a block none of the moved ones use */
        prev->next = NULL;
        ngx_xmpp_cm_output_recycle(from->free, &head);
    }

    if (cl) {
        if (to->out) {
            to->tail->buf->last_shadow = 1;
            to->tail->next = cl;

        } else {
            to->out = cl;
        }

        to->tail = from->tail;

        for ( /* void */ ; cl; cl = cl->next) {
            to->size += ngx_buf_size(cl->buf);
        }
    }

    from->out = NULL;
    from->tail = NULL;
    from->size = 0;
}


/*
 * Confirmed delivery (docs/delivery.md): as ngx_xmpp_cm_output_send(), but
 * the bufs written whole move to the kept chain, in order, instead of
 * going back to the free list; ngx_xmpp_cm_output_confirm() recycles them
 * once Openfire has confirmed them.  A block still goes with the last buf
 * carved from it, whichever chain that buf is in then.
 */

ngx_int_t
ngx_xmpp_cm_output_send_kept(ngx_connection_t *c, ngx_xmpp_cm_output_t *o,
    ngx_xmpp_cm_kept_t *k)
{
    off_t         sent;
    ngx_chain_t  *cl, *last;

    if (o->size == 0) {
        return NGX_OK;
    }

    o->tail->buf->flush = 1;

    sent = c->sent;

    cl = c->send_chain(c, o->out, 0);

    if (cl == NGX_CHAIN_ERROR) {
        c->error = 1;
        return NGX_ERROR;
    }

    o->size -= (size_t) (c->sent - sent);

    last = NULL;

    for (cl = o->out; cl && ngx_buf_size(cl->buf) == 0; cl = cl->next) {
        last = cl;
        k->n++;
        k->size += cl->buf->last - cl->buf->start;
    }

    if (last == NULL) {
        return NGX_AGAIN;
    }

    if (cl == NULL) {
        /* all written: the block being filled goes with its last buf */
        last->buf->last_shadow = 1;
        o->tail = NULL;
    }

    if (k->out) {
        k->tail->next = o->out;

    } else {
        k->out = o->out;
    }

    k->tail = last;
    last->next = NULL;
    o->out = cl;

    return o->size ? NGX_AGAIN : NGX_OK;
}


/* Openfire confirmed the kept bufs up to and with last: they are recycled */

void
ngx_xmpp_cm_output_confirm(ngx_xmpp_cm_output_free_t *fl,
    ngx_xmpp_cm_kept_t *k, ngx_chain_t *last)
{
    ngx_chain_t  *cl, *head;

    head = k->out;

    for (cl = head; cl; cl = cl->next) {
        k->n--;
        k->size -= cl->buf->last - cl->buf->start;

        if (cl == last) {
            break;
        }
    }

    k->out = last->next;
    last->next = NULL;

    if (k->out == NULL) {
        k->tail = NULL;
    }

    ngx_xmpp_cm_output_recycle(fl, &head);
}


/*
 * A dead socket's stanzas not confirmed: the kept ones, then those still
 * queued (at most one cut, then unwritten ones), go whole to the end of
 * another socket's chain (to), those that resend() keeps, in their order;
 * the others are dropped.  With no socket to go to (to is NULL) all are
 * dropped.  Bufs of one block are consecutive and the block goes with the
 * last of them: when that one is dropped, the block goes with the last
 * one kept instead.  Returns how many were kept.
 */

ngx_uint_t
ngx_xmpp_cm_output_resend(ngx_xmpp_cm_output_t *to, ngx_xmpp_cm_kept_t *k,
    ngx_xmpp_cm_output_t *from, ngx_xmpp_cm_resend_pt resend, void *data)
{
    ngx_buf_t    *b;
    ngx_uint_t    n;
    ngx_chain_t  *cl, *next, *head, *last, *kept, *ktail, *drop, *dtail;

    n = 0;

    if (k->out) {
        head = k->out;
        k->tail->next = from->out;
        last = from->out ? from->tail : k->tail;

    } else {
        head = from->out;
        last = from->tail;
    }

    k->out = NULL;
    k->tail = NULL;
    k->size = 0;
    k->n = 0;

    from->out = NULL;
    from->tail = NULL;
    from->size = 0;

    if (head == NULL) {
        return 0;
    }

    last->buf->last_shadow = 1;

    kept = NULL;
    ktail = NULL;
    drop = NULL;
    dtail = NULL;

    for (cl = head; cl; cl = next) {
        next = cl->next;
        cl->next = NULL;
        b = cl->buf;

        if (to && resend(data, b)) {
            b->pos = b->start;
            b->flush = 0;
            to->size += b->last - b->start;
            n++;

            if (ktail) {
                ktail->next = cl;

            } else {
                kept = cl;
            }

            ktail = cl;
            continue;
        }

        if (b->last_shadow && ktail && ktail->buf->shadow == b->shadow) {
            ktail->buf->last_shadow = 1;
            b->last_shadow = 0;
        }

        b->pos = b->last;

        if (dtail) {
            dtail->next = cl;

        } else {
            drop = cl;
        }

        dtail = cl;
    }

    if (drop) {
        ngx_xmpp_cm_output_recycle(from->free, &drop);
    }

    if (kept == NULL) {
        return 0;
    }

    if (to->out) {
        to->tail->buf->last_shadow = 1;
        to->tail->next = kept;

    } else {
        to->out = kept;
    }

    to->tail = ktail;

    return n;
}


/* drops what is queued */

void
ngx_xmpp_cm_output_free(ngx_xmpp_cm_output_t *o)
{
    ngx_chain_t  *cl;

    for (cl = o->out; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;
    }

    ngx_xmpp_cm_output_update(o);

    o->size = 0;
}


/* worker exit: the free blocks go back to malloc, the bufs with the pool */

void
ngx_xmpp_cm_output_release(ngx_xmpp_cm_output_free_t *fl)
{
    ngx_buf_t  *b;

    while (fl->blocks) {
        b = fl->blocks;
        fl->blocks = b->shadow;
        ngx_free(b);
    }

    fl->blocks = NULL;
    fl->nblocks = 0;
    fl->bufs = NULL;
}
