/* eventwire — the keyring (keyring.h): the key-encryption key, the key store of wrapped data
 * keys (SQLite or PostgreSQL, through datakeys.h), a bounded cache of unwrapped ones, and the
 * sealing and unsealing of events. */
#include "security/keyring.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "catalog/event_internal.h"
#include "core/buf.h"
#include "core/files.h"
#include "eventwire/clock.h"
#include "security/aead.h"
#include "security/datakeys.h"
#include "security/keyfile.h"
#include "security/keys_postgres.h"

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

/* XChaCha20-Poly1305 is HChaCha20(key, the nonce's first 16 bytes) as the key of
 * ChaCha20-Poly1305 (IETF) with the nonce's last 8 bytes. Every field nonce of a keyring starts
 * with its nonce_prefix, so the subkey of a data key is the same for every field this keyring
 * encrypts under it: computed once, kept beside the key, and the ciphertext is byte for byte
 * what crypto_aead_xchacha20poly1305_ietf_encrypt() makes. */
static void own_subkey(const ew__keyring *k, const unsigned char *dek, unsigned char *sub)
{
    crypto_core_hchacha20(sub, k->nonce_prefix, dek, NULL);
}

static void next_nonce(ew__keyring *k, unsigned char *nonce)
{
    uint64_t n = atomic_fetch_add_explicit(&k->nonce_seq, 1, memory_order_relaxed);
    memcpy(nonce, k->nonce_prefix, sizeof k->nonce_prefix);
    for (int i = 0; i < 8; i++)
        nonce[sizeof k->nonce_prefix + (size_t)i] = (unsigned char)(n >> (8 * i));
}

/* ---- paths -------------------------------------------------------------------------------- */

/* SUB FILE in the folder of the store's SQLite file, or var/SUB FILE. */
static char *beside_store(const char *store, const char *sub, const char *file)
{
    ew_buf b;
    ew_buf_init(&b);
    if (store && !strncmp(store, "sqlite:", 7) && strcmp(store + 7, ":memory:") != 0) {
        const char *path = store + 7, *slash = strrchr(path, '/');
        if (slash) ew_buf_append(&b, path, (size_t)(slash - path) + 1);
    } else {
        ew_buf_puts(&b, "var/");
    }
    ew_buf_puts(&b, sub);
    ew_buf_puts(&b, file);
    return ew_buf_steal(&b, NULL);
}

