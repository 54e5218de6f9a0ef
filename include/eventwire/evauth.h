/* eventwire — authenticated events: who published an event, proven with a per-service key, and
 * whether the bus policy lets them (docs/bus-auth.md).
 *
 * A publishing service holds one key in a key file of its own (KEY_DIR/SERVICE.bus.key, 0600,
 * made at its first start): a BLAKE2b MAC key (EVENT_AUTH=mac) or an Ed25519 secret key
 * (EVENT_AUTH=ed25519). The key store (eventwire/keys.h) holds what verifiers need: the MAC key,
 * or the Ed25519 public key. Every event a service publishes carries two CloudEvents extension
 * attributes: `ewkid` (the key's id) and `ewauth` (`mac1:` or `ed1:` and the tag or signature in
 * unpadded base64url) over the event's canonical form (docs/bus-auth.md#the-canonical-form), so
 * that every CloudEvents binding, structured or binary, carries it unchanged.
 *
 * The bus uses an ew_evauth given in ew_bus_options.auth: publishing checks the policy (EW_EPERM
 * before anything leaves) and signs; receiving verifies and checks the policy once, in the
 * shared receive path, and dead-letters what fails (EW_EAUTH, EW_EPERM) with the reason; the
 * memory bus, in one process, is not checked. A bus without one neither signs nor checks.
 *
 * Threads: every call but open and close is thread-safe. */
#ifndef EVENTWIRE_EVAUTH_H
#define EVENTWIRE_EVAUTH_H

#include <stdbool.h>
#include <stdint.h>
#include "eventwire/config.h"
#include "eventwire/error.h"
#include "eventwire/event.h"
#include "eventwire/keys.h"
#include "eventwire/policy.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ew_evauth ew_evauth;

/* What happened that a service's audit chain records (ew_evauth_options.notice). */
typedef enum ew_evauth_notice_kind {
    EW_EVAUTH_KEY_MADE = 1,     /* a first key was made for the service; detail: kid */
    EW_EVAUTH_KEY_ROTATED,      /* the key file holds a new key now, used from here on; detail:
                                   the new kid */
    EW_EVAUTH_PUBLISH_REFUSED,  /* a publish outside the policy; detail: the reason */
    EW_EVAUTH_RECEIVE_REFUSED,  /* a received event refused; detail: the reason */
    EW_EVAUTH_SUBSCRIBE_REFUSED /* a subscription outside the policy; detail: the reason */
} ew_evauth_notice_kind;

/* Called on the thread where it happened; ev may be NULL; detail is borrowed for the call. It
 * must not publish on the bus it is told about (a refusal may be its publish). */
typedef void (*ew_evauth_notice_fn)(void *ud, ew_evauth_notice_kind kind, const ew_event *ev,
                                    const char *detail);

typedef struct ew_evauth_options {
    /* EVENT_AUTH, SERVICE_NAME, KEY_STORE_URL (and EVENT_STORE_URL for its default),
     * EVENT_KEY_DIR, EVENT_POLICY_FILE; NULL: the defaults. */
    const ew_config *config;
    const char *service;  /* who publishes (overrides SERVICE_NAME) */
    ew_keys *keys;        /* borrowed, must outlive the handle; NULL: opened from config */
    ew_policy *policy;    /* borrowed, must outlive the handle; NULL: EVENT_POLICY_FILE's */
    const char *key_file; /* overrides KEY_DIR/SERVICE.bus.key */
    /* The key file must exist already (ewctl publish --as SERVICE): EW_ENOTFOUND otherwise.
     * false: made with a new key at first start. */
    bool existing_key_only;
    ew_evauth_notice_fn notice; /* may be NULL */
    void *notice_ud;
} ew_evauth_options;

/* Opens the service's key (making it, and adding it to the key store, when there is none),
 * the key store and the policy. EW_ECONFIG for a key file open to others or malformed, or a
 * policy that does not parse; EW_EINVAL when EVENT_AUTH is off (no handle is needed then).
 * Caller closes it with ew_evauth_close() after the bus that uses it. */
int ew_evauth_open(ew_evauth **out, const ew_evauth_options *opts, ew_error *err);
void ew_evauth_close(ew_evauth *a);

/* The publishing service, its key's id and algorithm. Borrowed until close. */
const char *ew_evauth_service(const ew_evauth *a);
const char *ew_evauth_kid(const ew_evauth *a);
ew_key_alg ew_evauth_alg(const ew_evauth *a);

/* The path of the key file of service in cfg's EVENT_KEY_DIR (or its default: the key store's
 * folder), into buf (n bytes); NULL when it does not fit. */
const char *ew_evauth_key_file(const ew_config *cfg, const char *service, char *buf, size_t n);

/* May this service publish ev: its source is the service and the policy lets the service
 * publish its type? EW_EPERM with the reason otherwise. */
int ew_evauth_check_publish(ew_evauth *a, const ew_event *ev, ew_error *err);

/* May this service subscribe to pattern? EW_EPERM with the reason otherwise. */
int ew_evauth_check_subscribe(ew_evauth *a, const char *pattern, ew_error *err);

/* A copy of ev carrying ewkid and ewauth for this service's key (any earlier ones replaced), into
 * *out (one reference, the caller's). */
int ew_evauth_sign(ew_evauth *a, const ew_event *ev, ew_event **out, ew_error *err);

/* Checks a received event: authenticated by a key of its source that the key store has and that
 * was current when the event was made, and published within the policy; or unauthenticated, of
 * a type the policy admits from foreign producers. 0, or EW_EAUTH (unauthenticated, forged,
 * tampered, unknown or retired key) or EW_EPERM (outside the policy) with the reason. What is
 * checked is the event as it was received: an event that decoding upcast from an older version
 * is checked at the version it was published in, with the data it was published with, and a
 * decrypted copy as the ciphertext it came as. */
int ew_evauth_verify(ew_evauth *a, const ew_event *ev, ew_error *err);

/* The canonical form the tag covers (docs/bus-auth.md#the-canonical-form): ev's attributes but
 * ewauth and ewkid, and its data, each with its length. Into *out (malloc'ed, the caller frees
 * it), *len its length. For tests and other implementations. */
int ew_evauth_canonical(const ew_event *ev, unsigned char **out, size_t *len, ew_error *err);

/* ewctl keys rotate: a new key of alg for service, in the key store (the current ones retired at
 * now + grace_s) and in the service's key file (replaced at once: a running service reads it at
 * its next publish, at most a second later). kid_out (may be NULL) gets the new id. */
int ew_evauth_rotate(const ew_config *cfg, ew_keys *keys, const char *service, ew_key_alg alg,
                     int64_t grace_s, char kid_out[EW_KEY_ID_LEN + 1], ew_error *err);

#ifdef __cplusplus
}
#endif
#endif
