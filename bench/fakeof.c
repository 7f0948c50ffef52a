/*
 * fakeof: a fast Openfire stand-in for the connection-manager protocol,
 * for benchmarks only (the test suite uses t/standin/, which is faithful
 * but slow).  One process, epoll, nonblocking.
 *
 *   fakeof --listen 127.0.0.1:PORT --domain localhost --secret cmsecret
 *          [--nagle]
 *
 * --nagle leaves Nagle on for the CM sockets, as Openfire does unless
 * xmpp.socket.tcp-nodelay=true; without it they have TCP_NODELAY.
 *
 * CM socket: stream open -> header with id + <stream:features/>;
 * <handshake> checked against sha1(id + secret) -> <handshake></handshake>
 * and the configuration IQ (mechanisms PLAIN); session create / close IQs
 * -> results; routes: SASL PLAIN <auth> (any password) -> inline
 * <success/>; bind -> result with user@domain/resource; session IQ ->
 * result; presence -> nothing; message -> routed to the session bound to
 * the `to` full JID, `from` overwritten; anything else is dropped.
 *
 * Prints "READY <port>" on stdout; on SIGTERM/SIGINT prints one JSON line
 * of counters on stdout and exits.
 */
#include "benchlib.h"
#include <openssl/evp.h>

#define MAXEV  512

typedef struct conn_s  conn_t;

typedef struct {
    char    sid[64];
    char    user[64];
    char   *jid;          /* full JID once bound */
    size_t  jidlen;
    conn_t *c;            /* CM socket the session was created on */
} sess_t;

struct conn_s {
    int      fd;
    int      state;       /* 0 header, 1 handshake, 2 ready */
    int      dirty;
    int      wantout;
    buf_t    in;
    buf_t    out;
    char     id[16];
    char     cm[128];      /* CM name (domain part of `to`) */
    char     to[160];      /* full `to` of the header */
    conn_t  *next_dirty;
};

static const char  *domain = "localhost";
static const char  *secret = "cmsecret";
static int          epfd;
static hmap_t       by_sid, by_jid;
static conn_t      *dirty;
static conn_t      *all[1024];
static int          nall;
static unsigned long  n_conns, n_creates, n_closes, n_auth, n_bind,
                      n_msg_in, n_msg_out, n_msg_drop, n_other, n_elems,
                      n_gets;

static void
mark_dirty(conn_t *c)
{
    if (!c->dirty) {
        c->dirty = 1;
        c->next_dirty = dirty;
        dirty = c;
    }
}

static void
conn_close(conn_t *c)
{
    size_t i;

    /* drop the sessions of this socket (Openfire would, when the last
     * socket of the name closes; good enough here) */
    for (i = 0; i < by_sid.n; i++) {
        hent_t *e = by_sid.b[i], *nx;

        for (; e; e = nx) {
            sess_t *s = e->val;

            nx = e->next;
            if (s->c == c) {
                s->c = NULL;
            }
        }
    }
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->state = -1;
}

static void
flush(conn_t *c)
{
    int  rc = buf_write(&c->out, c->fd);

    if (rc < 0) {
        conn_close(c);
        return;
    }
    if (c->wantout != (rc == 0)) {         /* EPOLLOUT while it is full */
        c->wantout = (rc == 0);
        ep_watch(epfd, EPOLL_CTL_MOD, c->fd, c->wantout, c);
    }
}

static void
sha1_hex(const char *a, const char *b, char *hex)
{
    EVP_MD_CTX    *ctx = EVP_MD_CTX_new();
    unsigned char  md[EVP_MAX_MD_SIZE];
    unsigned int   n = 0, i;

    EVP_DigestInit_ex(ctx, EVP_sha1(), NULL);
    EVP_DigestUpdate(ctx, a, strlen(a));
    EVP_DigestUpdate(ctx, b, strlen(b));
    EVP_DigestFinal_ex(ctx, md, &n);
    EVP_MD_CTX_free(ctx);
    for (i = 0; i < n; i++) {
        sprintf(hex + 2 * i, "%02x", md[i]);
    }
}

static void
route_head(buf_t *o, conn_t *c, const char *sid)
{
    buf_adds(o, "<route streamid=\"");
    buf_adds(o, sid);
    buf_adds(o, "\" from=\"");
    buf_adds(o, domain);
    buf_adds(o, "\" to=\"");
    buf_adds(o, c->cm);
    buf_adds(o, "\">");
}

