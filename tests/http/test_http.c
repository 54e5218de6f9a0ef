/* Tests of the HTTP module (include/eventwire/http.h) through libcurl on loopback: routing, path,
 * query and header access, the built-in 404/405/413/400 answers, /healthz, concurrency, and a
 * stop that lets the request in flight finish. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include "support/ew_test.h"
#include "http/http_client.h"
#include "core/json.h"
#include "eventwire/clock.h"
#include "eventwire/http.h"

typedef struct fixture {
    ew_http_server *s;
    int port;
    atomic_int entered;  /* slow handlers that started */
    atomic_int finished; /* slow handlers that returned */
    int slow_ms;
    atomic_int healthy;
} fixture;

/* GET /items/{id}: echoes the parameter, a query parameter and a header. */
static void h_item(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    ew_http_obj_begin(res, 200);
    ew_http_obj_str(res, "route", "item");
    ew_http_obj_str(res, "id", ew_http_param(rq, "id"));
    ew_http_obj_str(res, "q", ew_http_query(rq, "q"));
    ew_http_obj_str(res, "flag", ew_http_query(rq, "flag"));
    ew_http_obj_str(res, "x", ew_http_header(rq, "X-Test"));
    ew_http_obj_str(res, "bearer", ew_http_bearer(rq));
    ew_http_obj_str(res, "path", ew_http_path(rq));
    ew_http_obj_str(res, "method", ew_http_method(rq));
    ew_http_obj_str(res, "client", ew_http_client_addr(rq));
    ew_http_obj_end(res);
}

/* GET /items/special: a literal segment wins over {id}. */
static void h_special(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    ew_http_obj_begin(res, 200);
    ew_http_obj_str(res, "route", "special");
    ew_http_obj_end(res);
}

/* POST /items/{id}/tags/{tag} (JSON): echoes both parameters and the body's "name". */
static void h_tag(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    const ew_json *j = ew_http_json(rq);
    assert_non_null(j);
    const ew_json *name = ew_json_get(j, "name");
    if (!name || name->kind != EW_JSON_STRING) {
        ew_http_reply_error(res, 400, "name", "name is required and must be a string");
        return;
    }
    size_t len;
    ew_http_body(rq, &len);
    const char *tag = ew_http_param(rq, "tag");
    const char *tags[] = {tag ? tag : "none", name->str};
    ew_http_obj_begin(res, 201);
    ew_http_obj_str(res, "id", ew_http_param(rq, "id"));
    ew_http_obj_strlist(res, "tags", tags, 2);
    ew_http_obj_int(res, "body_len", (int64_t)len);
    ew_http_obj_bool(res, "ok", true);
    ew_http_obj_raw(res, "raw", "{\"a\":[1,2]}");
    ew_http_obj_end(res);
}

/* PUT /raw: the body as received, raw, and a header of the handler's own. */
static void h_raw(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    size_t len;
    const char *b = ew_http_body(rq, &len);
    assert_null(ew_http_json(rq));
    ew_http_header_add(res, "X-Len", len ? "some" : "none");
    ew_http_obj_begin(res, 200);
    ew_http_obj_int(res, "len", (int64_t)len);
    ew_http_obj_str(res, "body", b);
    ew_http_obj_end(res);
}

/* POST /opt (optional JSON): says whether there was a body. */
static void h_opt(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    const ew_json *j = ew_http_json(rq);
    ew_http_obj_begin(res, 200);
    ew_http_obj_bool(res, "json", j != NULL);
    ew_http_obj_int(res, "members", j ? (int64_t)j->count : -1);
    ew_http_obj_end(res);
}

static void h_nothing(const ew_http_request *rq, ew_http_response *res, void *ud) {}

static void h_delete(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    ew_http_status(res, 204);
}

static void h_slow(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    fixture *f = ud;
    atomic_fetch_add(&f->entered, 1);
    usleep((useconds_t)f->slow_ms * 1000);
    atomic_fetch_add(&f->finished, 1);
    ew_http_obj_begin(res, 200);
    ew_http_obj_str(res, "slow", "done");
    ew_http_obj_end(res);
}

static int health(void *ud, char *why, size_t n)
{
    fixture *f = ud;
    if (atomic_load(&f->healthy)) return 0;
    snprintf(why, n, "database unreachable");
    return 1;
}

