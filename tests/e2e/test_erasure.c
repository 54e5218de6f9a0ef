/* End to end: an erasure reaches every copy (docs/security.md#erasure). The five services run as
 * processes (`ewctl up`) on each backend; a user registers, logs in, exports their data and
 * resets their password; then they are deleted and the UserDeletion saga completes. With the
 * services stopped, every byte of every file under the run folder (databases with their WAL and
 * freed pages, logs, the mail spool, the export folder, the keys) and the broker's content (every
 * entry of every Redis stream, every record of every Kafka topic, every message waiting in the
 * services' RabbitMQ queues) is searched for the user's email address, user name and reset
 * token: none may be found. Then the services start again, the whole event store is replayed to
 * every service and every dead letter retried, and nothing of the user comes back: no profile,
 * no account, and again no byte of their data anywhere. With the key store on PostgreSQL
 * (KEY_STORE_URL), the user's wrapped data key is found in the server's files before the erasure
 * and in none after.
 *
 * ew-fixture: postgres
 * ew-fixture: redis
 * ew-fixture: kafka
 * ew-fixture: rabbitmq */
#define _XOPEN_SOURCE 700
#include <dirent.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include "http/http_client.h"
#include "support/ew_test.h"
#include "support/pg.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "svc_auth.h"
#ifdef EW_HAVE_REDIS
#include <hiredis/hiredis.h>
#endif
#ifdef EW_HAVE_KAFKA
#include <librdkafka/rdkafka.h>
#endif
#ifdef EW_HAVE_RABBITMQ
#include <amqp.h>
#include <amqp_tcp_socket.h>
#endif

#define WAIT_MS 45000

static const char *const services[] = {"auth-service", "user-service", "notification-service",
                                       "analytics-service", "export-service"};
#define NSERVICES 5

typedef struct sys {
    char dir[64], ns[32];
    char url[NSERVICES][128];
    char token[SVC_TOKEN_MAX + 1], admin[SVC_TOKEN_MAX + 1];
} sys;

static bool backend_env(const char *backend, const char *ns)
{
    setenv("EVENT_BUS_TYPE", backend, 1);
    if (strcmp(backend, "sqlite") == 0) return true;
    const char *url = ew_test_server_url(backend);
    if (!url) return false;
    if (strcmp(backend, "redis") == 0) {
        setenv("REDIS_EVENT_URL", url, 1);
        setenv("REDIS_CHANNEL_PREFIX", ns, 1);
    } else if (strcmp(backend, "kafka") == 0) {
        setenv("KAFKA_BOOTSTRAP_SERVERS", url, 1);
        setenv("KAFKA_TOPIC_PREFIX", ns, 1);
        setenv("KAFKA_CONSUMER_GROUP", ns, 1);
    } else {
        setenv("RABBITMQ_URL", url, 1);
        setenv("RABBITMQ_EXCHANGE", ns, 1);
    }
    return true;
}

static int url_index(const char *name)
{
    for (int i = 0; i < NSERVICES; i++)
        if (strcmp(services[i], name) == 0) return i;
    return -1;
}

/* `ewctl up` in the current folder; the addresses into s->url. */
static void up(sys *s)
{
    char *out, *err;
    int rc = ew_test_ewctl("up --timeout 60", NULL, &out, &err);
    if (rc != 0) fail_msg("ewctl up: %s", err);
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        char name[64], url[128];
        if (sscanf(line, "%63s %127s", name, url) == 2 && url_index(name) >= 0)
            snprintf(s->url[url_index(name)], sizeof s->url[0], "%s", url);
    }
    free(out);
    free(err);
}

static void down(void)
{
    char *out, *err;
    int rc = ew_test_ewctl("down", NULL, &out, &err);
    if (rc != 0) fail_msg("ewctl down: %s", err);
    free(out);
    free(err);
}

