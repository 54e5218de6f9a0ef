/* eventwire — the receive path (receive.h): decode, verify, decrypt, count, or dead letter under
 * the one policy, for every backend. */
#include "bus/receive.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include "bus/backend.h"
#include "bus/wire.h"
#include "core/arena.h"
#include "core/buf.h"
#include "core/json.h"
#include "eventwire/clock.h"
#include "security/keyring.h"

/* While the dead letter sink refuses: the first wait, doubling up to the longest, each spread
 * by jitter; the stop callback is asked at least every STOP_CHECK_MS. A refusal is logged the
 * first time and then every LOG_EVERY attempts. */
#define SINK_BACKOFF_MIN_MS 50
#define SINK_BACKOFF_MAX_MS 2000
#define STOP_CHECK_MS 50
#define LOG_EVERY 10
#define DECODE_HANDLER "<decode>" /* the handler named by dead letters of this path */
#define ATTR_MAX 200              /* longest id or type read out of an undecodable message */

/* ---- the hook points ------------------------------------------------------------------------
 *
 * Every received event passes these three, in this order, once: after decoding (or as handed
 * over by the memory bus) and before the dispatcher sees it. Each returns 0 to go on, or an
 * EW_E… code with err saying why the event is refused; a refused event is dead-lettered under
 * the one policy (receive.h) and never handled. Later work fills them in here, once, for every
 * backend. */

/* EW__RECV_HOOK_VERIFY: the event's authenticity — the publishing service's MAC or Ed25519
 * signature, and whether the access policy lets its source publish its type (DESIGN.md,
 * "Security", docs/bus-auth.md). EW_EAUTH or EW_EPERM with the reason; nothing to check on the
 * memory bus or a bus without ew_bus_options.auth. */
static int hook_verify(ew_bus *bus, const ew_event *ev, ew_error *err)
{
    ew_evauth *a = ew__bus_auth(bus);
    return a ? ew_evauth_verify(a, ev, err) : 0;
}

int ew__recv_verify(ew_bus *bus, const ew_event *ev, ew_error *err)
{
    return hook_verify(bus, ev, err);
}

/* EW__RECV_HOOK_DECRYPT: fields encrypted with their subject's key become readable, in a new
 * event put into *replaced (one reference, the caller's); *replaced stays NULL when ev is fine
 * as it is. Decoding left the encrypted fields unchecked: the plaintext is checked here, as
 * ew_event_new() checks it, so validation always runs on plaintext. A subject whose key was
 * destroyed gives an event marked erased (ew_event_erased), never an error; ciphertext that does
 * not authenticate (tampered) is refused with EW_ECRYPTO. A deletion that completed makes this
 * process forget the subject's cached key at once. */
static int hook_decrypt(ew_bus *bus, const ew_event *ev, ew_event **replaced, ew_error *err)
{
    ew__keyring *keys = ew__bus_keyring(bus);
    const ew_user_deletion_completed *done = ew_user_deletion_completed_data(ev);
    if (keys && done) ew__keyring_forget(keys, done->user_id);
    if (!ew_event_encrypted(ev) || ew__bus_keeps_encrypted(bus)) return 0;
    if (!keys)
        return ew_error_set(err, EW_ECRYPTO,
                            "%s %s holds encrypted fields and EVENT_ENCRYPTION=off here: it "
                            "cannot be read",
                            ew_event_type(ev), ew_event_id(ev));
    ew_event *plain;
    int rc = ew__keyring_unseal(keys, ev, &plain, err);
    if (rc) return rc;
    *replaced = plain;
    return 0;
}

int ew__recv_decrypt(ew_bus *bus, const ew_event *ev, ew_event **replaced, ew_error *err)
{
    *replaced = NULL;
    return hook_decrypt(bus, ev, replaced, err);
}

/* EW__RECV_HOOK_COUNT: the metrics of what was received — accepted (ev not NULL) or refused
 * (ev NULL when it did not even decode; code is then the reason). Called for every message, so
 * that received = accepted + dead-lettered. No counters yet (ew_bus_stats has none for this). */
