/* eventwire — fuzzes the bytes on the socket: libmicrohttpd's parsing of the request line,
 * headers, chunked and plain bodies, and what the HTTP module (src/http/http.c) makes of what it
 * parsed, on the five services' own servers (fuzz_services.h), listening on loopback ports.
 *
 * The first byte picks the service (fuzz_services.h); the rest, its placeholders replaced ($U,
 * $A, $T, $S), is written raw to a new TCP connection, whose sending side is then shut; the
 * harness reads until the server closes.
 *
 * Properties: the server closes the connection within 10 s of the client's end (no request
 * hangs a connection); what it sends starts with a status line "HTTP/1.x NNN" with NNN in
 * 100..599 and never 500; a response of ours (Content-Type: application/json) with a
 * Content-Length has that many bytes of one JSON object or array. libmicrohttpd's own answers to
 * requests it cannot parse (400, 413, 431, 505 with an HTML body) are its own and not checked
 * for JSON. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include "fuzz_services.h"

#define ANSWER_MAX (1u << 20)
#define CLOSE_WITHIN_MS 10000

static fuzz_services services;
static int ports[FZ_NSERVICES];

static void close_services(void)
{
    fuzz_services_close(&services);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fuzz_services_open(&services, NULL);
    atexit(close_services);
    for (int i = 0; i < FZ_NSERVICES; i++) {
        ew_error e = {0};
        if (ew_http_start(svc_http(services.svc[i]), &e)) fuzz_services_fail("listening", &e);
        ports[i] = ew_http_port(svc_http(services.svc[i]));
    }
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The value of header name in the header block [h, end), or NULL; *len its length. */
static const char *header_of(const char *h, const char *end, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    for (const char *p = h; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) eol = end;
        if ((size_t)(eol - p) > nl && !strncasecmp(p, name, nl) && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (v < eol && *v == ' ')
                v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' '))
                ve--;
            *len = (size_t)(ve - v);
            return v;
        }
        p = eol + 1;
    }
    return NULL;
}

/* Whether the first request of the bytes sent, req[0..len), is a HEAD: its answer has the
 * Content-Length of a GET and no body, and what follows is the next answer. */
static bool first_is_head(const char *req, size_t len)
{
    size_t i = 0;
    while (i < len && (req[i] == '\r' || req[i] == '\n')) /* empty lines may come first */
        i++;
    return len - i >= 5 && !memcmp(req + i, "HEAD ", 5);
}

