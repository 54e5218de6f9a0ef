/* eventwire — the tamper-evident audit trail (eventwire/audit.h). */
#include "eventwire/audit.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "eventwire/clock.h"
#include "security/keyfile.h"
#include "core/files.h"
#include "store/handle.h"

#define ZERO_HASH "0000000000000000000000000000000000000000000000000000000000000000"

static const char *const schema[] = {
    "CREATE TABLE IF NOT EXISTS event_store.audit_log ("
    " seq BIGINT PRIMARY KEY, recorded_at TEXT NOT NULL, actor TEXT NOT NULL,"
    " action TEXT NOT NULL, subject TEXT, details TEXT,"
    " prev_hash TEXT NOT NULL, hash TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS event_store.audit_head ("
    " id INTEGER PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS event_store.audit_checkpoints ("
    " seq BIGINT PRIMARY KEY, hash TEXT NOT NULL, signed_at TEXT NOT NULL,"
    " service TEXT NOT NULL, public_key TEXT NOT NULL, signature TEXT NOT NULL)",
    "INSERT INTO event_store.audit_head (id, seq, hash) VALUES (1, 0, '" ZERO_HASH "')"
    " ON CONFLICT DO NOTHING",
};

struct ew_audit {
    ew_store *db;
    char *service;
    unsigned char sk[crypto_sign_SECRETKEYBYTES];
    unsigned char pk[crypto_sign_PUBLICKEYBYTES];
    pthread_mutex_t mu;       /* one ew_audit_append or checkpoint at a time */
    pthread_mutex_t state_mu; /* guards unsigned_from; never held while waiting for the store */
    int64_t unsigned_from;    /* entries after the last checkpoint, by this process: the first */
};

/* ---- the hash and the signature ------------------------------------------------------------ */

static void put_u64(crypto_generichash_state *h, uint64_t v)
{
    unsigned char b[8];
    for (int i = 7; i >= 0; i--, v >>= 8)
        b[i] = (unsigned char)v;
    crypto_generichash_update(h, b, 8);
}

/* A field: present or not, its length, its bytes — so that no two entries hash alike by moving
 * bytes from one field to the next. */
static void put_field(crypto_generichash_state *h, const char *s)
{
    unsigned char present = s != NULL;
    crypto_generichash_update(h, &present, 1);
    if (!s) return;
    size_t n = strlen(s);
    put_u64(h, n);
    crypto_generichash_update(h, (const unsigned char *)s, n);
}

/* hash = BLAKE2b-256(prev || seq || recorded_at || actor || action || subject || details), hex */
static bool entry_hash(const char *prev_hex, int64_t seq, const char *recorded_at,
                       const char *actor, const char *action, const char *subject,
                       const char *details, char out[65])
{
    unsigned char prev[32], h[32];
    if (!prev_hex || strlen(prev_hex) != 64 ||
        sodium_hex2bin(prev, sizeof prev, prev_hex, 64, NULL, NULL, NULL) != 0)
        return false;
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, sizeof h);
    crypto_generichash_update(&st, prev, sizeof prev);
    put_u64(&st, (uint64_t)seq);
    put_field(&st, recorded_at);
    put_field(&st, actor);
    put_field(&st, action);
    put_field(&st, subject);
    put_field(&st, details);
    crypto_generichash_final(&st, h, sizeof h);
    sodium_bin2hex(out, 65, h, sizeof h);
    return true;
}

/* What a checkpoint signs: a domain tag, the service, the seq and the hash at it. */
static size_t checkpoint_message(unsigned char *m, size_t cap, const char *service, int64_t seq,
                                 const char *hash_hex)
{
    static const char tag[] = "eventwire audit checkpoint v1";
    size_t sl = strlen(service), n = 0;
    if (sizeof tag + sl + 8 + 32 > cap) return 0;
    memcpy(m, tag, sizeof tag); /* with its NUL: the tag ends there */
    n += sizeof tag;
    memcpy(m + n, service, sl);
    m[n + sl] = 0;
    n += sl + 1;
    for (int i = 7; i >= 0; i--)
        m[n + (size_t)(7 - i)] = (unsigned char)((uint64_t)seq >> (8 * i));
    n += 8;
    if (sodium_hex2bin(m + n, 32, hash_hex, strlen(hash_hex), NULL, NULL, NULL) != 0) return 0;
    return n + 32;
}