static fixture *start(size_t max_body)
{
    curl_global_init(CURL_GLOBAL_ALL);
    fixture *f = calloc(1, sizeof *f);
    atomic_store(&f->healthy, 1);
    f->slow_ms = 600;
    ew_error err = {0};
    ew_http_options o = {.addr = "127.0.0.1",
                         .port = 0,
                         .max_body_bytes = max_body,
                         .health = health,
                         .health_ud = f,
                         .stop_timeout_ms = 5000};
    assert_int_equal(ew_http_new(&f->s, &o, &err), 0);
    struct {
        const char *r;
        unsigned fl;
        ew_http_handler fn;
    } routes[] = {
        {"GET /items/{id}", 0, h_item},
        {"GET /items/special", 0, h_special},
        {"DELETE /items/{id}", 0, h_delete},
        {"POST /items/{id}/tags/{tag}", EW_HTTP_JSON, h_tag},
        {"PUT /raw", 0, h_raw},
        {"GET /nothing", 0, h_nothing},
        {"GET /slow", 0, h_slow},
        {"POST /json", EW_HTTP_JSON, h_tag},
        {"POST /opt", EW_HTTP_JSON_OPT, h_opt},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (ew_http_route(f->s, routes[i].r, routes[i].fl, routes[i].fn, f, &err))
            fail_msg("%s: %s", routes[i].r, err.msg);
    if (ew_http_start(f->s, &err)) fail_msg("%s", err.msg);
    f->port = ew_http_port(f->s);
    assert_true(f->port > 0);
    return f;
}

static void finish(fixture *f)
{
    ew_http_free(f->s);
    free(f);
}

static http_result req(fixture *f, const char *method, const char *path, const char *body)
{
    char url[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", f->port, path);
    http_req rq = {.method = method, .body = body};
    return http_do(url, &rq);
}

#define member http_member

static void assert_member(const http_result *r, const char *key, const char *want)
{
    const char *got = member(r, key);
    if (!got || strcmp(got, want))
        fail_msg("%s: want %s, got %s (body %s)", key, want, got ? got : "(absent)", r->body);
}

static void test_routes_params_query_and_headers(void **state)
{
    fixture *f = start(0);
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/items/a%%20b?q=x%%26y&flag", f->port);
    const char *hdrs[] = {"X-Test: hello", "Authorization: Bearer tok123", NULL};
    http_req rq = {.headers = hdrs};
    http_result r = http_do(url, &rq);
    assert_int_equal(r.status, 200);
    char ct[64];
    assert_non_null(http_header_value(&r, "Content-Type", ct, sizeof ct));
    assert_string_equal(ct, "application/json");
    assert_member(&r, "route", "item");
    assert_member(&r, "id", "a b");
    assert_member(&r, "q", "x&y");
    assert_member(&r, "flag", "");
    assert_member(&r, "x", "hello");
    assert_member(&r, "bearer", "tok123");
    assert_member(&r, "path", "/items/a b");
    assert_member(&r, "method", "GET");
    assert_member(&r, "client", "127.0.0.1");
    http_result_free(&r);

    r = req(f, NULL, "/items/special", NULL);
    assert_member(&r, "route", "special");
    http_result_free(&r);
    r = req(f, NULL, "/items/7", NULL);
    assert_member(&r, "id", "7");
    assert_member(&r, "q", "(null)");
    assert_member(&r, "bearer", "(null)");
    http_result_free(&r);

    r = req(f, "POST", "/items/42/tags/red", "{\"name\": \"blue\"}");
    assert_int_equal(r.status, 201);
    assert_member(&r, "id", "42");
    assert_member(&r, "tags", "[\"red\",\"blue\"]");
    assert_member(&r, "body_len", "16");
    assert_member(&r, "ok", "true");
    assert_member(&r, "raw", "{\"a\":[1,2]}");
    http_result_free(&r);

    /* the handler's own error */
    r = req(f, "POST", "/items/42/tags/red", "{\"name\": 5}");
    assert_int_equal(r.status, 400);
    assert_member(&r, "field", "name");
    assert_member(&r, "error", "name is required and must be a string");
    http_result_free(&r);

    /* a raw body, and a header of the handler's */
    r = req(f, "PUT", "/raw", "not json at all");
    assert_int_equal(r.status, 200);
    assert_member(&r, "body", "not json at all");
    char xl[16];
    assert_string_equal(http_header_value(&r, "X-Len", xl, sizeof xl), "some");
    http_result_free(&r);

    /* 204 has no body; HEAD runs the GET route without a body */
    r = req(f, "DELETE", "/items/1", NULL);
    assert_int_equal(r.status, 204);
    assert_int_equal(r.len, 0);
    http_result_free(&r);
    r = req(f, "HEAD", "/items/1", NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.len, 0);
    http_result_free(&r);
    finish(f);
}

static void test_unknown_path_is_404_and_wrong_method_405_with_allow(void **state)
{
    fixture *f = start(0);
    const char *paths[] = {"/nope", "/items", "/items/1/2", "/items//x", "/", "/items/1/tags"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        http_result r = req(f, NULL, paths[i], NULL);
        if (r.status != 404) fail_msg("%s: %ld %s", paths[i], r.status, r.body);
        char want[128];
        snprintf(want, sizeof want, "no route for %s", paths[i]);
        assert_member(&r, "error", want);
        assert_member(&r, "field", "(null)");
        http_result_free(&r);
    }
    http_result r = req(f, "POST", "/items/5", "{}");
    assert_int_equal(r.status, 405);
    char allow[128];
    assert_non_null(http_header_value(&r, "Allow", allow, sizeof allow));
    assert_string_equal(allow, "GET, HEAD, DELETE");
    assert_non_null(strstr(member(&r, "error"), "method POST is not allowed on /items/5"));
    http_result_free(&r);
    r = req(f, "GET", "/items/5/tags/x", NULL);
    assert_int_equal(r.status, 405);
    assert_string_equal(http_header_value(&r, "Allow", allow, sizeof allow), "POST");
    http_result_free(&r);
    r = req(f, "DELETE", "/healthz", NULL);
    assert_int_equal(r.status, 405);
    http_result_free(&r);
    finish(f);
}

/* Found by fuzzing (tests/fuzz/corpus/http/latin1-path): MHD hands over the path with its
 * %-escapes decoded, whatever bytes they make; echoed in the 404's message they made an answer
 * that was not JSON. Bytes that are not UTF-8 are now written as U+FFFD, in the built-in answers
 * and in what handlers write with ew_http_obj_str. */
static void test_answers_are_json_whatever_bytes_the_request_holds(void **state)
{
    fixture *f = start(0);
    const char *paths[] = {"/no/%E9t%E9", "/items/%FF%C3?q=%C0%AF&flag=%ED%A0%80"};
    const long want[] = {404, 200};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        http_result r = req(f, NULL, paths[i], NULL);
        if (r.status != want[i]) fail_msg("%s: %ld %s", paths[i], r.status, r.body);
        ew_arena a;
        ew_json *v;
        ew_error err = {0};
        ew_arena_init(&a, NULL, 0);
        if (ew_json_parse(&v, r.body, strlen(r.body), NULL, &a, &err))
            fail_msg("%s: the answer is not JSON (%s): %s", paths[i], err.msg, r.body);
        assert_non_null(strstr(r.body, "\xEF\xBF\xBD"));
        ew_arena_release(&a);
        http_result_free(&r);
    }
    finish(f);
}

static void test_body_over_the_limit_is_413(void **state)
{
    fixture *f = start(1000);
    char *big = malloc(5001);
    memset(big, ' ', 5000);
    big[0] = '{';
    big[4999] = '}';
    big[5000] = '\0';
    /* declared by Content-Length: refused before reading */
    http_result r = req(f, "POST", "/json", big);
    assert_int_equal(r.status, 413);
    assert_non_null(strstr(member(&r, "error"), "larger than the limit of 1000 bytes"));
    http_result_free(&r);
    /* chunked: counted as it arrives */
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/json", f->port);
    http_req rq = {.method = "POST", .body = big, .chunked = 1};
    r = http_do(url, &rq);
    assert_int_equal(r.status, 413);
    assert_non_null(strstr(member(&r, "error"), "larger than the limit of 1000 bytes"));
    http_result_free(&r);
    /* at the limit exactly: accepted, also chunked */
    big[999] = '}';
    big[1000] = '\0';
    memcpy(big, "{\"name\":\"x\"", 11);
    r = req(f, "POST", "/json", big);
    assert_int_equal(r.status, 201);
    assert_member(&r, "body_len", "1000");
    http_result_free(&r);
    r = http_do(url, &rq);
    assert_int_equal(r.status, 201);
    http_result_free(&r);
    /* and the server is fine afterwards */
    r = req(f, NULL, "/items/1", NULL);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    free(big);
    finish(f);
}

/* A request's headers live in libmicrohttpd's memory for the connection, EW_HTTP_HEADER_BYTES:
 * headers that do not fit are refused (431) without the handler, and ordinary ones pass. */
static void test_headers_past_the_header_memory_are_refused(void **state)
{
    fixture *f = start(0);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/items/1", f->port);
    size_t big = EW_HTTP_HEADER_BYTES + 1024;
    char *line = malloc(big + 16);
    memcpy(line, "X-Test: ", 8);
    memset(line + 8, 'a', big);
    line[8 + big] = '\0';
    const char *headers[] = {line, NULL};
    http_req rq = {.headers = headers};
    http_result r = http_do(url, &rq);
    if (r.status != 431) fail_msg("%ld %s", r.status, r.body);
    http_result_free(&r);
    line[8 + EW_HTTP_HEADER_BYTES / 4] = '\0';
    r = http_do(url, &rq);
    assert_int_equal(r.status, 200);
    assert_true(r.len > EW_HTTP_HEADER_BYTES / 4); /* the handler echoed the header */
    http_result_free(&r);
    free(line);
    finish(f);
}

/* A body within the limit whose tree would take more than the parser's memory cap (16 bytes
 * per input byte and 64 KiB): 413, saying so, and the handler never runs. */
static void test_a_body_past_the_json_memory_cap_is_413(void **state)
{
    fixture *f = start(0);
    size_t n = 100000;
    char *body = malloc(2 * n + 64);
    size_t o = (size_t)sprintf(body, "{\"name\":\"x\",\"a\":[0");
    for (size_t i = 1; i < n; i++) {
        body[o++] = ',';
        body[o++] = '0';
    }
    memcpy(body + o, "]}", 3);
    http_result r = req(f, "POST", "/json", body);
    if (r.status != 413) fail_msg("%ld %s", r.status, r.body);
    assert_non_null(strstr(member(&r, "error"), "needs more than"));
    http_result_free(&r);
    /* the same members, few numbers: parsed and handled */
    memcpy(body + strlen("{\"name\":\"x\",\"a\":[0,0,0"), "]}", 3);
    r = req(f, "POST", "/json", body);
    assert_int_equal(r.status, 201);
    http_result_free(&r);
    free(body);
    finish(f);
}

static void test_malformed_json_is_400_naming_the_position(void **state)
{
    fixture *f = start(0);
    struct {
        const char *body, *needle;
    } bad[] = {
        {"{\"name\": \"x\",}", "malformed JSON: line 1, column 14"},
        {"{\"name\":\n  tru}", "malformed JSON: line 2, column 3"},
        {"[1, 2]", "the body must be a JSON object"},
        {"\"name\"", "the body must be a JSON object"},
        {"{\"a\":1,\"a\":2}", "malformed JSON: line 1"},
        {"{\"a\":1} x", "malformed JSON: line 1, column 9"},
        {"{\"a\":\"\xff\"}", "malformed JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        http_result r = req(f, "POST", "/json", bad[i].body);
        if (r.status != 400) fail_msg("%s: %ld %s", bad[i].body, r.status, r.body);
        const char *e = member(&r, "error");
        if (!e || !strstr(e, bad[i].needle))
            fail_msg("%s: '%s' lacks '%s'", bad[i].body, e ? e : r.body, bad[i].needle);
        http_result_free(&r);
    }
    /* an empty body on a JSON route */
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/json", f->port);
    http_req rq = {.method = "POST", .body = "", .body_len = 0};
    http_result r = http_do(url, &rq);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(member(&r, "error"), "the request body is empty"));
    http_result_free(&r);
    /* an optional body: none is fine, one must be a JSON object */
    r = req(f, "POST", "/opt", NULL);
    assert_int_equal(r.status, 200);
    assert_member(&r, "json", "false");
    http_result_free(&r);
    r = req(f, "POST", "/opt", "{\"a\":1,\"b\":2}");
    assert_member(&r, "members", "2");
    http_result_free(&r);
    r = req(f, "POST", "/opt", "{\"a\":");
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(member(&r, "error"), "malformed JSON"));
    http_result_free(&r);
    r = req(f, "POST", "/opt", "[]");
    assert_int_equal(r.status, 400);
    http_result_free(&r);
    /* deep nesting is refused, not recursed into */
    char deep[200];
    memset(deep, '[', sizeof deep - 1);
    deep[0] = '{';
    deep[sizeof deep - 1] = '\0';
    char *body = malloc(300);
    snprintf(body, 300, "{\"a\":%s", deep + 1);
    r = req(f, "POST", "/json", body);
    assert_int_equal(r.status, 400);
    http_result_free(&r);
    free(body);
    finish(f);
}

