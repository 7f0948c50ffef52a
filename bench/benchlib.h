/*
 * Shared helpers of the benchmark tools (loadgen, fakeof, fakexmpp):
 * a splitter of top-level XML units, attribute extraction, growable
 * byte buffers and their nonblocking I/O, a JID/stream-id hash table,
 * base64, time, the listener and epoll scaffolding of the fake servers.
 *
 * This is not an XML parser.  The peers are known (nginx with the module,
 * the load generator): a careful splitter that tracks tags, both quote
 * kinds, comments, CDATA and PIs is enough.
 */
#ifndef BENCHLIB_H
#define BENCHLIB_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static inline uint64_t
now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}

static void
die(const char *what)
{
    perror(what);
    exit(2);
}

static void *
xmalloc(size_t n)
{
    void *p = malloc(n);

    if (p == NULL) {
        die("malloc");
    }
    return p;
}

static inline void *
xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);

    if (p == NULL) {
        die("calloc");
    }
    return p;
}

static inline void
set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        die("fcntl");
    }
}

static inline void
set_nodelay(int fd)
{
    int one = 1;

    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* ------------------------------------------------------------ buffers */

typedef struct {
    char    *p;
    size_t   len;
    size_t   cap;
} buf_t;

static inline void
buf_reserve(buf_t *b, size_t extra)
{
    size_t  cap;

    if (b->len + extra <= b->cap) {
        return;
    }
    cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) {
        cap *= 2;
    }
    b->p = realloc(b->p, cap);
    if (b->p == NULL) {
        die("realloc");
    }
    b->cap = cap;
}

