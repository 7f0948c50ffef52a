
/*
 * Output chains (src/ngx_stream_xmpp_cm_output.c): one buf per stanza on
 * an Openfire socket, so that after a reset each queued stanza is known to
 * be written whole, cut, or not written at all; the unwritten ones move to
 * another socket, the others are dropped; a chain written to the end holds
 * no block (an idle session holds no output memory).
 */

#include "unit.h"
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>


#define UO_N  200


/* a stanza of its own buf: "<m i='N'>" padded with x to len bytes, "</m>" */

static ngx_buf_t *
uo_stanza(ngx_xmpp_cm_output_t *o, ngx_uint_t i, size_t len)
{
    u_char     *p;
    ngx_buf_t  *b;

    b = ngx_xmpp_cm_output_buf(o, len, 1);
    if (b == NULL) {
        return NULL;
    }

    p = ngx_sprintf(b->last, "<m i='%ui'>", i);
    while ((size_t) (p - b->last) < len - 4) {
        *p++ = 'x';
    }

    b->last = ngx_cpymem(p, "</m>", 4);

    CHECK_INT(b->last - b->pos, len);

    return b;
}


static size_t
uo_take(ngx_xmpp_cm_output_t *o, u_char *dst)
{
    u_char       *p;
    ngx_chain_t  *cl;

    p = dst;

    for (cl = o->out; cl; cl = cl->next) {
        p = ngx_cpymem(p, cl->buf->pos, cl->buf->last - cl->buf->pos);
    }

    return p - dst;
}


static ngx_uint_t
uo_links(ngx_xmpp_cm_output_t *o)
{
    ngx_uint_t    n;
    ngx_chain_t  *cl;

    n = 0;

    for (cl = o->out; cl; cl = cl->next) {
        n++;
    }

    return n;
}


UNIT_TEST(output_classify_after_a_partial_write)
{
    u_char                     got[64];
    size_t                     len;
    ngx_uint_t                 i;
    ngx_xmpp_cm_output_t       o, to;
    ngx_xmpp_cm_output_sent_t  st;

    ngx_xmpp_cm_output_init(&o, fuzz_worker);
    ngx_xmpp_cm_output_init(&to, fuzz_worker);

    for (i = 0; i < 5; i++) {
        CHECK(uo_stanza(&o, i, 16) != NULL);
    }

    CHECK_INT(uo_links(&o), 5);
    CHECK_INT(o.size, 80);

    ngx_xmpp_cm_output_classify(&o, &st);
    CHECK_INT(st.written, 0);
    CHECK_INT(st.cut, 0);
    CHECK_INT(st.unwritten, 5);
    CHECK_INT(st.unwritten_bytes, 80);

    /* what send_chain() does with the bufs when the socket took 40 bytes */

    (void) ngx_chain_update_sent(o.out, 40);

    ngx_xmpp_cm_output_classify(&o, &st);
    CHECK_INT(st.written, 2);
    CHECK_INT(st.cut, 1);
    CHECK_INT(st.cut_bytes, 8);
    CHECK_INT(st.unwritten, 2);
    CHECK_INT(st.unwritten_bytes, 32);

    CHECK_INT(ngx_xmpp_cm_output_state(o.out->buf), NGX_XMPP_CM_WRITTEN);
    CHECK_INT(ngx_xmpp_cm_output_state(o.out->next->next->buf),
              NGX_XMPP_CM_CUT);
    CHECK_INT(ngx_xmpp_cm_output_state(o.tail->buf), NGX_XMPP_CM_UNWRITTEN);

    /* the unwritten two go behind what the other socket has queued */

    CHECK(uo_stanza(&to, 9, 16) != NULL);

    ngx_xmpp_cm_output_move(&to, &o);

    CHECK(o.out == NULL && o.tail == NULL);
    CHECK_INT(o.size, 0);
    CHECK_INT(uo_links(&to), 3);
    CHECK_INT(to.size, 48);

    len = uo_take(&to, got);
    CHECK_STR(got, len, "<m i='9'>xxx</m><m i='3'>xxx</m><m i='4'>xxx</m>");

    ngx_xmpp_cm_output_classify(&to, &st);
    CHECK_INT(st.unwritten, 3);

    /* the moved bufs' block is no longer filled: a new stanza gets one */

    CHECK(uo_stanza(&to, 5, 16) != NULL);
    CHECK(to.tail->buf->shadow != to.out->next->buf->shadow);

    ngx_xmpp_cm_output_free(&to);
    CHECK(to.out == NULL && to.tail == NULL);
    CHECK_INT(to.size, 0);
}


