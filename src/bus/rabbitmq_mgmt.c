/* eventwire — the RabbitMQ backend and the broker's management plugin (RABBITMQ_MANAGEMENT_URL):
 * a queue's ready and unacknowledged messages from GET /api/queues/VHOST/QUEUE, over libcurl.
 * AMQP tells only the ready count (a passive queue.declare); the messages delivered to a consumer
 * and not yet acknowledged are what the management API adds. Its figures are the plugin's
 * statistics, collected every collect_statistics_interval (5 s by default), not live counts.
 *
 * The credentials never travel in a URL that could reach a message: the base URL is kept without
 * user info and they are handed to libcurl apart (HTTP basic authentication). */
#ifdef EW_HAVE_RABBITMQ

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bus/rabbitmq.h"
#include "core/arena.h"
#include "core/buf.h"
#include "core/json.h"

#define MGMT_MAX_BODY (1 << 20) /* a queue's figures are some hundred bytes */
#define MGMT_TIMEOUT_MS 10000   /* on top of the connect timeout */

static void wipe_free(char *s)
{
    if (!s) return;
    explicit_bzero(s, strlen(s));
    free(s);
}

void ew__mq_mgmt_free(rmq *r)
{
    free(r->mgmt_base);
    wipe_free(r->mgmt_user);
    wipe_free(r->mgmt_pass);
    r->mgmt_base = r->mgmt_user = r->mgmt_pass = NULL;
}

/* Parses url (RABBITMQ_MANAGEMENT_URL; "" leaves the API unused): http:// or https://, a host,
 * an optional port and path prefix; user and password from its user info, else RABBITMQ_URL's
 * (r->ci, parsed before). 0, or EW_ECONFIG naming the setting, the URL shown without its
 * password, and what is wrong; EW_ENOMEM. */
int ew__mq_mgmt_settings(rmq *r, const char *url, ew_error *err)
{
    if (!url || !*url) return 0;
    ew_url_redact(url, r->mgmt_shown, sizeof r->mgmt_shown);
    curl_global_init(CURL_GLOBAL_DEFAULT); /* thread-safe in the libcurl we build with */
    CURLU *u = curl_url();
    if (!u) return ew_error_set(err, EW_ENOMEM, "out of memory");
    int rc = 0;
    char *scheme = NULL, *host = NULL, *user = NULL, *pass = NULL, *base = NULL;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)) {
        rc = ew_error_set(err, EW_ECONFIG,
                          "RABBITMQ_MANAGEMENT_URL: '%s' is not an http:// or https:// URL "
                          "(http://user:password@host:15672)",
                          r->mgmt_shown);
        goto out;
    }
    if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !*host) {
        rc = ew_error_set(err, EW_ECONFIG, "RABBITMQ_MANAGEMENT_URL: '%s' names no host",
                          r->mgmt_shown);
        goto out;
    }
    char *q = NULL;
    if (curl_url_get(u, CURLUPART_QUERY, &q, 0) == CURLUE_OK) {
        curl_free(q);
        rc = ew_error_set(err, EW_ECONFIG,
                          "RABBITMQ_MANAGEMENT_URL: '%s' has a query; give the API's base URL",
                          r->mgmt_shown);
        goto out;
    }
    if (curl_url_get(u, CURLUPART_USER, &user, CURLU_URLDECODE) != CURLUE_OK) user = NULL;
    if (curl_url_get(u, CURLUPART_PASSWORD, &pass, CURLU_URLDECODE) != CURLUE_OK) pass = NULL;
    curl_url_set(u, CURLUPART_USER, NULL, 0);
    curl_url_set(u, CURLUPART_PASSWORD, NULL, 0);
    curl_url_set(u, CURLUPART_FRAGMENT, NULL, 0);
    if (curl_url_get(u, CURLUPART_URL, &base, 0) != CURLUE_OK) {
        rc = ew_error_set(err, EW_ECONFIG, "RABBITMQ_MANAGEMENT_URL: '%s' cannot be used",
                          r->mgmt_shown);
        goto out;
    }
    size_t n = strlen(base);
    while (n && base[n - 1] == '/') /* the paths below start with one */
        base[--n] = '\0';
    r->mgmt_base = strdup(base);
    r->mgmt_user = strdup(user ? user : r->ci.user);
    r->mgmt_pass = strdup(user ? (pass ? pass : "") : r->ci.password);
    if (!r->mgmt_base || !r->mgmt_user || !r->mgmt_pass) {
        ew__mq_mgmt_free(r);
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    }
out:
    if (pass) explicit_bzero(pass, strlen(pass));
    curl_free(scheme);
    curl_free(host);
    curl_free(user);
    curl_free(pass);
    curl_free(base);
    curl_url_cleanup(u);
    return rc;
}

static size_t collect(char *p, size_t size, size_t n, void *ud)
{
    ew_buf *b = ud;
    if (b->len + n > MGMT_MAX_BODY) return 0; /* libcurl stops: CURLE_WRITE_ERROR */
    ew_buf_append(b, p, n);
    return b->oom ? 0 : n;
}

/* A figure of the answer: 0, or -1 when it is missing (the plugin has not collected the queue's
 * statistics yet) or not a count. */
