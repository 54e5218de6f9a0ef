/* Benchmark of the CloudEvents codec: encode, decode and the round trip of a user.registered
 * event, beside a baseline in the same run: the same document through the bare JSON parser and
 * writer, without the envelope, catalog and validation work. The round trip is measured as the
 * stores make it, with its personal fields encrypted (EVENT_ENCRYPTION=on, the default: sealed
 * while encoded, opened and checked while decoded), beside the same without encryption and the
 * former encrypted path (seal, encode, decode, unseal: two events built per side). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "core/json.h"
#include "eventwire/clock.h"
#include "eventwire/event.h"
#include "eventwire/id.h"
#include "security/keyring.h"

static double rate(long n, int64_t ns)
{
    return (double)n / ((double)ns / 1e9);
}

/* This thread's CPU time: what a loaded machine's wall clock hides. */
static int64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The round trips, each its own function so that a profiler can count one alone
 * (valgrind --tool=callgrind --toggle-collect=roundtrip_sealed, with BENCH_CODEC_N). */
static __attribute__((noinline)) void roundtrip_plain(const ew_event *ev, long n)
{
    for (long i = 0; i < n; i++) {
        char *s;
        size_t sl;
        ew_event *e2;
        ew_event_encode(ev, &s, &sl, NULL);
        if (ew_event_decode(&e2, s, sl, NULL, NULL)) abort();
        ew_event_unref(e2);
        free(s);
    }
}

static __attribute__((noinline)) void roundtrip_sealed(ew__keyring *keys, const ew_event *ev,
                                                       long n)
{
    for (long i = 0; i < n; i++) {
        char *s;
        size_t sl;
        ew_event *sealed, *e2, *plain;
        if (ew__keyring_seal(keys, ev, &sealed, NULL)) abort();
        ew_event_encode(sealed, &s, &sl, NULL);
        if (ew_event_decode(&e2, s, sl, NULL, NULL)) abort();
        if (ew__keyring_unseal(keys, e2, &plain, NULL)) abort();
        ew_event_unref(plain);
        ew_event_unref(e2);
        ew_event_unref(sealed);
        free(s);
    }
}

/* The same, as the stores make it since 2026-12-07: sealed while encoded, opened while
 * decoded, one event built per side. */
static __attribute__((noinline)) void roundtrip_fused(ew__keyring *keys, const ew_event *ev, long n)
{
    for (long i = 0; i < n; i++) {
        char *s;
        size_t sl;
        ew_event *plain;
        if (ew__keyring_encode(keys, ev, &s, &sl, NULL)) abort();
        if (ew__keyring_decode(keys, s, sl, NULL, &plain, NULL)) abort();
        ew_event_unref(plain);
        free(s);
    }
}