UNIT_TEST(output_classify_at_a_stanza_boundary)
{
    ngx_uint_t                 i;
    ngx_xmpp_cm_output_t       o, to;
    ngx_xmpp_cm_output_sent_t  st;

    ngx_xmpp_cm_output_init(&o, fuzz_worker);
    ngx_xmpp_cm_output_init(&to, fuzz_worker);

    for (i = 0; i < 4; i++) {
        CHECK(uo_stanza(&o, i, 16) != NULL);
    }

    (void) ngx_chain_update_sent(o.out, 32);

    ngx_xmpp_cm_output_classify(&o, &st);
    CHECK_INT(st.written, 2);
    CHECK_INT(st.cut, 0);
    CHECK_INT(st.unwritten, 2);

    ngx_xmpp_cm_output_move(&to, &o);
    CHECK_INT(uo_links(&to), 2);
    CHECK_INT(to.size, 32);

    /* all written: nothing moves */

    (void) ngx_chain_update_sent(to.out, 32);
    ngx_xmpp_cm_output_classify(&to, &st);
    CHECK_INT(st.written, 2);
    CHECK_INT(st.unwritten, 0);

    ngx_xmpp_cm_output_init(&o, fuzz_worker);
    ngx_xmpp_cm_output_move(&o, &to);
    CHECK(o.out == NULL && to.out == NULL);
    CHECK_INT(o.size, 0);
}


/*
 * Through a real socket: a writev() that the kernel cuts short leaves at
 * most one stanza cut, the written ones are recycled, and the peer got
 * exactly the written bytes; a chain written to the end holds no block.
 */