/* Checks the first response of the answer a[0..n); head: it answers a HEAD. */
static void check_answer(const char *a, size_t n, bool head)
{
    if (n == 0) return; /* closed without an answer: a request cut short */
    const char *status_end = memchr(a, '\n', n);
    bool status_ok = n >= 12 && !memcmp(a, "HTTP/1.", 7) && a[8] == ' ' &&
                     isdigit((unsigned char)a[9]) && isdigit((unsigned char)a[10]) &&
                     isdigit((unsigned char)a[11]);
    int status = status_ok ? (a[9] - '0') * 100 + (a[10] - '0') * 10 + (a[11] - '0') : 0;
    if (!status_ok || !status_end || status < 100 || status > 599 || status == 500)
        fprintf(stderr, "answer: %.*s\n", (int)(n > 600 ? 600 : n), a);
    FUZZ_CHECK(status_ok && status_end);
    FUZZ_CHECK(status >= 100 && status <= 599);
    FUZZ_CHECK(status != 500);
    const char *hend = memmem(a, n, "\r\n\r\n", 4);
    if (!hend) return; /* the server stopped mid-answer: the client went away first */
    size_t ctl = 0, cll = 0;
    const char *ct = header_of(status_end + 1, hend + 2, "Content-Type", &ctl);
    const char *cl = header_of(status_end + 1, hend + 2, "Content-Length", &cll);
    if (head || !ct || ctl < 16 || strncasecmp(ct, "application/json", 16) || !cl) return;
    char num[24];
    if (cll == 0 || cll >= sizeof num) return;
    memcpy(num, cl, cll);
    num[cll] = '\0';
    size_t len = strtoull(num, NULL, 10);
    const char *body = hend + 4;
    if (len == 0 || (size_t)(a + n - body) < len) return; /* HEAD, or cut short */
    ew_arena ar;
    ew_json *v = NULL;
    ew_error err = {0};
    ew_arena_init(&ar, NULL, 0);
    int prc = ew_json_parse(&v, body, len, NULL, &ar, &err);
    if (prc) fprintf(stderr, "answer %d is not JSON (%s): %.*s\n", status, err.msg, (int)len, body);
    FUZZ_CHECK(prc == 0 && (v->kind == EW_JSON_OBJECT || v->kind == EW_JSON_ARRAY));
    ew_arena_release(&ar);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    fuzz_services_token(&services, services.user_id, false, services.user_token);
    fuzz_services_token(&services, services.admin_id, true, services.admin_token);
    int which = fuzz_service_of(data[0]);
    size_t len;
    char *text = fuzz_services_expand(&services, data + 1, size - 1, &len);

    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    FUZZ_CHECK(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)ports[which])};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int crc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    if (crc && errno == EINTR) {
        /* libFuzzer's timer signal (-timeout) interrupted it: the connection goes on by itself,
         * and is waited for, not asked for again */
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int pr;
        do
            pr = poll(&p, 1, CLOSE_WITHIN_MS);
        while (pr < 0 && errno == EINTR);
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        crc = pr == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0 ? 0
                                                                                              : -1;
        if (crc) errno = soerr ? soerr : ETIMEDOUT;
    }
    if (crc) {
        fprintf(stderr, "connect: %s\n", strerror(errno));
        abort();
    }
    char *answer = malloc(ANSWER_MAX);
    if (!answer) abort();
    size_t got = 0, sent = 0;
    bool wr_open = true;
    int64_t deadline = now_ms() + CLOSE_WITHIN_MS;
    /* write and read together: a server that answers before reading all (413) must not block us */
    for (;;) {
        if (wr_open && sent == len) {
            shutdown(fd, SHUT_WR);
            wr_open = false;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN | (wr_open ? POLLOUT : 0)};
        int64_t left = deadline - now_ms();
        if (left <= 0) break;
        int pr = poll(&p, 1, (int)left);
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) break;
        if (wr_open && (p.revents & POLLOUT)) {
            ssize_t w = send(fd, text + sent, len - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0)
                sent += (size_t)w;
            else if (w < 0 && errno != EAGAIN && errno != EINTR)
                wr_open = false; /* the server closed its side: it answered already */
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            char sink[4096];
            char *to = got < ANSWER_MAX ? answer + got : sink;
            size_t room = got < ANSWER_MAX ? ANSWER_MAX - got : sizeof sink;
            ssize_t r = recv(fd, to, room, MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                deadline = 0; /* closed (or reset): done */
                break;
            }
            if (r > 0 && to == answer + got) got += (size_t)r;
        }
    }
    bool closed = deadline == 0;
    close(fd);
    if (!closed)
        fprintf(stderr,
                "the server kept the connection open %d ms after the request ended (%zu of "
                "%zu bytes sent, %zu received)\n",
                CLOSE_WITHIN_MS, sent, len, got);
    FUZZ_CHECK(closed);
    if (getenv("FUZZ_SOCKET_VERBOSE"))
        fprintf(stderr, "%s: %.*s\n---\n", services.def[which].name, (int)(got > 400 ? 400 : got),
                answer);
    check_answer(answer, got, first_is_head(text, len));
    free(answer);
    free(text);
    ew_error e = {0};
    int rc = svc_settle(services.svc[which], 20000, &e);
    if (rc) fprintf(stderr, "settling: %s\n", e.msg);
    FUZZ_CHECK(rc == 0);
    return 0;
}
