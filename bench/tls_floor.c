/*
 * tls_floor: what OpenSSL itself keeps per idle TLS connection on the
 * server side, the floor under the CM's idle-TLS-session memory.
 *
 *     tls_floor CERT KEY [N] [TLS1.2|TLS1.3]
 *
 * Makes N connections over socketpairs (a socket BIO, as nginx uses), with
 * the server context set up as nginx sets it (SSL_MODE_RELEASE_BUFFERS,
 * no session cache), completes each handshake and one exchange of
 * application data, frees the client ends, and prints the bytes OpenSSL
 * still holds per server connection, by allocation site (counted through
 * CRYPTO_set_mem_functions; malloc's own overhead is not included).
 */

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXSITES  4096
#define HDR       32

typedef struct {
    const char  *file;
    int          line;
    long         bytes;
    long         count;
} site_t;

static site_t  sites[MAXSITES];
static int     nsites, tracking;
static long    live;


static int
site_of(const char *file, int line)
{
    int  i;

    for (i = 0; i < nsites; i++) {
        if (sites[i].line == line && sites[i].file == file) {
            return i;
        }
    }

    if (nsites == MAXSITES) {
        return -1;
    }

    sites[nsites].file = file;
    sites[nsites].line = line;
    return nsites++;
}


static void *
count_malloc(size_t n, const char *file, int line)
{
    long  *p, s;

    p = malloc(n + HDR);
    if (p == NULL) {
        return NULL;
    }

    s = tracking ? site_of(file, line) : -1;
    p[0] = (long) n;
    p[1] = s;

    if (s >= 0) {
        sites[s].bytes += (long) n;
        sites[s].count++;
    }

    live += (long) n;
    return (char *) p + HDR;
}


static void
count_free(void *q, const char *file, int line)
{
    long  *p;

    (void) file;
    (void) line;

    if (q == NULL) {
        return;
    }

    p = (long *) ((char *) q - HDR);

    if (p[1] >= 0) {
        sites[p[1]].bytes -= p[0];
        sites[p[1]].count--;
    }

    live -= p[0];
    free(p);
}


static void *
count_realloc(void *q, size_t n, const char *file, int line)
{
    long  *p;
    void  *r;

    if (q == NULL) {
        return count_malloc(n, file, line);
    }

    p = (long *) ((char *) q - HDR);

    r = count_malloc(n, file, line);
    if (r == NULL) {
        return NULL;
    }

    memcpy(r, q, (size_t) p[0] < n ? (size_t) p[0] : n);
    count_free(q, file, line);
    return r;
}


static int
by_bytes(const void *a, const void *b)
{
    const site_t  *x = a, *y = b;

    return (y->bytes > x->bytes) - (y->bytes < x->bytes);
}


int
main(int argc, char **argv)
{
    int        i, k, n, fds[2], done;
    char       buf[64];
    long       base;
    SSL      **srv, **cli;
    SSL_CTX   *sctx, *cctx;

    if (argc < 3) {
        fprintf(stderr, "usage: tls_floor CERT KEY [N] [TLS1.2|TLS1.3]\n");
        return 2;
    }

    n = argc > 3 ? atoi(argv[3]) : 1000;

    CRYPTO_set_mem_functions(count_malloc, count_realloc, count_free);

    sctx = SSL_CTX_new(TLS_server_method());
    cctx = SSL_CTX_new(TLS_client_method());

    if (SSL_CTX_use_certificate_chain_file(sctx, argv[1]) != 1
        || SSL_CTX_use_PrivateKey_file(sctx, argv[2], SSL_FILETYPE_PEM) != 1)
    {
        ERR_print_errors_fp(stderr);
        return 1;
    }

    SSL_CTX_set_mode(sctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(sctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(cctx, SSL_MODE_RELEASE_BUFFERS);

    if (argc > 4 && strcmp(argv[4], "TLS1.2") == 0) {
        SSL_CTX_set_max_proto_version(sctx, TLS1_2_VERSION);
    }

    srv = calloc(n, sizeof(SSL *));
    cli = calloc(n, sizeof(SSL *));

    base = live;
    tracking = 1;

    for (i = 0; i < n; i++) {
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == -1) {
            perror("socketpair");
            return 1;
        }

        fcntl(fds[0], F_SETFL, O_NONBLOCK);
        fcntl(fds[1], F_SETFL, O_NONBLOCK);

        srv[i] = SSL_new(sctx);
        cli[i] = SSL_new(cctx);
        SSL_set_fd(srv[i], fds[0]);
        SSL_set_fd(cli[i], fds[1]);
        SSL_set_accept_state(srv[i]);
        SSL_set_connect_state(cli[i]);

        for (k = 0, done = 0; k < 20 && done != 3; k++) {
            if (SSL_do_handshake(cli[i]) == 1) {
                done |= 1;
            }

            if (SSL_do_handshake(srv[i]) == 1) {
                done |= 2;
            }
        }

        if (done != 3) {
            fprintf(stderr, "handshake %d failed\n", i);
            ERR_print_errors_fp(stderr);
            return 1;
        }

        SSL_write(cli[i], "<presence/>", 11);
        SSL_read(srv[i], buf, sizeof(buf));
        SSL_write(srv[i], "<presence/>", 11);
        SSL_read(cli[i], buf, sizeof(buf));
        SSL_read(cli[i], buf, sizeof(buf));     /* tickets, if any */
        SSL_read(srv[i], buf, sizeof(buf));
    }

    for (i = 0; i < n; i++) {
        close(SSL_get_fd(cli[i]));
        SSL_free(cli[i]);
    }

    printf("%s, %s, %d idle server connections: %ld bytes per connection "
           "held by OpenSSL\n", OpenSSL_version(OPENSSL_VERSION),
           SSL_get_version(srv[0]), n, (live - base) / n);

    qsort(sites, nsites, sizeof(site_t), by_bytes);

    for (i = 0; i < nsites && sites[i].bytes >= 32L * n; i++) {
        printf("  %6ld B  %4.1f allocations  %s:%d\n", sites[i].bytes / n,
               (double) sites[i].count / n, sites[i].file, sites[i].line);
    }

    return 0;
}