static void test_healthz_reports_the_callback(void **state)
{
    fixture *f = start(0);
    http_result r = req(f, NULL, "/healthz", NULL);
    assert_int_equal(r.status, 200);
    assert_member(&r, "status", "ok");
    http_result_free(&r);
    atomic_store(&f->healthy, 0);
    r = req(f, NULL, "/healthz", NULL);
    assert_int_equal(r.status, 503);
    assert_member(&r, "status", "unhealthy");
    assert_member(&r, "error", "database unreachable");
    http_result_free(&r);
    finish(f);
}

static void test_a_handler_without_a_response_is_500(void **state)
{
    fixture *f = start(0);
    http_result r = req(f, NULL, "/nothing", NULL);
    assert_int_equal(r.status, 500);
    assert_non_null(strstr(member(&r, "error"), "no response"));
    http_result_free(&r);
    finish(f);
}

typedef struct client_arg {
    fixture *f;
    http_result r;
} client_arg;

static void *client_thread(void *p)
{
    client_arg *a = p;
    a->r = req(a->f, NULL, "/slow", NULL);
    return NULL;
}

static void test_handlers_run_concurrently(void **state)
{
    fixture *f = start(0);
    f->slow_ms = 400;
    pthread_t t[3];
    client_arg a[3];
    int64_t t0 = ew_mono_ns();
    for (int i = 0; i < 3; i++) {
        a[i].f = f;
        pthread_create(&t[i], NULL, client_thread, &a[i]);
    }
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    int64_t ms = (ew_mono_ns() - t0) / 1000000;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(a[i].r.status, 200);
        http_result_free(&a[i].r);
    }
    if (ms > 1100) fail_msg("three 400 ms requests took %lld ms: not concurrent", (long long)ms);
    finish(f);
}