/* ---- the key file -------------------------------------------------------------------------- */

static int load_or_make_key(ew_audit *a, const char *key_file, ew_error *err)
{
    int fd = open(key_file, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        struct stat st;
        unsigned char buf[sizeof a->sk + 1]; /* one byte more: a longer file is seen as such */
        ssize_t n = -1;
        if (fstat(fd, &st) == 0 && (st.st_mode & 077) == 0 && st.st_uid == geteuid())
            n = read(fd, buf, sizeof buf);
        close(fd);
        if (n < 0)
            return ew_error_set(err, EW_ECONFIG,
                                "audit key %s: must be a file of this user's, mode 0600", key_file);
        int rc = ew__audit_key_parse(key_file, buf, (size_t)n, a->sk, a->pk, err);
        sodium_memzero(buf, sizeof buf);
        return rc;
    }
    if (errno != ENOENT)
        return ew_error_set(err, EW_ECONFIG, "audit key %s: %s", key_file, strerror(errno));
    if (ew_mkdirs_for(key_file))
        return ew_error_set(err, EW_ECONFIG, "audit key %s: cannot make its folder: %s", key_file,
                            strerror(errno));
    crypto_sign_keypair(a->pk, a->sk);
    int made = ew_file_write_new(key_file, a->sk, sizeof a->sk, 0600);
    if (made < 0)
        return ew_error_set(err, EW_ECONFIG, "audit key %s: cannot write it: %s", key_file,
                            strerror(errno));
    if (made) return load_or_make_key(a, key_file, err); /* another process made it first */
    char pub[4096 + 8], hex[EW_AUDIT_PUBLIC_KEY_HEX + 2];
    snprintf(pub, sizeof pub, "%s.pub", key_file);
    sodium_bin2hex(hex, sizeof hex, a->pk, sizeof a->pk);
    size_t len = strlen(hex);
    hex[len++] = '\n';
    /* the public key is no secret: 0644 (in the key's 0700 folder), whatever the umask */
    if (ew_file_replace(pub, hex, len, 0644))
        return ew_error_set(err, EW_ECONFIG, "audit key %s: cannot write it: %s", pub,
                            strerror(errno));
    return 0;
}

/* ---- writing ------------------------------------------------------------------------------- */

typedef struct head {
    int64_t seq;
    char hash[65];
} head;

static int read_head(void *ud, const ew_row *row)
{
    head *h = ud;
    if (row->ncols >= 2 && row->values[0] && row->values[1]) {
        h->seq = strtoll(row->values[0], NULL, 10);
        snprintf(h->hash, sizeof h->hash, "%s", row->values[1]);
    }
    return 0;
}

static int sign_in(ew_audit *a, ew_txn *t, int64_t seq, const char *hash, ew_error *err)
{
    unsigned char m[256], sig[crypto_sign_BYTES];
    size_t n = checkpoint_message(m, sizeof m, a->service, seq, hash);
    if (!n) return ew_error_set(err, EW_EINVAL, "audit: the service name is too long to sign");
    crypto_sign_detached(sig, NULL, m, n, a->sk);
    char sig_hex[2 * crypto_sign_BYTES + 1], pk_hex[EW_AUDIT_PUBLIC_KEY_HEX + 1], seq_s[24],
        now[EW_TIME_LEN + 1];
    sodium_bin2hex(sig_hex, sizeof sig_hex, sig, sizeof sig);
    sodium_bin2hex(pk_hex, sizeof pk_hex, a->pk, sizeof a->pk);
    snprintf(seq_s, sizeof seq_s, "%lld", (long long)seq);
    ew_time_format(ew_now_us(), now);
    const char *p[] = {seq_s, hash, now, a->service, pk_hex, sig_hex};
    return ew_txn_exec(t,
                       "INSERT INTO event_store.audit_checkpoints (seq, hash, signed_at, service,"
                       " public_key, signature) VALUES ($1, $2, $3, $4, $5, $6)"
                       " ON CONFLICT DO NOTHING",
                       p, 6, NULL, err);
}

/* The entry, written in t: the head moves on (its row lock orders appends, across processes
 * too), and every EW_AUDIT_CHECKPOINT_EVERY entries it is signed. *seq gets its number. */
