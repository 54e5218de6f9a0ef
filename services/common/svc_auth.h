/* Access tokens: signed by auth-service with Ed25519, checked by every service itself
 * (docs/security.md).
 *
 * A token is a JSON Web Token (RFC 7519) with the EdDSA algorithm of RFC 8037:
 *
 *     base64url({"alg":"EdDSA","typ":"JWT","kid":KID}) . base64url(CLAIMS) . base64url(SIGNATURE)
 *
 * CLAIMS = {"iss":"auth-service","sub":USER_ID,"sid":SESSION_ID,"roles":[...],"iat":N,"iat_ms":N,
 *           "exp":N};
 * the signature is Ed25519 (crypto_sign_detached) over the first two parts as sent. iat and exp
 * are Unix seconds; iat_ms, the issue time in Unix milliseconds (iat is its second), orders the
 * token against revocations, which are in milliseconds too: several revocations of a user within
 * one second each end the tokens issued before them, and a login after them is valid at once. A
 * token without iat_ms (signed before it existed, or by svc_token_sign) counts as issued at the
 * start of its iat second, so that a revocation in that second refuses it. A checker
 * accepts exactly the header of the key it holds (no other algorithm, no other key), then the
 * signature, then the claims; a token that passed is cached (svc_authn), so that a repeated token
 * costs a hash and a look-up instead of a signature check (~50 us).
 *
 * Keys: auth-service makes its key pair at first start in AUTH_KEY_DIR (svc_token_keys_open):
 * auth-token.key (the secret, 0600) and auth-token.pub (the public key, 0644), in a folder made
 * 0700. The other services read auth-token.pub (svc_authn), when they first need it. */
#ifndef SVC_AUTH_H
#define SVC_AUTH_H

#include <sodium.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "eventwire/error.h"

#define SVC_TOKEN_MAX 2048 /* longest token accepted or made, in bytes */
#define SVC_TOKEN_ISSUER "auth-service"
#define SVC_TOKEN_KEY_FILE "auth-token.key"
#define SVC_TOKEN_PUB_FILE "auth-token.pub"
#define SVC_TOKEN_LEEWAY_S 5 /* clock skew allowed on iat */

/* What a valid token says. */
typedef struct svc_claims {
    char sub[40]; /* the user */
    char sid[40]; /* the session (login) it belongs to */
    bool admin;   /* roles holds "admin" */
    int64_t iat, exp;
    int64_t iat_ms; /* the issue time in Unix ms: the iat_ms claim, else iat * 1000 */
} svc_claims;

/* Why a token is refused. */
typedef enum svc_token_status {
    SVC_TOKEN_OK = 0,
    SVC_TOKEN_MALFORMED = -1, /* not a token of ours: its form, header, signature or claims */
    SVC_TOKEN_EXPIRED = -2,
    SVC_TOKEN_REVOKED = -3,
    SVC_TOKEN_NO_KEY = -4, /* the public key cannot be read (yet) */
} svc_token_status;

const char *svc_token_status_text(svc_token_status st);

/* A signing key pair. */
typedef struct svc_token_keys {
    unsigned char pk[crypto_sign_PUBLICKEYBYTES];
    unsigned char sk[crypto_sign_SECRETKEYBYTES];
} svc_token_keys;

#define SVC_TOKEN_KEY_FILE_MAX 255 /* longest key file read, in bytes */

/* Parses the len bytes of a key file (any bytes): base64url without padding of exactly n bytes,
 * then nothing but line ends. A secret key (n = 64) must hold its seed's public key
 * (svc_token_secret_consistent). 0 and out, or -1 (out then holds nothing of it). */
int svc_token_key_parse(const char *text, size_t len, unsigned char *out, size_t n);

/* Whether sk (an Ed25519 secret key: seed, then public key) holds its seed's public key: with
 * halves that disagree, tokens would be signed that no service can check. */
int svc_token_secret_consistent(const unsigned char sk[crypto_sign_SECRETKEYBYTES]);

/* Reads the key pair in dir, or makes it there when there is none (dir made 0700, the secret
 * 0600, the public key 0644; each written to a temporary file and linked into place, so that a
 * reader never sees half a key and two starting processes agree on one pair). */
int svc_token_keys_open(svc_token_keys *k, const char *dir, ew_error *err);

/* Reads dir/auth-token.pub. */
int svc_token_pub_read(unsigned char pk[crypto_sign_PUBLICKEYBYTES], const char *dir,
                       ew_error *err);

/* Signs a token issued at iat_ms (Unix milliseconds; iat is its second) and expiring at exp (Unix
 * seconds) into out (cap bytes, SVC_TOKEN_MAX is enough): 0, or EW_ETOOBIG. roles: n strings of
 * [a-z0-9_-]. */
int svc_token_sign_ms(const svc_token_keys *k, const char *sub, const char *sid,
                      const char *const *roles, size_t nroles, int64_t iat_ms, int64_t exp,
                      char *out, size_t cap);

/* The same, issued at iat (Unix seconds), without the iat_ms claim: a token as signed before it
 * existed, checked as issued at the start of that second. */
int svc_token_sign(const svc_token_keys *k, const char *sub, const char *sid,
                   const char *const *roles, size_t nroles, int64_t iat, int64_t exp, char *out,
                   size_t cap);

/* Checks a token's form, signature and claims against pk at now (Unix seconds), without the
 * cache and without revocations. */
svc_token_status svc_token_verify(const unsigned char pk[crypto_sign_PUBLICKEYBYTES],
                                  const char *token, int64_t now, svc_claims *c);

/* ---- the checker every service holds --------------------------------------------------------- */

/* Checks tokens with the public key of key_dir (read when first needed, read again at most every
 * few seconds while it is missing or a signature fails), a cache of cache_cap tokens that passed,
 * and the revocations it was told of. Thread-safe. */
typedef struct svc_authn svc_authn;

int svc_authn_new(svc_authn **out, const char *key_dir, size_t cache_cap, ew_error *err);
void svc_authn_free(svc_authn *a);

/* Uses pk instead of reading key_dir (tests, benchmarks). */
void svc_authn_set_key(svc_authn *a, const unsigned char pk[crypto_sign_PUBLICKEYBYTES]);

/* SVC_TOKEN_OK and *c, or why not. now: Unix seconds. */
svc_token_status svc_authn_check(svc_authn *a, const char *token, int64_t now, svc_claims *c);

/* From now on, tokens of user_id issued before not_before_ms (Unix milliseconds, compared with
 * svc_claims.iat_ms) are refused; with session_id, only that session's. A later not_before_ms
 * replaces an earlier one, never the other way. A revocation is forgotten once every token it
 * could refuse has expired (keep_s after not_before_ms). */
void svc_authn_revoke(svc_authn *a, const char *user_id, const char *session_id,
                      int64_t not_before_ms, int64_t keep_s);

/* How many tokens the cache holds, and how many checks it answered (for tests and benchmarks). */
void svc_authn_stats(svc_authn *a, size_t *cached, uint64_t *hits, uint64_t *misses);

#endif
