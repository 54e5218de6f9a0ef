/* Access tokens (svc_auth.h): the keys, signing, checking, the cache of checked tokens and the
 * revocations every service keeps. */
#include "svc_auth.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "core/base64.h"
#include "core/arena.h"
#include "core/buf.h"
#include "core/files.h"
#include "core/json.h"
#include "eventwire/clock.h"

#define B64 sodium_base64_VARIANT_URLSAFE_NO_PADDING
#define KID_BYTES 8

const char *svc_token_status_text(svc_token_status st)
{
    switch (st) {
    case SVC_TOKEN_OK:
        return "valid";
    case SVC_TOKEN_MALFORMED:
        return "the bearer token is malformed or not signed by auth-service";
    case SVC_TOKEN_EXPIRED:
        return "the bearer token has expired";
    case SVC_TOKEN_REVOKED:
        return "the bearer token was revoked";
    case SVC_TOKEN_NO_KEY:
        return "auth-service's public key is not available";
    }
    return "?";
}

/* ---- keys ------------------------------------------------------------------------------------ */

/* Reads a file of base64 text decoding to exactly n bytes: 0, 1 when it does not exist, -1. */
int svc_token_key_parse(const char *text, size_t len, unsigned char *out, size_t n)
{
    if (len > SVC_TOKEN_KEY_FILE_MAX) return -1;
    while (len && (text[len - 1] == '\n' || text[len - 1] == '\r'))
        len--;
    size_t got = 0;
    /* the whole text is the key: no bytes past the base64 */
    if (ew__b64url_decode(out, n, text, len, &got) || got != n) {
        sodium_memzero(out, n);
        return -1;
    }
    if (n == crypto_sign_SECRETKEYBYTES && !svc_token_secret_consistent(out)) {
        sodium_memzero(out, n);
        return -1;
    }
    return 0;
}

int svc_token_secret_consistent(const unsigned char sk[crypto_sign_SECRETKEYBYTES])
{
    unsigned char pk[crypto_sign_PUBLICKEYBYTES], sk2[crypto_sign_SECRETKEYBYTES];
    crypto_sign_seed_keypair(pk, sk2, sk);
    int same = sodium_memcmp(pk, sk + crypto_sign_SEEDBYTES, sizeof pk) == 0;
    sodium_memzero(sk2, sizeof sk2);
    return same;
}

/* Reads a base64 key of n bytes from path into out: 0, 1 when there is no such file, -1 when it
 * cannot be read or is not such a key (svc_token_key_parse). */
static int read_b64(const char *path, unsigned char *out, size_t n)
{
    FILE *f = fopen(path, "r");
    if (!f) return errno == ENOENT ? 1 : -1;
    char text[SVC_TOKEN_KEY_FILE_MAX + 1]; /* one byte more: a longer file is seen as such */
    size_t len = fread(text, 1, sizeof text, f);
    fclose(f);
    int rc = svc_token_key_parse(text, len, out, n);
    sodium_memzero(text, sizeof text);
    return rc;
}

/* Writes base64 of bytes to path with mode, whole and only if path does not exist:
 * 0, 1 when it exists already, -1. */
static int write_b64_new(const char *path, const unsigned char *bytes, size_t n, mode_t mode)
{
    char text[256];
    sodium_bin2base64(text, sizeof text, bytes, n, B64);
    size_t len = strlen(text);
    text[len++] = '\n';
    int rc = ew_file_write_new(path, text, len, mode);
    sodium_memzero(text, sizeof text);
    return rc;
}

int svc_token_pub_read(unsigned char pk[crypto_sign_PUBLICKEYBYTES], const char *dir, ew_error *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/" SVC_TOKEN_PUB_FILE, dir);
    int rc = read_b64(path, pk, crypto_sign_PUBLICKEYBYTES);
    if (rc)
        return ew_error_set(err, EW_EIO, "cannot read auth-service's public key %s: %s", path,
                            rc > 0 ? "no such file" : "unreadable or not a key");
    return 0;
}

