/*
 * loadgen: XMPP client load generator for the benchmarks.
 *
 * Each client logs in for real: stream header, SASL PLAIN, stream
 * restart, bind, session, initial presence.  Then, by mode:
 *   login  log in N clients as fast as the window allows, report logins/s,
 *          disconnect
 *   idle   log in N clients, hold them for --hold seconds, disconnect
 *   msg    log in N clients; clients 2k and 2k+1 are pairs; for each rate
 *          of --rate R1[,R2...] the pairs exchange messages at a fixed
 *          total offered rate R/s for --duration seconds.  Each body
 *          carries its send time (CLOCK_MONOTONIC ns); the receiver
 *          computes the end-to-end latency.
 *
 * One process handles thousands of clients (epoll, nonblocking).  With
 * --procs P it forks P client processes (for more than ~19000 clients:
 * the open-files limit is per process); the parent only coordinates:
 * it samples the watched server processes (--watch name=pid:
 * utime+stime from /proc/PID/stat, on-CPU ns from /proc/PID/schedstat,
 * VmRSS from /proc/PID/status) at every phase boundary, so the CPU and
 * memory figures belong to exactly one phase.  Its own CPU (getrusage of
 * the client processes) is reported per phase too.
 *
 * Output: one JSON line on stdout.  Everything is bounded by timeouts.
 */
#include "benchlib.h"
#include <poll.h>
#include <sys/resource.h>
#include <sys/wait.h>

#define HB1      10000              /* 1 us buckets up to 10 ms */
#define HB2      10000              /* 1 ms buckets up to 10 s */
#define HBUCKETS (HB1 + HB2 + 1)
#define MAXSTEPS 16
#define MAXWATCH 8

enum { ST_IDLE = 0, ST_CONN, ST_F1, ST_SASL, ST_F2, ST_BIND, ST_SESS,
       ST_READY, ST_DEAD };

typedef struct {
    int       fd;
    int       st;
    int       gidx;
    int       peer;               /* local index of the pair, or -1 */
    int       wantout;
    buf_t     in;
    buf_t     out;
    uint64_t  t0;
    int       sm;                 /* XEP-0198 enabled (LOADGEN_SM) */
    uint32_t  h;                  /* stanzas received since <enabled/> */
    uint32_t  sent;               /* messages sent, for our <r/> */
} cl_t;

typedef struct {
    uint32_t  h[HBUCKETS];
    uint64_t  max_ns;
} hist_t;

/* child -> parent report */
typedef struct {
    int       kind;               /* 1 login, 2 step, 3 end */
    int       ok, failed, dropped;
    uint64_t  t_first, t_last;
    uint64_t  sent, received, bytes_out;
    uint64_t  ru_us;              /* own CPU (user+sys) so far, us */
    hist_t    lat;
} rep_t;

/* options */
static const char  *host = "127.0.0.1";
static int          port = 5222;
static const char  *domain = "localhost";
static const char  *mode = "idle";
static const char  *tag = "";
static const char  *userfmt = "u%d";
static const char  *password = "pw";
static const char  *resource = "lg";
static int          nclients = 100, nprocs = 1, window = 1000, pad = 32;
static int          user_offset = 0;
static double       rates[MAXSTEPS];
static int          nrates;
static double       duration = 5, hold = 1, login_timeout = 60, drain = 2;
static int          nwatch;
static char        *watch_name[MAXWATCH];
static int          watch_pid[MAXWATCH];

/* child state */
static cl_t        *cls;
static int          ncl, base_gidx, epfd;
static rep_t        rep;
static uint64_t     msg_seq;
static int          quitting;

static void
hist_add(hist_t *h, uint64_t ns)
{
    uint64_t us = ns / 1000;
    size_t   b;

    if (us < HB1) {
        b = us;
    } else if (us / 1000 < HB2) {
        b = HB1 + us / 1000;
    } else {
        b = HBUCKETS - 1;
    }
    if (b >= HBUCKETS) {
        b = HBUCKETS - 1;
    }
    h->h[b]++;
    if (ns > h->max_ns) {
        h->max_ns = ns;
    }
}

