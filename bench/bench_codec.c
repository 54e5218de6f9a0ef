/* Benchmark of the CloudEvents codec: encode, decode and the round trip of a user.registered
 * event, beside a baseline in the same run: the same document through the bare JSON parser and
 * writer, without the envelope, catalog and validation work. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/json.h"
#include "eventwire/clock.h"
#include "eventwire/event.h"
#include "eventwire/id.h"

static double rate(long n, int64_t ns)
{
    return (double)n / ((double)ns / 1e9);
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
    const long n = 400000;

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

    t0 = ew_mono_ns();
    for (long i = 0; i < n; i++) {
        char *s;
        size_t sl;
        ew_event *e2;
        ew_event_encode(ev, &s, &sl, NULL);
        if (ew_event_decode(&e2, s, sl, NULL, &err)) abort();
        ew_event_unref(e2);
        free(s);
    }
    double rt = rate(n, ew_mono_ns() - t0);

    printf("bench: codec.raw_json_roundtrip %.0f events/s\n", raw);
    printf("bench: codec.encode %.0f events/s\n", enc);
    printf("bench: codec.decode %.0f events/s\n", dec);
    printf("bench: codec.roundtrip %.0f events/s ratio=%.2f baseline=codec.raw_json_roundtrip\n",
           rt, rt / raw);
    printf("# codec: user.registered event of %zu bytes\n", len);
    free(json);
    ew_event_unref(ev);
    return 0;
}