static inline void
buf_add(buf_t *b, const void *d, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

static inline void
buf_adds(buf_t *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static inline void
buf_consume(buf_t *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

static inline void
buf_free(buf_t *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/*
 * Append to b all that the nonblocking fd has for now.  Returns 1 while
 * the peer is open, 0 on end of file or an error.
 */
static inline int
buf_read(buf_t *b, int fd)
{
    static char  rb[65536];

    for (;;) {
        ssize_t n = read(fd, rb, sizeof(rb));

        if (n > 0) {
            buf_add(b, rb, n);
            if ((size_t) n < sizeof(rb)) {
                return 1;
            }
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            return 1;
        }
        return 0;
    }
}

/*
 * Write what b holds to the nonblocking fd and consume it.  Returns 1
 * when b is empty, 0 when the socket is full (the rest stays in b), -1
 * on an error.
 */
static inline int
buf_write(buf_t *b, int fd)
{
    while (b->len) {
        ssize_t n = write(fd, b->p, b->len);

        if (n > 0) {
            buf_consume(b, n);
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            return 0;
        }
        return -1;
    }
    return 1;
}

/* ------------------------------------------------------------ splitter */

enum {
    U_NONE = 0,      /* incomplete: need more bytes */
    U_SPACE,         /* whitespace / text between units */
    U_DECL,          /* <?xml ...?> or comment at top level */
    U_OPEN,          /* <stream:stream ...> (unclosed) */
    U_CLOSE,         /* </stream:stream> */
    U_ELEM,          /* a complete top-level element */
    U_BAD            /* malformed */
};

/* skip to the end of a tag starting at s[i] == '<'; returns index after
 * '>' or 0 when incomplete */
static inline size_t
tag_end(const char *s, size_t len, size_t i, int *selfclose)
{
    char  q = 0;

    *selfclose = 0;
    for (i++; i < len; i++) {
        char c = s[i];

        if (q) {
            if (c == q) {
                q = 0;
            }
        } else if (c == '"' || c == '\'') {
            q = c;
        } else if (c == '>') {
            *selfclose = (s[i - 1] == '/');
            return i + 1;
        }
    }
    return 0;
}

static inline size_t
find_seq(const char *s, size_t len, size_t i, const char *seq)
{
    size_t n = strlen(seq);

    for (; i + n <= len; i++) {
        if (s[i] == seq[0] && memcmp(s + i, seq, n) == 0) {
            return i + n;
        }
    }
    return 0;
}

/*
 * Next unit at s[0..len).  *ulen is set to its length.  Elements are
 * tracked by depth; the stream element itself is reported as U_OPEN /
 * U_CLOSE and never counted.
 */
static inline int
split_unit(const char *s, size_t len, size_t *ulen)
{
    size_t  i, e;
    int     depth, sc;

    if (len == 0) {
        return U_NONE;
    }
    if (s[0] != '<') {
        for (i = 0; i < len && s[i] != '<'; i++) { /* text */ }
        *ulen = i;
        return U_SPACE;
    }
    if (len < 2) {
        return U_NONE;
    }
    if (s[1] == '?') {
        e = find_seq(s, len, 2, "?>");
        if (!e) {
            return U_NONE;
        }
        *ulen = e;
        return U_DECL;
    }
    if (s[1] == '!') {
        e = find_seq(s, len, 2, "-->");
        if (!e) {
            return U_NONE;
        }
        *ulen = e;
        return U_DECL;
    }
    if (s[1] == '/') {
        e = tag_end(s, len, 0, &sc);
        if (!e) {
            return U_NONE;
        }
        *ulen = e;
        return U_CLOSE;    /* only </stream:stream> can be at depth 0 */
    }
    e = tag_end(s, len, 0, &sc);
    if (!e) {
        return U_NONE;
    }
    if (len >= 14 && memcmp(s, "<stream:stream", 14) == 0
        && (s[14] == ' ' || s[14] == '>' || s[14] == '\t' || s[14] == '\n'
            || s[14] == '\r'))
    {
        *ulen = e;
        return U_OPEN;
    }
    if (sc) {
        *ulen = e;
        return U_ELEM;
    }
    depth = 1;
    i = e;
    while (i < len) {
        if (s[i] != '<') {
            const char *lt = memchr(s + i, '<', len - i);

            if (lt == NULL) {
                return U_NONE;
            }
            i = lt - s;
            continue;
        }
        if (i + 1 >= len) {
            return U_NONE;
        }
        if (s[i + 1] == '!') {
            if (i + 9 <= len && memcmp(s + i, "<![CDATA[", 9) == 0) {
                e = find_seq(s, len, i + 9, "]]>");
            } else {
                e = find_seq(s, len, i + 2, "-->");
            }
            if (!e) {
                return U_NONE;
            }
            i = e;
            continue;
        }
        if (s[i + 1] == '?') {
            e = find_seq(s, len, i + 2, "?>");
            if (!e) {
                return U_NONE;
            }
            i = e;
            continue;
        }
        e = tag_end(s, len, i, &sc);
        if (!e) {
            return U_NONE;
        }
        if (s[i + 1] == '/') {
            depth--;
        } else if (!sc) {
            depth++;
        }
        i = e;
        if (depth == 0) {
            *ulen = i;
            return U_ELEM;
        }
    }
    return U_NONE;
}

/*
 * Hands the complete units at the head of b to fn in turn (U_OPEN,
 * U_ELEM and U_CLOSE; text and declarations are skipped) and consumes
 * them.  fn returns 0 to go on; anything else stops after that unit,
 * leaving the units behind it in b, and is returned (0 when all went).
 * fn may buf_free(b), but must then stop.
 */
typedef int (*unit_fn)(void *data, int type, const char *s, size_t len);

static inline int
each_unit(buf_t *b, unit_fn fn, void *data)
{
    size_t  off = 0, ul;
    int     t, rc = 0;

    while ((t = split_unit(b->p + off, b->len - off, &ul)) != U_NONE) {
        const char *u = b->p + off;

        off += ul;
        if (t == U_OPEN || t == U_ELEM || t == U_CLOSE) {
            rc = fn(data, t, u, ul);
            if (rc != 0) {
                break;
            }
        }
    }
    buf_consume(b, off);
    return rc;
}

/* "<name" of an element: copies the qualified name into out */
static inline void
elem_name(const char *s, size_t len, char *out, size_t outsz)
{
    size_t i = 1, o = 0;

    while (i < len && o + 1 < outsz && s[i] != ' ' && s[i] != '>'
           && s[i] != '/' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
    {
        out[o++] = s[i++];
    }
    out[o] = '\0';
}

/*
 * Value of attribute `name` in the start tag at s (s[0] == '<'), up to
 * the end of that start tag.  Returns the length, or -1; *val points into s.
 */
static inline int
attr_get(const char *s, size_t len, const char *name, const char **val)
{
    size_t  n = strlen(name), i = 1;
    char    q;

    /* skip element name */
    while (i < len && s[i] != ' ' && s[i] != '>' && s[i] != '/'
           && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
    {
        i++;
    }
    for (;;) {
        size_t ns;

        while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n'
                           || s[i] == '\r'))
        {
            i++;
        }
        if (i >= len || s[i] == '>' || s[i] == '/') {
            return -1;
        }
        ns = i;
        while (i < len && s[i] != '=' && s[i] != ' ' && s[i] != '>') {
            i++;
        }
        if (i >= len || s[i] != '=') {
            return -1;
        }
        {
            size_t nl = i - ns;

            i++;
            if (i >= len) {
                return -1;
            }
            q = s[i];
            if (q != '"' && q != '\'') {
                return -1;
            }
            i++;
            {
                size_t vs = i;

                while (i < len && s[i] != q) {
                    i++;
                }
                if (i >= len) {
                    return -1;
                }
                if (nl == n && memcmp(s + ns, name, n) == 0) {
                    *val = s + vs;
                    return (int) (i - vs);
                }
                i++;
            }
        }
    }
}

/* end of the start tag at s[0] (index after '>'), or 0 */
static inline size_t
start_tag_len(const char *s, size_t len, int *selfclose)
{
    return tag_end(s, len, 0, selfclose);
}

/* first occurrence of needle in s[0..len) or NULL */
static inline const char *
mem_find(const char *s, size_t len, const char *needle)
{
    return memmem(s, len, needle, strlen(needle));
}

/* ------------------------------------------------------------ base64 */

static inline int
b64_val(int c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

static inline size_t
b64_decode(const char *in, size_t n, unsigned char *out, size_t outsz)
{
    size_t   o = 0, i;
    unsigned acc = 0;
    int      bits = 0, v;

    for (i = 0; i < n; i++) {
        if (in[i] == '=') {
            break;
        }
        v = b64_val((unsigned char) in[i]);
        if (v < 0) {
            continue;
        }
        acc = (acc << 6) | (unsigned) v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o < outsz) {
                out[o++] = (unsigned char) (acc >> bits);
            }
        }
    }
    return o;
}

static inline size_t
b64_encode(const unsigned char *in, size_t n, char *out)
{
    static const char t[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i, o = 0;

    for (i = 0; i + 2 < n; i += 3) {
        unsigned v = (in[i] << 16) | (in[i + 1] << 8) | in[i + 2];
        out[o++] = t[v >> 18];
        out[o++] = t[(v >> 12) & 63];
        out[o++] = t[(v >> 6) & 63];
        out[o++] = t[v & 63];
    }
    if (n - i == 1) {
        unsigned v = in[i] << 16;
        out[o++] = t[v >> 18];
        out[o++] = t[(v >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (n - i == 2) {
        unsigned v = (in[i] << 16) | (in[i + 1] << 8);
        out[o++] = t[v >> 18];
        out[o++] = t[(v >> 12) & 63];
        out[o++] = t[(v >> 6) & 63];
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

/* user name from a SASL PLAIN response ("authzid\0user\0pass") */
static inline int
plain_user(const char *b64, size_t n, char *user, size_t usz)
{
    unsigned char  dec[512];
    size_t         dl = b64_decode(b64, n, dec, sizeof(dec)), i, s;

    for (i = 0; i < dl && dec[i]; i++) { }
    if (i >= dl) {
        return -1;
    }
    s = ++i;
    for (; i < dl && dec[i]; i++) { }
    if (i - s == 0 || i - s >= usz) {
        return -1;
    }
    memcpy(user, dec + s, i - s);
    user[i - s] = '\0';
    return 0;
}

/* ------------------------------------------------------------ hash map */

typedef struct hent_s {
    struct hent_s  *next;
    char           *key;
    void           *val;
} hent_t;

typedef struct {
    hent_t  **b;
    size_t    n;      /* buckets, power of two */
} hmap_t;

static inline uint64_t
hash_str(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    size_t   i;

    for (i = 0; i < n; i++) {
        h ^= (unsigned char) s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static inline void
hmap_init(hmap_t *m, size_t n)
{
    m->n = n;
    m->b = xcalloc(n, sizeof(hent_t *));
}

static inline void *
hmap_get(hmap_t *m, const char *k, size_t kl)
{
    hent_t *e = m->b[hash_str(k, kl) & (m->n - 1)];

    for (; e; e = e->next) {
        if (strlen(e->key) == kl && memcmp(e->key, k, kl) == 0) {
            return e->val;
        }
    }
    return NULL;
}

static inline void
hmap_del(hmap_t *m, const char *k, size_t kl)
{
    hent_t **pp = &m->b[hash_str(k, kl) & (m->n - 1)], *e;

    for (; (e = *pp); pp = &e->next) {
        if (strlen(e->key) == kl && memcmp(e->key, k, kl) == 0) {
            *pp = e->next;
            free(e->key);
            free(e);
            return;
        }
    }
}

static inline void
hmap_put(hmap_t *m, const char *k, size_t kl, void *v)
{
    hent_t *e;

    hmap_del(m, k, kl);
    e = xmalloc(sizeof(*e));
    e->key = xmalloc(kl + 1);
    memcpy(e->key, k, kl);
    e->key[kl] = '\0';
    e->val = v;
    e->next = m->b[hash_str(k, kl) & (m->n - 1)];
    m->b[hash_str(k, kl) & (m->n - 1)] = e;
}

/* ------------------------------------------------------------ listen */

static inline int
listen_on(const char *hostport, int *port_out)
{
    char                host[64];
    const char         *c = strrchr(hostport, ':');
    struct sockaddr_in  sa;
    socklen_t           sl = sizeof(sa);
    int                 fd, one = 1;

    if (c == NULL || (size_t) (c - hostport) >= sizeof(host)) {
        fprintf(stderr, "bad address %s\n", hostport);
        exit(2);
    }
    memcpy(host, hostport, c - hostport);
    host[c - hostport] = '\0';
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons(atoi(c + 1));
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "bad host %s\n", host);
        exit(2);
    }
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        die("socket");
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
        die("bind");
    }
    if (listen(fd, 4096) < 0) {
        die("listen");
    }
    getsockname(fd, (struct sockaddr *) &sa, &sl);
    *port_out = ntohs(sa.sin_port);
    set_nonblock(fd);
    return fd;
}

/* (re)registers fd in ep for EPOLLIN, and for EPOLLOUT too when out */
static inline void
ep_watch(int ep, int op, int fd, int out, void *ptr)
{
    struct epoll_event  ev;

    ev.events = EPOLLIN | (out ? EPOLLOUT : 0);
    ev.data.ptr = ptr;
    epoll_ctl(ep, op, fd, &ev);
}

/* --nagle of the fake servers: Nagle stays on for accepted sockets, as
 * Openfire leaves it (xmpp.socket.tcp-nodelay defaults to false) */
static int  keep_nagle;

/* one pending connection of the listener lfd, nonblocking and with
 * TCP_NODELAY unless keep_nagle; -1 when there is none */
static inline int
accept_one(int lfd)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);

    if (fd >= 0 && !keep_nagle) {
        set_nodelay(fd);
    }
    return fd;
}

/* ------------------------------------------------------------ serve */

static volatile sig_atomic_t  stop;     /* SIGTERM or SIGINT came */

static inline void
on_stop(int s)
{
    (void) s;
    stop = 1;
}

/*
 * The start of the fake servers: SIGPIPE ignored, SIGTERM and SIGINT set
 * `stop`, a listener on hostport in a new epoll set *ep (data.ptr NULL),
 * "READY <port>" on stdout.  Returns the listener.
 */
static inline int
serve(const char *hostport, int *ep)
{
    int  lfd, port;

    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_stop);
    signal(SIGINT, on_stop);
    lfd = listen_on(hostport, &port);
    *ep = epoll_create1(0);
    ep_watch(*ep, EPOLL_CTL_ADD, lfd, 0, NULL);
    printf("READY %d\n", port);
    fflush(stdout);
    return lfd;
}

/* ------------------------------------------------------------ rewrite */

/*
 * Copy the stanza at s[0..len) to out with `from` set to `from` (the
 * server's anti-spoofing overwrite): the start tag is rebuilt with
 * double-quoted attributes, without any `from` or `xmlns`; the rest is
 * copied as is.  Returns -1 when the start tag cannot be read.
 */
static inline int
rewrite_from(buf_t *out, const char *s, size_t len, const char *from,
             size_t fromlen)
{
    size_t  i = 1, ns, nl, vs, vl, te;
    int     sc;
    char    q;

    te = start_tag_len(s, len, &sc);
    if (te == 0) {
        return -1;
    }
    while (i < te && s[i] != ' ' && s[i] != '>' && s[i] != '/'
           && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
    {
        i++;
    }
    buf_add(out, s, i);
    buf_add(out, " from=\"", 7);
    buf_add(out, from, fromlen);
    buf_add(out, "\"", 1);
    for (;;) {
        while (i < te && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n'
                          || s[i] == '\r'))
        {
            i++;
        }
        if (i >= te || s[i] == '>' || s[i] == '/') {
            break;
        }
        ns = i;
        while (i < te && s[i] != '=' && s[i] != ' ') {
            i++;
        }
        nl = i - ns;
        if (i >= te || s[i] != '=' || i + 1 >= te) {
            return -1;
        }
        q = s[++i];
        if (q != '"' && q != '\'') {
            return -1;
        }
        vs = ++i;
        while (i < te && s[i] != q) {
            i++;
        }
        if (i >= te) {
            return -1;
        }
        vl = i - vs;
        i++;
        if ((nl == 4 && memcmp(s + ns, "from", 4) == 0)
            || (nl == 5 && memcmp(s + ns, "xmlns", 5) == 0))
        {
            continue;
        }
        buf_add(out, " ", 1);
        buf_add(out, s + ns, nl);
        buf_add(out, "=\"", 2);
        buf_add(out, s + vs, vl);
        buf_add(out, "\"", 1);
    }
    if (sc) {
        buf_add(out, "/>", 2);
    } else {
        buf_add(out, ">", 1);
    }
    buf_add(out, s + te, len - te);
    return 0;
}

/* the start of an IQ result up to the value of its `to`:
 * <iq type="result" id="ID" to=" */
static inline void
iq_result_to(buf_t *o, const char *id, int il)
{
    buf_adds(o, "<iq type=\"result\" id=\"");
    if (il > 0) {
        buf_add(o, id, il);
    }
    buf_adds(o, "\" to=\"");
}

/* the result of a resource bind, to and with the bound full JID */
static inline void
bind_result(buf_t *o, const char *id, int il, const char *jid)
{
    iq_result_to(o, id, il);
    buf_adds(o, jid);
    buf_adds(o, "\"><bind xmlns=\"urn:ietf:params:xml:ns:xmpp-bind\"><jid>");
    buf_adds(o, jid);
    buf_adds(o, "</jid></bind></iq>");
}

/* text content of the first <tag>...</tag> inside s (tag given as "resource") */
static inline int
child_text(const char *s, size_t len, const char *tag, const char **val)
{
    char        open[64], close[64];
    const char *a, *b, *gt;

    snprintf(open, sizeof(open), "<%s", tag);
    snprintf(close, sizeof(close), "</%s>", tag);
    a = mem_find(s, len, open);
    if (a == NULL) {
        return -1;
    }
    gt = memchr(a, '>', len - (a - s));
    if (gt == NULL || gt[-1] == '/') {
        return -1;
    }
    gt++;
    b = mem_find(gt, len - (gt - s), close);
    if (b == NULL) {
        return -1;
    }
    *val = gt;
    return (int) (b - gt);
}

#endif