int ew__keyring_new(ew__keyring **out, const ew_config *cfg, const char *store_url, ew_error *err)
{
    if (!store_url) store_url = ew_config_get(cfg, "EVENT_STORE_URL");
    *out = NULL;
    const char *on = ew_config_get(cfg, "EVENT_ENCRYPTION");
    if (on && strcmp(on, "off") == 0) return 0;
    if (sodium_init() < 0) return ew_error_set(err, EW_ENOMEM, "libsodium cannot start");
    ew__keyring *k = calloc(1, sizeof *k);
    if (!k) return ew_error_set(err, EW_ENOMEM, "out of memory");
    pthread_mutex_init(&k->mu, NULL);
    pthread_mutex_init(&k->db_mu, NULL);
    const char *kf = ew_config_get(cfg, "EVENT_ENCRYPTION_KEY_FILE");
    const char *ks = ew_config_get(cfg, "KEY_STORE_URL");
    bool sqlite = ks && !strncmp(ks, "sqlite:", 7), pg = ks && *ks && !sqlite;
    /* The data keys are in KEY_STORE_URL's store, else in keys/keys.db beside the store this
     * keyring serves. The key-encryption key sits beside an SQLite key store; with one on
     * PostgreSQL, in the folder keys beside EVENT_STORE_URL's file. */
    if (pg) store_url = ew_config_get(cfg, "EVENT_STORE_URL");
    k->key_file = kf && *kf ? strdup(kf)
                  : sqlite  ? beside_store(ks, "", "eventwire.kek")
                            : beside_store(store_url, "keys/", "eventwire.kek");
    if (pg) {
        k->store_url = strdup(ks);
        k->store_name = ew__keys_pg_name_of(ks);
        k->legacy = beside_store(store_url, "keys/", "keys.db");
    } else {
        k->store_name = sqlite ? strdup(ks + 7) : beside_store(store_url, "keys/", "keys.db");
        ew_buf url;
        ew_buf_init(&url);
        if (k->store_name) ew_buf_printf(&url, "sqlite:%s", k->store_name);
        k->store_url = ew_buf_steal(&url, NULL);
    }
    k->ttl_us = ew_config_get_int(cfg, "EVENT_KEY_CACHE_SECONDS") * 1000000;
    k->nsets = (size_t)ew_config_get_int(cfg, "EVENT_KEY_CACHE_SIZE") / WAYS;
    if (k->nsets == 0) k->nsets = 1;
    if (!k->key_file || !k->store_url || !k->store_name) {
        ew__keyring_free(k);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    randombytes_buf(k->nonce_prefix, sizeof k->nonce_prefix);
    atomic_init(&k->nonce_seq, 0);
    atomic_init(&k->store_reads, 0);
    *out = k;
    return 0;
}

void ew__keyring_free(ew__keyring *k)
{
    if (!k) return;
    if (k->ops) k->ops->close(k->dk);
    ew_keys_close(k->store);
    if (k->slots) sodium_free(k->slots); /* zeroes them */
    sodium_memzero(k->kek, sizeof k->kek);
    pthread_mutex_destroy(&k->mu);
    pthread_mutex_destroy(&k->db_mu);
    free(k->key_file);
    if (k->store_url) sodium_memzero(k->store_url, strlen(k->store_url));
    free(k->store_url);
    free(k->store_name);
    free(k->legacy);
    free(k);
}

const char *ew__keyring_key_file(const ew__keyring *k)
{
    return k->key_file;
}

const char *ew__keyring_store_name(const ew__keyring *k)
{
    return k->store_name;
}

size_t ew__keyring_store_reads(ew__keyring *k)
{
    return atomic_load(&k->store_reads);
}

/* ---- the key store ------------------------------------------------------------------------ */

/* The key store (eventwire/keys.h) and its data-key tables (migration 002_subject_keys). The
 * store opened by an earlier try whose data-key tables failed to open is kept, not opened again
 * (and lost). */
static int store_open(ew__keyring *k, ew_error *err)
{
    int rc = k->store ? 0 : ew_keys_open(&k->store, &(ew_keys_options){.url = k->store_url}, err);
    return rc ? rc : ew__datakeys_open(k->store, &k->ops, &k->dk, err);
}

/* Inserts one row of the old store into the new one (import_legacy's walks). */
static int import_row(void *ud, const char *subject, const unsigned char *w, size_t len)
{
    void **to = ud; /* the keyring, and an ew_error */
    ew__keyring *k = to[0];
    return w ? k->ops->insert(k->dk, subject, w, len, to[1]) : k->ops->shred(k->dk, subject, to[1]);
}

/* Before a key store on PostgreSQL held the data keys, they were in the SQLite key store beside
 * EVENT_STORE_URL's file. A PostgreSQL store without a fingerprint takes that file's fingerprint,
 * keys and tombstones, in one transaction (a second process finds them there and imports
 * nothing), and the file's copies are then deleted (secure_delete zeroes them). */
static int import_legacy(ew__keyring *k, ew_error *err)
{
    char fp[65];
    int have = k->ops->fingerprint(k->dk, fp, 0, err);
    if (have) return have < 0 ? have : 0;
    if (access(k->legacy, F_OK) != 0) return 0;
    ew_buf url;
    ew_buf_init(&url);
    ew_buf_printf(&url, "sqlite:%s", k->legacy);
    ew_keys *old = NULL;
    const ew__datakeys_ops *ops = NULL;
    ew__datakeys *dk = NULL;
    int rc = url.oom ? ew_error_set(err, EW_ENOMEM, "out of memory")
                     : ew_keys_open(&old, &(ew_keys_options){.url = url.data}, err);
    ew_buf_release(&url);
    if (!rc) rc = ew__datakeys_open(old, &ops, &dk, err);
    if (!rc && (have = ops->fingerprint(dk, fp, 0, err)) <= 0) rc = have; /* none: nothing */
    if (!rc && have > 0 && !(rc = k->ops->begin(k->dk, err))) {
        char now[65];
        void *to[] = {k, err};
        have = k->ops->fingerprint(k->dk, now, 2, err); /* another process, meanwhile? */
        if (have < 0) rc = have;
        if (!rc && !have && !(rc = k->ops->set_fingerprint(k->dk, fp, false, err)) &&
            !(rc = ops->each_live(dk, import_row, to, err)))
            rc = ops->each_erased(dk, import_row, to, err);
        if (rc)
            k->ops->rollback(k->dk);
        else if (!(rc = k->ops->commit(k->dk, err)) && !have)
            rc = ops->clear(dk, err); /* a later erasure must not find a copy there */
    }
    if (ops) ops->close(dk);
    ew_keys_close(old);
    return rc;
}

/* The fingerprint of a key-encryption key: what the store keeps to recognise it. */
static void fingerprint_of(const unsigned char *kek, char out[65])
{
    static const char label[] = "eventwire key-encryption key";
    unsigned char h[32];
    crypto_generichash(h, sizeof h, (const unsigned char *)label, sizeof label - 1, kek, KEY_BYTES);
    sodium_bin2hex(out, 65, h, sizeof h);
}

/* ---- the key-encryption key ---------------------------------------------------------------- */

/* Reads the key file into kek: 1 when read, 0 when there is none, < 0 with err. */
static int read_key_file(const char *path, unsigned char kek[KEY_BYTES], ew_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return 0;
        return ew_error_set(err, EW_ECONFIG, "key-encryption key %s: %s", path, strerror(errno));
    }
    struct stat st;
    unsigned char buf[KEY_BYTES + 1];
    ssize_t n = -1;
    if (fstat(fd, &st) == 0 && (st.st_mode & 077) == 0 && st.st_uid == geteuid())
        n = read(fd, buf, sizeof buf);
    close(fd);
    if (n < 0)
        return ew_error_set(err, EW_ECONFIG,
                            "key-encryption key %s: must be a file of this user's, mode 0600",
                            path);
    int rc = ew__kek_parse(path, buf, (size_t)n, kek, err);
    sodium_memzero(buf, sizeof buf);
    return rc ? rc : 1;
}

/* Writes the key to path: only when there is none (excl: 1 when another process made it first),
 * or over the one there. Either way a reader finds the whole key or none. */
static int write_key_file(const char *path, const unsigned char kek[KEY_BYTES], bool excl,
                          ew_error *err)
{
    if (ew_mkdirs_for(path))
        return ew_error_set(err, EW_ECONFIG, "key-encryption key %s: cannot make its folder: %s",
                            path, strerror(errno));
    int rc = excl ? ew_file_write_new(path, kek, KEY_BYTES, 0600)
                  : ew_file_replace(path, kek, KEY_BYTES, 0600);
    if (rc < 0)
        return ew_error_set(err, EW_ECONFIG, "key-encryption key %s: cannot write it: %s", path,
                            strerror(errno));
    return rc;
}

/* Under db_mu: the key file matches the store's fingerprint (read with lock, datakeys.h), or the
 * store gets its fingerprint when it has none. */
static int check_kek(ew__keyring *k, int lock, ew_error *err)
{
    char stored[65];
    int have = k->ops->fingerprint(k->dk, stored, lock, err);
    if (have < 0) return have;
    fingerprint_of(k->kek, k->fingerprint);
    if (have) {
        if (strcmp(stored, k->fingerprint) != 0)
            return ew_error_set(err, EW_ECONFIG,
                                "key-encryption key %s is not the key the key store %s was made "
                                "with (fingerprint %.16s..., the store's %.16s...): restore the "
                                "right file; the data keys cannot be read without it",
                                k->key_file, k->store_name, k->fingerprint, stored);
        return 0;
    }
    int rc = k->ops->set_fingerprint(k->dk, k->fingerprint, false, err);
    if (rc) return rc;
    /* A process that started at the same moment may have recorded its own first. */
    have = k->ops->fingerprint(k->dk, stored, lock, err);
    if (have <= 0)
        return have ? have
                    : ew_error_set(err, EW_EIO, "key store %s: the fingerprint vanished",
                                   k->store_name);
    if (strcmp(stored, k->fingerprint) != 0)
        return ew_error_set(err, EW_ECONFIG, "key-encryption key %s changed while starting",
                            k->key_file);
    return 0;
}