UNIT_TEST(output_send_over_a_socket)
{
    int                         fd[2], sndbuf;
    u_char                     *all, *peer, *p;
    size_t                      total, n, len;
    ssize_t                     r;
    ngx_int_t                   rc;
    ngx_uint_t                  i;
    ngx_buf_t                  *b;
    ngx_event_t                 wev;
    ngx_iovec_t                 vec;
    struct iovec                iovs[64];
    ngx_connection_t            c;
    ngx_xmpp_cm_output_t        o, to;
    ngx_xmpp_cm_output_sent_t   st;

    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fd) == -1) {
        CHECK(0);
        return;
    }

    sndbuf = 4096;
    (void) setsockopt(fd[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(int));
    (void) fcntl(fd[0], F_SETFL, O_NONBLOCK);
    (void) fcntl(fd[1], F_SETFL, O_NONBLOCK);

    ngx_memzero(&c, sizeof(c));
    ngx_memzero(&wev, sizeof(wev));
    c.fd = fd[0];
    c.log = &fuzz_log;
    c.write = &wev;
    c.send_chain = ngx_writev_chain;
    wev.data = &c;
    wev.ready = 1;
    wev.log = &fuzz_log;

    ngx_xmpp_cm_output_init(&o, fuzz_worker);
    ngx_xmpp_cm_output_init(&to, fuzz_worker);

    all = malloc(UO_N * 101 + 20000);
    peer = malloc(UO_N * 101 + 20000);
    total = 0;

    for (i = 0; i < UO_N; i++) {
        b = uo_stanza(&o, i, 101);
        CHECK(b != NULL);
        if (b == NULL) {
            goto done;
        }

        ngx_memcpy(all + total, b->pos, 101);
        total += 101;
    }

    /* a stanza larger than a block has a block of its own */

    b = uo_stanza(&o, i, 20000);
    CHECK(b != NULL);
    if (b == NULL) {
        goto done;
    }

    ngx_memcpy(all + total, b->pos, 20000);
    total += 20000;

    CHECK_INT(o.size, total);

    /*
     * 201 bufs, one iovec per block: 81 stanzas of 101 bytes fill 8 KiB
     * blocks, so three blocks, and the large one
     */

    vec.iovs = iovs;
    vec.nalloc = 64;
    (void) ngx_output_chain_to_iovec(&vec, o.out, 1024 * 1024, &fuzz_log);
    CHECK_INT(uo_links(&o), UO_N + 1);
    CHECK_INT(vec.count, 4);
    CHECK_INT(vec.size, total);

    rc = ngx_xmpp_cm_output_send(&c, &o);
    CHECK_INT(rc, NGX_AGAIN);
    CHECK_INT(o.size + c.sent, total);

    ngx_xmpp_cm_output_classify(&o, &st);
    CHECK_INT(st.written, 0);               /* recycled at once */
    CHECK(st.cut <= 1);
    CHECK_INT(st.cut_bytes + st.unwritten_bytes, o.size);
    CHECK_INT(uo_links(&o), st.cut + st.unwritten);

    n = 0;
    while ((r = read(fd[1], peer + n, total - n)) > 0) {
        n += r;
    }

    CHECK_INT(n, c.sent);
    CHECK(memcmp(peer, all, n) == 0);

    /* the reset: the unwritten stanzas move, the cut one is lost */

    ngx_xmpp_cm_output_move(&to, &o);
    CHECK_INT(to.size, st.unwritten_bytes);

    len = uo_take(&to, peer);
    CHECK_INT(len, st.unwritten_bytes);
    CHECK(memcmp(peer, all + total - len, len) == 0);

    /* written to the end, the other chain is idle: no buf, no block */

    wev.ready = 1;
    p = peer;

    for (i = 0; i < 1000 && to.size; i++) {
        rc = ngx_xmpp_cm_output_send(&c, &to);
        CHECK(rc != NGX_ERROR);

        while ((r = read(fd[1], p, len - (p - peer))) > 0) {
            p += r;
        }

        wev.ready = 1;
    }

    CHECK_INT(p - peer, len);
    CHECK(memcmp(peer, all + total - len, len) == 0);
    CHECK(to.out == NULL && to.tail == NULL);
    CHECK_INT(to.size, 0);

done:

    ngx_xmpp_cm_output_free(&o);
    ngx_xmpp_cm_output_free(&to);
    free(all);
    free(peer);
    close(fd[0]);
    close(fd[1]);
}


/* an idle output holds no block: it goes back and is taken again */

UNIT_TEST(output_idle_holds_no_block)
{
    u_char                *block;
    ngx_buf_t             *b;
    ngx_xmpp_cm_output_t   o;

    ngx_xmpp_cm_output_init(&o, fuzz_worker);

    b = uo_stanza(&o, 1, 16);
    CHECK(b != NULL);
    if (b == NULL) {
        return;
    }

    block = b->shadow->start;

    /* written to the end */

    (void) ngx_chain_update_sent(o.out, 16);
    o.size -= 16;
    ngx_xmpp_cm_output_free(&o);

    CHECK(o.out == NULL && o.tail == NULL);

    b = uo_stanza(&o, 2, 16);
    CHECK(b != NULL && b->start == block);

    ngx_xmpp_cm_output_free(&o);
}


/* a client's byte stream grows its last buf: one link, one iovec */