static bool sys_up(sys *s, const char *backend)
{
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "/tmp/ew-erase-XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    assert_int_equal(chdir(s->dir), 0);
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    snprintf(s->ns, sizeof s->ns, "erase%.8s", id + 24);
    if (!backend_env(backend, s->ns)) return false;
    setenv("HTTP_PORT", "0", 1);
    setenv("AUTH_PASSWORD_HASH", "min", 1);
    setenv("SAGA_TIMEOUT_SECONDS", "60", 1);
    setenv("EVENT_HANDLER_BACKOFF_MS", "20", 1);
    setenv("EVENT_HANDLER_BACKOFF_MAX_MS", "500", 1);
    up(s);
    svc_token_keys k;
    ew_error e = {0};
    char sub[EW_UUID_LEN + 1], sid[EW_UUID_LEN + 1];
    ew_uuid7(sub);
    ew_uuid7(sid);
    const char *admin[] = {"admin"};
    int64_t now = ew_now_us() / 1000000;
    if (svc_token_keys_open(&k, "var/keys", &e) ||
        svc_token_sign(&k, sub, sid, admin, 1, now, now + 3600, s->admin, sizeof s->admin))
        fail_msg("cannot make an admin token: %s", e.msg);
    sodium_memzero(&k, sizeof k);
    return true;
}

static void sys_remove(sys *s)
{
    char cmd[128];
    assert_int_equal(chdir("/"), 0);
    snprintf(cmd, sizeof cmd, "rm -rf %s", s->dir);
    assert_int_equal(system(cmd), 0);
}

static http_result call_as(sys *s, const char *token, const char *svc, const char *method,
                           const char *path, const char *body)
{
    char url[512], auth[SVC_TOKEN_MAX + 32];
    if (snprintf(url, sizeof url, "%s%s", s->url[url_index(svc)], path) >= (int)sizeof url)
        fail_msg("url too long: %s", path);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
    const char *const hdrs[] = {auth, "Content-Type: application/json", NULL};
    http_req rq = {.method = method, .body = body, .headers = hdrs};
    return http_do(url, &rq);
}

static http_result call(sys *s, const char *svc, const char *method, const char *path,
                        const char *body)
{
    return call_as(s, s->token[0] ? s->token : s->admin, svc, method, path, body);
}

static void member(const http_result *r, const char *key, char *out, size_t n)
{
    const char *v = http_member(r, key);
    if (!v) fail_msg("no '%s' in %ld %s", key, r->status, r->body ? r->body : "");
    if (snprintf(out, n, "%s", v) >= (int)n) fail_msg("'%s' is too long: %s", key, v);
}

static char *await_ewctl(const char *args, const char *needle)
{
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    for (;;) {
        char *out, *err;
        int rc = ew_test_ewctl(args, NULL, &out, &err);
        free(err);
        if (rc == 0 && strstr(out, needle)) return out;
        if (ew_mono_ns() > end) fail_msg("`ewctl %s` never showed %s; last: %s", args, needle, out);
        free(out);
        usleep(100000);
    }
}

static char *await_http(sys *s, const char *svc, const char *path, const char *needle)
{
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    for (;;) {
        http_result r = call(s, svc, "GET", path, NULL);
        if (r.status == 200 && r.body && strstr(r.body, needle)) {
            char *body = strdup(r.body);
            http_result_free(&r);
            return body;
        }
        if (ew_mono_ns() > end)
            fail_msg("GET %s%s never showed %s; last: %ld %s", svc, path, needle, r.status,
                     r.body ? r.body : r.error);
        http_result_free(&r);
        usleep(100000);
    }
}

/* The text of the newest mail in var/mail that holds both needles, or NULL. */
static char *mail_with(const char *a, const char *b)
{
    char *found = NULL;
    DIR *d = opendir("var/mail");
    if (!d) return NULL;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strstr(e->d_name, ".eml")) continue;
        char path[512];
        snprintf(path, sizeof path, "var/mail/%s", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        char *text = calloc(1, 65536);
        size_t len = fread(text, 1, 65535, f);
        fclose(f);
        text[len] = '\0';
        if (strstr(text, a) && strstr(text, b)) {
            free(found);
            found = text;
        } else {
            free(text);
        }
    }
    closedir(d);
    return found;
}

static char *await_mail(const char *a, const char *b)
{
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    char *m;
    while (!(m = mail_with(a, b)) && ew_mono_ns() < end)
        usleep(100000);
    if (!m) fail_msg("no mail with %s and %s", a, b);
    return m;
}

/* ---- searching every byte ------------------------------------------------------------------ */