/* Under db_mu: reads the key file again (after a rotation by another process). Between that
 * rotation's commit and the rename of its KEY_FILE.new over the key file, the store's key is in
 * KEY_FILE.new: it is taken from there when the key file is not the store's key. */
static int reload_kek(ew__keyring *k, int lock, ew_error *err)
{
    char next[4096 + 8];
    snprintf(next, sizeof next, "%s.new", k->key_file);
    const char *paths[] = {k->key_file, next};
    int rc = 0;
    for (int i = 0; i < 2; i++) {
        unsigned char kek[KEY_BYTES];
        int got = read_key_file(paths[i], kek, i ? NULL : err);
        if (got <= 0) {
            if (!i)
                rc = got ? got
                         : ew_error_set(err, EW_ECONFIG, "key-encryption key %s: missing",
                                        k->key_file);
            break;
        }
        memcpy(k->kek, kek, KEY_BYTES);
        sodium_memzero(kek, sizeof kek);
        if ((rc = check_kek(k, lock, i ? NULL : err)) != EW_ECONFIG) break;
    }
    return rc;
}

static int load_locked(ew__keyring *k, ew_error *err)
{
    if (k->loaded) return 0;
    int rc = k->dk ? 0 : store_open(k, err);
    if (!rc && k->legacy) rc = import_legacy(k, err);
    if (rc) return rc;
    int got = read_key_file(k->key_file, k->kek, err);
    if (got < 0) return got;
    if (!got) {
        /* No key file: made now only when the store has never had a key. */
        char stored[65];
        size_t live = 0, erased = 0;
        int have = k->ops->fingerprint(k->dk, stored, 0, err);
        if (have < 0) return have;
        if ((rc = k->ops->count(k->dk, &live, &erased, err))) return rc;
        if (have || live || erased)
            return ew_error_set(err, EW_ECONFIG,
                                "key-encryption key %s is missing, but the key store %s holds "
                                "data keys wrapped by one (fingerprint %.16s...): restore the "
                                "file (a new key would leave every encrypted field unreadable)",
                                k->key_file, k->store_name, have ? stored : "unknown");
        unsigned char kek[KEY_BYTES];
        crypto_aead_xchacha20poly1305_ietf_keygen(kek);
        rc = write_key_file(k->key_file, kek, true, err);
        sodium_memzero(kek, sizeof kek);
        if (rc < 0) return rc;
        got = read_key_file(k->key_file, k->kek, err); /* ours, or the one that won the race */
        if (got <= 0)
            return got ? got
                       : ew_error_set(err, EW_ECONFIG, "key-encryption key %s: vanished",
                                      k->key_file);
    }
    if ((rc = check_kek(k, 0, err)) == EW_ECONFIG) rc = reload_kek(k, 0, err);
    if (rc) return rc;
    if (k->ttl_us > 0 && !k->slots) {
        slot *slots = sodium_allocarray(k->nsets * WAYS, sizeof *slots);
        if (!slots) return ew_error_set(err, EW_ENOMEM, "out of memory for the data-key cache");
        memset(slots, 0, k->nsets * WAYS * sizeof *slots);
        pthread_mutex_lock(&k->mu);
        k->slots = slots;
        pthread_mutex_unlock(&k->mu);
    }
    k->loaded = true;
    return 0;
}

int ew__keyring_load(ew__keyring *k, ew_error *err)
{
    pthread_mutex_lock(&k->db_mu);
    int rc = load_locked(k, err);
    pthread_mutex_unlock(&k->db_mu);
    return rc;
}

/* ---- data keys ----------------------------------------------------------------------------- */

static int wrap(const unsigned char *kek, const char *subject, const unsigned char *dek,
                unsigned char out[WRAPPED_BYTES])
{
    randombytes_buf(out, NONCE_BYTES);
    return crypto_aead_xchacha20poly1305_ietf_encrypt(out + NONCE_BYTES, NULL, dek, KEY_BYTES,
                                                      (const unsigned char *)subject,
                                                      strlen(subject), NULL, out, kek);
}

static int unwrap(const unsigned char *kek, const char *subject, const unsigned char *w,
                  size_t wlen, unsigned char dek[KEY_BYTES])
{
    if (wlen != WRAPPED_BYTES) return -1;
    return crypto_aead_xchacha20poly1305_ietf_decrypt(
        dek, NULL, NULL, w + NONCE_BYTES, wlen - NONCE_BYTES, (const unsigned char *)subject,
        strlen(subject), w, kek);
}

typedef enum { KEY_NONE, KEY_LIVE, KEY_ERASED } key_state;

/* Under db_mu: the subject's row (a wrapped key of another size is read as one of none: wlen 0,
 * which does not unwrap). */
static int read_key(ew__keyring *k, const char *subject, key_state *state,
                    unsigned char w[WRAPPED_BYTES], size_t *wlen, ew_error *err)
{
    ew__dk_state st;
    atomic_fetch_add_explicit(&k->store_reads, 1, memory_order_relaxed);
    int rc = k->ops->read(k->dk, subject, &st, w, WRAPPED_BYTES, wlen, err);
    *state = st == EW__DK_LIVE ? KEY_LIVE : st == EW__DK_ERASED ? KEY_ERASED : KEY_NONE;
    return rc;
}

/* Under db_mu, in create_keys' transaction: a new data key for subject, unless it has a row. */
static int insert_key(ew__keyring *k, const char *subject, ew_error *err)
{
    unsigned char dek[KEY_BYTES], w[WRAPPED_BYTES];
    crypto_aead_xchacha20poly1305_ietf_keygen(dek);
    wrap(k->kek, subject, dek, w);
    sodium_memzero(dek, sizeof dek);
    return k->ops->insert(k->dk, subject, w, sizeof w, err);
}

/* Under db_mu: makes the data keys of subject and of the queued subjects in batch, in one
 * transaction, for those without a row already. */