static void
hist_merge(hist_t *a, const hist_t *b)
{
    size_t i;

    for (i = 0; i < HBUCKETS; i++) {
        a->h[i] += b->h[i];
    }
    if (b->max_ns > a->max_ns) {
        a->max_ns = b->max_ns;
    }
}

/* percentile in microseconds (bucket upper bound), -1 when empty */
static double
hist_pct(const hist_t *h, double p)
{
    uint64_t tot = 0, acc = 0, want;
    size_t   i;

    for (i = 0; i < HBUCKETS; i++) {
        tot += h->h[i];
    }
    if (tot == 0) {
        return -1;
    }
    want = (uint64_t) (p / 100.0 * (double) tot + 0.999999);
    if (want == 0) {
        want = 1;
    }
    for (i = 0; i < HBUCKETS; i++) {
        acc += h->h[i];
        if (acc >= want) {
            if (i < HB1) {
                return (double) i + 1;
            }
            return (double) (i - HB1 + 1) * 1000.0;
        }
    }
    return -1;
}

static uint64_t
self_cpu_us(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t) (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000
           + ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
}

/* ------------------------------------------------------------ client */

static void
cl_ev(cl_t *c, int out)
{
    ep_watch(epfd, EPOLL_CTL_MOD, c->fd, out, c);
    c->wantout = out;
}

static void
cl_kill(cl_t *c, int failed)
{
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    if (failed) {
        if (c->st == ST_READY) {
            if (!quitting) {
                rep.dropped++;
            }
        } else if (c->st != ST_DEAD && c->st != ST_IDLE) {
            rep.failed++;
        }
    }
    c->st = ST_DEAD;
    buf_free(&c->in);
    buf_free(&c->out);
}

static void
cl_flush(cl_t *c)
{
    size_t  len = c->out.len;
    int     rc = buf_write(&c->out, c->fd);

    rep.bytes_out += len - c->out.len;
    if (rc < 0) {
        cl_kill(c, 1);
        return;
    }
    if (rc == 0) {
        if (!c->wantout) {
            cl_ev(c, 1);
        }
        return;
    }
    if (c->wantout && c->st != ST_CONN) {
        cl_ev(c, 0);
    }
}

static void
cl_send(cl_t *c, const char *s, size_t n)
{
    buf_add(&c->out, s, n);
    if (!c->wantout) {
        cl_flush(c);
    }
}

static void
cl_header(cl_t *c)
{
    char h[300];
    int  n = snprintf(h, sizeof(h), "<?xml version='1.0'?><stream:stream "
                      "to='%s' xmlns='jabber:client' xmlns:stream='http://"
                      "etherx.jabber.org/streams' version='1.0'>", domain);

    cl_send(c, h, n);
}

static void
cl_start(cl_t *c)
{
    struct sockaddr_in  sa, src;
    int                 one = 1;

    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) {
        c->st = ST_DEAD;
        rep.failed++;
        return;
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
#ifdef IP_BIND_ADDRESS_NO_PORT
    setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
#endif
    /* spread over many loopback source addresses: no ephemeral port
     * exhaustion, no TIME_WAIT collisions between runs */
    memset(&src, 0, sizeof(src));
    src.sin_family = AF_INET;
    src.sin_addr.s_addr = htonl((127u << 24)
                                | ((unsigned) (10 + getpid() % 200) << 16)
                                | ((unsigned) (c->gidx / 200 % 250) << 8)
                                | (unsigned) (c->gidx % 200 + 1));
    if (bind(c->fd, (struct sockaddr *) &src, sizeof(src)) < 0) {
        /* fall back to the kernel's choice */
    }
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    inet_pton(AF_INET, host, &sa.sin_addr);
    c->t0 = now_ns();
    if (rep.t_first == 0) {
        rep.t_first = c->t0;
    }
    if (connect(c->fd, (struct sockaddr *) &sa, sizeof(sa)) < 0
        && errno != EINPROGRESS)
    {
        close(c->fd);
        c->fd = -1;
        c->st = ST_DEAD;
        rep.failed++;
        return;
    }
    c->st = ST_CONN;
    ep_watch(epfd, EPOLL_CTL_ADD, c->fd, 1, c);
    c->wantout = 1;
}