static const char *const *g_needles;
static char g_found[2048];
static int g_files;

static void found(const char *where, const char *needle)
{
    size_t len = strlen(g_found);
    snprintf(g_found + len, sizeof g_found - len, "%s%s in %s", len ? "; " : "", needle, where);
}

static void search_bytes(const char *where, const char *data, size_t len)
{
    for (const char *const *n = g_needles; *n; n++)
        if (memmem(data, len, *n, strlen(*n))) found(where, *n);
}

static int search_file(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)ftw;
    if (flag != FTW_F || !S_ISREG(st->st_mode)) return 0;
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot read %s", path);
    char *data = malloc((size_t)st->st_size + 1);
    assert_non_null(data);
    size_t n = fread(data, 1, (size_t)st->st_size, f);
    fclose(f);
    search_bytes(path, data, n);
    free(data);
    g_files++;
    return 0;
}

#ifdef EW_HAVE_REDIS
/* Every entry of every stream (and every other key) of the deployment's namespace. */
static void search_redis(const char *ns)
{
    char host[128];
    int port;
    if (sscanf(ew_test_server_url("redis"), "redis://%127[^:]:%d", host, &port) != 2)
        fail_msg("redis url %s", ew_test_server_url("redis"));
    redisContext *c = redisConnect(host, port);
    assert_true(c && !c->err);
    redisReply *keys = redisCommand(c, "KEYS %s:*", ns);
    assert_true(keys && keys->type == REDIS_REPLY_ARRAY);
    if (keys->elements == 0) fail_msg("no Redis keys under %s: the search would prove nothing", ns);
    for (size_t i = 0; i < keys->elements; i++) {
        const char *key = keys->element[i]->str;
        redisReply *t = redisCommand(c, "TYPE %s", key);
        bool stream = t && t->str && strcmp(t->str, "stream") == 0;
        freeReplyObject(t);
        if (!stream) continue;
        redisReply *r = redisCommand(c, "XRANGE %s - +", key);
        assert_true(r && r->type == REDIS_REPLY_ARRAY);
        for (size_t j = 0; j < r->elements; j++) {
            redisReply *fields = r->element[j]->element[1];
            for (size_t k = 0; k < fields->elements; k++)
                search_bytes(key, fields->element[k]->str, fields->element[k]->len);
        }
        freeReplyObject(r);
    }
    freeReplyObject(keys);
    redisFree(c);
}
#endif

#ifdef EW_HAVE_KAFKA
/* Every record of every topic of the deployment, from the start of each partition. */
static void search_kafka(const char *ns)
{
    char errstr[512], group[64], prefix[64];
    snprintf(group, sizeof group, "%s-search", ns);
    snprintf(prefix, sizeof prefix, "%s.", ns);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", ew_test_server_url("kafka"), errstr,
                          sizeof errstr) ||
        rd_kafka_conf_set(conf, "group.id", group, errstr, sizeof errstr) ||
        rd_kafka_conf_set(conf, "enable.partition.eof", "true", errstr, sizeof errstr) ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, sizeof errstr))
        fail_msg("kafka: %s", errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!rk) fail_msg("kafka: %s", errstr);
    const struct rd_kafka_metadata *md;
    assert_int_equal(rd_kafka_metadata(rk, 1, NULL, &md, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(64);
    for (int i = 0; i < md->topic_cnt; i++) {
        if (strncmp(md->topics[i].topic, prefix, strlen(prefix)) != 0) continue;
        for (int p = 0; p < md->topics[i].partition_cnt; p++)
            rd_kafka_topic_partition_list_add(parts, md->topics[i].topic,
                                              md->topics[i].partitions[p].id)
                ->offset = RD_KAFKA_OFFSET_BEGINNING;
    }
    rd_kafka_metadata_destroy(md);
    int nparts = parts->cnt, eofs = 0;
    long records = 0;
    if (nparts == 0) fail_msg("no Kafka topics under %s: the search would prove nothing", prefix);
    assert_int_equal(rd_kafka_assign(rk, parts), RD_KAFKA_RESP_ERR_NO_ERROR);
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    while (eofs < nparts && ew_mono_ns() < end) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
        if (!m) continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            eofs++;
        } else if (!m->err) {
            search_bytes(rd_kafka_topic_name(m->rkt), m->payload, m->len);
            rd_kafka_headers_t *h = NULL;
            const char *name;
            const void *v;
            size_t vlen;
            if (!rd_kafka_message_headers(m, &h))
                for (size_t i = 0; !rd_kafka_header_get_all(h, i, &name, &v, &vlen); i++)
                    if (v) search_bytes(rd_kafka_topic_name(m->rkt), v, vlen);
            records++;
        }
        rd_kafka_message_destroy(m);
    }
    if (eofs < nparts) fail_msg("kafka: read %d of %d partitions to their end", eofs, nparts);
    if (records == 0) fail_msg("no Kafka records under %s: the search would prove nothing", prefix);
    print_message("kafka: %ld records in %d partitions searched\n", records, nparts);
    rd_kafka_topic_partition_list_destroy(parts);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
}
#endif