static void test_stop_finishes_the_request_in_flight(void **state)
{
    fixture *f = start(0);
    int port = f->port;
    pthread_t t;
    client_arg a = {.f = f};
    pthread_create(&t, NULL, client_thread, &a);
    for (int i = 0; i < 500 && !atomic_load(&f->entered); i++)
        usleep(10000);
    assert_int_equal(atomic_load(&f->entered), 1);
    int64_t t0 = ew_mono_ns();
    assert_int_equal(ew_http_stop(f->s), 0);
    int64_t ms = (ew_mono_ns() - t0) / 1000000;
    /* stop returned after the handler, which had most of its 600 ms to go */
    assert_int_equal(atomic_load(&f->finished), 1);
    assert_true(ms >= 300);
    pthread_join(t, NULL);
    assert_int_equal(a.r.status, 200);
    assert_member(&a.r, "slow", "done");
    http_result_free(&a.r);
    /* nobody listens any more */
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/items/1", port);
    http_result r = http_do(url, NULL);
    assert_int_equal(r.status, 0);
    http_result_free(&r);
    assert_int_equal(ew_http_stop(f->s), 0); /* again: nothing to do */
    finish(f);
}

typedef struct stopper {
    ew_http_server *s;
    int rc;
} stopper;

static void *stop_thread(void *p)
{
    stopper *st = p;
    st->rc = ew_http_stop(st->s);
    return NULL;
}

static size_t sink(char *d, size_t sz, size_t n, void *ud)
{
    http_result *r = ud;
    return http__append(&r->body, &r->len, d, sz * n);
}

