/* eventwire — the keyring (keyring.h): the key-encryption key, the key store of wrapped data
 * keys (SQLite or PostgreSQL, through datakeys.h), a bounded cache of unwrapped ones, and which
 * key seals an event. The sealing and unsealing of events is keyring_seal.c's. */
#include "security/keyring.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include "catalog/event_internal.h"
#include "core/base64.h"
#include "core/buf.h"
#include "core/files.h"
#include "eventwire/clock.h"
#include "security/keyfile.h"
#include "security/keyring_impl.h"
#include "security/keys_postgres.h"

void ew__keyring_set_nonces(ew__keyring *k, const unsigned char prefix[16], uint64_t next)
{
    pthread_mutex_lock(&k->mu);
    memcpy(k->nonce_prefix, prefix, sizeof k->nonce_prefix);
    atomic_store(&k->nonce_seq, next);
    if (k->slots) /* their subkeys are of the old prefix */
        sodium_memzero(k->slots, k->nsets * WAYS * sizeof *k->slots);
    pthread_mutex_unlock(&k->mu);
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

/* The subject's hash, eight bytes at a time: it picks the subject's set and is compared before
 * the subject itself. Not keyed: subjects that share a set only evict each other sooner. */
static uint64_t hash_of(const char *subject)
{
    size_t n = strlen(subject);
    uint64_t h = UINT64_C(0x9E3779B97F4A7C15) ^ n, w;
    for (; n >= 8; n -= 8, subject += 8) {
        memcpy(&w, subject, 8);
        h = (h ^ w) * UINT64_C(0xff51afd7ed558ccd);
        h ^= h >> 32;
    }
    w = 0;
    memcpy(&w, subject, n);
    h = (h ^ w) * UINT64_C(0xc4ceb9fe1a85ec53);
    return h ^ h >> 29;
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
int ew__keyring_get_key(ew__keyring *k, const char *subject, bool create, key_state *state,
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

/* ---- which key seals an event ------------------------------------------------------------- */

/* The length of subject when it can name a data key: 1 to SUBJECT_MAX of A-Z a-z 0-9 - _ : @
 * (base64url's alphabet and two more); else 0. */
size_t ew__keyring_subject_len(const char *s)
{
    size_t n = 0;
    for (unsigned char c; n <= SUBJECT_MAX && (c = (unsigned char)s[n]) != '\0'; n++)
        if (!ew__b64url_char(c) && c != ':' && c != '@') return 0;
    return n <= SUBJECT_MAX ? n : 0;
}

/* Whose key encrypts the event's fields: its data's user_id, else its subject. */
const char *ew__keyring_subject_of(const ew_event *ev)
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

/* The personal or secret fields of ev in clear, which sealing encrypts (bits by index; 0: none). */
uint64_t ew__keyring_clear_fields(const ew_event *ev)
{
    const ew_type_info *t = ew_event_info(ev);
    const char *data = ew_event_data_as(ev, t->id);
    uint64_t sealed = ew__event_sealed(ev), mask = 0;
    for (size_t i = 0; i < t->nfields && i < 64; i++) {
        const ew_field_info *f = &t->fields[i];
        if (!(f->flags & EW_FIELD_ENCRYPTED) || f->kind == EW_FIELD_STRLIST ||
            f->kind == EW_FIELD_INT || f->kind == EW_FIELD_BOOL || ((sealed >> i) & 1))
            continue;
        if (*(const char *const *)(const void *)(data + f->offset)) mask |= UINT64_C(1) << i;
    }
    return mask;
}

/* The keys of the subjects of w[0..n) made in one transaction, with every other key queued by
 * other threads meanwhile; those with a row already are left as they are. */
static int create_wanted(ew__keyring *k, wanted *w, size_t n, ew_error *err)
{
    pthread_mutex_lock(&k->mu);
    for (size_t i = 0; i < n; i++) {
        w[i].next = k->queue;
        k->queue = &w[i];
    }
    pthread_mutex_unlock(&k->mu);
    pthread_mutex_lock(&k->db_mu);
    int rc = load_locked(k, err);
    pthread_mutex_lock(&k->mu);
    wanted *batch = k->queue;
    k->queue = NULL;
    pthread_mutex_unlock(&k->mu);
    if (!rc) rc = create_keys(k, w[0].subject, batch, err);
    pthread_mutex_unlock(&k->db_mu);
    for (size_t i = 0; i < n; i++) /* taken above; a failed load left them queued */
        dequeue(k, &w[i]);
    return rc;
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
        if (!subjects[i] || !ew__keyring_subject_len(subjects[i]))
            return ew_error_set(err, EW_EINVAL, "no data key can be named after subject %zu", i);
    int rc = 0;
    if (n >= 2) {
        wanted *w = calloc(n, sizeof *w);
        if (!w) return ew_error_set(err, EW_ENOMEM, "out of memory");
        for (size_t i = 0; i < n; i++)
            w[i].subject = subjects[i];
        rc = create_wanted(k, w, n, err);
        free(w);
    }
    /* each key into the cache (read, or made when n is 1: queued, one commit for many) */
    key_state state;
    unsigned char dek[KEY_BYTES], sub[KEY_BYTES];
    for (size_t i = 0; !rc && i < n; i++)
        rc = ew__keyring_get_key(k, subjects[i], true, &state, dek, sub, err);
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
        if (!ew__keyring_clear_fields(evs[i])) continue;
        const char *subject = ew__keyring_subject_of(evs[i]);
        /* a bad or missing subject is sealing's to report, event by event */
        if (!subject || !ew__keyring_subject_len(subject) || cached(k, subject)) continue;
        w[m++].subject = subject;
    }
    int rc = m >= 2 ? create_wanted(k, w, m, err) : 0;
    free(w);
    return rc;
}