static int create_keys(ew__keyring *k, const char *subject, const wanted *batch, ew_error *err)
{
    int rc = k->ops->begin(k->dk, err);
    if (rc) return rc;
    /* A rotation by another process: wrap with the key the store knows now (and keep the next
     * rotation out until this commits). */
    char stored[65];
    int have = k->ops->fingerprint(k->dk, stored, 1, err);
    if (have > 0 && strcmp(stored, k->fingerprint) != 0 && (rc = reload_kek(k, 1, err))) goto fail;
    if (have < 0) {
        rc = have;
        goto fail;
    }
    rc = insert_key(k, subject, err);
    for (const wanted *w = batch; !rc && w; w = w->next)
        if (strcmp(w->subject, subject) != 0) rc = insert_key(k, w->subject, err);
    /* a COMMIT that fails (SQLITE_BUSY while a reader holds the file past the busy timeout, an
     * I/O error, no memory) may leave the transaction open, and with it the key store's write
     * lock, for every other connection, for good: it is rolled back like any failure */
    if (!rc) rc = k->ops->commit(k->dk, err);
    if (!rc) return 0;
fail:
    k->ops->rollback(k->dk);
    return rc;
}

/* Takes node out of the queue if it is still there. */
static void dequeue(ew__keyring *k, wanted *node)
{
    pthread_mutex_lock(&k->mu);
    for (wanted **p = &k->queue; *p; p = &(*p)->next)
        if (*p == node) {
            *p = node->next;
            break;
        }
    pthread_mutex_unlock(&k->mu);
}

/* ---- the cache ------------------------------------------------------------------------------ */

static uint64_t hash_of(const char *subject)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)subject; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    return h;
}

static slot *set_of(ew__keyring *k, uint64_t h)
{
    return &k->slots[(size_t)((h ^ h >> 32) % k->nsets) * WAYS];
}

/* Under mu: the subject's slot (fresh or not), or NULL. */
static slot *lookup(ew__keyring *k, const char *subject, uint64_t h)
{
    if (!k->slots) return NULL; /* not loaded yet */
    slot *set = set_of(k, h);
    for (int i = 0; i < WAYS; i++)
        if (set[i].used && set[i].hash == h && strcmp(set[i].subject, subject) == 0) return &set[i];
    return NULL;
}

/* Under mu: the subject's fresh slot, marked used now, or NULL. */
static slot *cache_get(ew__keyring *k, const char *subject, uint64_t h, int64_t now)
{
    slot *s = lookup(k, subject, h);
    if (!s || now - s->at_us >= k->ttl_us) return NULL;
    s->used_at = ++k->tick;
    return s;
}

/* Under mu: the slot the subject's key goes to: its own, a free one, a stale one, or the least
 * recently used of its set. */
static slot *cache_victim(ew__keyring *k, const char *subject, uint64_t h, int64_t now)
{
    slot *s = lookup(k, subject, h);
    if (s) return s;
    slot *set = set_of(k, h), *best = &set[0];
    for (int i = 0; i < WAYS; i++) {
        if (!set[i].used || now - set[i].at_us >= k->ttl_us) return &set[i];
        if (set[i].used_at < best->used_at) best = &set[i];
    }
    return best;
}

/* The subject's data key into dek, and its own_subkey() into sub: KEY_LIVE, KEY_ERASED, or
 * KEY_NONE (only when !create). */
static int get_key(ew__keyring *k, const char *subject, bool create, key_state *state,
                   unsigned char dek[KEY_BYTES], unsigned char sub[KEY_BYTES], ew_error *err)
{
    uint64_t h = hash_of(subject);
    int64_t now = ew_now_us();
    if (k->ttl_us > 0) {
        pthread_mutex_lock(&k->mu);
        const slot *s = cache_get(k, subject, h, now);
        if (s) {
            *state = s->erased ? KEY_ERASED : KEY_LIVE;
            memcpy(dek, s->dek, KEY_BYTES);
            memcpy(sub, s->sub, KEY_BYTES);
            pthread_mutex_unlock(&k->mu);
            return 0;
        }
        pthread_mutex_unlock(&k->mu);
    }
    wanted me = {.subject = subject};
    if (create) {
        pthread_mutex_lock(&k->mu);
        me.next = k->queue;
        k->queue = &me;
        pthread_mutex_unlock(&k->mu);
    }
    pthread_mutex_lock(&k->db_mu);
    int rc = load_locked(k, err);
    unsigned char w[WRAPPED_BYTES];
    size_t wlen = 0;
    if (!rc) rc = read_key(k, subject, state, w, &wlen, err);
    if (!rc && *state == KEY_NONE && create) {
        /* this thread makes its key and every key queued meanwhile */
        pthread_mutex_lock(&k->mu);
        wanted *batch = k->queue;
        k->queue = NULL;
        pthread_mutex_unlock(&k->mu);
        rc = create_keys(k, subject, batch, err);
        if (!rc) rc = read_key(k, subject, state, w, &wlen, err);
    }
    if (create) dequeue(k, &me);
    if (!rc && *state == KEY_LIVE) {
        if (unwrap(k->kek, subject, w, wlen, dek) != 0 &&
            (reload_kek(k, 0, err) != 0 || unwrap(k->kek, subject, w, wlen, dek) != 0))
            rc = ew_error_set(err, EW_ECRYPTO,
                              "the data key of subject %.64s does not unwrap with the "
                              "key-encryption key %s",
                              subject, k->key_file);
    }
    pthread_mutex_unlock(&k->db_mu);
    if (rc || *state == KEY_NONE) return rc;
    if (*state == KEY_ERASED) memset(dek, 0, KEY_BYTES);
    own_subkey(k, dek, sub);
    if (k->ttl_us > 0) {
        pthread_mutex_lock(&k->mu);
        slot *s = cache_victim(k, subject, h, now);
        s->hash = h;
        snprintf(s->subject, sizeof s->subject, "%s", subject);
        memcpy(s->dek, dek, KEY_BYTES);
        memcpy(s->sub, sub, KEY_BYTES);
        s->erased = *state == KEY_ERASED;
        s->used = true;
        s->at_us = now;
        s->used_at = ++k->tick;
        pthread_mutex_unlock(&k->mu);
    }
    return 0;
}

void ew__keyring_forget(ew__keyring *k, const char *subject)
{
    if (!k || !subject) return;
    pthread_mutex_lock(&k->mu);
    slot *s = lookup(k, subject, hash_of(subject));
    if (s) sodium_memzero(s, sizeof *s);
    pthread_mutex_unlock(&k->mu);
}