/* A kept-alive connection that sends a request while the server stops gets 503 and is closed. */
static void test_stopping_answers_kept_alive_connections_503(void **state)
{
    fixture *f = start(0);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/items/1", f->port);
    CURL *c = curl_easy_init();
    http_result r;
    memset(&r, 0, sizeof r);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    assert_int_equal(curl_easy_perform(c), CURLE_OK); /* the connection stays open */
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    assert_int_equal(code, 200);
    /* a slow request keeps the server stopping for a while */
    pthread_t t, ts;
    client_arg a = {.f = f};
    pthread_create(&t, NULL, client_thread, &a);
    for (int i = 0; i < 500 && !atomic_load(&f->entered); i++)
        usleep(10000);
    stopper st = {f->s, -1};
    pthread_create(&ts, NULL, stop_thread, &st);
    usleep(150000);
    free(r.body);
    memset(&r, 0, sizeof r);
    long conns = -1;
    assert_int_equal(curl_easy_perform(c), CURLE_OK); /* on the kept-alive connection */
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &conns);
    assert_int_equal(conns, 0); /* no new connection: the old one was used */
    assert_int_equal(code, 503);
    assert_non_null(strstr(r.body, "shutting down"));
    free(r.body);
    curl_easy_cleanup(c);
    pthread_join(t, NULL);
    pthread_join(ts, NULL);
    assert_int_equal(st.rc, 0);
    assert_int_equal(a.r.status, 200);
    http_result_free(&a.r);
    finish(f);
}

