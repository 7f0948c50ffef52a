/*
 * fakexmpp: the far end of the proxy_pass baseline.  A tiny client-side
 * XMPP server that speaks just enough for the load generator: stream
 * header and features (PLAIN), SASL PLAIN success (any password), the
 * stream restart, bind, session, presence (ignored), and messages relayed
 * by their `to` full JID to the connection bound to it, `from`
 * overwritten.  It sits behind nginx's stream proxy_pass, so the bytes
 * that cross nginx are the same client bytes as in the CM run.  The
 * bytes it sends mirror what the CM sends to clients.
 *
 *   fakexmpp --listen 127.0.0.1:PORT --domain localhost
 *
 * Prints "READY <port>"; on SIGTERM/SIGINT one JSON line of counters.
 */
#include "benchlib.h"

#define MAXEV  1024

typedef struct conn_s  conn_t;

struct conn_s {
    int      fd;
    int      state;     /* 0 new, 1 features sent, 2 authed, 3 restarted */
    int      dirty;
    int      wantout;
    int      closing;
    buf_t    in;
    buf_t    out;
    char     user[64];
    char    *jid;
    size_t   jidlen;
    unsigned long  id;
    conn_t  *next_dirty;
};

static const char  *domain = "localhost";
static int          epfd;
static hmap_t       by_jid;
static conn_t      *dirty;
static unsigned long  n_conns, n_auth, n_bind, n_msg_in, n_msg_out,
                      n_msg_drop, n_other;

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
    if (c->jid) {
        if (hmap_get(&by_jid, c->jid, c->jidlen) == c) {
            hmap_del(&by_jid, c->jid, c->jidlen);
        }
        free(c->jid);
        c->jid = NULL;
    }
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    buf_free(&c->in);
    buf_free(&c->out);
    if (!c->dirty) {
        free(c);
    } else {
        c->closing = 2;        /* freed when taken off the dirty list */
    }
}

static void
flush(conn_t *c)
{
    int  rc = buf_write(&c->out, c->fd);

    if (rc < 0) {
        c->closing = 1;
        return;
    }
    if (c->wantout != (rc == 0)) {         /* EPOLLOUT while it is full */
        c->wantout = (rc == 0);
        ep_watch(epfd, EPOLL_CTL_MOD, c->fd, c->wantout, c);
    }
}

static void
on_open(conn_t *c)
{
    char hdr[512];

    /* the same header bytes as the CM's */
    snprintf(hdr, sizeof(hdr),
             "<?xml version='1.0'?><stream:stream xmlns=\"jabber:client\" "
             "xmlns:stream=\"http://etherx.jabber.org/streams\" "
             "id=\"fx%lu-%08lx\" from=\"%s\" version=\"1.0\" "
             "xml:lang=\"en\">", c->id, (unsigned long) random(), domain);
    buf_adds(&c->out, hdr);
    if (c->state < 2) {
        buf_adds(&c->out, "<stream:features><mechanisms xmlns=\"urn:ietf:"
                 "params:xml:ns:xmpp-sasl\"><mechanism>PLAIN</mechanism>"
                 "</mechanisms></stream:features>");
        c->state = 1;
    } else {
        buf_adds(&c->out, "<stream:features><bind xmlns=\"urn:ietf:params:"
                 "xml:ns:xmpp-bind\"/><session xmlns=\"urn:ietf:params:xml:"
                 "ns:xmpp-session\"><optional/></session></stream:features>");
        c->state = 3;
    }
}