static void
on_open(conn_t *c, const char *s, size_t len)
{
    const char  *v;
    int          n = attr_get(s, len, "to", &v);
    char         hdr[512];
    size_t       i;

    if (n <= 0 || (size_t) n >= sizeof(c->to)) {
        buf_adds(&c->out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
                 "<stream:stream xmlns:stream=\"http://etherx.jabber.org/"
                 "streams\" xmlns=\"jabber:connectionmanager\" version=\"1.0\">");
        c->state = -2;
        return;
    }
    memcpy(c->to, v, n);
    c->to[n] = '\0';
    for (i = 0; i < (size_t) n && v[i] != '/'; i++) {
        c->cm[i] = v[i];
    }
    c->cm[i] = '\0';
    snprintf(c->id, sizeof(c->id), "%08lx%02lx",
             (unsigned long) random() & 0xffffffffUL,
             (unsigned long) (n_conns & 0xff));
    snprintf(hdr, sizeof(hdr),
             "<?xml version=\"1.0\" encoding=\"UTF-8\"?><stream:stream "
             "xmlns:stream=\"http://etherx.jabber.org/streams\" "
             "xmlns=\"jabber:connectionmanager\" version=\"1.0\" "
             "from=\"%s\" id=\"%s\"><stream:features/>", c->to, c->id);
    buf_adds(&c->out, hdr);
    c->state = 1;
}

static void
on_handshake(conn_t *c, const char *s, size_t len)
{
    int          sc;
    size_t       te = start_tag_len(s, len, &sc);
    const char  *end;
    char         want[64];

    sha1_hex(c->id, secret, want);
    end = sc ? s + te : mem_find(s, len, "</handshake>");
    if (sc || end == NULL || (size_t) (end - (s + te)) != 40
        || strncasecmp(s + te, want, 40) != 0)
    {
        buf_adds(&c->out, "<stream:error xmlns:stream=\"http://etherx.jabber."
                 "org/streams\"><not-authorized xmlns=\"urn:ietf:params:xml:"
                 "ns:xmpp-streams\"/></stream:error></stream:stream>");
        c->state = -2;
        fprintf(stderr, "fakeof: bad handshake from %s\n", c->to);
        return;
    }
    buf_adds(&c->out, "<handshake></handshake>"
             "<iq type=\"set\" id=\"1-1\"><configuration xmlns=\"http://jabber."
             "org/protocol/connectionmanager\"><mechanisms xmlns=\"urn:ietf:"
             "params:xml:ns:xmpp-sasl\"><mechanism>PLAIN</mechanism>"
             "</mechanisms></configuration></iq>");
    c->state = 2;
}

static void
on_iq(conn_t *c, const char *s, size_t len)
{
    const char  *type, *id, *from, *sess, *sid;
    int          tl, il, fl, sl;
    int          create;
    char         key[64];
    buf_t       *o = &c->out;

    tl = attr_get(s, len, "type", &type);
    il = attr_get(s, len, "id", &id);
    fl = attr_get(s, len, "from", &from);
    if (tl == 3 && memcmp(type, "get", 3) == 0) {
        /* any IQ get: bad-request, as Openfire (the CM's barriers) */
        n_gets++;
        buf_adds(o, "<iq type=\"error\" id=\"");
        if (il > 0) {
            buf_add(o, id, il);
        }
        buf_adds(o, "\" from=\"");
        buf_adds(o, domain);
        buf_adds(o, "\" to=\"");
        if (fl > 0) {
            buf_add(o, from, fl);
        } else {
            buf_adds(o, c->cm);
        }
        buf_adds(o, "\"><ping xmlns=\"urn:xmpp:ping\"/><error code=\"400\" "
                 "type=\"modify\"><bad-request xmlns=\"urn:ietf:params:xml"
                 ":ns:xmpp-stanzas\"/></error></iq>");
        return;
    }
    if (tl != 3 || memcmp(type, "set", 3) != 0) {
        return;                      /* results / errors: ignored */
    }
    sess = mem_find(s, len, "<session");
    if (sess == NULL) {
        n_other++;
        return;
    }
    sl = attr_get(sess, len - (sess - s), "id", &sid);
    if (sl <= 0 || sl >= (int) sizeof(key)) {
        n_other++;
        return;
    }
    memcpy(key, sid, sl);
    key[sl] = '\0';
    create = mem_find(sess, len - (sess - s), "<create") != NULL;
    if (create) {
        sess_t *ss = xcalloc(1, sizeof(*ss));

        memcpy(ss->sid, key, sl + 1);
        ss->c = c;
        {
            sess_t *old = hmap_get(&by_sid, key, sl);

            if (old) {
                if (old->jid) {
                    hmap_del(&by_jid, old->jid, old->jidlen);
                    free(old->jid);
                }
                free(old);
            }
        }
        hmap_put(&by_sid, key, sl, ss);
        n_creates++;
    } else if (mem_find(sess, len - (sess - s), "<close") != NULL) {
        sess_t *ss = hmap_get(&by_sid, key, sl);

        if (ss) {
            if (ss->jid) {
                if (hmap_get(&by_jid, ss->jid, ss->jidlen) == ss) {
                    hmap_del(&by_jid, ss->jid, ss->jidlen);
                }
                free(ss->jid);
            }
            hmap_del(&by_sid, key, sl);
            free(ss);
        }
        n_closes++;
    } else {
        n_other++;
        return;
    }
    buf_adds(o, "<iq type=\"result\" id=\"");
    if (il > 0) {
        buf_add(o, id, il);
    }
    buf_adds(o, "\" from=\"");
    buf_adds(o, domain);
    buf_adds(o, "\" to=\"");
    if (fl > 0) {
        buf_add(o, from, fl);
    } else {
        buf_adds(o, c->cm);
    }
    buf_adds(o, "\"><session xmlns=\"http://jabber.org/protocol/"
             "connectionmanager\" id=\"");
    buf_adds(o, key);
    buf_adds(o, create ? "\"><create/></session></iq>"
                       : "\"><close/></session></iq>");
}