static void test_bad_routes_and_addresses_are_refused(void **state)
{
    ew_http_server *s;
    ew_error err = {0};
    assert_int_equal(ew_http_new(&s, NULL, &err), 0);
    struct {
        const char *route;
        int code;
        const char *needle;
    } bad[] = {
        {"GET", EW_EINVAL, "is not 'METHOD /path'"},    {"get /x", EW_EINVAL, "capitals"},
        {"GET x", EW_EINVAL, "must start with '/'"},    {"GET /a//b", EW_EINVAL, "empty segment"},
        {"GET /a/{b", EW_EINVAL, "whole segment"},      {"GET /a/x{b}", EW_EINVAL, "whole segment"},
        {"GET /a/{b-c}", EW_EINVAL, "parameter names"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(ew_http_route(s, bad[i].route, 0, h_item, NULL, &err), bad[i].code);
        if (!strstr(err.msg, bad[i].needle)) fail_msg("%s: %s", bad[i].route, err.msg);
    }
    assert_int_equal(ew_http_route(s, "GET /a/{id}", 0, h_item, NULL, &err), 0);
    assert_int_equal(ew_http_route(s, "GET /a/{other}", 0, h_item, NULL, &err), EW_EEXIST);
    assert_int_equal(ew_http_route(s, "POST /a/{other}", 0, h_item, NULL, &err), 0);
    assert_int_equal(ew_http_route(s, "GET /a/{id}", 7, h_item, NULL, &err), EW_EINVAL);
    assert_int_equal(ew_http_start(s, &err), 0);
    assert_int_equal(ew_http_route(s, "GET /b", 0, h_item, NULL, &err), EW_ESTATE);
    int port = ew_http_port(s);
    /* the same port again cannot be bound */
    ew_http_server *s2;
    assert_int_equal(ew_http_new(&s2, &(ew_http_options){.port = port}, &err), 0);
    assert_int_equal(ew_http_start(s2, &err), EW_EIO);
    assert_non_null(strstr(err.msg, "cannot listen on 127.0.0.1"));
    ew_http_free(s2);
    assert_int_equal(ew_http_new(&s2, &(ew_http_options){.addr = "localhost"}, &err), 0);
    assert_int_equal(ew_http_start(s2, &err), EW_EINVAL);
    ew_http_free(s2);
    assert_int_equal(ew_http_new(&s2, &(ew_http_options){.port = 70000}, &err), EW_EINVAL);
    ew_http_free(s);
    ew_http_free(NULL);
}

static void test_ipv6_loopback(void **state)
{
    ew_http_server *s;
    ew_error err = {0};
    assert_int_equal(ew_http_new(&s, &(ew_http_options){.addr = "::1"}, &err), 0);
    assert_int_equal(ew_http_route(s, "GET /items/{id}", 0, h_item, NULL, &err), 0);
    if (ew_http_start(s, &err)) {
        ew_http_free(s);
        skip(); /* no IPv6 here */
    }
    char url[128];
    snprintf(url, sizeof url, "http://[::1]:%d/items/9", ew_http_port(s));
    http_result r = http_do(url, NULL);
    assert_int_equal(r.status, 200);
    assert_member(&r, "client", "::1");
    http_result_free(&r);
    ew_http_free(s);
}

/* ---- the guard (EW_HTTP_GUARDED) ---------------------------------------------------------------
 */

static atomic_int guarded_calls;

static void guard_fn(ew_http_request *rq, ew_http_response *res, void *ud)
{
    const char *who = ew_http_header(rq, "X-Who");
    if (!who || strcmp(who, "friend")) {
        ew_http_reply_error(res, 401, NULL, "who are you?");
        return;
    }
    ew_http_set_data(rq, strdup(who), free);
}

static void h_guarded(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    atomic_fetch_add(&guarded_calls, 1);
    ew_http_obj_begin(res, 200);
    ew_http_obj_str(res, "who", ew_http_data(rq));
    ew_http_obj_end(res);
}

/* The guard answers before the body is read or parsed (a malformed or oversized body of a caller
 * it refuses gets its answer, not 400 or 413); a caller it passes reaches the handler with the
 * guard's data. A guarded route needs a guard. */
static void test_the_guard_runs_before_the_body(void **state)
{
    curl_global_init(CURL_GLOBAL_ALL);
    ew_http_server *s;
    ew_error err = {0};
    ew_http_options o = {.port = 0, .max_body_bytes = 1000, .guard = guard_fn};
    assert_int_equal(ew_http_new(&s, &o, &err), 0);
    assert_int_equal(
        ew_http_route(s, "POST /secret", EW_HTTP_JSON | EW_HTTP_GUARDED, h_guarded, NULL, &err), 0);
    assert_int_equal(ew_http_start(s, &err), 0);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/secret", ew_http_port(s));
    char *big = calloc(1, 5001);
    memset(big, 'x', 5000);
    const char *const friend[] = {"X-Who: friend", NULL}, *const stranger[] = {"X-Who: x", NULL};
    struct {
        const char *const *hdrs;
        const char *body;
        long want;
    } cases[] = {
        {stranger, "{\"a\":", 401}, {NULL, big, 401},   {stranger, "{}", 401},
        {friend, "{\"a\":", 400},   {friend, big, 413}, {friend, "{}", 200},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        http_req rq = {.method = "POST", .body = cases[i].body, .headers = cases[i].hdrs};
        http_result r = http_do(url, &rq);
        if (r.status != cases[i].want)
            fail_msg("case %zu: want %ld, got %ld %s", i, cases[i].want, r.status, r.body);
        if (r.status == 200) assert_string_equal(http_member(&r, "who"), "friend");
        http_result_free(&r);
    }
    assert_int_equal(atomic_load(&guarded_calls), 1);
    free(big);
    ew_http_free(s);
    assert_int_equal(ew_http_new(&s, NULL, &err), 0);
    assert_int_equal(ew_http_route(s, "GET /x", EW_HTTP_GUARDED, h_guarded, NULL, &err), EW_EINVAL);
    ew_http_free(s);
}

/* ---- content types, origins, connections -------------------------------------------------- */

static http_result req_h(fixture *f, const char *method, const char *path, const char *body,
                         const char *const *headers)
{
    char url[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", f->port, path);
    http_req rq = {.method = method, .body = body, .headers = headers};
    return http_do(url, &rq);
}

/* A JSON route takes application/json (and application/...+json); a body of another type, or of
 * none, is 415 before it is read; a route that takes any body is not concerned. */
static void test_json_routes_refuse_other_content_types_with_415(void **state)
{
    fixture *f = start(0);
    static const char body[] = "{\"name\":\"x\"}";
    const char *const text[] = {"Content-Type: text/plain", NULL};
    const char *const form[] = {"Content-Type: application/x-www-form-urlencoded", NULL};
    const char *const none[] = {"Content-Type:", NULL};
    const char *const charset[] = {"Content-Type: Application/JSON ; charset=utf-8", NULL};
    const char *const suffix[] = {"Content-Type: application/merge-patch+json", NULL};
    const char *const jsonp[] = {"Content-Type: application/jsonp", NULL};
    http_result r = req_h(f, "POST", "/json", body, text);
    assert_int_equal(r.status, 415);
    assert_non_null(strstr(member(&r, "error"), "text/plain: this route takes application/json"));
    http_result_free(&r);
    r = req_h(f, "POST", "/json", body, form);
    assert_int_equal(r.status, 415);
    http_result_free(&r);
    r = req_h(f, "POST", "/json", body, jsonp);
    assert_int_equal(r.status, 415);
    http_result_free(&r);
    r = req_h(f, "POST", "/json", body, none);
    assert_int_equal(r.status, 415);
    assert_non_null(strstr(member(&r, "error"), "no Content-Type"));
    http_result_free(&r);
    r = req_h(f, "POST", "/opt", body, text); /* an optional body is JSON when it is there */
    assert_int_equal(r.status, 415);
    http_result_free(&r);
    /* chunked, so that the type is judged without a Content-Length */
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/json", f->port);
    http_req rq = {.method = "POST", .body = body, .chunked = 1, .headers = text};
    r = http_do(url, &rq);
    assert_int_equal(r.status, 415);
    http_result_free(&r);
    /* what is JSON passes */
    r = req_h(f, "POST", "/json", body, charset);
    assert_int_equal(r.status, 201);
    http_result_free(&r);
    r = req_h(f, "POST", "/json", body, suffix);
    assert_int_equal(r.status, 201);
    http_result_free(&r);
    r = req_h(f, "POST", "/opt", NULL, none); /* no body: no type needed */
    assert_int_equal(r.status, 200);
    assert_member(&r, "json", "false");
    http_result_free(&r);
    r = req_h(f, "PUT", "/raw", "plain words", text); /* not a JSON route */
    assert_int_equal(r.status, 200);
    assert_member(&r, "body", "plain words");
    http_result_free(&r);
    /* every 415 is counted as an answer of its route */
    ew_http_stats st;
    for (size_t i = 0; i < ew_http_route_count(f->s); i++) {
        assert_int_equal(ew_http_route_stats(f->s, i, &st), 0);
        if (!strcmp(st.route, "/json")) assert_int_equal(st.by_status[415 - 100], 5);
    }
    finish(f);
}

static fixture *start_cors(const char *origins)
{
    curl_global_init(CURL_GLOBAL_ALL);
    fixture *f = calloc(1, sizeof *f);
    atomic_store(&f->healthy, 1);
    ew_error err = {0};
    ew_http_options o = {.cors_origins = origins};
    assert_int_equal(ew_http_new(&f->s, &o, &err), 0);
    assert_int_equal(ew_http_route(f->s, "GET /items/{id}", 0, h_item, f, &err), 0);
    assert_int_equal(ew_http_route(f->s, "DELETE /items/{id}", 0, h_delete, f, &err), 0);
    assert_int_equal(ew_http_route(f->s, "POST /json", EW_HTTP_JSON, h_tag, f, &err), 0);
    if (ew_http_start(f->s, &err)) fail_msg("%s", err.msg);
    f->port = ew_http_port(f->s);
    return f;
}

/* Without cors_origins every cross-origin request is 403 before it is routed; the server's own
 * origin is not cross-origin; the configured origins get CORS headers and their preflights. */
static void test_cross_origin_requests_are_refused_unless_configured(void **state)
{
    fixture *f = start_cors(NULL);
    const char *const evil[] = {"Origin: https://evil.example", NULL};
    const char *const evil_pre[] = {"Origin: https://evil.example",
                                    "Access-Control-Request-Method: DELETE", NULL};
    http_result r = req_h(f, "DELETE", "/items/1", NULL, evil);
    assert_int_equal(r.status, 403);
    assert_non_null(strstr(member(&r, "error"), "cross-origin requests from https://evil.example"));
    char h[256];
    assert_null(http_header_value(&r, "Access-Control-Allow-Origin", h, sizeof h));
    http_result_free(&r);
    r = req_h(f, "OPTIONS", "/items/1", NULL, evil_pre);
    assert_int_equal(r.status, 403);
    http_result_free(&r);
    r = req_h(f, "POST", "/json", "{\"name\":\"x\"}", evil); /* before the body is even looked at */
    assert_int_equal(r.status, 403);
    http_result_free(&r);
    char own[80];
    snprintf(own, sizeof own, "Origin: http://127.0.0.1:%d", f->port);
    const char *const same[] = {own, NULL};
    r = req_h(f, "GET", "/items/1", NULL, same);
    assert_int_equal(r.status, 200);
    assert_null(http_header_value(&r, "Access-Control-Allow-Origin", h, sizeof h));
    http_result_free(&r);
    r = req_h(f, "GET", "/items/1", NULL, NULL); /* no Origin: not a browser's cross-origin call */
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    finish(f);

    f = start_cors("https://app.example.com, https://admin.example.com");
    const char *const app[] = {"Origin: https://admin.example.com", NULL};
    const char *const app_pre[] = {"Origin: https://app.example.com",
                                   "Access-Control-Request-Method: DELETE",
                                   "Access-Control-Request-Headers: authorization", NULL};
    r = req_h(f, "GET", "/items/1", NULL, app);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_header_value(&r, "Access-Control-Allow-Origin", h, sizeof h),
                        "https://admin.example.com");
    assert_string_equal(http_header_value(&r, "Vary", h, sizeof h), "Origin");
    http_result_free(&r);
    r = req_h(f, "OPTIONS", "/items/1", NULL, app_pre);
    assert_int_equal(r.status, 204);
    assert_string_equal(http_header_value(&r, "Access-Control-Allow-Origin", h, sizeof h),
                        "https://app.example.com");
    assert_non_null(
        strstr(http_header_value(&r, "Access-Control-Allow-Methods", h, sizeof h), "DELETE"));
    assert_non_null(strstr(http_header_value(&r, "Access-Control-Allow-Headers", h, sizeof h),
                           "Authorization"));
    http_result_free(&r);
    r = req_h(f, "DELETE", "/items/1", NULL, evil);
    assert_int_equal(r.status, 403);
    http_result_free(&r);
    r = req_h(f, "OPTIONS", "/items/1", NULL, evil_pre);
    assert_int_equal(r.status, 403);
    http_result_free(&r);
    /* an origin is matched whole: a prefix of an allowed one is another origin */
    const char *const near[] = {"Origin: https://app.example.co", NULL};
    r = req_h(f, "GET", "/items/1", NULL, near);
    assert_int_equal(r.status, 403);
    http_result_free(&r);
    finish(f);

    f = start_cors("*");
    r = req_h(f, "GET", "/items/1", NULL, evil);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_header_value(&r, "Access-Control-Allow-Origin", h, sizeof h),
                        "https://evil.example");
    http_result_free(&r);
    finish(f);
}