#ifdef EW_HAVE_RABBITMQ
/* Every message waiting in the queue of each subscriber group of the deployment (services and
 * sagas), read without acknowledging it: it stays where it was. */
static void search_rabbitmq(const char *ns)
{
    char url[256];
    snprintf(url, sizeof url, "%s", ew_test_server_url("rabbitmq"));
    struct amqp_connection_info ci;
    assert_int_equal(amqp_parse_url(url, &ci), AMQP_STATUS_OK);
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(c);
    assert_int_equal(amqp_socket_open(sock, ci.host, ci.port), AMQP_STATUS_OK);
    const char *vhost = ci.vhost && *ci.vhost ? ci.vhost : "/"; /* "amqp://h:p/" names "/" */
    amqp_rpc_reply_t r =
        amqp_login(c, vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, ci.user, ci.password);
    assert_int_equal(r.reply_type, AMQP_RESPONSE_NORMAL);
    static const char *const groups[] = {
        "auth-service",   "user-service",          "notification-service", "analytics-service",
        "export-service", "saga.UserRegistration", "saga.UserDeletion",    "saga.PasswordReset"};
    int queues = 0;
    long messages = 0;
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
        char q[128];
        snprintf(q, sizeof q, "%s.%s", ns, groups[g]);
        amqp_channel_open(c, 1);
        assert_int_equal(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
        amqp_queue_declare(c, 1, amqp_cstring_bytes(q), 1, 0, 0, 0, amqp_empty_table);
        if (amqp_get_rpc_reply(c).reply_type != AMQP_RESPONSE_NORMAL) {
            amqp_channel_close_ok_t ok = {0}; /* no such queue: the broker closed the channel */
            amqp_send_method(c, 1, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
            continue;
        }
        queues++;
        for (;;) {
            r = amqp_basic_get(c, 1, amqp_cstring_bytes(q), 0);
            assert_int_equal(r.reply_type, AMQP_RESPONSE_NORMAL);
            if (r.reply.id != AMQP_BASIC_GET_OK_METHOD) break;
            amqp_message_t m;
            assert_int_equal(amqp_read_message(c, 1, &m, 0).reply_type, AMQP_RESPONSE_NORMAL);
            search_bytes(q, m.body.bytes, m.body.len);
            for (int h = 0; (m.properties._flags & AMQP_BASIC_HEADERS_FLAG) &&
                            h < m.properties.headers.num_entries;
                 h++) {
                amqp_field_value_t *v = &m.properties.headers.entries[h].value;
                if (v->kind == AMQP_FIELD_KIND_UTF8 || v->kind == AMQP_FIELD_KIND_BYTES)
                    search_bytes(q, v->value.bytes.bytes, v->value.bytes.len);
            }
            amqp_destroy_message(&m);
            messages++;
        }
        amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS); /* what was read goes back, unacked */
    }
    if (queues < NSERVICES) fail_msg("rabbitmq: %d of the services' queues found", queues);
    print_message("rabbitmq: %ld waiting messages in %d queues searched\n", messages, queues);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
}
#endif

/* Searches every file under the run folder, and the broker where the test can read it; fails
 * naming each place that holds a needle. */