static void
on_route(conn_t *c, const char *s, size_t len)
{
    const char  *sid, *ch, *end, *v;
    int          sl, sc, vl;
    size_t       te, cl;
    char         name[32], key[64];
    sess_t      *ss;
    buf_t       *o = &c->out;

    sl = attr_get(s, len, "streamid", &sid);
    te = start_tag_len(s, len, &sc);
    if (sl <= 0 || sl >= (int) sizeof(key) || sc || te == 0) {
        n_other++;
        return;
    }
    memcpy(key, sid, sl);
    key[sl] = '\0';
    ss = hmap_get(&by_sid, key, sl);
    if (ss == NULL) {
        n_other++;
        return;
    }
    ss->c = c;
    ch = memchr(s + te, '<', len - te);
    end = s + len - 8;                       /* "</route>" */
    if (ch == NULL || ch >= end) {
        n_other++;
        return;
    }
    cl = end - ch;
    elem_name(ch, cl, name, sizeof(name));

    if (strcmp(name, "auth") == 0) {
        size_t ate = start_tag_len(ch, cl, &sc);
        const char *aend = mem_find(ch, cl, "</auth>");

        if (ate == 0 || sc || aend == NULL
            || plain_user(ch + ate, aend - (ch + ate), ss->user,
                          sizeof(ss->user)) != 0)
        {
            route_head(o, c, key);
            buf_adds(o, "<failure xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\">"
                     "<not-authorized/></failure></route>");
            return;
        }
        n_auth++;
        route_head(o, c, key);
        buf_adds(o, "<success xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\"/>"
                 "</route>");
        return;
    }

    if (strcmp(name, "message") == 0) {
        sess_t *to;

        n_msg_in++;
        vl = attr_get(ch, cl, "to", &v);
        if (vl <= 0 || ss->jid == NULL
            || (to = hmap_get(&by_jid, v, vl)) == NULL || to->c == NULL
            || to->c->fd < 0)
        {
            n_msg_drop++;
            return;
        }
        {
            size_t mark = to->c->out.len;

            route_head(&to->c->out, to->c, to->sid);
            if (rewrite_from(&to->c->out, ch, cl, ss->jid, ss->jidlen) != 0) {
                to->c->out.len = mark;
                n_msg_drop++;
                return;
            }
        }
        buf_adds(&to->c->out, "</route>");
        mark_dirty(to->c);
        n_msg_out++;
        return;
    }

    if (strcmp(name, "presence") == 0) {
        return;
    }

    if (strcmp(name, "iq") == 0) {
        const char *id, *res;
        int         il = attr_get(ch, cl, "id", &id), rl;
        char        jid[256];

        if (mem_find(ch, cl, "<bind") != NULL) {
            rl = child_text(ch, cl, "resource", &res);
            if (ss->user[0] == '\0') {
                n_other++;
                return;
            }
            if (rl > 0 && rl < 100) {
                snprintf(jid, sizeof(jid), "%s@%s/%.*s", ss->user, domain,
                         rl, res);
            } else {
                snprintf(jid, sizeof(jid), "%s@%s/%s", ss->user, domain,
                         ss->sid);
            }
            if (ss->jid) {
                hmap_del(&by_jid, ss->jid, ss->jidlen);
                free(ss->jid);
            }
            ss->jidlen = strlen(jid);
            ss->jid = strdup(jid);
            hmap_put(&by_jid, jid, ss->jidlen, ss);
            n_bind++;
            route_head(o, c, key);
            bind_result(o, id, il, jid);
            buf_adds(o, "</route>");
            return;
        }
        if (mem_find(ch, cl, "<session") != NULL) {
            route_head(o, c, key);
            iq_result_to(o, id, il);
            if (ss->jid) {
                buf_add(o, ss->jid, ss->jidlen);
            } else {
                buf_adds(o, domain);
            }
            buf_adds(o, "\"/></route>");
            return;
        }
    }
    n_other++;
}