int main(void)
{
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    const char *roles[] = {"user"};
    ew_user_registered d = {
        .user_id = id, .email = "ada.lovelace@example.com", .username = "ada", .roles = {roles, 1}};
    ew_event *ev;
    ew_error err = {0};
    ew_event_attrs a = {.source = "auth-service",
                        .subject = id,
                        .traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"};
    if (ew_user_registered_new(&ev, &d, &a, &err)) {
        fprintf(stderr, "bench_codec: %s\n", err.msg);
        return 1;
    }
    char *json;
    size_t len;
    ew_event_encode(ev, &json, &len, NULL);
    /* BENCH_CODEC_N: fewer loops, for a run under callgrind */
    const char *nenv = getenv("BENCH_CODEC_N");
    const long n = nenv && atol(nenv) >= 20 ? atol(nenv) : 400000;

    /* baseline: parse the document and write it back, nothing else */
    int64_t t0 = ew_mono_ns();
    ew_buf b;
    ew_buf_init(&b);
    for (long i = 0; i < n; i++) {
        char stack[8192];
        ew_arena ar;
        ew_arena_init(&ar, stack, sizeof stack);
        ew_json *root;
        if (ew_json_parse(&root, json, len, NULL, &ar, &err)) abort();
        ew_buf_reset(&b);
        ew_json_write(&b, root);
        ew_arena_release(&ar);
    }
    double raw = rate(n, ew_mono_ns() - t0);
    ew_buf_release(&b);

    t0 = ew_mono_ns();
    for (long i = 0; i < n; i++) {
        char *s;
        ew_event_encode(ev, &s, NULL, NULL);
        free(s);
    }
    double enc = rate(n, ew_mono_ns() - t0);

    t0 = ew_mono_ns();
    for (long i = 0; i < n; i++) {
        ew_event *e2;
        if (ew_event_decode(&e2, json, len, NULL, &err)) abort();
        ew_event_unref(e2);
    }
    double dec = rate(n, ew_mono_ns() - t0);

    /* encrypted, with a keyring of its own in a scratch folder (its key cached, as in a
     * service) */
    char dir[] = "/tmp/ew-bench-codec-XXXXXX", url[128];
    if (!mkdtemp(dir)) abort();
    snprintf(url, sizeof url, "sqlite:%s/events.db", dir);
    ew_config *cfg;
    ew__keyring *keys;
    if (ew_config_new(&cfg, &err) || ew_config_set(cfg, "EVENT_STORE_URL", url, &err) ||
        ew__keyring_new(&keys, cfg, NULL, &err) || !keys || ew__keyring_load(keys, &err)) {
        fprintf(stderr, "bench_codec: %s\n", err.msg);
        return 1;
    }
    /* the fused path gives back the event, in plaintext */
    {
        char *s;
        size_t sl;
        ew_event *back;
        if (ew__keyring_encode(keys, ev, &s, &sl, &err) ||
            ew__keyring_decode(keys, s, sl, NULL, &back, &err)) {
            fprintf(stderr, "bench_codec: %s\n", err.msg);
            return 1;
        }
        if (!strstr(s, "\"email\":\"ewenc1.") || ew_event_encrypted(back) ||
            !ew_event_equal(back, ev)) {
            fprintf(stderr, "bench_codec: the sealed round trip does not give the event back\n");
            return 1;
        }
        ew_event_unref(back);
        free(s);
    }
    /* The round trips in alternating rounds, so that the machine's load weighs on each alike
     * and their ratios mean something. */
    enum { ROUNDS = 20 };
    int64_t t_plain = 0, t_enc = 0, c_plain = 0, c_enc = 0, c0, t_two = 0, c_two = 0;
    for (int r = 0; r < ROUNDS; r++) {
        c0 = cpu_ns();
        t0 = ew_mono_ns();
        roundtrip_plain(ev, n / ROUNDS);
        t_plain += ew_mono_ns() - t0;
        c_plain += cpu_ns() - c0;
        c0 = cpu_ns();
        t0 = ew_mono_ns();
        roundtrip_fused(keys, ev, n / ROUNDS);
        t_enc += ew_mono_ns() - t0;
        c_enc += cpu_ns() - c0;
        c0 = cpu_ns();
        t0 = ew_mono_ns();
        roundtrip_sealed(keys, ev, n / ROUNDS);
        t_two += ew_mono_ns() - t0;
        c_two += cpu_ns() - c0;
    }
    double rt = rate(n / ROUNDS * ROUNDS, t_plain), rt_enc = rate(n / ROUNDS * ROUNDS, t_enc);
    double ct = rate(n / ROUNDS * ROUNDS, c_plain), ct_enc = rate(n / ROUNDS * ROUNDS, c_enc);
    double rt_two = rate(n / ROUNDS * ROUNDS, t_two), ct_two = rate(n / ROUNDS * ROUNDS, c_two);
    ew__keyring_free(keys);
    ew_config_free(cfg);
    char rm[128];
    snprintf(rm, sizeof rm, "rm -rf %s", dir);
    if (system(rm) != 0) fprintf(stderr, "bench_codec: %s was not removed\n", dir);

    printf("bench: codec.raw_json_roundtrip %.0f events/s\n", raw);
    printf("bench: codec.encode %.0f events/s\n", enc);
    printf("bench: codec.decode %.0f events/s\n", dec);
    printf("bench: codec.roundtrip.plain %.0f events/s ratio=%.2f "
           "baseline=codec.raw_json_roundtrip\n",
           rt, rt / raw);
    printf("bench: codec.roundtrip %.0f events/s ratio=%.2f baseline=codec.roundtrip.plain\n",
           rt_enc, rt_enc / rt);
    /* the same per second of this thread's CPU time: on a machine shared with other work the
     * wall clock counts the time the thread waited for a core */
    printf("bench: codec.roundtrip.plain.cpu %.0f events/s\n", ct);
    printf("bench: codec.roundtrip.cpu %.0f events/s ratio=%.2f "
           "baseline=codec.roundtrip.plain.cpu\n",
           ct_enc, ct_enc / ct);
    /* the former encrypted round trip, two events built per side (seal, encode; decode, unseal) */
    printf("bench: codec.roundtrip.two_events %.0f events/s ratio=%.2f "
           "baseline=codec.roundtrip\n",
           rt_two, rt_two / rt_enc);
    printf("bench: codec.roundtrip.two_events.cpu %.0f events/s ratio=%.2f "
           "baseline=codec.roundtrip.cpu\n",
           ct_two, ct_two / ct_enc);
    printf("# codec: user.registered event of %zu bytes\n", len);
    free(json);
    ew_event_unref(ev);
    return 0;
}