UNIT_TEST(output_client_bytes_share_a_buf)
{
    u_char                got[16];
    size_t                len;
    ngx_buf_t            *b;
    ngx_xmpp_cm_output_t  o;

    ngx_xmpp_cm_output_init(&o, fuzz_worker);

    CHECK_INT(ngx_xmpp_cm_output_append(&o, (u_char *) "<a/>", 4), NGX_OK);
    CHECK_INT(ngx_xmpp_cm_output_append(&o, (u_char *) "", 0), NGX_OK);

    b = ngx_xmpp_cm_output_buf(&o, 4, 0);
    CHECK(b != NULL);
    if (b) {
        b->last = ngx_cpymem(b->last, "<b/>", 4);
    }

    CHECK_INT(uo_links(&o), 1);
    CHECK_INT(o.size, 8);

    len = uo_take(&o, got);
    CHECK_STR(got, len, "<a/><b/>");

    ngx_xmpp_cm_output_free(&o);
    CHECK(o.out == NULL);
}

/*
 * Confirmed delivery: bufs written whole are kept, in order, until
 * confirmed; confirmed ones are recycled; at a reset the kept and queued
 * ones that the callback keeps go whole, in order, to another chain, the
 * others are dropped, and the blocks stay alive exactly as long as a buf
 * uses them: stanzas carved afterwards do not overwrite the resent ones.
 */

static ngx_uint_t
uo_resend_not_link(void *data, ngx_buf_t *b)
{
    return b->num != NGX_XMPP_CM_BUF_LINK;
}