static void
cl_ready(cl_t *c)
{
    uint64_t t = now_ns();

    c->st = ST_READY;
    rep.ok++;
    rep.t_last = t;
    hist_add(&rep.lat, t - c->t0);
}

static void
cl_elem(cl_t *c, const char *s, size_t len)
{
    char         name[40], buf[512];
    const char  *v;
    int          vl, n;

    elem_name(s, len, name, sizeof(name));

    /* LOADGEN_SM: XEP-0198 counted as a client does; <r/> answered */

    if (c->sm && (strcmp(name, "message") == 0
                  || strcmp(name, "presence") == 0
                  || strcmp(name, "iq") == 0))
    {
        c->h++;
    }

    if (strcmp(name, "enabled") == 0) {
        c->sm = 1;
        return;
    }

    if (strcmp(name, "r") == 0 && c->sm) {
        n = snprintf(buf, sizeof(buf), "<a xmlns='urn:xmpp:sm:3' h='%u'/>",
                     c->h);
        cl_send(c, buf, n);
        return;
    }

    if (strcmp(name, "a") == 0) {
        return;
    }

    if (strcmp(name, "message") == 0) {
        const char *b = mem_find(s, len, "<body>");

        if (b != NULL && c->st == ST_READY) {
            uint64_t ts = strtoull(b + 6, NULL, 10), t = now_ns();

            if (ts && t >= ts) {
                hist_add(&rep.lat, t - ts);
            }
            rep.received++;
        }
        return;
    }

    switch (c->st) {

    case ST_F1:
        if (strcmp(name, "stream:features") == 0) {
            unsigned char raw[256];
            char          user[64], b64[400];
            int           ul = snprintf(user, sizeof(user), userfmt,
                                        c->gidx + user_offset);
            size_t        rl = 0;

            raw[rl++] = '\0';
            memcpy(raw + rl, user, ul);
            rl += ul;
            raw[rl++] = '\0';
            memcpy(raw + rl, password, strlen(password));
            rl += strlen(password);
            b64_encode(raw, rl, b64);
            n = snprintf(buf, sizeof(buf), "<auth xmlns='urn:ietf:params:"
                         "xml:ns:xmpp-sasl' mechanism='PLAIN'>%s</auth>", b64);
            cl_send(c, buf, n);
            c->st = ST_SASL;
        }
        return;

    case ST_SASL:
        if (strcmp(name, "success") == 0) {
            c->st = ST_F2;
            cl_header(c);
        } else if (strcmp(name, "failure") == 0) {
            cl_kill(c, 1);
        }
        return;

    case ST_F2:
        if (strcmp(name, "stream:features") == 0) {
            n = snprintf(buf, sizeof(buf), "<iq type='set' id='b1'><bind "
                         "xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>"
                         "%s</resource></bind></iq>", resource);
            cl_send(c, buf, n);
            c->st = ST_BIND;
        }
        return;

    case ST_BIND:
    case ST_SESS:
        if (strcmp(name, "iq") != 0) {
            return;
        }
        vl = attr_get(s, len, "type", &v);
        if (vl != 6 || memcmp(v, "result", 6) != 0) {
            cl_kill(c, 1);
            return;
        }
        if (c->st == ST_BIND) {
            static const char sess[] = "<iq type='set' id='s1'><session "
                "xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>";

            cl_send(c, sess, sizeof(sess) - 1);
            c->st = ST_SESS;
        } else {
            static const char pres[] = "<presence/>";
            static const char enable[] = "<enable xmlns='urn:xmpp:sm:3'/>";

            if (getenv("LOADGEN_SM")) {
                cl_send(c, enable, sizeof(enable) - 1);
            }

            cl_send(c, pres, sizeof(pres) - 1);
            if (c->fd >= 0) {
                cl_ready(c);
            }
        }
        return;
    }

    if (strcmp(name, "stream:error") == 0) {
        if (getenv("LOADGEN_DEBUG")) {
            fprintf(stderr, "loadgen: client %d: %.*s\n", c->gidx,
                    (int) (len > 300 ? 300 : len), s);
        }
        cl_kill(c, 1);
    }
}