int svc_token_keys_open(svc_token_keys *k, const char *dir, ew_error *err)
{
    char kpath[4200], ppath[4200];
    snprintf(kpath, sizeof kpath, "%s/" SVC_TOKEN_KEY_FILE, dir);
    snprintf(ppath, sizeof ppath, "%s/" SVC_TOKEN_PUB_FILE, dir);
    if (ew_mkdirs(dir))
        return ew_error_set(err, EW_EIO, "cannot make the key folder %s: %s", dir, strerror(errno));
    int rc = read_b64(kpath, k->sk, sizeof k->sk);
    if (rc > 0) {
        svc_token_keys fresh;
        crypto_sign_keypair(fresh.pk, fresh.sk);
        rc = write_b64_new(kpath, fresh.sk, sizeof fresh.sk, 0600);
        if (rc == 0) *k = fresh;
        sodium_memzero(&fresh, sizeof fresh);
        if (rc > 0) rc = read_b64(kpath, k->sk, sizeof k->sk); /* another process made it */
    }
    if (rc) {
        return ew_error_set(err, EW_EIO, "cannot read or make the token signing key %s: %s", kpath,
                            rc > 0 ? "made by another process and gone"
                                   : "unreadable or not an Ed25519 secret key");
    }
    crypto_sign_ed25519_sk_to_pk(k->pk, k->sk);
    /* the public key, beside it; a stale one (a key made again) is replaced */
    unsigned char on_disk[crypto_sign_PUBLICKEYBYTES];
    if (read_b64(ppath, on_disk, sizeof on_disk) == 0 &&
        sodium_memcmp(on_disk, k->pk, sizeof on_disk) == 0)
        return 0;
    unlink(ppath);
    if (write_b64_new(ppath, k->pk, sizeof k->pk, 0644) < 0)
        return ew_error_set(err, EW_EIO, "cannot write the public key %s: %s", ppath,
                            strerror(errno));
    return 0;
}

/* ---- signing and checking -------------------------------------------------------------------- */

/* The header of tokens signed with pk, base64url: {"alg":"EdDSA","typ":"JWT","kid":KID}. */
static void header_b64(const unsigned char pk[crypto_sign_PUBLICKEYBYTES], char *out, size_t cap)
{
    unsigned char kid[KID_BYTES];
    char kid_hex[2 * KID_BYTES + 1], json[128];
    crypto_generichash(kid, sizeof kid, pk, crypto_sign_PUBLICKEYBYTES, NULL, 0);
    sodium_bin2hex(kid_hex, sizeof kid_hex, kid, sizeof kid);
    int n =
        snprintf(json, sizeof json, "{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"%s\"}", kid_hex);
    sodium_bin2base64(out, cap, (const unsigned char *)json, (size_t)n, B64);
}

/* Signs the claims; iat_ms < 0: without the iat_ms claim. */
static int sign(const svc_token_keys *k, const char *sub, const char *sid, const char *const *roles,
                size_t nroles, int64_t iat, int64_t iat_ms, int64_t exp, char *out, size_t cap)
{
    ew_buf claims;
    ew_buf_init(&claims);
    ew_buf_printf(&claims, "{\"iss\":\"" SVC_TOKEN_ISSUER "\",\"sub\":");
    ew_json_write_string(&claims, sub, strlen(sub));
    ew_buf_puts(&claims, ",\"sid\":");
    ew_json_write_string(&claims, sid, strlen(sid));
    ew_buf_puts(&claims, ",\"roles\":[");
    for (size_t i = 0; i < nroles; i++) {
        if (i) ew_buf_putc(&claims, ',');
        ew_json_write_string(&claims, roles[i], strlen(roles[i]));
    }
    ew_buf_printf(&claims, "],\"iat\":%lld,", (long long)iat);
    if (iat_ms >= 0) ew_buf_printf(&claims, "\"iat_ms\":%lld,", (long long)iat_ms);
    ew_buf_printf(&claims, "\"exp\":%lld}", (long long)exp);
    if (claims.oom) {
        ew_buf_release(&claims);
        return EW_ENOMEM;
    }
    char head[128];
    header_b64(k->pk, head, sizeof head);
    size_t hl = strlen(head), cl = sodium_base64_ENCODED_LEN(claims.len, B64) - 1;
    size_t sl = sodium_base64_ENCODED_LEN(crypto_sign_BYTES, B64) - 1;
    if (hl + 1 + cl + 1 + sl + 1 > cap || hl + cl + sl + 3 > SVC_TOKEN_MAX) {
        ew_buf_release(&claims);
        return EW_ETOOBIG;
    }
    memcpy(out, head, hl);
    out[hl] = '.';
    sodium_bin2base64(out + hl + 1, cl + 1, (const unsigned char *)claims.data, claims.len, B64);
    ew_buf_release(&claims);
    size_t signed_len = hl + 1 + cl;
    unsigned char sig[crypto_sign_BYTES];
    crypto_sign_detached(sig, NULL, (const unsigned char *)out, signed_len, k->sk);
    out[signed_len] = '.';
    sodium_bin2base64(out + signed_len + 1, sl + 1, sig, sizeof sig, B64);
    return 0;
}