UNIT_TEST(output_kept_confirmed_and_resent)
{
    int                    fd[2], sndbuf;
    u_char                *all, *want, *got, *p;
    size_t                 size, wlen, len, off[UO_N + 1];
    ssize_t                r;
    ngx_int_t              rc;
    ngx_uint_t             i, kept, resent, nblocks;
    ngx_buf_t             *b;
    ngx_chain_t           *cl;
    ngx_event_t            wev;
    ngx_connection_t       c;
    ngx_xmpp_cm_kept_t     k;
    ngx_xmpp_cm_output_t   o, to;

    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fd) == -1) {
        CHECK(0);
        return;
    }

    sndbuf = 4096;
    (void) setsockopt(fd[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(int));
    (void) fcntl(fd[0], F_SETFL, O_NONBLOCK);
    (void) fcntl(fd[1], F_SETFL, O_NONBLOCK);

    ngx_memzero(&c, sizeof(c));
    ngx_memzero(&wev, sizeof(wev));
    ngx_memzero(&k, sizeof(k));
    c.fd = fd[0];
    c.log = &fuzz_log;
    c.write = &wev;
    c.send_chain = ngx_writev_chain;
    wev.data = &c;
    wev.ready = 1;
    wev.log = &fuzz_log;

    nblocks = fuzz_worker->output.nblocks;

    ngx_xmpp_cm_output_init(&o, fuzz_worker);
    ngx_xmpp_cm_output_init(&to, fuzz_worker);

    all = malloc(UO_N * 101);
    want = malloc(UO_N * 101 + 64);
    got = malloc(2 * UO_N * 101 + 64);
    size = 0;

    /* every 7th is the socket's own (a keepalive): never resent */

    for (i = 0; i < UO_N; i++) {
        b = uo_stanza(&o, i, 101);
        CHECK(b != NULL);
        if (b == NULL) {
            goto done;
        }

        ngx_xmpp_cm_buf_mark(b, (i % 7 == 3) ? NGX_XMPP_CM_BUF_LINK
                                             : NGX_XMPP_CM_BUF_CLIENT,
                             0, 0);
        off[i] = size;
        ngx_memcpy(all + size, b->pos, 101);
        size += 101;
    }

    /* two writes: the first part is kept, one stanza may be cut */

    rc = ngx_xmpp_cm_output_send_kept(&c, &o, &k);
    CHECK_INT(rc, NGX_AGAIN);

    while (read(fd[1], got, UO_N * 101) > 0) { /* void */ }
    wev.ready = 1;

    rc = ngx_xmpp_cm_output_send_kept(&c, &o, &k);
    CHECK_INT(rc, NGX_AGAIN);

    kept = k.n;
    CHECK(kept > 20 && kept < UO_N);
    CHECK_INT(k.size, kept * 101);
    CHECK_INT(o.size + c.sent, size);
    CHECK_INT(c.sent - k.size, o.out->buf->pos - o.out->buf->start);

    /* in order: the kept chain then the queue are the stanzas as queued */

    i = 0;
    for (cl = k.out; cl; cl = cl->next, i++) {
        CHECK(cl->buf->start == NULL
              || ngx_memcmp(cl->buf->start, all + off[i], 101) == 0);
    }

    CHECK_INT(i, kept);

    /* the first 10 are confirmed and recycled */

    for (cl = k.out, i = 1; i < 10; i++) {
        cl = cl->next;
    }

    ngx_xmpp_cm_output_confirm(o.free, &k, cl);
    CHECK_INT(k.n, kept - 10);
    CHECK_INT(k.size, (kept - 10) * 101);

    /* the other socket has its own queue; then the reset */

    CHECK(uo_stanza(&to, 9999, 101) != NULL);

    resent = ngx_xmpp_cm_output_resend(&to, &k, &o, uo_resend_not_link,
                                       NULL);

    CHECK(k.out == NULL && k.n == 0 && k.size == 0);
    CHECK(o.out == NULL && o.size == 0);

    wlen = 0;
    p = ngx_sprintf(want, "<m i='9999'>");
    while (p - want < 97) {
        *p++ = 'x';
    }
    p = ngx_cpymem(p, "</m>", 4);
    wlen = p - want;

    for (i = 10; i < UO_N; i++) {
        if (i % 7 != 3) {
            wlen = ngx_cpymem(want + wlen, all + off[i], 101) - want;
        }
    }

    CHECK_INT(resent, (wlen - 101) / 101);
    CHECK_INT(to.size, wlen);

    /* new stanzas on both chains take fresh room: the resent stay whole */

    for (i = 0; i < 100; i++) {
        CHECK(uo_stanza(&to, 5000 + i, 101) != NULL);
        CHECK(uo_stanza(&o, 6000 + i, 101) != NULL);
    }

    len = uo_take(&to, got);
    CHECK_INT(len, wlen + 100 * 101);
    CHECK(ngx_memcmp(got, want, wlen) == 0);

    ngx_xmpp_cm_output_free(&o);

    len = uo_take(&to, got);
    CHECK(ngx_memcmp(got, want, wlen) == 0);

    /* everything gone: every block is back on the free list */

    ngx_xmpp_cm_output_free(&to);
    CHECK(to.out == NULL);
    CHECK(fuzz_worker->output.nblocks >= nblocks);

    /* with nowhere to go, all is dropped */

    for (i = 0; i < 50; i++) {
        CHECK(uo_stanza(&o, i, 101) != NULL);
    }

    wev.ready = 1;
    while (read(fd[1], got, UO_N * 101) > 0) { /* void */ }
    (void) ngx_xmpp_cm_output_send_kept(&c, &o, &k);
    CHECK(k.n > 0);
    CHECK_INT(ngx_xmpp_cm_output_resend(NULL, &k, &o, NULL, NULL), 0);
    CHECK(k.out == NULL && o.out == NULL && o.size == 0);

done:

    while ((r = read(fd[1], got, UO_N * 101)) > 0) { /* void */ }

    ngx_xmpp_cm_output_free(&o);
    ngx_xmpp_cm_output_free(&to);
    free(all);
    free(want);
    free(got);
    close(fd[0]);
    close(fd[1]);
}


void
unit_suite_output(void)
{
    UNIT_RUN(output_classify_after_a_partial_write);
    UNIT_RUN(output_classify_at_a_stanza_boundary);
    UNIT_RUN(output_send_over_a_socket);
    UNIT_RUN(output_idle_holds_no_block);
    UNIT_RUN(output_client_bytes_share_a_buf);
    UNIT_RUN(output_kept_confirmed_and_resent);
}