/* 1: the server closed the stream; -1: the client is gone */
static int
cl_unit(void *data, int type, const char *s, size_t len)
{
    cl_t  *c = data;

    if (type == U_CLOSE) {
        return 1;
    }
    if (type == U_ELEM) {
        cl_elem(c, s, len);
    }
    return c->fd < 0 ? -1 : 0;
}

static void
cl_read(cl_t *c)
{
    int  eof = !buf_read(&c->in, c->fd);

    if (each_unit(&c->in, cl_unit, c) == 1) {
        eof = 1;
    }
    if (eof && c->fd >= 0) {
        if (getenv("LOADGEN_DEBUG")) {
            fprintf(stderr, "loadgen: client %d closed in state %d\n",
                    c->gidx, c->st);
        }
        cl_kill(c, 1);
    }
}

static void
cl_event(cl_t *c, uint32_t events)
{
    if (c->st == ST_CONN) {
        int       err = 0;
        socklen_t el = sizeof(err);

        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err != 0) {
            if (getenv("LOADGEN_DEBUG")) {
                fprintf(stderr, "loadgen: connect: %s\n", strerror(err));
            }
            cl_kill(c, 1);
            return;
        }
        c->st = ST_F1;
        cl_ev(c, 0);
        cl_header(c);
        return;
    }
    if (events & EPOLLOUT) {
        cl_flush(c);
        if (c->fd < 0) {
            return;
        }
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        cl_read(c);
    }
}

/* ------------------------------------------------------------ child */

static int
poll_once(int cmdfd, int timeout_ms, char *cmd)
{
    struct epoll_event evs[1024];
    int                n, i, got = 0;

    n = epoll_wait(epfd, evs, 1024, timeout_ms);
    for (i = 0; i < n; i++) {
        if (evs[i].data.ptr == NULL) {
            if (read(cmdfd, cmd, 1) == 1) {
                got = 1;
            } else {
                *cmd = 'Q';
                got = 1;
            }
            continue;
        }
        cl_event(evs[i].data.ptr, evs[i].events);
    }
    return got;
}

static void
report(int fd, int kind)
{
    const char *p = (const char *) &rep;
    size_t      left = sizeof(rep);

    rep.kind = kind;
    rep.ru_us = self_cpu_us();
    while (left) {
        ssize_t n = write(fd, p, left);

        if (n <= 0) {
            if (n < 0 && errno == EINTR) {
                continue;
            }
            exit(3);
        }
        p += n;
        left -= n;
    }
}

static void
run_step(int cmdfd, double rate, char *pending)
{
    uint64_t  t0 = now_ns(), end = t0 + (uint64_t) (duration * 1e9), t;
    uint64_t  sent = 0, due, dend;
    int       rr = 0, i;
    char      buf[600], body_pad[512];
    double    r = rate * (double) ncl / (double) nclients;

    memset(body_pad, 'x', sizeof(body_pad));
    for (;;) {
        t = now_ns();
        if (t >= end) {
            break;
        }
        due = (uint64_t) (r * (double) (t - t0) / 1e9);
        while (sent < due) {
            cl_t *c = NULL;

            for (i = 0; i < ncl; i++) {
                cl_t *x = &cls[rr];

                rr = (rr + 1) % ncl;
                if (x->st == ST_READY && x->peer >= 0
                    && cls[x->peer].st == ST_READY)
                {
                    c = x;
                    break;
                }
            }
            if (c == NULL) {
                break;
            }
            {
                char peer[64];
                int  n;

                snprintf(peer, sizeof(peer), userfmt,
                         cls[c->peer].gidx + user_offset);
                n = snprintf(buf, sizeof(buf), "<message to='%s@%s/%s' "
                             "type='chat' id='m%llu'><body>%llu %.*s</body>"
                             "</message>", peer, domain, resource,
                             (unsigned long long) ++msg_seq,
                             (unsigned long long) now_ns(), pad, body_pad);
                cl_send(c, buf, n);

                if (c->sm && ++c->sent % 10 == 0) {
                    static const char r[] = "<r xmlns='urn:xmpp:sm:3'/>";

                    cl_send(c, r, sizeof(r) - 1);
                }
            }
            sent++;
            rep.sent++;
        }
        if (poll_once(cmdfd, 1, pending)) {
            /* a command during a step: only Q is possible (parent gone) */
            if (*pending == 'Q') {
                return;
            }
        }
    }
    /* drain: wait for what is in flight */
    dend = now_ns() + (uint64_t) (drain * 1e9);
    while (now_ns() < dend && rep.received < rep.sent) {
        if (poll_once(cmdfd, 5, pending) && *pending == 'Q') {
            return;
        }
    }
}