static void nothing_anywhere(const char *backend, const char *ns, const char *const *needles,
                             const char *when)
{
    g_needles = needles;
    g_found[0] = '\0';
    g_files = 0;
    assert_int_equal(nftw(".", search_file, 32, FTW_PHYS), 0);
    assert_true(g_files > NSERVICES); /* the databases at least */
#ifdef EW_HAVE_REDIS
    if (strcmp(backend, "redis") == 0) search_redis(ns);
#endif
#ifdef EW_HAVE_KAFKA
    if (strcmp(backend, "kafka") == 0) search_kafka(ns);
#endif
#ifdef EW_HAVE_RABBITMQ
    if (strcmp(backend, "rabbitmq") == 0) search_rabbitmq(ns);
#endif
    (void)backend, (void)ns;
    if (g_found[0]) fail_msg("%s, the user's data is still readable: %s", when, g_found);
    print_message("%s: %d files searched, nothing of the user found\n", when, g_files);
}

/* The service's chain holds its user.data_erased of the user, by ids and counts: the row that
 * named the user among what went, the request's id, the tombstone. */
static void erasure_recorded(const char *service, const char *user, const char *request)
{
    static const struct {
        const char *service, *table;
    } main_rows[] = {
        {"auth-service", "\"auth_users\":1"},
        {"user-service", "\"user_profiles\":1"},
        {"notification-service", "\"notification_users\":1"},
        {"analytics-service", "\"analytics_users\":1"},
        {"export-service", "\"export_requests\":1"},
    };
    char args[256], actor[96], req[96];
    snprintf(args, sizeof args, "audit list --service %s --subject %s", service, user);
    char *chain = await_ewctl(args, "\"action\":\"user.data_erased\"");
    snprintf(actor, sizeof actor, "\"actor\":\"service:%s\",\"action\":\"user.data_erased\"",
             service);
    snprintf(req, sizeof req, "\"request_id\":\"%s\"", request);
    if (!strstr(chain, actor)) fail_msg("%s: no erasure by the service: %s", service, chain);
    if (!strstr(chain, req)) fail_msg("%s: not the request %s: %s", service, request, chain);
    for (size_t i = 0; i < sizeof main_rows / sizeof main_rows[0]; i++)
        if (strcmp(main_rows[i].service, service) == 0 && !strstr(chain, main_rows[i].table))
            fail_msg("%s: %s not in %s", service, main_rows[i].table, chain);
    if (!strstr(chain, "\"tombstone\":true")) fail_msg("%s: no tombstone in %s", service, chain);
    free(chain);
}

/* ---- the case -------------------------------------------------------------------------------- */

/* KEY_STORE_URL of the case when its key store is on PostgreSQL (the case's database), or NULL. */
static char *g_pg_keys;

/* The user's wrapped data key in the PostgreSQL key store, as bytes into w (72): false when the
 * row holds none (a tombstone, or no row). */
static bool pg_wrapped_key(const char *user, unsigned char w[72])
{
    char *hex;
    if (ew_test_pg_value(g_pg_keys,
                         "SELECT encode(wrapped, 'hex') FROM key_store.subject_keys WHERE "
                         "subject = $1",
                         user, &hex))
        fail_msg("the key store cannot be read");
    if (!hex) return false;
    assert_int_equal(strlen(hex), 144);
    for (int i = 0; i < 72; i++)
        sscanf(hex + 2 * i, "%2hhx", &w[i]);
    free(hex);
    return true;
}

