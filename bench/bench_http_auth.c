/* Benchmark of the access token check every service does on every request
 * (services/common/svc_auth.c, docs/security.md): checks per second in one process,
 *
 *   http.auth_check.uncached   a different token each time: signature, claims, revocations
 *   http.auth_check.cached     the same tokens again: a keyed hash and a look-up, with the
 *                              expiry and revocations checked
 *
 * on one thread, and the cached case on four threads at once (the services check on the
 * connection's thread). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "svc_auth.h"

#define NTOKENS 2000 /* the uncached pass */
#define NCACHED 1000 /* the cached passes: a quarter of the default AUTH_TOKEN_CACHE_SIZE */
#define THREADS 4

static char tokens[NTOKENS][SVC_TOKEN_MAX + 1];
static svc_authn *checker;
static int64_t now_s;

static double rate(long n, int64_t ns)
{
    return (double)n / ((double)ns / 1e9);
}

static void *cached_loop(void *p)
{
    long n = *(long *)p;
    svc_claims c;
    for (long i = 0; i < n; i++)
        if (svc_authn_check(checker, tokens[i % NCACHED], now_s, &c) != SVC_TOKEN_OK) abort();
    return NULL;
}

int main(void)
{
    if (sodium_init() < 0) return 1;
    svc_token_keys k;
    crypto_sign_keypair(k.pk, k.sk);
    now_s = ew_now_us() / 1000000;
    const char *roles[] = {"user"};
    for (int i = 0; i < NTOKENS; i++) {
        char sub[EW_UUID_LEN + 1], sid[EW_UUID_LEN + 1];
        ew_uuid7(sub);
        ew_uuid7(sid);
        /* as auth-service signs them: with iat_ms */
        if (svc_token_sign_ms(&k, sub, sid, roles, 1, now_s * 1000 + i % 1000, now_s + 900,
                              tokens[i], sizeof tokens[i]))
            return 1;
    }
    ew_error err = {0};
    if (svc_authn_new(&checker, "/nonexistent", 4096, &err)) return 1;
    svc_authn_set_key(checker, k.pk);
    /* a few revocations of other users, as a running service would hold */
    for (int i = 0; i < 1000; i++) {
        char u[EW_UUID_LEN + 1];
        ew_uuid7(u);
        svc_authn_revoke(checker, u, NULL, now_s * 1000, 900);
    }

    /* uncached: every token once, a fresh checker each pass */
    svc_claims c;
    long n = 0;
    int64_t t0 = ew_mono_ns();
    for (int pass = 0; pass < 5; pass++) {
        svc_authn *fresh;
        if (svc_authn_new(&fresh, "/nonexistent", 4096, &err)) return 1;
        svc_authn_set_key(fresh, k.pk);
        for (int i = 0; i < NTOKENS; i++, n++)
            if (svc_authn_check(fresh, tokens[i], now_s, &c) != SVC_TOKEN_OK) abort();
        svc_authn_free(fresh);
    }
    double uncached = rate(n, ew_mono_ns() - t0);

    /* cached: warm, then the same tokens again */
    long m = 2000000;
    cached_loop(&(long){NCACHED});
    t0 = ew_mono_ns();
    cached_loop(&m);
    double cached = rate(m, ew_mono_ns() - t0);

    pthread_t th[THREADS];
    long per = m / THREADS;
    t0 = ew_mono_ns();
    for (int i = 0; i < THREADS; i++)
        pthread_create(&th[i], NULL, cached_loop, &per);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    double cached4 = rate(per * THREADS, ew_mono_ns() - t0);

    size_t held;
    uint64_t hits, misses;
    svc_authn_stats(checker, &held, &hits, &misses);
    printf("bench: http.auth_check.uncached %.0f checks/s\n", uncached);
    printf("bench: http.auth_check.cached %.0f checks/s ratio=%.1f "
           "baseline=http.auth_check.uncached\n",
           cached, cached / uncached);
    printf("bench: http.auth_check.cached_%dthreads %.0f checks/s\n", THREADS, cached4);
    fprintf(stderr, "bench_http_auth: %zu tokens cached, %llu hits, %llu misses\n", held,
            (unsigned long long)hits, (unsigned long long)misses);
    svc_authn_free(checker);
    sodium_memzero(&k, sizeof k);
    return 0;
}