static int append_in(ew_audit *a, ew_txn *t, const char *actor, const char *action,
                     const char *subject, const char *details, int64_t *seq, bool *signed_now,
                     ew_error *err)
{
    head h = {0};
    int rc = ew_txn_exec(t, "UPDATE event_store.audit_head SET seq = seq + 1 WHERE id = 1", NULL, 0,
                         NULL, err);
    if (!rc)
        rc = ew_txn_query(t, "SELECT seq, hash FROM event_store.audit_head WHERE id = 1", NULL, 0,
                          read_head, &h, err);
    if (!rc && h.seq < 1) rc = ew_error_set(err, EW_ESTATE, "audit: the chain has no head");
    char now[EW_TIME_LEN + 1], hash[65], seq_s[24];
    if (!rc) {
        ew_time_format(ew_now_us(), now);
        snprintf(seq_s, sizeof seq_s, "%lld", (long long)h.seq);
        if (!entry_hash(h.hash, h.seq, now, actor, action, subject, details, hash))
            rc = ew_error_set(err, EW_ESTATE, "audit: the chain's head hash is malformed");
    }
    if (!rc) {
        const char *p[] = {seq_s, now, actor, action, subject, details, h.hash, hash};
        rc = ew_txn_exec(t,
                         "INSERT INTO event_store.audit_log (seq, recorded_at, actor, action,"
                         " subject, details, prev_hash, hash)"
                         " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                         p, 8, NULL, err);
    }
    if (!rc) {
        const char *p[] = {hash};
        rc = ew_txn_exec(t, "UPDATE event_store.audit_head SET hash = $1 WHERE id = 1", p, 1, NULL,
                         err);
    }
    *signed_now = false;
    if (!rc && h.seq % EW_AUDIT_CHECKPOINT_EVERY == 0) {
        rc = sign_in(a, t, h.seq, hash, err);
        *signed_now = true;
    }
    *seq = h.seq;
    return rc;
}

/* After entry seq was written: whether the head needs signing when the chain closes. */
static void note_unsigned(ew_audit *a, int64_t seq, bool signed_now)
{
    pthread_mutex_lock(&a->state_mu);
    if (signed_now)
        a->unsigned_from = 0;
    else if (!a->unsigned_from)
        a->unsigned_from = seq;
    pthread_mutex_unlock(&a->state_mu);
}

static int entry_check(const ew_audit *a, const char *actor, const char *action, ew_error *err)
{
    if (!a || !actor || !*actor || !action || !*action)
        return ew_error_set(err, EW_EINVAL, "an audit entry needs an actor and an action");
    return 0;
}

int ew_audit_append(ew_audit *a, const char *actor, const char *action, const char *subject,
                    const char *details, int64_t *seq, ew_error *err)
{
    int rc = entry_check(a, actor, action, err);
    if (rc) return rc;
    pthread_mutex_lock(&a->mu);
    ew_txn *t;
    int64_t n = 0;
    bool signed_now = false;
    if ((rc = ew_store_begin(a->db, &t, err))) goto out;
    rc = append_in(a, t, actor, action, subject, details, &n, &signed_now, err);
    if (rc) {
        ew_txn_rollback(t);
        goto out;
    }
    if (!(rc = ew_txn_commit(t, err))) {
        note_unsigned(a, n, signed_now);
        if (seq) *seq = n;
    }
out:
    pthread_mutex_unlock(&a->mu);
    return rc;
}

int ew_audit_append_in(ew_audit *a, ew_txn *t, const char *actor, const char *action,
                       const char *subject, const char *details, int64_t *seq, ew_error *err)
{
    int rc = entry_check(a, actor, action, err);
    if (rc) return rc;
    if (!t || t->s != a->db)
        return ew_error_set(err, EW_EINVAL,
                            "an audit entry in a transaction: one on the chain's own store");
    /* Not a->mu: ew_audit_append takes it and then waits for the store, which t holds. t's
     * hold on the store is what serialises this append with the others. */
    int64_t n = 0;
    bool signed_now = false;
    rc = append_in(a, t, actor, action, subject, details, &n, &signed_now, err);
    if (rc) return rc;
    /* t may still be rolled back: then the chain's head is signed once more than needed */
    note_unsigned(a, n, signed_now);
    if (seq) *seq = n;
    return 0;
}

int ew_audit_checkpoint(ew_audit *a, ew_error *err)
{
    pthread_mutex_lock(&a->mu);
    ew_txn *t;
    int rc = ew_store_begin(a->db, &t, err);
    head h = {0};
    if (!rc)
        rc = ew_txn_query(t, "SELECT seq, hash FROM event_store.audit_head WHERE id = 1", NULL, 0,
                          read_head, &h, err);
    if (!rc && h.seq > 0) rc = sign_in(a, t, h.seq, h.hash, err);
    if (rc)
        ew_txn_rollback(t);
    else if (!(rc = ew_txn_commit(t, err))) {
        pthread_mutex_lock(&a->state_mu);
        a->unsigned_from = 0;
        pthread_mutex_unlock(&a->state_mu);
    }
    pthread_mutex_unlock(&a->mu);
    return rc;
}

int ew_audit_open(ew_audit **out, ew_store *db, const char *service, const char *key_file,
                  ew_error *err)
{
    *out = NULL;
    if (!db || !service || !*service || !key_file || !*key_file)
        return ew_error_set(err, EW_EINVAL, "ew_audit_open: a store, a service and a key file");
    if (sodium_init() < 0) return ew_error_set(err, EW_ENOMEM, "libsodium did not start");
    ew_audit *a = calloc(1, sizeof *a);
    if (!a || !(a->service = strdup(service))) {
        free(a);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    a->db = db;
    pthread_mutex_init(&a->mu, NULL);
    pthread_mutex_init(&a->state_mu, NULL);
    int rc = load_or_make_key(a, key_file, err);
    ew_txn *t = NULL;
    if (!rc) rc = ew_store_begin(db, &t, err);
    for (size_t i = 0; !rc && i < sizeof schema / sizeof schema[0]; i++)
        rc = ew_txn_exec(t, schema[i], NULL, 0, NULL, err);
    if (t) {
        if (rc)
            ew_txn_rollback(t);
        else
            rc = ew_txn_commit(t, err);
    }
    if (rc) {
        sodium_memzero(a->sk, sizeof a->sk);
        pthread_mutex_destroy(&a->state_mu);
        pthread_mutex_destroy(&a->mu);
        free(a->service);
        free(a);
        return rc;
    }
    *out = a;
    return 0;
}

void ew_audit_close(ew_audit *a)
{
    if (!a) return;
    if (a->unsigned_from) ew_audit_checkpoint(a, NULL);
    sodium_memzero(a->sk, sizeof a->sk);
    pthread_mutex_destroy(&a->state_mu);
    pthread_mutex_destroy(&a->mu);
    free(a->service);
    free(a);
}

/* ---- reading ------------------------------------------------------------------------------- */

typedef struct lister {
    ew_audit_fn fn;
    void *ud;
    int stopped;
} lister;

static int list_row(void *ud, const ew_row *row)
{
    lister *l = ud;
    if (row->ncols < 8) return 0;
    ew_audit_entry e = {.seq = strtoll(row->values[0] ? row->values[0] : "0", NULL, 10),
                        .recorded_at = row->values[1],
                        .actor = row->values[2],
                        .action = row->values[3],
                        .subject = row->values[4],
                        .details = row->values[5],
                        .prev_hash = row->values[6],
                        .hash = row->values[7]};
    int rc = l->fn(l->ud, &e);
    if (rc) l->stopped = rc;
    return rc;
}

static int has_tables(ew_store *db, ew_txn *t, int *yes, ew_error *err);

int ew_audit_list(ew_store *db, const char *subject, int64_t since_us, ew_audit_fn fn, void *ud,
                  ew_error *err)
{
    ew_txn *t;
    int rc = ew_store_begin(db, &t, err);
    if (rc) return rc;
    int yes = 0;
    rc = has_tables(db, t, &yes, err);
    char since[EW_TIME_LEN + 1] = "";
    if (since_us > 0) ew_time_format(since_us, since);
    lister l = {fn, ud, 0};
    if (!rc && yes) {
        const char *p[] = {subject, since};
        rc = ew_txn_query(t,
                          "SELECT seq, recorded_at, actor, action, subject, details, prev_hash,"
                          " hash FROM event_store.audit_log"
                          " WHERE ($1 IS NULL OR subject = $1) AND recorded_at >= $2"
                          " ORDER BY seq",
                          p, 2, list_row, &l, err);
    }
    ew_txn_rollback(t);
    if (l.stopped) return l.stopped;
    return rc;
}

static int count_row(void *ud, const ew_row *row)
{
    *(int *)ud = row->ncols && row->values[0] && atoi(row->values[0]) > 0;
    return 0;
}

/* Does this database have an audit chain at all? Asked of each database's own catalog: a
 * failed statement would end the transaction. */
static int has_tables(ew_store *db, ew_txn *t, int *yes, ew_error *err)
{
    if (strcmp(ew_store_backend(db), "sqlite") == 0)
        return ew_txn_query(t,
                            "SELECT count(*) FROM event_store.sqlite_master"
                            " WHERE type = 'table' AND name = 'audit_log'",
                            NULL, 0, count_row, yes, err);
    return ew_txn_query(t,
                        "SELECT count(*) FROM information_schema.tables"
                        " WHERE table_schema = 'event_store' AND table_name = 'audit_log'",
                        NULL, 0, count_row, yes, err);
}

static int checkpoint_row(void *ud, const ew_row *row)
{
    ew_audit_checkpoint_row *c = ud;
    if (row->ncols < 5) return 0;
    c->seq = strtoll(row->values[0] ? row->values[0] : "0", NULL, 10);
    snprintf(c->hash, sizeof c->hash, "%s", row->values[1] ? row->values[1] : "");
    snprintf(c->signed_at, sizeof c->signed_at, "%s", row->values[2] ? row->values[2] : "");
    snprintf(c->public_key, sizeof c->public_key, "%s", row->values[3] ? row->values[3] : "");
    snprintf(c->signature, sizeof c->signature, "%s", row->values[4] ? row->values[4] : "");
    return 0;
}

int ew_audit_latest_checkpoint(ew_store *db, ew_audit_checkpoint_row *out, int *found,
                               ew_error *err)
{
    memset(out, 0, sizeof *out);
    *found = 0;
    ew_txn *t;
    int rc = ew_store_begin(db, &t, err);
    if (rc) return rc;
    int yes = 0;
    rc = has_tables(db, t, &yes, err);
    if (!rc && yes)
        rc = ew_txn_query(t,
                          "SELECT seq, hash, signed_at, public_key, signature"
                          " FROM event_store.audit_checkpoints ORDER BY seq DESC LIMIT 1",
                          NULL, 0, checkpoint_row, out, err);
    ew_txn_rollback(t);
    *found = out->seq > 0;
    return rc;
}

/* ---- verifying ----------------------------------------------------------------------------- */

typedef struct walk {
    ew_audit_report *r;
    int64_t expect; /* the next seq */
    char prev[65];  /* the hash before it */
    char **hashes;  /* by seq, for the checkpoints */
    size_t nhashes, cap;
} walk;

static int bad(walk *w, int64_t seq, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(walk *w, int64_t seq, const char *fmt, ...)
{
    if (w->r->first_bad) return 1;
    w->r->first_bad = seq;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->r->reason, sizeof w->r->reason, fmt, ap);
    va_end(ap);
    return 1; /* stop at the first */
}

static int walk_row(void *ud, const ew_row *row)
{
    walk *w = ud;
    if (row->ncols < 8) return 0;
    int64_t seq = strtoll(row->values[0] ? row->values[0] : "0", NULL, 10);
    w->r->entries++;
    if (seq != w->expect) {
        if (seq > w->expect)
            return bad(w, w->expect, "entry %lld is missing (the next is %lld)",
                       (long long)w->expect, (long long)seq);
        return bad(w, seq, "entry %lld is out of order", (long long)seq);
    }
    const char *prev = row->values[6], *hash = row->values[7];
    if (!prev || strcmp(prev, w->prev) != 0)
        return bad(w, seq, "entry %lld does not follow entry %lld (its previous hash differs)",
                   (long long)seq, (long long)seq - 1);
    char want[65];
    if (!entry_hash(prev, seq, row->values[1], row->values[2], row->values[3], row->values[4],
                    row->values[5], want) ||
        !hash || strcmp(hash, want) != 0)
        return bad(w, seq, "entry %lld was changed (its hash does not match what it holds)",
                   (long long)seq);
    snprintf(w->prev, sizeof w->prev, "%s", hash);
    if (w->nhashes == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 256;
        char **v = realloc(w->hashes, cap * sizeof *v);
        if (!v) return bad(w, seq, "out of memory");
        w->hashes = v;
        w->cap = cap;
    }
    w->hashes[w->nhashes++] = strdup(hash);
    w->expect++;
    return 0;
}

typedef struct cpwalk {
    walk *w;
    const char *pk_hex;
    char service[128];
} cpwalk;

static int walk_checkpoint(void *ud, const ew_row *row)
{
    cpwalk *c = ud;
    walk *w = c->w;
    if (w->r->first_bad || row->ncols < 5) return 0;
    int64_t seq = strtoll(row->values[0] ? row->values[0] : "0", NULL, 10);
    const char *hash = row->values[1], *service = row->values[2], *pk = row->values[3],
               *sig = row->values[4];
    if (c->pk_hex && (!pk || strcmp(pk, c->pk_hex) != 0))
        return bad(w, seq, "checkpoint %lld is signed with another key", (long long)seq);
    unsigned char key[crypto_sign_PUBLICKEYBYTES], s[crypto_sign_BYTES], m[256];
    size_t n = hash && service ? checkpoint_message(m, sizeof m, service, seq, hash) : 0;
    if (!pk || !sig || !n ||
        sodium_hex2bin(key, sizeof key, pk, strlen(pk), NULL, NULL, NULL) != 0 ||
        sodium_hex2bin(s, sizeof s, sig, strlen(sig), NULL, NULL, NULL) != 0 ||
        crypto_sign_verify_detached(s, m, n, key) != 0)
        return bad(w, seq, "checkpoint %lld: the signature does not hold", (long long)seq);
    if (seq < 1 || (size_t)seq > w->nhashes)
        return bad(w, (int64_t)w->nhashes + 1,
                   "the chain ends at entry %zu, but checkpoint %lld was signed: entries were "
                   "cut off",
                   w->nhashes, (long long)seq);
    if (strcmp(w->hashes[seq - 1], hash) != 0)
        return bad(w, seq, "entry %lld is not the one checkpoint %lld signed", (long long)seq,
                   (long long)seq);
    w->r->checkpoints++;
    return 0;
}

static int head_row(void *ud, const ew_row *row)
{
    return read_head(ud, row);
}

int ew_audit_verify(ew_store *db, const char *public_key_hex, ew_audit_report *out, ew_error *err)
{
    memset(out, 0, sizeof *out);
    if (sodium_init() < 0) return ew_error_set(err, EW_ENOMEM, "libsodium did not start");
    ew_txn *t;
    int rc = ew_store_begin(db, &t, err);
    if (rc) return rc;
    int yes = 0;
    rc = has_tables(db, t, &yes, err);
    walk w = {.r = out, .expect = 1};
    snprintf(w.prev, sizeof w.prev, "%s", ZERO_HASH);
    if (!rc && yes)
        rc = ew_txn_query(t,
                          "SELECT seq, recorded_at, actor, action, subject, details, prev_hash,"
                          " hash FROM event_store.audit_log ORDER BY seq",
                          NULL, 0, walk_row, &w, err);
    if (rc == 1 && out->first_bad) rc = 0; /* stopped at the first broken entry */
    head h = {0};
    if (!rc && yes && !out->first_bad) {
        rc = ew_txn_query(t, "SELECT seq, hash FROM event_store.audit_head WHERE id = 1", NULL, 0,
                          head_row, &h, err);
        if (!rc && (h.seq != (int64_t)w.nhashes || strcmp(h.hash, w.prev) != 0))
            bad(&w, (int64_t)w.nhashes + 1,
                "the chain ends at entry %zu but its head says %lld: entries were cut off or "
                "added around it",
                w.nhashes, (long long)h.seq);
    }
    if (!rc && yes && !out->first_bad) {
        cpwalk c = {.w = &w, .pk_hex = public_key_hex};
        rc = ew_txn_query(t,
                          "SELECT seq, hash, service, public_key, signature"
                          " FROM event_store.audit_checkpoints ORDER BY seq",
                          NULL, 0, walk_checkpoint, &c, err);
    }
    ew_txn_rollback(t);
    for (size_t i = 0; i < w.nhashes; i++)
        free(w.hashes[i]);
    free(w.hashes);
    return rc;
}