static void hook_count(ew_bus *bus, const ew_event *ev, int code)
{
    (void)bus, (void)ev, (void)code;
}

int ew__recv_accept(ew_bus *bus, const ew_event *ev, ew_event **replaced, ew_error *err)
{
    *replaced = NULL;
    int rc = hook_verify(bus, ev, err);
    if (!rc) rc = hook_decrypt(bus, ev, replaced, err);
    hook_count(bus, rc ? NULL : *replaced ? *replaced : ev, rc);
    return rc;
}

/* ---- dead letters ---------------------------------------------------------------------------- */

/* Waits ms, asking stop every STOP_CHECK_MS. True when stop said so. */
static bool sleep_unless_stopped(int ms, ew__recv_stop_fn stop, void *ud)
{
    while (ms > 0) {
        if (stop && stop(ud)) return true;
        int step = ms < STOP_CHECK_MS ? ms : STOP_CHECK_MS;
        struct timespec ts = {0, (long)step * 1000000};
        nanosleep(&ts, NULL);
        ms -= step;
    }
    return stop && stop(ud);
}

/* Puts dl into the bus's sink, trying again with back-off while it refuses. True once it is
 * there; false when stop said so first. */
static bool put_dead_letter(ew_bus *bus, const ew_dead_letter *dl, const char *where,
                            ew__recv_stop_fn stop, void *ud)
{
    int wait = 0;
    for (int attempt = 1;; attempt++) {
        ew_error e = {0};
        if (ew__bus_dead_letter(bus, dl, &e) == 0) {
            ew__bus_log(bus, EW_LOG_WARN, "%s: group %s: %s %s dead-lettered: %s", where,
                        dl->group ? dl->group : "-", dl->event_type ? dl->event_type : "?",
                        dl->event_id ? dl->event_id : "(no id)", dl->error);
            return true;
        }
        wait = ew__backoff_next(wait, SINK_BACKOFF_MIN_MS, SINK_BACKOFF_MAX_MS);
        if (attempt == 1 || attempt % LOG_EVERY == 0)
            ew__bus_log(bus, EW_LOG_ERROR,
                        "%s: group %s: the dead letter sink refused a message that cannot be "
                        "handled (%s), attempt %d: %s; it stays unacknowledged, trying again",
                        where, dl->group ? dl->group : "-", dl->error, attempt, e.msg);
        if (sleep_unless_stopped(ew__jitter_ms(wait), stop, ud)) return false;
    }
}

/* Copies a JSON string member of root into buf when it is short, valid and present. */
static const char *member(const ew_json *root, const char *name, char *buf, size_t cap)
{
    const ew_json *v = ew_json_get(root, name);
    if (!v || v->kind != EW_JSON_STRING || v->len == 0 || v->len >= cap || v->len > ATTR_MAX)
        return NULL;
    memcpy(buf, v->str, v->len + 1);
    return buf;
}

/* What a dead letter can say of a message that did not decode: its id and type when it is JSON
 * with them (the JSON as received, or a binary-mode message rebuilt as JSON). */
static void readable_attrs(const char *json, size_t len, size_t max_bytes, char *id, char *type,
                           size_t cap)
{
    id[0] = type[0] = '\0';
    if (!json || !len || (max_bytes && len > max_bytes)) return;
    char abuf[2048];
    ew_arena a;
    ew_arena_init(&a, abuf, sizeof abuf);
    ew_json *root;
    ew_json_limits lim = {.max_bytes = max_bytes, .max_depth = EW__WIRE_JSON_DEPTH};
    if (ew_json_parse(&root, json, len, &lim, &a, NULL) == 0 && root->kind == EW_JSON_OBJECT) {
        if (!member(root, "id", id, cap)) id[0] = '\0';
        if (!member(root, "type", type, cap)) type[0] = '\0';
    }
    ew_arena_release(&a);
}