static int count_of(const ew_json *doc, const char *name, uint64_t *out)
{
    const ew_json *v = ew_json_get(doc, name);
    if (!v || v->kind != EW_JSON_NUMBER || !v->is_int || v->i64 < 0) return -1;
    *out = (uint64_t)v->i64;
    return 0;
}

/* The ready and unacknowledged messages of queue in r's vhost, as the management API last
 * collected them. Thread-safe (a libcurl handle per call). 0; EW_ENOTFOUND when the broker has
 * no such queue (or vhost); EW_EAUTH when the API refuses the credentials; EW_EAGAIN while the
 * plugin has no statistics for the queue yet (just declared); EW_ECONNECT, EW_ETIMEDOUT, EW_EIO
 * otherwise. Messages show the URL without credentials. */
int ew__mq_mgmt_queue(rmq *r, const char *queue, uint64_t *ready, uint64_t *unacked, ew_error *err)
{
    CURL *c = curl_easy_init();
    if (!c) return ew_error_set(err, EW_ENOMEM, "out of memory");
    int rc = 0;
    ew_buf body, url;
    ew_buf_init(&body);
    ew_buf_init(&url);
    char *ev = curl_easy_escape(c, r->vhost, 0), *eq = curl_easy_escape(c, queue, 0);
    if (!ev || !eq) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        goto out;
    }
    ew_buf_printf(&url, "%s/api/queues/%s/%s?columns=messages_ready,messages_unacknowledged",
                  r->mgmt_base, ev, eq);
    if (url.oom) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        goto out;
    }
    char why[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, url.data);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
    curl_easy_setopt(c, CURLOPT_USERNAME, r->mgmt_user);
    curl_easy_setopt(c, CURLOPT_PASSWORD, r->mgmt_pass);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)r->connect_ms);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)r->connect_ms + MGMT_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, why);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
    /* https://: the broker's certificate authorities and client certificate, as for amqps:// */
    if (*r->tls_ca) curl_easy_setopt(c, CURLOPT_CAINFO, r->tls_ca);
    if (*r->tls_cert) {
        curl_easy_setopt(c, CURLOPT_SSLCERT, r->tls_cert);
        curl_easy_setopt(c, CURLOPT_SSLKEY, r->tls_key);
    }
    CURLcode cc = curl_easy_perform(c);
    long status = 0;
    if (cc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (cc == CURLE_WRITE_ERROR) {
        rc = ew_error_set(err, EW_EIO,
                          "rabbitmq management API %s: the answer for queue %s is "
                          "larger than %d bytes",
                          r->mgmt_shown, queue, MGMT_MAX_BODY);
        goto out;
    }
    if (cc != CURLE_OK) {
        rc = ew_error_set(err, cc == CURLE_OPERATION_TIMEDOUT ? EW_ETIMEDOUT : EW_ECONNECT,
                          "rabbitmq management API %s: %s", r->mgmt_shown,
                          *why ? why : curl_easy_strerror(cc));
        goto out;
    }
    if (status == 404) {
        rc = ew_error_set(err, EW_ENOTFOUND, "rabbitmq bus: no queue %s in vhost %s (%s)", queue,
                          r->vhost, r->mgmt_shown);
        goto out;
    }
    if (status == 401 || status == 403) {
        rc = ew_error_set(err, EW_EAUTH,
                          "rabbitmq management API %s refused user %s (HTTP %ld): check the "
                          "credentials of RABBITMQ_MANAGEMENT_URL (or RABBITMQ_URL's) and the "
                          "user's management tag",
                          r->mgmt_shown, r->mgmt_user, status);
        goto out;
    }
    if (status != 200) {
        rc = ew_error_set(err, EW_EIO, "rabbitmq management API %s answered HTTP %ld for queue %s",
                          r->mgmt_shown, status, queue);
        goto out;
    }
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    ew_json *doc;
    ew_error je = {0};
    /* Until the plugin has collected the queue's statistics once, the figures are missing, and
     * with ?columns= the answer is an empty list: both are "not yet". */
    if (ew_json_parse(&doc, body.data ? body.data : "", body.len, NULL, &a, &je) ||
        (doc->kind != EW_JSON_OBJECT && !(doc->kind == EW_JSON_ARRAY && doc->count == 0))) {
        rc = ew_error_set(err, EW_EIO,
                          "rabbitmq management API %s: the answer for queue %s is not a JSON "
                          "object%s%s",
                          r->mgmt_shown, queue, je.code ? ": " : "", je.code ? je.msg : "");
    } else if (doc->kind != EW_JSON_OBJECT || count_of(doc, "messages_ready", ready) ||
               count_of(doc, "messages_unacknowledged", unacked)) {
        rc = ew_error_set(err, EW_EAGAIN,
                          "rabbitmq management API %s has no message counts for queue %s yet "
                          "(collected every collect_statistics_interval)",
                          r->mgmt_shown, queue);
    }
    ew_arena_release(&a);
out:
    curl_free(ev);
    curl_free(eq);
    ew_buf_release(&url);
    ew_buf_release(&body);
    curl_easy_cleanup(c);
    return rc;
}

#else
typedef int ew__rabbitmq_mgmt_unused;
#endif