static void erasure_on(const char *backend)
{
    sys s;
    if (!sys_up(&s, backend)) {
        skip();
        return;
    }
    char user[EW_UUID_LEN + 1], name[32], email[64], args[256], path[256], body[256];
    snprintf(name, sizeof name, "zoe%lld", (long long)(ew_now_us() % 1000000));
    snprintf(email, sizeof email, "%s@example.org", name);

    /* a user with a login, an export and a password reset */
    snprintf(body, sizeof body,
             "{\"username\":\"%s\",\"email\":\"%s\",\"password\":\"first password\"}", name, email);
    http_result r = call(&s, "auth-service", "POST", "/auth/register", body);
    assert_int_equal(r.status, 201);
    member(&r, "user_id", user, sizeof user);
    http_result_free(&r);
    snprintf(body, sizeof body, "{\"username\":\"%s\",\"password\":\"first password\"}", name);
    r = call(&s, "auth-service", "POST", "/auth/login", body);
    assert_int_equal(r.status, 200);
    member(&r, "token", s.token, sizeof s.token);
    http_result_free(&r);
    snprintf(args, sizeof args, "saga show --type UserRegistration --key %s", user);
    free(await_ewctl(args, "\"status\":\"completed\""));
    snprintf(path, sizeof path, "/users/%s/profile", user);
    free(await_http(&s, "user-service", path, user));
    unsigned char wrapped[72];
    if (g_pg_keys) {
        if (!pg_wrapped_key(user, wrapped))
            fail_msg("the user's data key is not in the PostgreSQL key store");
        if (ew_test_pg_files_holding(g_pg_keys, wrapped, sizeof wrapped, NULL, 0) < 1)
            fail_msg("the wrapped key is in no file of the database: the search sees nothing");
    }

    char export_id[EW_UUID_LEN + 1];
    snprintf(body, sizeof body, "{\"user_id\":\"%s\"}", user);
    r = call(&s, "export-service", "POST", "/exports", body);
    assert_int_equal(r.status, 202);
    member(&r, "export_id", export_id, sizeof export_id);
    http_result_free(&r);
    snprintf(path, sizeof path, "/exports/%s", export_id);
    char *status = await_http(&s, "export-service", path, "\"status\":\"completed\"");
    const char *link = strstr(status, "\"download_url\":\"");
    link = link ? strstr(link, "/exports/") : NULL;
    if (!link) fail_msg("no download link: %s", status);
    snprintf(path, sizeof path, "%.*s", (int)strcspn(link, "\""), link);
    free(status);
    char *doc = await_http(&s, "export-service", path, email);
    free(doc);

    snprintf(body, sizeof body, "{\"email\":\"%s\"}", email);
    r = call(&s, "auth-service", "POST", "/auth/password-reset", body);
    assert_int_equal(r.status, 202);
    http_result_free(&r);
    char *mail = await_mail(email, "Reset your password");
    const char *tk = strstr(mail, "new password:");
    if (!tk) fail_msg("no token in the reset mail: %s", mail);
    tk += strlen("new password:");
    tk += strspn(tk, " \r\n");
    char token[128];
    snprintf(token, sizeof token, "%.*s", (int)strcspn(tk, " \r\n&\"<"), tk);
    free(mail);
    assert_true(strlen(token) >= 16);
    snprintf(body, sizeof body, "{\"token\":\"%s\",\"password\":\"second password\"}", token);
    r = call(&s, "auth-service", "POST", "/auth/password-reset/confirm", body);
    if (r.status != 200) fail_msg("confirm: %ld %s", r.status, r.body);
    http_result_free(&r);
    free(await_ewctl("saga list --type PasswordReset --status completed", "\"completed\""));

    /* the erasure */
    s.token[0] = '\0'; /* the reset ended the user's sessions: an admin deletes them */
    snprintf(path, sizeof path, "/auth/users/%s", user);
    r = call(&s, "auth-service", "DELETE", path, NULL);
    if (r.status != 202) fail_msg("delete: %ld %s", r.status, r.body);
    char request[EW_UUID_LEN + 1];
    member(&r, "request_id", request, sizeof request);
    http_result_free(&r);
    snprintf(args, sizeof args, "saga show --type UserDeletion --key %s", request);
    free(await_ewctl(args, "\"status\":\"completed\""));
    /* the shred of the user's data key is in the chain of auth-service, which runs the saga, by
     * the user's id and the saga's */
    snprintf(args, sizeof args, "audit list --service auth-service --subject %s", user);
    char *chain = await_ewctl(args, "\"action\":\"key.shredded\"");
    assert_non_null(
        strstr(chain, "\"actor\":\"service:auth-service\",\"action\":\"key.shredded\""));
    assert_non_null(strstr(chain, "\"saga\":\"UserDeletion\""));
    free(chain);
    /* each service recorded its own erasure in its own chain, in the transaction that deleted */
    for (int i = 0; i < NSERVICES; i++)
        erasure_recorded(services[i], user, request);
    if (g_pg_keys) { /* destroyed, and gone from the server's files */
        unsigned char now[72];
        assert_false(pg_wrapped_key(user, now));
        assert_int_equal(ew_test_pg_files_holding(g_pg_keys, wrapped, sizeof wrapped, NULL, 0), 0);
    }
    down();

    /* the user name is in the email address too: searching for it covers both */
    const char *const needles[] = {name, email, token, NULL};
    nothing_anywhere(backend, s.ns, needles, "after the erasure");

    /* replay everything to everyone, retry every dead letter: nothing comes back */
    up(&s);
    for (int i = 0; i < NSERVICES; i++) {
        snprintf(args, sizeof args, "store replay --from 1 --to-group %s", services[i]);
        char *out, *err;
        if (ew_test_ewctl(args, NULL, &out, &err) != 0) fail_msg("ewctl %s: %s", args, err);
        if (!strstr(out, "\"replayed\":")) fail_msg("ewctl %s: %s", args, out);
        free(out);
        free(err);
    }
    char *out, *err;
    if (ew_test_ewctl("dlq retry --all", NULL, &out, &err) != 0)
        fail_msg("ewctl dlq retry --all: %s", err);
    free(out);
    free(err);
    /* the replay reaches the services: the last event replayed to user-service is handled */
    usleep(3000 * 1000);
    snprintf(path, sizeof path, "/users/%s/profile", user);
    r = call(&s, "user-service", "GET", path, NULL);
    if (r.status != 404) fail_msg("the profile came back: %ld %s", r.status, r.body);
    http_result_free(&r);
    snprintf(path, sizeof path, "/auth/users/%s", user);
    r = call(&s, "auth-service", "GET", path, NULL);
    if (r.status != 404) fail_msg("the account came back: %ld %s", r.status, r.body);
    http_result_free(&r);
    down();
    nothing_anywhere(backend, s.ns, needles, "after a replay and a retry of every dead letter");
    /* every chain holds: the services' and the operator's (the retries above, when there were
     * dead letters) */
    char *out2, *err2;
    if (ew_test_ewctl("audit verify", NULL, &out2, &err2) != 0)
        fail_msg("ewctl audit verify: %s %s", out2, err2);
    assert_null(strstr(out2, "\"ok\":false"));
    for (int i = 0; i < NSERVICES; i++) { /* each service's chain was read and holds */
        char line[96];
        snprintf(line, sizeof line, "{\"service\":\"%s\",\"ok\":true,", services[i]);
        if (!strstr(out2, line)) fail_msg("ewctl audit verify: no %s in %s", line, out2);
    }
    free(out2);
    free(err2);
    sys_remove(&s);
}