static void
child_main(int first, int count, int cmdfd, int repfd)
{
    int       i, started = 0;
    uint64_t  deadline;
    char      cmd = 0;

    epfd = epoll_create1(0);
    ncl = count;
    base_gidx = first;
    cls = xcalloc(count, sizeof(cl_t));
    for (i = 0; i < count; i++) {
        cls[i].fd = -1;
        cls[i].gidx = first + i;
        cls[i].peer = -1;
        if (((first + i) ^ 1) < first + count && ((first + i) ^ 1) >= first
            && ((first + i) ^ 1) < nclients)
        {
            cls[i].peer = ((first + i) ^ 1) - first;
        }
    }
    ep_watch(epfd, EPOLL_CTL_ADD, cmdfd, 0, NULL);

    /* login phase */
    deadline = now_ns() + (uint64_t) (login_timeout * 1e9);
    while (rep.ok + rep.failed < count && now_ns() < deadline) {
        int inflight = started - rep.ok - rep.failed;

        while (started < count && inflight < window) {
            cl_start(&cls[started++]);
            inflight++;
        }
        if (poll_once(cmdfd, 5, &cmd) && cmd == 'Q') {
            goto quit;
        }
    }
    for (i = 0; i < count; i++) {
        if (cls[i].st != ST_READY && cls[i].st != ST_DEAD) {
            cl_kill(&cls[i], 1);     /* timed out */
        }
    }
    report(repfd, 1);
    memset(&rep.lat, 0, sizeof(rep.lat));

    /* commands: 'M' + step index byte, 'Q' */
    for (;;) {
        cmd = 0;
        if (!poll_once(cmdfd, 100, &cmd)) {
            continue;
        }
        if (cmd == 'M') {
            unsigned char k = 0;

            if (read(cmdfd, &k, 1) != 1 || k >= nrates) {
                goto quit;
            }
            rep.sent = rep.received = 0;
            memset(&rep.lat, 0, sizeof(rep.lat));
            cmd = 0;
            run_step(cmdfd, rates[k], &cmd);
            report(repfd, 2);
            if (cmd == 'Q') {
                goto quit;
            }
            continue;
        }
        break;
    }

quit:
    quitting = 1;
    for (i = 0; i < count; i++) {
        if (cls[i].fd >= 0) {
            if (cls[i].st == ST_READY) {
                (void) !write(cls[i].fd, "</stream:stream>", 16);
            }
            cl_kill(&cls[i], 0);
        }
    }
    report(repfd, 3);
    _exit(0);
}

/* ------------------------------------------------------------ parent */

typedef struct {
    double    cpu_s;          /* utime+stime, /proc/PID/stat */
    double    sched_s;        /* /proc/PID/schedstat */
    long      rss_kb;
} psample_t;

static void
psample(int pid, psample_t *s)
{
    char                path[64], buf[2048], *p;
    FILE               *f;
    unsigned long long  ut = 0, st = 0, ns = 0;
    static long         hz;

    if (hz == 0) {
        hz = sysconf(_SC_CLK_TCK);
    }
    memset(s, 0, sizeof(*s));
    s->rss_kb = -1;
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    if ((f = fopen(path, "r")) != NULL) {
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);

        buf[n] = '\0';
        fclose(f);
        p = strrchr(buf, ')');
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u "
                        "%llu %llu", &ut, &st) == 2)
        {
            s->cpu_s = (double) (ut + st) / (double) hz;
        }
    }
    snprintf(path, sizeof(path), "/proc/%d/schedstat", pid);
    if ((f = fopen(path, "r")) != NULL) {
        if (fscanf(f, "%llu", &ns) == 1) {
            s->sched_s = (double) ns / 1e9;
        }
        fclose(f);
    }
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    if ((f = fopen(path, "r")) != NULL) {
        while (fgets(buf, sizeof(buf), f)) {
            if (strncmp(buf, "VmRSS:", 6) == 0) {
                s->rss_kb = atol(buf + 6);
            }
        }
        fclose(f);
    }
}