/* The transport's name: its metadata's first word ("kafka topic=..." → "kafka"). */
static void where_of(const char *transport, char *out, size_t cap)
{
    size_t n = transport ? strcspn(transport, " ") : 0;
    snprintf(out, cap, "%.*s", n ? (int)n : 7, n ? transport : "receive");
}

ew__recv_result ew__receive(ew_bus *bus, const ew__recv_msg *m, size_t max_bytes,
                            ew__recv_stop_fn stop, void *stop_ud, ew_event **out)
{
    *out = NULL;
    ew_event *ev = NULL;
    ew_error e = {0};
    ew_buf json;
    ew_buf_init(&json);
    int code;
    if (m->predecoded) {
        code = m->event ? 0 : m->error ? m->error : EW_EINVAL;
        if (m->event)
            ev = ew_event_ref(m->event);
        else
            ew_error_set(&e, code, "%s", m->error_msg ? m->error_msg : "cannot be decoded");
    } else {
        ew_decode_opts o = {.max_bytes = max_bytes};
        code = ew__binding_decode(&m->wire, &o, &ev, &json, &e);
    }
    if (code == 0) {
        ew_event *repl;
        if (!(code = ew__recv_accept(bus, ev, &repl, &e))) {
            ew_buf_release(&json);
            if (repl) {
                ew_event_unref(ev);
                ev = repl;
            }
            *out = ev;
            return EW__RECV_EVENT;
        }
        bool kept = ew__recv_refused(bus, ev, m->group, m->transport, code, e.msg, stop, stop_ud);
        ew_event_unref(ev);
        ew_buf_release(&json);
        return kept ? EW__RECV_DEAD : EW__RECV_STOPPED;
    }
    hook_count(bus, NULL, code);

    /* The dead letter keeps the message as received; a binary-mode message as the JSON the
     * binding rebuilt it into (its attributes were headers), so that it can be read and retried. */
    const char *payload = m->wire.body ? m->wire.body : "";
    size_t payload_len = m->wire.body_len;
    if (json.len && !json.oom) {
        payload = json.data;
        payload_len = json.len;
    }
    char id[ATTR_MAX + 1], type[ATTR_MAX + 1], error[600], where[32];
    readable_attrs(payload, payload_len, max_bytes, id, type, sizeof id);
    snprintf(error, sizeof error, "%s: %s", ew_err_name(code), e.msg);
    where_of(m->transport, where, sizeof where);
    int64_t now = ew_now_us();
    ew_dead_letter dl = {
        .event = NULL,
        .payload = payload,
        .payload_len = payload_len,
        .event_id = id[0]                       ? id
                    : m->id_hint && *m->id_hint ? m->id_hint
                                                : NULL,
        .event_type = type[0] ? type : m->type_hint,
        .group = m->group,
        .handler = DECODE_HANDLER,
        .error = error,
        .attempts = 1,
        .first_failed_us = now,
        .last_failed_us = now,
        .transport = m->transport,
    };
    bool kept = put_dead_letter(bus, &dl, where, stop, stop_ud);
    ew_buf_release(&json);
    return kept ? EW__RECV_DEAD : EW__RECV_STOPPED;
}

bool ew__recv_refused(ew_bus *bus, const ew_event *ev, const char *group, const char *transport,
                      int code, const char *why, ew__recv_stop_fn stop, void *stop_ud)
{
    char error[600], where[32];
    snprintf(error, sizeof error, "%s: %s", ew_err_name(code), why ? why : "refused");
    where_of(transport, where, sizeof where);
    int64_t now = ew_now_us();
    ew_dead_letter dl = {
        .event = ev,
        .event_id = ew_event_id(ev),
        .event_type = ew_event_type(ev),
        .group = group,
        .handler = DECODE_HANDLER,
        .error = error,
        .attempts = 1,
        .first_failed_us = now,
        .last_failed_us = now,
        .transport = transport,
    };
    return put_dead_letter(bus, &dl, where, stop, stop_ud);
}