static void
on_elem(conn_t *c, const char *s, size_t len)
{
    char         name[32];
    const char  *v;
    int          vl, sc;
    buf_t       *o = &c->out;

    elem_name(s, len, name, sizeof(name));

    if (strcmp(name, "message") == 0 && c->state == 3) {
        conn_t *to;

        n_msg_in++;
        vl = attr_get(s, len, "to", &v);
        if (vl <= 0 || c->jid == NULL
            || (to = hmap_get(&by_jid, v, vl)) == NULL || to->fd < 0)
        {
            n_msg_drop++;
            return;
        }
        {
            size_t mark = to->out.len;

            if (rewrite_from(&to->out, s, len, c->jid, c->jidlen) != 0) {
                to->out.len = mark;
                n_msg_drop++;
                return;
            }
        }
        mark_dirty(to);
        n_msg_out++;
        return;
    }

    if (strcmp(name, "auth") == 0 && c->state == 1) {
        size_t      te = start_tag_len(s, len, &sc);
        const char *end = mem_find(s, len, "</auth>");

        if (te == 0 || sc || end == NULL
            || plain_user(s + te, end - (s + te), c->user, sizeof(c->user)))
        {
            buf_adds(o, "<failure xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\">"
                     "<not-authorized/></failure>");
            return;
        }
        n_auth++;
        buf_adds(o, "<success xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\"/>");
        c->state = 2;
        return;
    }

    if (strcmp(name, "presence") == 0) {
        return;
    }

    if (strcmp(name, "iq") == 0 && c->state == 3) {
        const char *id, *res;
        int         il = attr_get(s, len, "id", &id), rl;
        char        jid[256];

        if (mem_find(s, len, "<bind") != NULL) {
            rl = child_text(s, len, "resource", &res);
            if (rl > 0 && rl < 100) {
                snprintf(jid, sizeof(jid), "%s@%s/%.*s", c->user, domain,
                         rl, res);
            } else {
                snprintf(jid, sizeof(jid), "%s@%s/fx%lu", c->user, domain,
                         c->id);
            }
            if (c->jid) {
                hmap_del(&by_jid, c->jid, c->jidlen);
                free(c->jid);
            }
            c->jidlen = strlen(jid);
            c->jid = strdup(jid);
            hmap_put(&by_jid, jid, c->jidlen, c);
            n_bind++;
            bind_result(o, id, il, jid);
            return;
        }
        if (mem_find(s, len, "<session") != NULL) {
            iq_result_to(o, id, il);
            if (c->jid) {
                buf_add(o, c->jid, c->jidlen);
            } else {
                buf_adds(o, domain);
            }
            buf_adds(o, "\"/>");
            return;
        }
    }
    n_other++;
}

static int
on_unit(void *data, int type, const char *s, size_t len)
{
    conn_t  *c = data;

    if (type == U_OPEN) {
        on_open(c);
    } else if (type == U_ELEM) {
        on_elem(c, s, len);
    } else {
        buf_adds(&c->out, "</stream:stream>");
        c->closing = 1;
        return 1;
    }
    return 0;
}

static void
on_read(conn_t *c)
{
    if (!buf_read(&c->in, c->fd)) {
        c->closing = 1;
    } else {
        each_unit(&c->in, on_unit, c);
    }
    mark_dirty(c);
}

int
main(int argc, char **argv)
{
    const char          *listen_addr = "127.0.0.1:0";
    int                  lfd, i;
    struct epoll_event   evs[MAXEV];

    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--listen") && i + 1 < argc) {
            listen_addr = argv[++i];
        } else if (!strcmp(argv[i], "--domain") && i + 1 < argc) {
            domain = argv[++i];
        } else if (!strcmp(argv[i], "--nagle")) {
            keep_nagle = 1;
        } else {
            fprintf(stderr, "usage: fakexmpp --listen H:P --domain D "
                    "[--nagle]\n");
            return 2;
        }
    }
    srandom(getpid() ^ (unsigned) now_ns());
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
                    c->id = ++n_conns;
                    ep_watch(epfd, EPOLL_CTL_ADD, fd, 0, c);
                }
                continue;
            }
            if (c->fd < 0 || c->closing) {
                continue;
            }
            if (evs[i].events & EPOLLOUT) {
                flush(c);
                if (c->closing) {
                    mark_dirty(c);
                    continue;
                }
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                on_read(c);
            }
        }
        while (dirty) {
            conn_t *c = dirty;

            dirty = c->next_dirty;
            c->dirty = 0;
            if (c->closing == 2) {
                free(c);
                continue;
            }
            flush(c);
            if (c->closing) {
                conn_close(c);
            }
        }
    }
    printf("{\"conns\":%lu,\"auth\":%lu,\"bind\":%lu,\"msg_in\":%lu,"
           "\"msg_out\":%lu,\"msg_drop\":%lu,\"other\":%lu}\n", n_conns,
           n_auth, n_bind, n_msg_in, n_msg_out, n_msg_drop, n_other);
    return 0;
}
