/* eventwire — the keyring's insides, shared by its two files: keyring.c (the key-encryption
 * key, the key store of wrapped data keys, the cache of unwrapped ones, which key seals an
 * event) and keyring_seal.c (the sealing and opening of fields), which uses keyring.c's and not
 * the other way round. Nothing else includes this header: the keyring's interface is keyring.h. */
#ifndef EW_SECURITY_KEYRING_IMPL_H
#define EW_SECURITY_KEYRING_IMPL_H

#include <pthread.h>
#include <stdatomic.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include "security/datakeys.h"
#include "security/keyring.h"

#define KEY_BYTES crypto_aead_xchacha20poly1305_ietf_KEYBYTES    /* 32 */
#define NONCE_BYTES crypto_aead_xchacha20poly1305_ietf_NPUBBYTES /* 24 */
#define TAG_BYTES crypto_aead_xchacha20poly1305_ietf_ABYTES      /* 16 */
#define WRAPPED_BYTES (NONCE_BYTES + KEY_BYTES + TAG_BYTES)
#define SUBJECT_MAX 128
#define WAYS 8 /* the cache: sets of WAYS slots, the subject's hash picks the set */

/* One cached data key (EW__KEYRING_SLOT_BYTES bytes, keyring.h). */
typedef struct slot {
    uint64_t hash;    /* of subject, compared first */
    int64_t at_us;    /* when it was read from the key store: fresh for ttl_us */
    uint64_t used_at; /* the keyring's tick when last used: a full set drops its least recent */
    bool used, erased;
    char subject[SUBJECT_MAX + 1];
    unsigned char dek[KEY_BYTES];
    unsigned char sub[KEY_BYTES]; /* own_subkey() of dek */
} slot;

_Static_assert(sizeof(slot) <= EW__KEYRING_SLOT_BYTES, "keyring.h states a slot's size");

/* A subject whose data key a thread is about to make (get_key). Threads that need new keys at
 * once queue here, and whichever holds db_mu next makes all of them in one transaction: a new
 * subject costs the key store a commit, and one commit serves many. A node lives on its thread's
 * stack and leaves the queue under db_mu, before its thread returns. */
typedef struct wanted {
    struct wanted *next;
    const char *subject;
} wanted;

struct ew__keyring {
    char *key_file;
    char *store_url;  /* sqlite:PATH or postgresql://... (which may hold a password) */
    char *store_name; /* the file, or the URL without user and password: for messages */
    char *legacy;     /* on PostgreSQL: where the data keys were before (import_legacy) */
    int64_t ttl_us;
    pthread_mutex_t mu; /* the cache and the queue of wanted keys */
    wanted *queue;
    pthread_mutex_t db_mu; /* the key store's connection, the key-encryption key, loading */
    bool loaded;
    /* The keyring's own handle on the deployment's key store (eventwire/keys.h), and its
     * data-key tables, used only under db_mu: nothing else uses this handle. */
    ew_keys *store;
    const ew__datakeys_ops *ops;
    ew__datakeys *dk;
    atomic_size_t store_reads; /* data keys read from the key store (cache misses) */
    unsigned char kek[KEY_BYTES];
    char fingerprint[65];
    /* nsets * WAYS, in memory locked from swapping where the system allows; made by the first
     * load, so that a keyring that never needs a key (a store that only relays ciphertext) costs
     * none of it. Written under mu and db_mu. */
    slot *slots;
    size_t nsets;  /* EVENT_KEY_CACHE_SIZE / WAYS */
    uint64_t tick; /* under mu: one more per use of the cache */
    /* Field nonces: 16 random bytes of this keyring and a counter, so that no two encryptions
     * of one keyring share a nonce and none needs a system call for randomness. */
    unsigned char nonce_prefix[NONCE_BYTES - 8];
    atomic_uint_fast64_t nonce_seq;
};

typedef enum { KEY_NONE, KEY_LIVE, KEY_ERASED } key_state;

/* XChaCha20-Poly1305 is HChaCha20(key, the nonce's first 16 bytes) as the key of
 * ChaCha20-Poly1305 (IETF) with the nonce's last 8 bytes. Every field nonce of a keyring starts
 * with its nonce_prefix, so the subkey of a data key is the same for every field this keyring
 * encrypts under it: computed once, kept beside the key, and the ciphertext is byte for byte
 * what crypto_aead_xchacha20poly1305_ietf_encrypt() makes. */
static inline void own_subkey(const ew__keyring *k, const unsigned char *dek, unsigned char *sub)
{
    crypto_core_hchacha20(sub, k->nonce_prefix, dek, NULL);
}

static inline void next_nonce(ew__keyring *k, unsigned char *nonce)
{
    uint64_t n = atomic_fetch_add_explicit(&k->nonce_seq, 1, memory_order_relaxed);
    memcpy(nonce, k->nonce_prefix, sizeof k->nonce_prefix);
    for (int i = 0; i < 8; i++)
        nonce[sizeof k->nonce_prefix + (size_t)i] = (unsigned char)(n >> (8 * i));
}

/* The subject's data key into dek, and its own_subkey() into sub: KEY_LIVE, KEY_ERASED, or
 * KEY_NONE (only when !create); from the cache when it is there and fresh, else from the key
 * store, made first when create and the store has none. */
int ew__keyring_get_key(ew__keyring *k, const char *subject, bool create, key_state *state,
                        unsigned char dek[KEY_BYTES], unsigned char sub[KEY_BYTES], ew_error *err);

/* The length of subject when it can name a data key: 1 to SUBJECT_MAX of A-Z a-z 0-9 - _ : @
 * (base64url's alphabet and two more); else 0. */
size_t ew__keyring_subject_len(const char *s);

/* Whose key encrypts the event's fields: its data's user_id, else its subject (NULL: none). */
const char *ew__keyring_subject_of(const ew_event *ev);

/* The personal or secret fields of ev in clear, which sealing encrypts (bits by field index; 0:
 * none). */
uint64_t ew__keyring_clear_fields(const ew_event *ev);

#endif