/* A TCP connection to port from the address src ("127.0.0.2"); -1 when it cannot be made. */
static int connect_from(const char *src, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, src, &a.sin_addr);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a)) goto fail;
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    a.sin_port = htons((uint16_t)port);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) goto fail;
    return fd;
fail:
    if (fd >= 0) close(fd);
    return -1;
}

/* Sends GET path on fd and reads the answer into out (at most n - 1 bytes, within 5 s): its
 * length, 0 when the server closed without one. */
static size_t get_on(int fd, const char *path, char *out, size_t n)
{
    char rq[256];
    int len =
        snprintf(rq, sizeof rq, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (send(fd, rq, (size_t)len, MSG_NOSIGNAL) != len) return 0;
    size_t got = 0;
    ssize_t k;
    while (got + 1 < n && (k = recv(fd, out + got, n - 1 - got, 0)) > 0)
        got += (size_t)k;
    out[got] = '\0';
    return got;
}

/* 300 idle connections from one address: the server keeps max_connections_per_addr of them and
 * closes the rest at once, so another address is still served; the ones it kept are closed
 * after idle_timeout_s, and the address is served again. */
static void test_one_address_cannot_take_every_connection(void **state)
{
    curl_global_init(CURL_GLOBAL_ALL);
    fixture *f = calloc(1, sizeof *f);
    ew_error err = {0};
    ew_http_options o = {
        .max_connections = 256, .max_connections_per_addr = 64, .idle_timeout_s = 2};
    assert_int_equal(ew_http_new(&f->s, &o, &err), 0);
    assert_int_equal(ew_http_route(f->s, "GET /items/{id}", 0, h_item, f, &err), 0);
    assert_int_equal(ew_http_start(f->s, &err), 0);
    f->port = ew_http_port(f->s);
    int probe = connect_from("127.0.0.2", f->port);
    if (probe < 0) {
        fprintf(stderr, "skipped: no loopback address 127.0.0.2 to connect from\n");
        finish(f);
        skip();
    }
    close(probe);
    enum { IDLE = 300 };
    int fds[IDLE], open_fds = 0;
    for (int i = 0; i < IDLE; i++)
        if ((fds[i] = connect_from("127.0.0.1", f->port)) >= 0) open_fds++;
    assert_int_equal(open_fds, IDLE); /* the kernel took them all; the server decides */
    /* the server closes every one past 64 as it accepts them: a read on them sees the end (the
     * server may take a moment to accept all 300 on a busy machine) */
    int kept = IDLE;
    for (int64_t deadline = ew_mono_ns() + 10000000000LL; kept > 64 && ew_mono_ns() < deadline;) {
        usleep(100000);
        kept = 0;
        for (int i = 0; i < IDLE; i++) {
            char c;
            ssize_t k = recv(fds[i], &c, 1, MSG_DONTWAIT);
            if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) kept++;
        }
    }
    fprintf(stderr, "the server kept %d of %d idle connections from 127.0.0.1\n", kept, IDLE);
    assert_int_equal(kept, 64);
    /* one more from 127.0.0.1 is closed unanswered; 127.0.0.2 is served */
    char buf[4096];
    int fd = connect_from("127.0.0.1", f->port);
    assert_true(fd >= 0);
    assert_int_equal(get_on(fd, "/items/1", buf, sizeof buf), 0);
    close(fd);
    fd = connect_from("127.0.0.2", f->port);
    assert_true(fd >= 0);
    assert_true(get_on(fd, "/items/2", buf, sizeof buf) > 0);
    close(fd);
    assert_non_null(strstr(buf, "HTTP/1.1 200"));
    assert_non_null(strstr(buf, "\"client\":\"127.0.0.2\""));
    /* the idle ones are closed after 2 s without a byte; then 127.0.0.1 is served again */
    int64_t t0 = ew_mono_ns();
    for (int i = 0; i < IDLE; i++) {
        struct timeval tv = {8, 0};
        setsockopt(fds[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char c;
        ssize_t k = recv(fds[i], &c, 1, 0);
        if (k != 0 && !(k < 0 && errno == ECONNRESET))
            fail_msg("idle connection %d still open after %lld ms", i,
                     (long long)((ew_mono_ns() - t0) / 1000000));
        close(fds[i]);
    }
    int64_t closed_ms = (ew_mono_ns() - t0) / 1000000;
    fprintf(stderr, "the idle connections were closed after %lld ms\n", (long long)closed_ms);
    assert_true(closed_ms < 8000); /* (they were open when counted above) */
    int64_t deadline = ew_mono_ns() + 5000000000LL;
    size_t got = 0;
    while (ew_mono_ns() < deadline) {
        fd = connect_from("127.0.0.1", f->port);
        got = fd >= 0 ? get_on(fd, "/items/3", buf, sizeof buf) : 0;
        if (fd >= 0) close(fd);
        if (got) break;
        usleep(50000);
    }
    assert_true(got > 0);
    assert_non_null(strstr(buf, "HTTP/1.1 200"));
    finish(f);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_the_guard_runs_before_the_body),
    cmocka_unit_test(test_routes_params_query_and_headers),
    cmocka_unit_test(test_unknown_path_is_404_and_wrong_method_405_with_allow),
    cmocka_unit_test(test_answers_are_json_whatever_bytes_the_request_holds),
    cmocka_unit_test(test_body_over_the_limit_is_413),
    cmocka_unit_test(test_headers_past_the_header_memory_are_refused),
    cmocka_unit_test(test_a_body_past_the_json_memory_cap_is_413),
    cmocka_unit_test(test_malformed_json_is_400_naming_the_position),
    cmocka_unit_test(test_healthz_reports_the_callback),
    cmocka_unit_test(test_a_handler_without_a_response_is_500),
    cmocka_unit_test(test_handlers_run_concurrently),
    cmocka_unit_test(test_stop_finishes_the_request_in_flight),
    cmocka_unit_test(test_stopping_answers_kept_alive_connections_503),
    cmocka_unit_test(test_bad_routes_and_addresses_are_refused),
    cmocka_unit_test(test_ipv6_loopback),
    cmocka_unit_test(test_json_routes_refuse_other_content_types_with_415),
    cmocka_unit_test(test_cross_origin_requests_are_refused_unless_configured),
    cmocka_unit_test(test_one_address_cannot_take_every_connection),
};

EW_TEST_MAIN(tests)