static void
sample_all(psample_t *out)
{
    int i;

    for (i = 0; i < nwatch; i++) {
        psample(watch_pid[i], &out[i]);
    }
}

static int  *cmdw, *repr;

static void
read_reports(rep_t *agg, int kind, double timeout_s)
{
    int       k, done = 0, *got = calloc(nprocs, sizeof(int));
    rep_t    *r = xmalloc(sizeof(rep_t));
    uint64_t  end = now_ns() + (uint64_t) (timeout_s * 1e9);

    memset(agg, 0, sizeof(*agg));
    while (done < nprocs && now_ns() < end) {
        struct pollfd pf[64];

        for (k = 0; k < nprocs; k++) {
            pf[k].fd = got[k] ? -1 : repr[k];
            pf[k].events = POLLIN;
        }
        if (poll(pf, nprocs, 200) <= 0) {
            continue;
        }
        for (k = 0; k < nprocs; k++) {
            size_t  off = 0;

            if (got[k] || !(pf[k].revents & (POLLIN | POLLHUP))) {
                continue;
            }
            while (off < sizeof(rep_t)) {
                ssize_t n = read(repr[k], (char *) r + off,
                                 sizeof(rep_t) - off);

                if (n <= 0) {
                    if (n < 0 && errno == EINTR) {
                        continue;
                    }
                    break;
                }
                off += n;
            }
            got[k] = 1;
            done++;
            if (off < sizeof(rep_t) || r->kind != kind) {
                fprintf(stderr, "loadgen: child %d: bad report\n", k);
                continue;
            }
            agg->ok += r->ok;
            agg->failed += r->failed;
            agg->dropped += r->dropped;
            if (r->t_first && (agg->t_first == 0 || r->t_first < agg->t_first)) {
                agg->t_first = r->t_first;
            }
            if (r->t_last > agg->t_last) {
                agg->t_last = r->t_last;
            }
            agg->sent += r->sent;
            agg->received += r->received;
            agg->bytes_out += r->bytes_out;
            agg->ru_us += r->ru_us;
            hist_merge(&agg->lat, &r->lat);
        }
    }
    free(got);
    free(r);
}

static void
send_cmd(const char *c, size_t n)
{
    int k;

    for (k = 0; k < nprocs; k++) {
        if (write(cmdw[k], c, n) != (ssize_t) n) {
            /* child gone; its report will be missing */
        }
    }
}

static void
json_watch_delta(FILE *o, const char *key, psample_t *a, psample_t *b,
                 int sched)
{
    int i;

    fprintf(o, "\"%s\":{", key);
    for (i = 0; i < nwatch; i++) {
        fprintf(o, "%s\"%s\":%.4f", i ? "," : "", watch_name[i],
                sched ? b[i].sched_s - a[i].sched_s : b[i].cpu_s - a[i].cpu_s);
    }
    fprintf(o, "}");
}

/* "cpu_s":{..},"sched_s":{..}: what the watched processes used from a to b */
static void
json_cpu(FILE *o, psample_t *a, psample_t *b)
{
    json_watch_delta(o, "cpu_s", a, b, 0);
    fprintf(o, ",");
    json_watch_delta(o, "sched_s", a, b, 1);
}

static void
json_rss(FILE *o, const char *key, psample_t *a)
{
    int i;

    fprintf(o, "\"%s\":{", key);
    for (i = 0; i < nwatch; i++) {
        fprintf(o, "%s\"%s\":%ld", i ? "," : "", watch_name[i], a[i].rss_kb);
    }
    fprintf(o, "}");
}