int svc_token_sign_ms(const svc_token_keys *k, const char *sub, const char *sid,
                      const char *const *roles, size_t nroles, int64_t iat_ms, int64_t exp,
                      char *out, size_t cap)
{
    if (iat_ms < 0) return EW_EINVAL;
    return sign(k, sub, sid, roles, nroles, iat_ms / 1000, iat_ms, exp, out, cap);
}

int svc_token_sign(const svc_token_keys *k, const char *sub, const char *sid,
                   const char *const *roles, size_t nroles, int64_t iat, int64_t exp, char *out,
                   size_t cap)
{
    return sign(k, sub, sid, roles, nroles, iat, -1, exp, out, cap);
}

static bool uuidish(const char *s, size_t n)
{
    if (n != 36) return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? ch != '-' : !((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
            return false;
    }
    return true;
}

/* The claims of a token whose signature is good: its members, checked. */
static svc_token_status read_claims(const char *text, size_t len, int64_t now, svc_claims *c)
{
    char space[2048];
    ew_arena ar;
    ew_arena_init(&ar, space, sizeof space);
    ew_json *j;
    svc_token_status st = SVC_TOKEN_MALFORMED;
    if (ew_json_parse(&j, text, len, &(ew_json_limits){.max_bytes = SVC_TOKEN_MAX, .max_depth = 3},
                      &ar, NULL) ||
        j->kind != EW_JSON_OBJECT)
        goto out;
    const ew_json *iss = ew_json_get(j, "iss"), *sub = ew_json_get(j, "sub"),
                  *sid = ew_json_get(j, "sid"), *roles = ew_json_get(j, "roles"),
                  *iat = ew_json_get(j, "iat"), *exp = ew_json_get(j, "exp"),
                  *iat_ms = ew_json_get(j, "iat_ms");
    if (!iss || iss->kind != EW_JSON_STRING || strcmp(iss->str, SVC_TOKEN_ISSUER) || !sub ||
        sub->kind != EW_JSON_STRING || !uuidish(sub->str, sub->len) || !sid ||
        sid->kind != EW_JSON_STRING || !uuidish(sid->str, sid->len) || !roles ||
        roles->kind != EW_JSON_ARRAY || !iat || iat->kind != EW_JSON_NUMBER || !iat->is_int ||
        !exp || exp->kind != EW_JSON_NUMBER || !exp->is_int || exp->i64 <= iat->i64)
        goto out;
    /* iat_ms, when there, is a time within the second iat says */
    if (iat_ms && (iat_ms->kind != EW_JSON_NUMBER || !iat_ms->is_int || iat_ms->i64 < 0 ||
                   iat_ms->i64 / 1000 != iat->i64))
        goto out;
    if (!iat_ms && (iat->i64 > INT64_MAX / 1000 || iat->i64 < INT64_MIN / 1000)) goto out;
    memset(c, 0, sizeof *c);
    memcpy(c->sub, sub->str, 36);
    memcpy(c->sid, sid->str, 36);
    c->iat = iat->i64;
    c->iat_ms = iat_ms ? iat_ms->i64 : iat->i64 * 1000;
    c->exp = exp->i64;
    for (const ew_json *r = roles->child; r; r = r->next) {
        if (r->kind != EW_JSON_STRING) goto out;
        if (!strcmp(r->str, "admin")) c->admin = true;
    }
    if (c->iat > now + SVC_TOKEN_LEEWAY_S) goto out; /* issued in the future: not ours */
    st = now >= c->exp ? SVC_TOKEN_EXPIRED : SVC_TOKEN_OK;
out:
    ew_arena_release(&ar);
    return st;
}

svc_token_status svc_token_verify(const unsigned char pk[crypto_sign_PUBLICKEYBYTES],
                                  const char *token, int64_t now, svc_claims *c)
{
    size_t len = strnlen(token, SVC_TOKEN_MAX + 1);
    if (len > SVC_TOKEN_MAX) return SVC_TOKEN_MALFORMED;
    const char *dot1 = memchr(token, '.', len);
    if (!dot1) return SVC_TOKEN_MALFORMED;
    const char *dot2 = memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token));
    if (!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)))
        return SVC_TOKEN_MALFORMED;
    /* only the header of our own key: no algorithm or key is taken from the token */
    char head[128];
    header_b64(pk, head, sizeof head);
    size_t hl = strlen(head);
    if ((size_t)(dot1 - token) != hl || memcmp(token, head, hl)) return SVC_TOKEN_MALFORMED;
    unsigned char sig[crypto_sign_BYTES];
    size_t got = 0;
    const char *s64 = dot2 + 1;
    if (ew__b64url_decode(sig, sizeof sig, s64, len - (size_t)(s64 - token), &got) ||
        got != sizeof sig)
        return SVC_TOKEN_MALFORMED;
    if (crypto_sign_verify_detached(sig, (const unsigned char *)token, (size_t)(dot2 - token), pk))
        return SVC_TOKEN_MALFORMED;
    char claims[SVC_TOKEN_MAX];
    const char *c64 = dot1 + 1;
    if (ew__b64url_decode((unsigned char *)claims, sizeof claims, c64, (size_t)(dot2 - c64), &got))
        return SVC_TOKEN_MALFORMED;
    return read_claims(claims, got, now, c);
}