static void
on_elem(conn_t *c, const char *s, size_t len)
{
    char name[32];

    n_elems++;
    elem_name(s, len, name, sizeof(name));
    if (c->state == 1) {
        if (strcmp(name, "handshake") == 0) {
            on_handshake(c, s, len);
        }
        return;
    }
    if (c->state != 2) {
        return;
    }
    if (strcmp(name, "route") == 0) {
        on_route(c, s, len);
    } else if (strcmp(name, "iq") == 0) {
        on_iq(c, s, len);
    } else {
        n_other++;
    }
}

static int
on_unit(void *data, int type, const char *s, size_t len)
{
    conn_t  *c = data;

    if (type == U_OPEN) {
        on_open(c, s, len);
    } else if (type == U_ELEM) {
        on_elem(c, s, len);
    } else {
        buf_adds(&c->out, "</stream:stream>");
        c->state = -2;
    }
    return c->state == -2;                   /* closing: stop reading */
}

static void
on_read(conn_t *c)
{
    if (!buf_read(&c->in, c->fd)) {
        conn_close(c);
        return;
    }
    each_unit(&c->in, on_unit, c);
    mark_dirty(c);
}

int
main(int argc, char **argv)
{
    const char          *listen_addr = "127.0.0.1:0";
    int                  lfd, i;
    struct epoll_event   evs[MAXEV];
    uint64_t             last_hb = now_ns();

    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--listen") && i + 1 < argc) {
            listen_addr = argv[++i];
        } else if (!strcmp(argv[i], "--domain") && i + 1 < argc) {
            domain = argv[++i];
        } else if (!strcmp(argv[i], "--secret") && i + 1 < argc) {
            secret = argv[++i];
        } else if (!strcmp(argv[i], "--nagle")) {
            keep_nagle = 1;
        } else {
            fprintf(stderr, "usage: fakeof --listen H:P --domain D "
                    "--secret S [--nagle]\n");
            return 2;
        }
    }
    srandom(getpid() ^ (unsigned) now_ns());
    hmap_init(&by_sid, 65536);
    hmap_init(&by_jid, 65536);
    lfd = serve(listen_addr, &epfd);

    while (!stop) {
        int n = epoll_wait(epfd, evs, MAXEV, 1000);

        for (i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;

            if (c == NULL) {
                int fd;

                while ((fd = accept_one(lfd)) >= 0) {
                    c = xcalloc(1, sizeof(*c));
                    c->fd = fd;
                    ep_watch(epfd, EPOLL_CTL_ADD, fd, 0, c);
                    n_conns++;
                    if (nall < 1024) {
                        all[nall++] = c;
                    }
                }
                continue;
            }
            if (c->fd < 0) {
                continue;
            }
            if (evs[i].events & EPOLLOUT) {
                flush(c);
            }
            if (c->fd >= 0 && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
                on_read(c);
            }
        }
        while (dirty) {
            conn_t *c = dirty;

            dirty = c->next_dirty;
            c->dirty = 0;
            if (c->fd >= 0) {
                flush(c);
                if (c->state == -2 && c->fd >= 0) {
                    conn_close(c);
                }
            }
        }
        if (now_ns() - last_hb > 30000000000ull) {
            /* Openfire's heartbeat; sockets are few, a scan is cheap */
            int k;

            last_hb = now_ns();
            for (k = 0; k < nall; k++) {
                if (all[k]->fd >= 0 && all[k]->state == 2) {
                    buf_add(&all[k]->out, " ", 1);
                    flush(all[k]);
                }
            }
        }
    }
    printf("{\"conns\":%lu,\"creates\":%lu,\"closes\":%lu,\"auth\":%lu,"
           "\"bind\":%lu,\"msg_in\":%lu,\"msg_out\":%lu,\"msg_drop\":%lu,"
           "\"other\":%lu,\"elements\":%lu,\"iq_gets\":%lu}\n", n_conns,
           n_creates, n_closes, n_auth, n_bind, n_msg_in, n_msg_out,
           n_msg_drop, n_other, n_elems, n_gets);
    return 0;
}