static void test_erasure_sqlite(void **state)
{
    erasure_on("sqlite");
}
/* The same with every key of the deployment (bus keys, data keys) in a PostgreSQL key store. */
static void test_erasure_sqlite_with_keys_on_postgresql(void **state)
{
    char msg[256];
    if (!(g_pg_keys = ew_test_pg_create(msg, sizeof msg))) fail_msg("%s", msg);
    setenv("KEY_STORE_URL", g_pg_keys, 1);
    erasure_on("sqlite");
    unsetenv("KEY_STORE_URL");
    ew_test_pg_drop(g_pg_keys);
    g_pg_keys = NULL;
}
static void test_erasure_redis(void **state)
{
    erasure_on("redis");
}
static void test_erasure_kafka(void **state)
{
    erasure_on("kafka");
}
static void test_erasure_rabbitmq(void **state)
{
    erasure_on("rabbitmq");
}

static int stop_leftovers(void **state)
{
    char cwd[256];
    if (getcwd(cwd, sizeof cwd) && strncmp(cwd, "/tmp/ew-erase-", 14) == 0) {
        char *out, *err;
        ew_test_ewctl("down --timeout 10", NULL, &out, &err);
        free(out);
        free(err);
    }
    return 0;
}

#define CASE(f) cmocka_unit_test_teardown(f, stop_leftovers)
static const struct CMUnitTest tests[] = {
    CASE(test_erasure_sqlite),   CASE(test_erasure_sqlite_with_keys_on_postgresql),
    CASE(test_erasure_redis),    CASE(test_erasure_kafka),
    CASE(test_erasure_rabbitmq),
};

EW_TEST_MAIN(tests)