/* ---- the checker: cache and revocations --------------------------------------------------------
 */

#define DIGEST 16
#define REVOKE_BUCKETS 1024
#define KEY_RETRY_S 2

#define WAYS 8 /* the cache is set-associative: a token may sit in any of WAYS slots */

typedef struct cached {
    unsigned char digest[DIGEST]; /* keyed BLAKE2b of the token; all zero: empty */
    uint64_t stamp;               /* when it was put there: the oldest of a set gives way */
    svc_claims c;
} cached;

typedef struct revocation {
    struct revocation *next;
    char key[80]; /* user id, or "user id/session id" */
    int64_t not_before_ms, forget_at;
} revocation;

struct svc_authn {
    pthread_rwlock_t lock;
    char *key_dir;
    bool have_key;
    int64_t key_tried; /* when the key was last read (Unix seconds) */
    unsigned char pk[crypto_sign_PUBLICKEYBYTES];
    unsigned char hash_key[crypto_generichash_KEYBYTES]; /* per process: collisions unguessable */
    cached *cache;
    size_t cap, used;
    uint64_t hits, misses, stamp;
    revocation *revoked[REVOKE_BUCKETS];
};

int svc_authn_new(svc_authn **out, const char *key_dir, size_t cache_cap, ew_error *err)
{
    svc_authn *a = calloc(1, sizeof *a);
    if (!a) return ew_error_set(err, EW_ENOMEM, "out of memory");
    a->cap = (cache_cap + WAYS - 1) / WAYS * WAYS;
    if (a->cap < WAYS) a->cap = WAYS;
    a->cache = calloc(a->cap, sizeof *a->cache);
    a->key_dir = strdup(key_dir ? key_dir : "");
    if (!a->cache || !a->key_dir) {
        svc_authn_free(a);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    pthread_rwlock_init(&a->lock, NULL);
    randombytes_buf(a->hash_key, sizeof a->hash_key);
    *out = a;
    return 0;
}

void svc_authn_free(svc_authn *a)
{
    if (!a) return;
    for (size_t i = 0; i < REVOKE_BUCKETS; i++)
        while (a->revoked[i]) {
            revocation *r = a->revoked[i];
            a->revoked[i] = r->next;
            free(r);
        }
    if (a->cache) sodium_memzero(a->cache, a->cap * sizeof *a->cache);
    free(a->cache);
    free(a->key_dir);
    pthread_rwlock_destroy(&a->lock);
    free(a);
}

void svc_authn_set_key(svc_authn *a, const unsigned char pk[crypto_sign_PUBLICKEYBYTES])
{
    pthread_rwlock_wrlock(&a->lock);
    memcpy(a->pk, pk, sizeof a->pk);
    a->have_key = true;
    a->key_tried = INT64_MAX / 2; /* never read the folder */
    memset(a->cache, 0, a->cap * sizeof *a->cache);
    a->used = 0;
    pthread_rwlock_unlock(&a->lock);
}

static size_t bucket_of(const char *key)
{
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *p = (const unsigned char *)key; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return (size_t)(h % REVOKE_BUCKETS);
}

/* The not_before_ms of key, 0 when none (under the lock). */
static int64_t revoked_before(svc_authn *a, const char *key)
{
    for (const revocation *r = a->revoked[bucket_of(key)]; r; r = r->next)
        if (!strcmp(r->key, key)) return r->not_before_ms;
    return 0;
}

static bool is_revoked(svc_authn *a, const svc_claims *c)
{
    char key[80];
    if (c->iat_ms < revoked_before(a, c->sub)) return true;
    snprintf(key, sizeof key, "%s/%s", c->sub, c->sid);
    return c->iat_ms < revoked_before(a, key);
}

void svc_authn_revoke(svc_authn *a, const char *user_id, const char *session_id,
                      int64_t not_before_ms, int64_t keep_s)
{
    char key[80];
    if (session_id)
        snprintf(key, sizeof key, "%s/%s", user_id, session_id);
    else
        snprintf(key, sizeof key, "%s", user_id);
    int64_t now = ew_now_us() / 1000000;
    pthread_rwlock_wrlock(&a->lock);
    revocation **pp = &a->revoked[bucket_of(key)], *found = NULL;
    while (*pp) { /* forget what can refuse nothing any more */
        revocation *r = *pp;
        if (!strcmp(r->key, key)) found = r;
        if (r != found && r->forget_at < now) {
            *pp = r->next;
            free(r);
            continue;
        }
        pp = &r->next;
    }
    if (!found && (found = calloc(1, sizeof *found))) {
        snprintf(found->key, sizeof found->key, "%s", key);
        found->next = a->revoked[bucket_of(key)];
        a->revoked[bucket_of(key)] = found;
    }
    if (found && not_before_ms > found->not_before_ms) {
        found->not_before_ms = not_before_ms;
        found->forget_at = not_before_ms / 1000 + 1 + keep_s;
    }
    pthread_rwlock_unlock(&a->lock);
}

/* Reads the public key again when it is missing, at most every KEY_RETRY_S (under the write
 * lock). */
static void reload_key(svc_authn *a, int64_t now)
{
    if (now - a->key_tried < KEY_RETRY_S) return;
    a->key_tried = now;
    unsigned char pk[crypto_sign_PUBLICKEYBYTES];
    if (svc_token_pub_read(pk, a->key_dir, NULL)) return;
    if (!a->have_key || sodium_memcmp(pk, a->pk, sizeof pk)) {
        memcpy(a->pk, pk, sizeof pk);
        memset(a->cache, 0, a->cap * sizeof *a->cache);
        a->used = 0;
    }
    a->have_key = true;
}

svc_token_status svc_authn_check(svc_authn *a, const char *token, int64_t now, svc_claims *c)
{
    size_t len = strnlen(token, SVC_TOKEN_MAX + 1);
    if (len > SVC_TOKEN_MAX) return SVC_TOKEN_MALFORMED;
    unsigned char d[DIGEST];
    crypto_generichash(d, sizeof d, (const unsigned char *)token, len, a->hash_key,
                       sizeof a->hash_key);
    size_t set = 0;
    memcpy(&set, d, sizeof set < DIGEST ? sizeof set : DIGEST);
    set = set % (a->cap / WAYS) * WAYS;

    pthread_rwlock_rdlock(&a->lock);
    const cached *e = NULL;
    for (size_t w = 0; w < WAYS && a->have_key; w++)
        if (sodium_memcmp(a->cache[set + w].digest, d, DIGEST) == 0) e = &a->cache[set + w];
    if (e) {
        *c = e->c;
        svc_token_status st = now >= c->exp      ? SVC_TOKEN_EXPIRED
                              : is_revoked(a, c) ? SVC_TOKEN_REVOKED
                                                 : SVC_TOKEN_OK;
        pthread_rwlock_unlock(&a->lock);
        __atomic_add_fetch(&a->hits, 1, __ATOMIC_RELAXED);
        return st;
    }
    bool have = a->have_key;
    unsigned char pk[crypto_sign_PUBLICKEYBYTES];
    memcpy(pk, a->pk, sizeof pk);
    pthread_rwlock_unlock(&a->lock);
    __atomic_add_fetch(&a->misses, 1, __ATOMIC_RELAXED);

    svc_token_status st = have ? svc_token_verify(pk, token, now, c) : SVC_TOKEN_NO_KEY;
    if (st == SVC_TOKEN_NO_KEY || st == SVC_TOKEN_MALFORMED) {
        /* the key may have been made or replaced since: read it again (rate-limited) */
        pthread_rwlock_wrlock(&a->lock);
        reload_key(a, now);
        bool changed = a->have_key && (!have || sodium_memcmp(pk, a->pk, sizeof pk));
        memcpy(pk, a->pk, sizeof pk);
        have = a->have_key;
        pthread_rwlock_unlock(&a->lock);
        if (changed) st = svc_token_verify(pk, token, now, c);
        if (!have) return SVC_TOKEN_NO_KEY;
    }
    if (st != SVC_TOKEN_OK) return st;
    pthread_rwlock_wrlock(&a->lock);
    if (sodium_memcmp(pk, a->pk, sizeof pk) == 0) {
        cached *w = NULL; /* an empty slot of the set, else its oldest */
        for (size_t i = 0; i < WAYS; i++) {
            cached *x = &a->cache[set + i];
            if (sodium_is_zero(x->digest, DIGEST)) {
                w = x;
                break;
            }
            if (!w || x->stamp < w->stamp) w = x;
        }
        bool empty = sodium_is_zero(w->digest, DIGEST);
        memcpy(w->digest, d, DIGEST);
        w->stamp = ++a->stamp;
        w->c = *c;
        if (empty) a->used++;
    }
    if (is_revoked(a, c)) st = SVC_TOKEN_REVOKED;
    pthread_rwlock_unlock(&a->lock);
    return st;
}

void svc_authn_stats(svc_authn *a, size_t *cached_n, uint64_t *hits, uint64_t *misses)
{
    pthread_rwlock_rdlock(&a->lock);
    if (cached_n) *cached_n = a->used;
    pthread_rwlock_unlock(&a->lock);
    if (hits) *hits = __atomic_load_n(&a->hits, __ATOMIC_RELAXED);
    if (misses) *misses = __atomic_load_n(&a->misses, __ATOMIC_RELAXED);
}