static void
usage(void)
{
    fprintf(stderr,
        "usage: loadgen --port P [--host 127.0.0.1] [--domain localhost]\n"
        "  --mode login|idle|msg  -n N  [--procs P] [--window W]\n"
        "  [--rate R1,R2,..] [--duration S] [--drain S] [--hold S]\n"
        "  [--pad BYTES] [--user-fmt u%%d] [--user-offset K]\n"
        "  [--password PW] [--resource R] [--login-timeout S]\n"
        "  [--watch name=pid]... [--tag LABEL]\n");
    exit(2);
}

int
main(int argc, char **argv)
{
    int        i, k;
    psample_t  s0[MAXWATCH], s1[MAXWATCH], s2[MAXWATCH], s3[MAXWATCH];
    rep_t      agg;
    FILE      *o = stdout;
    uint64_t   lg_prev = 0;
    double     wall;
    uint64_t   tw;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;

        if (v == NULL) {
            usage();
        }
        i++;
        if (!strcmp(a, "--host")) host = v;
        else if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--domain")) domain = v;
        else if (!strcmp(a, "--mode")) mode = v;
        else if (!strcmp(a, "-n")) nclients = atoi(v);
        else if (!strcmp(a, "--procs")) nprocs = atoi(v);
        else if (!strcmp(a, "--window")) window = atoi(v);
        else if (!strcmp(a, "--duration")) duration = atof(v);
        else if (!strcmp(a, "--drain")) drain = atof(v);
        else if (!strcmp(a, "--hold")) hold = atof(v);
        else if (!strcmp(a, "--pad")) pad = atoi(v);
        else if (!strcmp(a, "--user-fmt")) userfmt = v;
        else if (!strcmp(a, "--user-offset")) user_offset = atoi(v);
        else if (!strcmp(a, "--password")) password = v;
        else if (!strcmp(a, "--resource")) resource = v;
        else if (!strcmp(a, "--login-timeout")) login_timeout = atof(v);
        else if (!strcmp(a, "--tag")) tag = v;
        else if (!strcmp(a, "--rate")) {
            char *cp = strdup(v), *tok, *save = NULL;

            for (tok = strtok_r(cp, ",", &save); tok && nrates < MAXSTEPS;
                 tok = strtok_r(NULL, ",", &save))
            {
                rates[nrates++] = atof(tok);
            }
        } else if (!strcmp(a, "--watch")) {
            char *eq = strchr(v, '=');

            if (eq == NULL || nwatch >= MAXWATCH) {
                usage();
            }
            watch_name[nwatch] = strndup(v, eq - v);
            watch_pid[nwatch++] = atoi(eq + 1);
        } else {
            usage();
        }
    }
    if (nclients < 1 || nprocs < 1 || nprocs > 64 || pad < 0 || pad > 500
        || window < 1)
    {
        usage();
    }
    if (strcmp(mode, "msg") && strcmp(mode, "idle") && strcmp(mode, "login")) {
        usage();
    }
    if (!strcmp(mode, "msg") && nrates == 0) {
        rates[nrates++] = 1000;
    }
    if (strcmp(mode, "msg")) {
        nrates = 0;
    }
    signal(SIGPIPE, SIG_IGN);
    /* everything stops by itself */
    alarm((unsigned) (login_timeout + hold + nrates * (duration + drain + 5)
                      + 60));

    cmdw = calloc(nprocs, sizeof(int));
    repr = calloc(nprocs, sizeof(int));
    sample_all(s0);
    tw = now_ns();
    {
        /* blocks of an even size keep pairs in one process */
        int per = (nclients + nprocs - 1) / nprocs, first = 0;

        per += per & 1;
        for (k = 0; k < nprocs; k++) {
            int cp[2], rp[2], cnt = nclients - first < per
                                    ? nclients - first : per;
            pid_t pid;

            if (cnt < 0) {
                cnt = 0;
            }
            if (pipe(cp) < 0 || pipe(rp) < 0) {
                die("pipe");
            }
            pid = fork();
            if (pid < 0) {
                die("fork");
            }
            if (pid == 0) {
                int j;

                close(cp[1]);
                close(rp[0]);
                for (j = 0; j < k; j++) {
                    close(cmdw[j]);
                    close(repr[j]);
                }
                child_main(first, cnt, cp[0], rp[1]);
            }
            close(cp[0]);
            close(rp[1]);
            cmdw[k] = cp[1];
            repr[k] = rp[0];
            first += cnt;
        }
    }

    fprintf(o, "{\"tool\":\"loadgen\",\"tag\":\"%s\",\"mode\":\"%s\","
            "\"n\":%d,\"procs\":%d,\"window\":%d,\"pad\":%d,", tag, mode,
            nclients, nprocs, window, pad);

    /* ---- login */
    read_reports(&agg, 1, login_timeout + 30);
    sample_all(s1);
    wall = (double) (now_ns() - tw) / 1e9;
    {
        double secs = agg.t_last > agg.t_first
                      ? (double) (agg.t_last - agg.t_first) / 1e9 : 0;

        fprintf(o, "\"login\":{\"ok\":%d,\"failed\":%d,\"secs\":%.4f,"
                "\"rate\":%.1f,\"time_p50_us\":%.0f,\"time_p99_us\":%.0f,"
                "\"time_max_us\":%.0f,\"wall_s\":%.3f,\"loadgen_cpu_s\":%.4f,",
                agg.ok, agg.failed, secs, secs > 0 ? agg.ok / secs : 0,
                hist_pct(&agg.lat, 50), hist_pct(&agg.lat, 99),
                (double) agg.lat.max_ns / 1000, wall, agg.ru_us / 1e6);
        json_cpu(o, s0, s1);
        fprintf(o, ",");
        json_rss(o, "rss_kb_before", s0);
        fprintf(o, ",");
        json_rss(o, "rss_kb_after", s1);
        fprintf(o, "},");
    }
    lg_prev = agg.ru_us;

    /* ---- idle hold */
    if (!strcmp(mode, "idle")) {
        uint64_t until = now_ns() + (uint64_t) (hold * 1e9);

        while (now_ns() < until) {
            usleep(20000);
        }
        sample_all(s2);
        fprintf(o, "\"idle\":{\"hold_s\":%.2f,", hold);
        json_rss(o, "rss_kb", s2);
        fprintf(o, ",");
        json_watch_delta(o, "cpu_s", s1, s2, 0);
        fprintf(o, "},");
    }

    /* ---- message steps */
    fprintf(o, "\"steps\":[");
    for (k = 0; k < nrates; k++) {
        char c[2] = { 'M', (char) k };

        sample_all(s2);
        tw = now_ns();
        send_cmd(c, 2);
        read_reports(&agg, 2, duration + drain + 30);
        sample_all(s3);
        wall = (double) (now_ns() - tw) / 1e9;
        fprintf(o, "%s{\"rate\":%.0f,\"duration\":%.2f,\"sent\":%llu,"
                "\"received\":%llu,\"lost\":%lld,\"achieved_rate\":%.1f,"
                "\"lat_p50_us\":%.0f,\"lat_p90_us\":%.0f,\"lat_p99_us\":%.0f,"
                "\"lat_max_us\":%.0f,\"wall_s\":%.3f,\"loadgen_cpu_s\":%.4f,",
                k ? "," : "", rates[k], duration,
                (unsigned long long) agg.sent,
                (unsigned long long) agg.received,
                (long long) agg.sent - (long long) agg.received,
                agg.received / duration,
                hist_pct(&agg.lat, 50), hist_pct(&agg.lat, 90),
                hist_pct(&agg.lat, 99), (double) agg.lat.max_ns / 1000,
                wall, (agg.ru_us - lg_prev) / 1e6);
        lg_prev = agg.ru_us;
        json_cpu(o, s2, s3);
        fprintf(o, ",");
        json_rss(o, "rss_kb", s3);
        fprintf(o, "}");
    }
    fprintf(o, "],");

    /* ---- quit */
    send_cmd("Q", 1);
    read_reports(&agg, 3, 30);
    for (k = 0; k < nprocs; k++) {
        waitpid(-1, NULL, 0);
    }
    fprintf(o, "\"dropped\":%d,\"loadgen_cpu_total_s\":%.4f}\n", agg.dropped,
            agg.ru_us / 1e6);
    fflush(o);
    return 0;
}