int ew__keyring_shred(ew__keyring *k, const char *subject, ew_error *err)
{
    if (!subject || !*subject || strlen(subject) > SUBJECT_MAX)
        return ew_error_set(err, EW_EINVAL, "a subject of 1 to %d bytes is required", SUBJECT_MAX);
    pthread_mutex_lock(&k->db_mu);
    int rc = load_locked(k, err);
    if (!rc) rc = k->ops->shred(k->dk, subject, err);
    pthread_mutex_unlock(&k->db_mu);
    ew__keyring_forget(k, subject);
    return rc;
}

int ew__keyring_count(ew__keyring *k, size_t *live, size_t *erased, ew_error *err)
{
    pthread_mutex_lock(&k->db_mu);
    int rc = load_locked(k, err);
    if (!rc) rc = k->ops->count(k->dk, live, erased, err);
    pthread_mutex_unlock(&k->db_mu);
    return rc;
}

/* A rotation's walk over the live keys: each unwrapped with the old key, wrapped with next. */
typedef struct rewrapping {
    ew__keyring *k;
    const unsigned char *next;
    size_t n;
    ew_error *err;
} rewrapping;

static int rewrap_one(void *ud, const char *subject, const unsigned char *w, size_t len)
{
    rewrapping *r = ud;
    unsigned char dek[KEY_BYTES], nw[WRAPPED_BYTES];
    if (unwrap(r->k->kek, subject, w, len, dek) != 0)
        return ew_error_set(r->err, EW_ECRYPTO,
                            "the data key of subject %.64s does not unwrap: nothing rotated",
                            subject);
    wrap(r->next, subject, dek, nw);
    sodium_memzero(dek, sizeof dek);
    r->n++;
    return r->k->ops->rewrap(r->k->dk, subject, nw, sizeof nw, r->err);
}

int ew__keyring_rotate(ew__keyring *k, size_t *rewrapped, ew_error *err)
{
    rewrapping r = {.k = k, .err = err};
    pthread_mutex_lock(&k->db_mu);
    int rc = load_locked(k, err);
    if (rc) goto out;
    unsigned char next[KEY_BYTES];
    crypto_aead_xchacha20poly1305_ietf_keygen(next);
    r.next = next;
    char tmp[4096 + 8], fp[65];
    snprintf(tmp, sizeof tmp, "%s.new", k->key_file);
    fingerprint_of(next, fp);
    /* The new key is on disk before the store depends on it. */
    if ((rc = write_key_file(tmp, next, false, err))) goto out_key;
    if ((rc = k->ops->begin(k->dk, err))) goto out_key;
    if ((rc = check_kek(k, 2, err))) goto rollback;
    if ((rc = k->ops->each_live(k->dk, rewrap_one, &r, err))) goto rollback;
    if ((rc = k->ops->set_fingerprint(k->dk, fp, true, err))) goto rollback;
    if ((rc = k->ops->commit(k->dk, err))) goto rollback;
    if (rename(tmp, k->key_file) != 0) {
        rc = ew_error_set(err, EW_EIO,
                          "the key store now uses the key in %s, which cannot replace %s: %s "
                          "(move it there by hand)",
                          tmp, k->key_file, strerror(errno));
        goto out_key;
    }
    memcpy(k->kek, next, KEY_BYTES);
    memcpy(k->fingerprint, fp, sizeof fp);
    goto out_key;
rollback:
    k->ops->rollback(k->dk);
    unlink(tmp);
out_key:
    sodium_memzero(next, sizeof next);
out:
    pthread_mutex_unlock(&k->db_mu);
    if (rewrapped) *rewrapped = rc ? 0 : r.n;
    return rc;
}

/* ---- sealing -------------------------------------------------------------------------------- */

/* The value of each character in base64url, -1 for the others: one load per character where a
 * chain of comparisons cost more than the cipher on short fields. */
/* clang-format off */
static const signed char b64_values[256] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 62, -1, -1,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, -1, -1, -1, -1, -1, -1,
    -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, -1, -1, -1, -1, 63,
    -1, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
};
/* clang-format on */

/* 1 to SUBJECT_MAX of A-Z a-z 0-9 - _ : @ (base64url's alphabet and two more). */
static bool subject_ok(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (n == SUBJECT_MAX || (b64_values[(unsigned char)s[n]] < 0 && s[n] != ':' && s[n] != '@'))
            return false;
    return n > 0;
}

/* Whose key encrypts the event's fields: its data's user_id, else its subject. */
static const char *subject_of(const ew_event *ev)
{
    const ew_type_info *t = ew_event_info(ev);
    const ew_field_info *f = ew_type_field(t, "user_id");
    if (f && f->kind == EW_FIELD_UUID) {
        const char *u =
            *(const char *const *)(const void *)((const char *)ew_event_data_as(ev, t->id) +
                                                 f->offset);
        if (u && *u) return u;
    }
    return ew_event_subject(ev);
}

/* The associated data: what a ciphertext belongs to, so that it cannot be moved elsewhere:
 * "ewenc1|TYPE|FIELD|SUBJECT|EVENT_ID" (truncated to cap, which every real one fits). */
static size_t aad_of(char *buf, size_t cap, const char *type, const ew_field_info *f,
                     const char *subject, const char *id)
{
    const char *parts[] = {"ewenc1", type, f->name, subject, id};
    size_t n = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        size_t l = strlen(parts[i]);
        if (i && n < cap) buf[n++] = '|';
        if (l > cap - n) l = cap - n;
        memcpy(buf + n, parts[i], l);
        n += l;
    }
    return n;
}

/* base64url without padding (RFC 4648 §5). Ciphertext is not secret: no need for libsodium's
 * constant-time codec, which costs more than the cipher on short fields. */
static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static size_t b64_encode(char *out, const unsigned char *in, size_t n)
{
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64[v >> 18];
        out[o++] = b64[(v >> 12) & 63];
        out[o++] = b64[(v >> 6) & 63];
        out[o++] = b64[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = b64[v >> 18];
        out[o++] = b64[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64[v >> 18];
        out[o++] = b64[(v >> 12) & 63];
        out[o++] = b64[(v >> 6) & 63];
    }
    out[o] = '\0';
    return o;
}

/* Decodes n characters into out (room for n * 3 / 4 bytes); -1 for a character or a length
 * that base64url without padding does not have. Four characters at a time; a bad character
 * anywhere fails the whole. */
static int b64_decode(unsigned char *out, const char *in, size_t n, size_t *outlen)
{
    if (n % 4 == 1) return -1;
    const unsigned char *p = (const unsigned char *)in;
    size_t o = 0, i = 0;
    int bad = 0; /* the values ORed: negative when one character was not base64url */
    for (; i + 4 <= n; i += 4) {
        int a = b64_values[p[i]], b = b64_values[p[i + 1]], c = b64_values[p[i + 2]],
            d = b64_values[p[i + 3]];
        bad |= a | b | c | d;
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
        out[o++] = (unsigned char)(v >> 16);
        out[o++] = (unsigned char)(v >> 8);
        out[o++] = (unsigned char)v;
    }
    uint32_t acc = 0;
    int bits = 0;
    for (; i < n; i++) {
        int v = b64_values[p[i]];
        bad |= v;
        acc = acc << 6 | (uint32_t)(v & 63);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    if (bad < 0) return -1;
    if (bits && (acc & ((1u << bits) - 1))) return -1; /* non-zero padding bits */
    *outlen = o;
    return 0;
}

/* What sealing the fields of one event needs: whose key, and its subkey for this keyring's
 * nonces (own_subkey). */
typedef struct seal_ctx {
    ew__keyring *k;
    const char *subject;
    unsigned char sub[KEY_BYTES];
} seal_ctx;

/* The fields of ev that sealing encrypts (*mask, bits by index; 0: none, and nothing else is
 * done), and the key they are encrypted under into c. */
static int seal_begin(ew__keyring *k, const ew_event *ev, uint64_t *mask, seal_ctx *c,
                      ew_error *err)
{
    const ew_type_info *t = ew_event_info(ev);
    const char *data = ew_event_data_as(ev, t->id);
    uint64_t sealed = ew__event_sealed(ev);
    *mask = 0;
    for (size_t i = 0; i < t->nfields && i < 64; i++) {
        const ew_field_info *f = &t->fields[i];
        if (!(f->flags & EW_FIELD_ENCRYPTED) || f->kind == EW_FIELD_STRLIST ||
            f->kind == EW_FIELD_INT || f->kind == EW_FIELD_BOOL || ((sealed >> i) & 1))
            continue;
        if (*(const char *const *)(const void *)(data + f->offset)) *mask |= UINT64_C(1) << i;
    }
    if (!*mask) return 0;
    const char *subject = subject_of(ev);
    if (!subject)
        return ew_error_set(err, EW_EINVAL,
                            "%s has personal data but neither a user_id nor a subject to "
                            "encrypt it for",
                            t->type);
    if (!subject_ok(subject))
        return ew_error_set(err, EW_EINVAL,
                            "%s: subject '%.64s' cannot name a data key (1 to %d of A-Z a-z 0-9 "
                            "- _ : @)",
                            t->type, subject, SUBJECT_MAX);
    key_state state;
    unsigned char dek[KEY_BYTES];
    int rc = get_key(k, subject, true, &state, dek, c->sub, err);
    if (!rc && state == KEY_ERASED) { /* a key nobody keeps */
        crypto_aead_xchacha20poly1305_ietf_keygen(dek);
        own_subkey(k, dek, c->sub);
    }
    sodium_memzero(dek, sizeof dek);
    c->k = k;
    c->subject = subject;
    return rc;
}

/* Appends field f of ev, plaintext p, sealed: "ewenc1.SUBJECT.BASE64URL" of the nonce, the
 * ciphertext and the tag. */
static int seal_field(seal_ctx *c, const ew_event *ev, const ew_field_info *f, const char *p,
                      ew_buf *text, ew_error *err)
{
    size_t plen = strlen(p), clen = NONCE_BYTES + plen + TAG_BYTES;
    unsigned char stack[1024], *ct = clen <= sizeof stack ? stack : malloc(clen);
    if (!ct) return ew_error_set(err, EW_ENOMEM, "out of memory");
    char aad[512];
    size_t alen = aad_of(aad, sizeof aad, ew_event_type(ev), f, c->subject, ew_event_id(ev));
    next_nonce(c->k, ct);
    unsigned char n12[crypto_aead_chacha20poly1305_ietf_NPUBBYTES] = {0};
    memcpy(n12 + 4, ct + NONCE_BYTES - 8, 8);
    ew__aead_encrypt(ct + NONCE_BYTES, (const unsigned char *)p, plen, (const unsigned char *)aad,
                     alen, n12, c->sub);
    ew_buf_puts(text, EW__SEALED_PREFIX);
    ew_buf_puts(text, c->subject);
    ew_buf_putc(text, '.');
    if (!ew_buf_reserve(text, clen * 4 / 3 + 4))
        text->len += b64_encode(text->data + text->len, ct, clen);
    if (ct != stack) free(ct);
    return text->oom ? ew_error_set(err, EW_ENOMEM, "out of memory") : 0;
}

int ew__keyring_seal(ew__keyring *k, const ew_event *ev, ew_event **out, ew_error *err)
{
    uint64_t mask;
    seal_ctx c;
    int rc = seal_begin(k, ev, &mask, &c, err);
    if (rc || !mask) {
        if (!rc) *out = ew_event_ref(ev);
        return rc;
    }
    const ew_type_info *t = ew_event_info(ev);
    const char *data = ew_event_data_as(ev, t->id);
    const char *values[64];
    ew_buf text;
    ew_buf_init(&text);
    ew_buf_reserve(&text, 512); /* the fields of most events, in one allocation */
    size_t offs[64];
    for (size_t i = 0; !rc && i < t->nfields && i < 64; i++) {
        if (!((mask >> i) & 1)) continue;
        const ew_field_info *f = &t->fields[i];
        offs[i] = text.len;
        rc = seal_field(&c, ev, f, *(const char *const *)(const void *)(data + f->offset), &text,
                        err);
        ew_buf_putc(&text, '\0'); /* the values are NUL-separated */
    }
    sodium_memzero(c.sub, sizeof c.sub);
    if (!rc && text.oom) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    if (!rc) {
        for (size_t i = 0; i < t->nfields && i < 64; i++)
            if ((mask >> i) & 1) values[i] = text.data + offs[i];
        rc = ew__event_replace(ev, mask, values, mask, 0, out, err);
    }
    ew_buf_release(&text);
    return rc;
}

/* ew__sealer's seal(): the sealed field as a JSON string. Its characters (the prefix, a subject
 * that subject_ok() passed, base64url) need no escaping: the bytes are those ew_event_encode()
 * writes for the sealed event. */
static int seal_json(void *ud, const ew_event *ev, const ew_field_info *f, const char *p, ew_buf *b,
                     ew_error *err)
{
    ew_buf_putc(b, '"');
    int rc = seal_field(ud, ev, f, p, b, err);
    ew_buf_putc(b, '"');
    return rc;
}

int ew__keyring_encode(ew__keyring *k, const ew_event *ev, char **out, size_t *out_len,
                       ew_error *err)
{
    uint64_t mask;
    seal_ctx c;
    int rc = seal_begin(k, ev, &mask, &c, err);
    if (rc) return rc;
    if (!mask) return ew_event_encode(ev, out, out_len, err);
    ew__sealer s = {.fields = mask, .seal = seal_json, .ud = &c};
    rc = ew__event_encode_sealed(ev, &s, out, out_len, err);
    sodium_memzero(c.sub, sizeof c.sub);
    return rc;
}

/* Has ev personal or secret fields in clear, which sealing encrypts? */
static bool has_clear_fields(const ew_event *ev)
{
    const ew_type_info *t = ew_event_info(ev);
    const char *data = ew_event_data_as(ev, t->id);
    uint64_t sealed = ew__event_sealed(ev);
    for (size_t i = 0; i < t->nfields && i < 64; i++) {
        const ew_field_info *f = &t->fields[i];
        if (!(f->flags & EW_FIELD_ENCRYPTED) || f->kind == EW_FIELD_STRLIST ||
            f->kind == EW_FIELD_INT || f->kind == EW_FIELD_BOOL || ((sealed >> i) & 1))
            continue;
        if (*(const char *const *)(const void *)(data + f->offset)) return true;
    }
    return false;
}

/* Is subject's key in the cache, fresh? */
static bool cached(ew__keyring *k, const char *subject)
{
    if (k->ttl_us <= 0) return false;
    pthread_mutex_lock(&k->mu);
    bool yes = cache_get(k, subject, hash_of(subject), ew_now_us()) != NULL;
    pthread_mutex_unlock(&k->mu);
    return yes;
}

int ew__keyring_ready(ew__keyring *k, const char *const *subjects, size_t n, ew_error *err)
{
    if (!k || !n) return 0;
    for (size_t i = 0; i < n; i++)
        if (!subjects[i] || !subject_ok(subjects[i]))
            return ew_error_set(err, EW_EINVAL, "no data key can be named after subject %zu", i);
    int rc = 0;
    if (n >= 2) { /* every key queued (these, and other threads' meanwhile) in one transaction */
        wanted *w = calloc(n, sizeof *w);
        if (!w) return ew_error_set(err, EW_ENOMEM, "out of memory");
        pthread_mutex_lock(&k->mu);
        for (size_t i = 0; i < n; i++) {
            w[i] = (wanted){.next = k->queue, .subject = subjects[i]};
            k->queue = &w[i];
        }
        pthread_mutex_unlock(&k->mu);
        pthread_mutex_lock(&k->db_mu);
        rc = load_locked(k, err);
        pthread_mutex_lock(&k->mu);
        wanted *batch = k->queue;
        k->queue = NULL;
        pthread_mutex_unlock(&k->mu);
        if (!rc) rc = create_keys(k, subjects[0], batch, err);
        pthread_mutex_unlock(&k->db_mu);
        for (size_t i = 0; i < n; i++) /* taken above; a failed load left them queued */
            dequeue(k, &w[i]);
        free(w);
    }
    /* each key into the cache (read, or made when n is 1: queued, one commit for many) */
    key_state state;
    unsigned char dek[KEY_BYTES], sub[KEY_BYTES];
    for (size_t i = 0; !rc && i < n; i++)
        rc = get_key(k, subjects[i], true, &state, dek, sub, err);
    sodium_memzero(dek, sizeof dek);
    sodium_memzero(sub, sizeof sub);
    return rc;
}

int ew__keyring_prepare(ew__keyring *k, const ew_event *const *evs, size_t n, ew_error *err)
{
    if (!k || n < 2) return 0;
    wanted *w = calloc(n, sizeof *w);
    if (!w) return ew_error_set(err, EW_ENOMEM, "out of memory");
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (!has_clear_fields(evs[i])) continue;
        const char *subject = subject_of(evs[i]);
        /* a bad or missing subject is sealing's to report, event by event */
        if (!subject || !subject_ok(subject) || cached(k, subject)) continue;
        w[m++].subject = subject;
    }
    int rc = 0;
    if (m >= 2) {
        pthread_mutex_lock(&k->mu);
        for (size_t j = 0; j < m; j++) {
            w[j].next = k->queue;
            k->queue = &w[j];
        }
        pthread_mutex_unlock(&k->mu);
        pthread_mutex_lock(&k->db_mu);
        rc = load_locked(k, err);
        /* every key queued (ours, and other threads' meanwhile), in one transaction: those
         * with a row already are left as they are */
        pthread_mutex_lock(&k->mu);
        wanted *batch = k->queue;
        k->queue = NULL;
        pthread_mutex_unlock(&k->mu);
        if (!rc) rc = create_keys(k, w[0].subject, batch, err);
        pthread_mutex_unlock(&k->db_mu);
        for (size_t j = 0; j < m; j++) /* taken above; a failed load left them queued */
            dequeue(k, &w[j]);
    }
    free(w);
    return rc;
}

/* What opening the fields of one event needs. Its fields are nearly always one subject's: the
 * key is looked up once. */
typedef struct open_ctx {
    ew__keyring *k;
    char last[SUBJECT_MAX + 1]; /* the subject of dek, or "" */
    key_state state;
    /* dek's subkey for this keyring's nonce prefix, and for the last other prefix met (the
     * publisher's: every field it encrypted has it) */
    unsigned char dek[KEY_BYTES], sub[KEY_BYTES], other[KEY_BYTES], other_prefix[NONCE_BYTES - 8];
    bool have_other;
} open_ctx;

static void open_end(open_ctx *c)
{
    sodium_memzero(c->dek, sizeof c->dek);
    sodium_memzero(c->sub, sizeof c->sub);
    sodium_memzero(c->other, sizeof c->other);
}

/* Appends the plaintext of field f (of an event of this type and id), sealed as tok, and a
 * NUL: 0; 1 when its subject's key was destroyed (nothing appended); < 0 with err. */
static int open_field(open_ctx *c, const char *type, const ew_field_info *f, const char *id,
                      const char *tok, ew_buf *text, ew_error *err)
{
    const char *subj = tok + sizeof EW__SEALED_PREFIX - 1, *dot = strchr(subj, '.');
    char subject[SUBJECT_MAX + 1];
    if (!dot || dot == subj || (size_t)(dot - subj) > SUBJECT_MAX)
        return ew_error_set(err, EW_ECRYPTO,
                            "%s: data.%s is not " EW__SEALED_PREFIX "SUBJECT.CIPHERTEXT", type,
                            f->name);
    memcpy(subject, subj, (size_t)(dot - subj));
    subject[dot - subj] = '\0';
    const char *enc = dot + 1;
    size_t enclen = strlen(enc), cap = enclen * 3 / 4 + 3, clen = 0;
    unsigned char stack[1024], *ct = cap <= sizeof stack ? stack : malloc(cap);
    if (!ct) return ew_error_set(err, EW_ENOMEM, "out of memory");
    int rc = 0;
    if (b64_decode(ct, enc, enclen, &clen) != 0 || clen < NONCE_BYTES + TAG_BYTES)
        rc = ew_error_set(err, EW_ECRYPTO, "%s: data.%s: the ciphertext is not base64url", type,
                          f->name);
    if (!rc && strcmp(subject, c->last) != 0) {
        if (!(rc = get_key(c->k, subject, false, &c->state, c->dek, c->sub, err)))
            memcpy(c->last, subject, sizeof c->last);
        c->have_other = false;
    }
    if (!rc && c->state == KEY_NONE)
        rc = ew_error_set(err, EW_ECRYPTO,
                          "%s: data.%s is encrypted for subject %.64s, whose key this key store "
                          "never had",
                          type, f->name, subject);
    if (!rc && c->state == KEY_ERASED) rc = 1;
    if (!rc) {
        size_t plen = clen - NONCE_BYTES - TAG_BYTES;
        char aad[512];
        size_t alen = aad_of(aad, sizeof aad, type, f, subject, id);
        /* the field's nonce is ct's first 24 bytes: its prefix picks the subkey */
        const unsigned char *key = c->sub;
        if (memcmp(ct, c->k->nonce_prefix, sizeof c->k->nonce_prefix) != 0) {
            if (!c->have_other || memcmp(ct, c->other_prefix, sizeof c->other_prefix) != 0) {
                crypto_core_hchacha20(c->other, ct, c->dek, NULL);
                memcpy(c->other_prefix, ct, sizeof c->other_prefix);
                c->have_other = true;
            }
            key = c->other;
        }
        unsigned char n12[crypto_aead_chacha20poly1305_ietf_NPUBBYTES] = {0};
        memcpy(n12 + 4, ct + NONCE_BYTES - 8, 8);
        if (ew_buf_reserve(text, plen + 1)) {
            rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        } else if (ew__aead_decrypt((unsigned char *)text->data + text->len, ct + NONCE_BYTES,
                                    clen - NONCE_BYTES, (const unsigned char *)aad, alen, n12,
                                    key) != 0) {
            rc = ew_error_set(err, EW_ECRYPTO,
                              "%s: data.%s does not authenticate under subject %.64s's key "
                              "(tampered, or moved from another event or field)",
                              type, f->name, subject);
        } else if (memchr(text->data + text->len, '\0', plen)) {
            rc = ew_error_set(err, EW_EDATA, "%s: data.%s holds a NUL", type, f->name);
        } else {
            text->data[text->len + plen] = '\0';
            text->len += plen + 1;
        }
    }
    if (ct != stack) free(ct);
    return rc;
}

int ew__keyring_unseal(ew__keyring *k, const ew_event *ev, ew_event **out, ew_error *err)
{
    const ew_type_info *t = ew_event_info(ev);
    const char *data = ew_event_data_as(ev, t->id);
    uint64_t mask = ew__event_sealed(ev), erased = 0;
    if (!mask) {
        *out = ew_event_ref(ev);
        return 0;
    }
    const char *values[64];
    ew_buf text;
    ew_buf_init(&text);
    size_t offs[64];
    int rc = 0;
    open_ctx c = {.k = k, .state = KEY_NONE};
    for (size_t i = 0; !rc && i < t->nfields && i < 64; i++) {
        if (!((mask >> i) & 1)) continue;
        const ew_field_info *f = &t->fields[i];
        offs[i] = text.len;
        rc = open_field(&c, t->type, f, ew_event_id(ev),
                        *(const char *const *)(const void *)(data + f->offset), &text, err);
        if (rc == 1) {
            rc = 0;
            erased |= UINT64_C(1) << i;
            values[i] = f->kind == EW_FIELD_OBJECT ? "{}" : "";
        }
    }
    open_end(&c);
    if (!rc) {
        for (size_t i = 0; i < t->nfields && i < 64; i++)
            if (((mask >> i) & 1) && !((erased >> i) & 1)) values[i] = text.data + offs[i];
        rc = ew__event_replace(ev, mask, values, 0, erased, out, err);
        /* the ciphertext as it came stays with the plaintext: what its tag covers, what a dead
         * letter of it keeps */
        if (!rc) ew__event_keep_received(*out, ev);
    }
    if (text.data) sodium_memzero(text.data, text.len);
    ew_buf_release(&text);
    return rc;
}

/* ew__opener's open(). */
static int open_json(void *ud, const ew_type_info *t, const ew_field_info *f, const char *id,
                     const char *token, ew_buf *plain, ew_error *err)
{
    return open_field(ud, t->type, f, id, token, plain, err);
}

int ew__keyring_decode(ew__keyring *k, const char *json, size_t len, const ew_decode_opts *opts,
                       ew_event **out, ew_error *err)
{
    open_ctx c = {.k = k, .state = KEY_NONE};
    ew__opener o = {.open = open_json, .ud = &c};
    ew_event *ev;
    int rc = ew__event_decode_opened(&ev, json, len, opts, &o, err);
    open_end(&c);
    if (rc) return rc;
    if (ew_event_encrypted(ev)) { /* upcast from an older version: opened as upcast */
        ew_event *plain;
        rc = ew__keyring_unseal(k, ev, &plain, err);
        ew_event_unref(ev);
        if (rc) return rc;
        ev = plain;
    }
    *out = ev;
    return 0;
}
