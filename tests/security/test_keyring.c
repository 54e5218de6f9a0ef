/* Tests of field encryption (src/security/keyring.c): what the wire carries, the key-encryption
 * key refused when it is missing, wrong or readable by others (never a fallback to plaintext),
 * tampered ciphertext dead-lettered with the reason, validation on the plaintext, rotation that
 * keeps every old event readable, a destroyed key that decodes as erased, and EVENT_ENCRYPTION=off
 * refusing what it cannot read; the data-key cache (EVENT_KEY_CACHE_SIZE) holding what it has
 * room for and dropping the least recently used. Each case keeps its keys in a folder of its own;
 * the cases of the key store run on SQLite and on PostgreSQL (KEY_STORE_URL=postgresql://...,
 * the key-encryption key still a file), where a shred must also leave the server's files.
 * ew-fixture: postgres */
#include <fcntl.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include "bus/receive.h"
#include "catalog/event_internal.h"
#include "security/datakeys.h"
#include "security/evauth_internal.h"
#include "security/keyring.h"
#include "store/handle.h"
#include "support/case_db.h"
#include "support/ew_test.h"
#include "support/pg.h"
#include "eventwire/bus.h"
#include "eventwire/config.h"
#include "eventwire/dlq.h"
#include "eventwire/id.h"
#include "eventwire/keys.h"
#include "eventwire/store.h"

typedef struct fx {
    char dir[64], url[128], kek[128];
    ew_config *cfg;
    char *pg_url; /* PostgreSQL: the case's database, the key store; NULL on SQLite */
} fx;

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/ew-keyring-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->url, sizeof f->url, "sqlite:%s/events.db", f->dir);
    snprintf(f->kek, sizeof f->kek, "%s/keys/eventwire.kek", f->dir);
    ew_error err = {0};
    assert_int_equal(ew_config_new(&f->cfg, &err), 0);
    assert_int_equal(ew_config_set(f->cfg, "EVENT_STORE_URL", f->url, &err), 0);
    assert_int_equal(ew_config_set(f->cfg, "EVENT_BUS_TYPE", "memory", &err), 0);
    *state = f;
    return 0;
}

static int setup_sqlite(void **state)
{
    return setup(state);
}

static int setup_postgres(void **state)
{
    char none[64];
    if (setup(state)) return -1;
    fx *f = *state;
    ew_error err = {0};
    if (ew_test_db_create(1, "keyring", "", none, &f->pg_url) ||
        ew_config_set(f->cfg, "KEY_STORE_URL", f->pg_url, &err))
        return -1;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    if (f->pg_url) ew_test_db_drop(1, "", f->pg_url);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
    ew_config_free(f->cfg);
    free(f);
    return 0;
}

static ew__keyring *keyring(fx *f)
{
    ew__keyring *k;
    ew_error err = {0};
    if (ew__keyring_new(&k, f->cfg, NULL, &err)) fail_msg("%s", err.msg);
    assert_non_null(k);
    return k;
}

static ew_event *registered(const char *user, const char *email, const char *username)
{
    const char *roles[] = {"user"};
    ew_user_registered d = {
        .user_id = user, .email = email, .username = username, .roles = {roles, 1}};
    ew_event *ev;
    ew_error err = {0};
    if (ew_user_registered_new(&ev, &d, &(ew_event_attrs){.source = "test", .subject = user}, &err))
        fail_msg("%s", err.msg);
    return ev;
}

/* The sealed values in json, in order: where each starts (after its quote) and its length. */
enum { MAX_TOKENS = 8 };
static size_t tokens(const char *json, const char *at[MAX_TOKENS], size_t len[MAX_TOKENS])
{
    size_t n = 0;
    for (const char *p = json; (p = strstr(p, "\"" EW__SEALED_PREFIX)) && n < MAX_TOKENS; n++) {
        at[n] = ++p;
        len[n] = strcspn(p, "\"");
        p += len[n];
    }
    return n;
}

/* The counter of a sealed value's nonce (its last 8 bytes, little-endian), and its 16 first
 * bytes into prefix. */
static uint64_t nonce_of(const char *tok, size_t len, unsigned char prefix[16])
{
    const char *b64 = strchr(tok + strlen(EW__SEALED_PREFIX), '.') + 1;
    unsigned char nonce[24];
    size_t n = 0;
    assert_true((size_t)(b64 - tok) + 32 <= len);
    assert_int_equal(sodium_base642bin(nonce, sizeof nonce, b64, 32, NULL, &n, NULL,
                                       sodium_base64_VARIANT_URLSAFE_NO_PADDING),
                     0);
    assert_int_equal(n, 24);
    memcpy(prefix, nonce, 16);
    uint64_t c = 0;
    for (int i = 0; i < 8; i++)
        c |= (uint64_t)nonce[16 + i] << (8 * i);
    return c;
}

/* Is the token's base64url what libsodium's codec makes of the bytes libsodium's decoder reads
 * in it (canonical base64url without padding)? */
static void assert_canonical_base64url(const char *tok, size_t len)
{
    const char *b64 = strchr(tok + strlen(EW__SEALED_PREFIX), '.') + 1;
    size_t blen = len - (size_t)(b64 - tok), n = 0;
    unsigned char bin[1024];
    char again[1400];
    assert_int_equal(sodium_base642bin(bin, sizeof bin, b64, blen, NULL, &n, NULL,
                                       sodium_base64_VARIANT_URLSAFE_NO_PADDING),
                     0);
    assert_true(n >= 24 + 16); /* nonce and tag */
    sodium_bin2base64(again, sizeof again, bin, n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    assert_int_equal(strlen(again), blen);
    assert_memory_equal(again, b64, blen);
}

/* ev sealed by k and encoded: the JSON the wire and the stores get (caller frees). Made both
 * ways every time: sealed then encoded (two events), and sealed as it is encoded
 * (ew__keyring_encode). The second's bytes are the first's with each sealed value replaced by
 * one under a later nonce of the same keyring: nothing else differs. The second is returned. */
static char *sealed_json(ew__keyring *k, const ew_event *ev)
{
    ew_event *s;
    ew_error err = {0};
    if (ew__keyring_seal(k, ev, &s, &err)) fail_msg("seal: %s", err.msg);
    char *two, *one;
    size_t two_len, one_len;
    assert_int_equal(ew_event_encode(s, &two, &two_len, &err), 0);
    ew_event_unref(s);
    if (ew__keyring_encode(k, ev, &one, &one_len, &err)) fail_msg("encode: %s", err.msg);
    const char *ta[MAX_TOKENS], *tb[MAX_TOKENS];
    size_t la[MAX_TOKENS], lb[MAX_TOKENS];
    size_t n = tokens(two, ta, la);
    assert_int_equal(tokens(one, tb, lb), n);
    char *swapped = malloc(two_len + one_len + 1), *w = swapped;
    const char *from = two;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(la[i], lb[i]); /* same plaintext length, same subject */
        assert_canonical_base64url(ta[i], la[i]);
        assert_canonical_base64url(tb[i], lb[i]);
        unsigned char pa[16], pb[16];
        assert_true(nonce_of(tb[i], lb[i], pb) > nonce_of(ta[i], la[i], pa));
        assert_memory_equal(pa, pb, 16);
        memcpy(w, from, (size_t)(ta[i] - from));
        w += ta[i] - from;
        memcpy(w, tb[i], lb[i]);
        w += lb[i];
        from = ta[i] + la[i];
    }
    strcpy(w, from);
    assert_string_equal(swapped, one);
    assert_int_equal(strlen(one), one_len);
    free(swapped);
    free(two);
    return one;
}

/* Decodes json and decrypts it with k: 0 and *out, or the error. Both ways every time:
 * decoded then unsealed (two events), and opened as it is decoded (ew__keyring_decode), which
 * must give an equal event, or the same error, and the same received form. */
static int open_json(ew__keyring *k, const char *json, ew_event **out, ew_error *err)
{
    ew_event *ev, *one = NULL;
    ew_error e1 = {0};
    int rc1 = ew__keyring_decode(k, json, strlen(json), NULL, &one, &e1);
    int rc = ew_event_decode(&ev, json, strlen(json), NULL, err);
    bool sealed = !rc && ew_event_encrypted(ev);
    if (!rc) {
        rc = ew__keyring_unseal(k, ev, out, err);
        ew_event_unref(ev);
    }
    if (rc1 != rc) fail_msg("%d (%s) where decoding then unsealing gave %d", rc1, e1.msg, rc);
    if (rc) {
        assert_string_equal(e1.msg, err->msg);
        assert_null(one);
        return rc;
    }
    assert_true(ew_event_equal(one, *out));
    assert_false(ew_event_encrypted(one));
    const ew_event *r = ew__event_received(one);
    assert_true(r != one || !sealed);
    assert_int_equal(ew_event_encrypted(r), sealed);
    assert_ptr_equal(ew__event_received(one), r); /* made once */
    assert_true(ew_event_equal(r, ew__event_received(*out)));
    char *again;
    assert_int_equal(ew_event_encode(r, &again, NULL, err), 0);
    assert_string_equal(again, json); /* the ciphertext as it came */
    free(again);
    ew_event_unref(one);
    return 0;
}

static void test_the_wire_carries_ciphertext(void **state)
{
    fx *f = *state;
    ew__keyring *k = keyring(f);
    char user[EW_UUID_LEN + 1];
    ew_uuid7(user);
    ew_event *ev = registered(user, "ida@example.com", "ida_lovelace");
    char *json = sealed_json(k, ev);
    /* the fields are there, as strings a foreign consumer recognises; the values are not */
    assert_null(strstr(json, "ida@example.com"));
    assert_null(strstr(json, "ida_lovelace"));
    char want[128];
    snprintf(want, sizeof want, "\"email\":\"ewenc1.%s.", user);
    assert_non_null(strstr(json, want));
    snprintf(want, sizeof want, "\"username\":\"ewenc1.%s.", user);
    assert_non_null(strstr(json, want));
    snprintf(want, sizeof want, "\"user_id\":\"%s\"", user); /* not personal: in clear */
    assert_non_null(strstr(json, want));
    assert_non_null(strstr(json, "\"specversion\":\"1.0\""));
    /* two encodings of one event differ (a fresh nonce each time) */
    char *again = sealed_json(k, ev);
    assert_string_not_equal(json, again);
    ew_event *back;
    ew_error err = {0};
    if (open_json(k, json, &back, &err)) fail_msg("%s", err.msg);
    assert_false(ew_event_encrypted(back));
    assert_false(ew_event_erased(back));
    assert_true(ew_event_equal(back, ev));
    /* the key file is 0600 in a 0700 folder */
    struct stat st;
    assert_int_equal(stat(f->kek, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char keys[128];
    snprintf(keys, sizeof keys, "%s/keys", f->dir);
    assert_int_equal(stat(keys, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    ew_event_unref(back);
    free(json);
    free(again);
    ew_event_unref(ev);
    ew__keyring_free(k);
}

/* Threads that need new data keys at once share the key store's commits (one thread makes the
 * keys queued meanwhile): each subject still gets exactly one key, and every event sealed under
 * it opens with a keyring that has never seen it. */
enum { MAKERS = 8, SUBJECTS_EACH = 40 };

typedef struct maker {
    ew__keyring *k;
    char users[SUBJECTS_EACH][EW_UUID_LEN + 1];
    char *json[SUBJECTS_EACH];
} maker;

static void *make_keys(void *arg)
{
    maker *m = arg;
    for (int i = 0; i < SUBJECTS_EACH; i++) {
        ew_uuid7(m->users[i]);
        ew_event *ev = registered(m->users[i], "kat@example.com", "kat");
        m->json[i] = sealed_json(m->k, ev);
        ew_event_unref(ev);
    }
    return NULL;
}

static void test_new_keys_from_many_threads_at_once(void **state)
{
    fx *f = *state;
    ew__keyring *k = keyring(f);
    static maker m[MAKERS];
    pthread_t th[MAKERS];
    for (int i = 0; i < MAKERS; i++) {
        m[i].k = k;
        assert_int_equal(pthread_create(&th[i], NULL, make_keys, &m[i]), 0);
    }
    for (int i = 0; i < MAKERS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    size_t live = 0, erased = 0;
    ew_error err = {0};
    assert_int_equal(ew__keyring_count(k, &live, &erased, &err), 0);
    assert_int_equal(live, MAKERS * SUBJECTS_EACH);
    assert_int_equal(erased, 0);
    ew__keyring *fresh = keyring(f);
    for (int i = 0; i < MAKERS; i++)
        for (int j = 0; j < SUBJECTS_EACH; j++) {
            ew_event *back;
            if (open_json(fresh, m[i].json[j], &back, &err)) fail_msg("%s", err.msg);
            assert_string_equal(ew_user_registered_data(back)->user_id, m[i].users[j]);
            assert_string_equal(ew_user_registered_data(back)->email, "kat@example.com");
            ew_event_unref(back);
            free(m[i].json[j]);
        }
    ew__keyring_free(fresh);
    ew__keyring_free(k);
}

/* The one value sql (with one parameter, or none) answers on the case's PostgreSQL database
 * (malloc'ed; NULL for SQL NULL). */
static char *pg_value(const fx *f, const char *sql, const char *param)
{
    char *v;
    if (ew_test_pg_value(f->pg_url, sql, param, &v)) fail_msg("%s failed", sql);
    return v;
}

/* Write transactions the key store has committed: on SQLite, its file's change counter (the
 * header's bytes 24-27, one more per commit); on PostgreSQL, the transactions that wrote the
 * rows subject_keys holds now (their distinct xmin). */
static unsigned key_commits(const fx *f, ew__keyring *k)
{
    if (f->pg_url) {
        char *v =
            pg_value(f, "SELECT count(DISTINCT xmin::text) FROM key_store.subject_keys", NULL);
        unsigned n = (unsigned)strtoul(v, NULL, 10);
        free(v);
        return n;
    }
    unsigned char h[28];
    int fd = open(ew__keyring_store_name(k), O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, h, sizeof h, 0), (ssize_t)sizeof h);
    close(fd);
    return (unsigned)h[24] << 24 | (unsigned)h[25] << 16 | (unsigned)h[26] << 8 | h[27];
}

/* A batch of events of new subjects gets their data keys in one commit of the key store
 * (ew__keyring_prepare, what a batch publish does), not one each; sealing them afterwards
 * commits nothing; a subject erased before keeps its tombstone; every event opens with a
 * keyring that has never seen it. */
static void test_a_batch_makes_its_new_keys_in_one_commit(void **state)
{
    enum { N = 50 };
    fx *f = *state;
    ew__keyring *k = keyring(f);
    ew_error err = {0};
    assert_int_equal(ew__keyring_load(k, &err), 0);
    char users[N][EW_UUID_LEN + 1];
    ew_event *evs[N + 1];
    for (int i = 0; i < N; i++) {
        ew_uuid7(users[i]);
        evs[i] = registered(users[i], "kat@example.com", "kat");
    }
    evs[N] = registered(users[0], "kat2@example.com", "kat2"); /* a subject twice */
    assert_int_equal(ew__keyring_shred(k, users[1], &err), 0); /* erased before */
    unsigned before = key_commits(f, k);
    assert_int_equal(ew__keyring_prepare(k, (const ew_event *const *)evs, N + 1, &err), 0);
    assert_int_equal(key_commits(f, k), before + 1);
    char *json[N + 1];
    for (int i = 0; i <= N; i++)
        json[i] = sealed_json(k, evs[i]);
    assert_int_equal(key_commits(f, k), before + 1);
    size_t live = 0, erased = 0;
    assert_int_equal(ew__keyring_count(k, &live, &erased, &err), 0);
    assert_int_equal(live, N - 1);
    assert_int_equal(erased, 1);
    ew__keyring *fresh = keyring(f);
    for (int i = 0; i <= N; i++) {
        ew_event *back;
        if (open_json(fresh, json[i], &back, &err)) fail_msg("%s", err.msg);
        assert_int_equal(ew_event_erased(back), i == 1);
        if (i != 1)
            assert_string_equal(ew_user_registered_data(back)->username, i == N ? "kat2" : "kat");
        ew_event_unref(back);
        free(json[i]);
        ew_event_unref(evs[i]);
    }
    ew__keyring_free(fresh);
    ew__keyring_free(k);
}

/* ew_store_prepare_key makes a new subject's data key before the transaction that writes its
 * events (what auth-service's registration does): the key store commits then, once, and the
 * transaction's ew_outbox_add seals under the cached key without a commit of its own — made
 * inside, the key store's synced commit held the store's handle, and concurrent registrations
 * made their keys one at a time. A subject that cannot name a key is refused. */
static void test_a_key_made_ahead_of_a_transaction(void **state)
{
    fx *f = *state;
    ew_store *st;
    ew_error err = {0};
    if (ew_store_open(&st, &(ew_store_options){.config = f->cfg}, &err)) fail_msg("%s", err.msg);
    ew__keyring *k = ew__store_keyring(st);
    assert_non_null(k);
    assert_int_equal(ew__keyring_load(k, &err), 0);
    char user[EW_UUID_LEN + 1];
    ew_uuid7(user);
    size_t live = 0, erased = 0;
    unsigned before = key_commits(f, k);
    assert_int_equal(ew_store_prepare_keys(st, (const char *[]){user}, 1, &err), 0);
    assert_int_equal(key_commits(f, k), before + 1);
    assert_int_equal(ew__keyring_count(k, &live, &erased, &err), 0);
    assert_int_equal(live, 1);
    assert_int_equal(ew_store_prepare_keys(st, (const char *[]){user}, 1, &err),
                     0); /* has one: nothing to do */
    assert_int_equal(key_commits(f, k), before + 1);
    ew_txn *t;
    assert_int_equal(ew_store_begin(st, &t, &err), 0);
    ew_event *ev = registered(user, "lin@example.com", "lin");
    assert_int_equal(ew_outbox_add(t, ev, &err), 0);
    assert_int_equal(ew_txn_commit(t, &err), 0);
    ew_event_unref(ev);
    assert_int_equal(key_commits(f, k), before + 1);
    assert_int_equal(ew__keyring_count(k, &live, &erased, &err), 0);
    assert_int_equal(live, 1);
    assert_int_equal(ew_store_prepare_keys(st, (const char *[]){"no spaces"}, 1, &err), EW_EINVAL);
    ew_store_close(st);
}

/* A commit of new keys that fails ends its transaction: the key store is not left locked for
 * every other connection. Here the COMMIT gets SQLITE_BUSY because another connection reads the
 * store for longer than the busy timeout (10 s); a leak hunt of the service fuzz harness met the
 * same with one injected SQLite allocation failure, after which every service's writes to the key
 * store answered "database is locked" for good. */
static void test_a_failed_commit_leaves_the_key_store_unlocked(void **state)
{
    fx *f = *state;
    ew__keyring *k = keyring(f);
    char a[EW_UUID_LEN + 1], b[EW_UUID_LEN + 1], path[160];
    ew_uuid7(a);
    ew_uuid7(b);
    ew_event *ev = registered(a, "ada@example.com", "ada");
    free(sealed_json(k, ev)); /* the store and a first key */
    ew_event_unref(ev);
    snprintf(path, sizeof path, "%s/keys/keys.db", f->dir);
    sqlite3 *r;
    assert_int_equal(sqlite3_open_v2(path, &r, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(r, "BEGIN; SELECT count(*) FROM subject_keys", NULL, NULL, NULL),
                     SQLITE_OK);
    ev = registered(b, "bob@example.com", "bob");
    ew_event *s = NULL;
    ew_error err = {0};
    assert_int_not_equal(ew__keyring_seal(k, ev, &s, &err), 0); /* its key could not commit */
    assert_non_null(strstr(err.msg, "locked"));
    assert_int_equal(sqlite3_exec(r, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    /* nobody holds the store now: another connection writes at once */
    char *msg = NULL;
    int rc = sqlite3_exec(r, "BEGIN IMMEDIATE; COMMIT", NULL, NULL, &msg);
    if (rc != SQLITE_OK) fail_msg("the key store is still locked: %s", msg ? msg : "?");
    sqlite3_close(r);
    /* and the keyring makes the key at its next try */
    free(sealed_json(k, ev));
    ew_event_unref(ev);
    ew__keyring_free(k);
}

static void test_a_missing_key_file_is_refused_when_keys_exist(void **state)
{
    fx *f = *state;
    ew__keyring *k = keyring(f);
    char user[EW_UUID_LEN + 1];
    ew_uuid7(user);
    ew_event *ev = registered(user, "a@example.com", "ann");
    free(sealed_json(k, ev)); /* a data key now exists */
    ew__keyring_free(k);
    assert_int_equal(unlink(f->kek), 0);
    k = keyring(f);
    ew_error err = {0};
    assert_int_equal(ew__keyring_load(k, &err), EW_ECONFIG);
    assert_non_null(strstr(err.msg, "is missing"));
    /* and nothing leaves in clear instead */
    ew_event *s = NULL;
    assert_int_equal(ew__keyring_seal(k, ev, &s, &err), EW_ECONFIG);
    assert_null(s);
    assert_int_equal(access(f->kek, F_OK), -1); /* no new key made */
    ew__keyring_free(k);
    ew_event_unref(ev);
}

static void write_file(const char *path, const void *data, size_t n, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, n), (ssize_t)n);
    close(fd);
    assert_int_equal(chmod(path, mode), 0);
}

static void test_a_wrong_or_exposed_key_file_is_refused(void **state)
{
    fx *f = *state;
    ew__keyring *k = keyring(f);
    ew_error err = {0};
    assert_int_equal(ew__keyring_load(k, &err), 0); /* made at first start */
    ew__keyring_free(k);
    unsigned char other[32];
    memset(other, 7, sizeof other);
    write_file(f->kek, other, sizeof other, 0600);
    k = keyring(f);
    assert_int_equal(ew__keyring_load(k, &err), EW_ECONFIG);
    assert_non_null(strstr(err.msg, "is not the key"));
    ew__keyring_free(k);
    write_file(f->kek, other, 16, 0600); /* too short */
    k = keyring(f);
    assert_int_equal(ew__keyring_load(k, &err), EW_ECONFIG);
    assert_non_null(strstr(err.msg, "not a key"));
    ew__keyring_free(k);
    write_file(f->kek, other, sizeof other, 0644); /* readable by others */
    k = keyring(f);
    assert_int_equal(ew__keyring_load(k, &err), EW_ECONFIG);
    assert_non_null(strstr(err.msg, "0600"));
    ew__keyring_free(k);
}

/* A bus on the fixture's keys, with its dead letters in memory. */
static ew_bus *bus_open(fx *f, const char *encryption)
{
    ew_error err = {0};
    assert_int_equal(ew_config_set(f->cfg, "EVENT_ENCRYPTION", encryption, &err), 0);
    ew_bus *bus;
    if (ew_bus_open(&bus, &(ew_bus_options){.config = f->cfg}, &err)) fail_msg("%s", err.msg);
    assert_int_equal(ew_config_set(f->cfg, "EVENT_ENCRYPTION", "on", &err), 0);
    return bus;
}

/* Receives json on bus as a broker's message: the result, and the dead letter's error. */
static ew__recv_result receive(ew_bus *bus, const char *json, ew_event **got, char *why, size_t cap)
{
    ew__recv_msg m = {
        .wire = {.binding = EW__BINDING_STRUCTURED, .body = json, .body_len = strlen(json)},
        .group = "g1",
        .transport = "test position=1",
    };
    *got = NULL;
    ew__recv_result r = ew__receive(bus, &m, 1 << 20, NULL, NULL, got);
    why[0] = '\0';
    ew_memdlq *q = ew_bus_dead_letters(bus);
    size_t n = ew_memdlq_count(q);
    if (n) {
        ew_memdlq_entry e;
        assert_int_equal(ew_memdlq_get(q, n - 1, &e), 0);
        snprintf(why, cap, "%s", e.error);
        ew_memdlq_entry_release(&e);
    }
    return r;
}

static void test_tampered_ciphertext_is_dead_lettered(void **state)
{
    fx *f = *state;
    ew_bus *bus = bus_open(f, "on");
    ew__keyring *k = keyring(f);
    char user[EW_UUID_LEN + 1], why[600];
    ew_uuid7(user);
    ew_event *ev = registered(user, "b@example.com", "bob");
    char *json = sealed_json(k, ev);
    ew_event *got;
    assert_int_equal(receive(bus, json, &got, why, sizeof why), EW__RECV_EVENT);
    const ew_user_registered *d = ew_user_registered_data(got);
    assert_string_equal(d->email, "b@example.com"); /* handlers see plaintext */
    assert_false(ew_event_encrypted(got));
    ew_event_unref(got);
    /* one character of the email's ciphertext changed */
    char *c = strstr(json, "\"email\":\"ewenc1.");
    assert_non_null(c);
    c += strlen("\"email\":\"ewenc1.") + EW_UUID_LEN + 5;
    *c = *c == 'A' ? 'B' : 'A';
    assert_int_equal(receive(bus, json, &got, why, sizeof why), EW__RECV_DEAD);
    assert_null(got);
    assert_int_equal(ew_memdlq_count(ew_bus_dead_letters(bus)), 1);
    assert_non_null(strstr(why, "EW_ECRYPTO"));
    assert_non_null(strstr(why, "data.email does not authenticate"));
    /* a ciphertext moved from another event does not authenticate either */
    ew_event *other = registered(user, "c@example.com", "cid");
    char *json2 = sealed_json(k, other), *json1 = sealed_json(k, ev);
    char *e1 = strstr(json1, "\"email\":\""), *e2 = strstr(json2, "\"email\":\"");
    size_t l1 = strcspn(e1 + 9, "\""), l2 = strcspn(e2 + 9, "\"");
    assert_int_equal(l1, l2); /* same length of address, same length of ciphertext */
    memcpy(e1 + 9, e2 + 9, l1);
    assert_int_equal(receive(bus, json1, &got, why, sizeof why), EW__RECV_DEAD);
    assert_non_null(strstr(why, "does not authenticate"));
    free(json);
    free(json1);
    free(json2);
    ew_event_unref(other);
    ew_event_unref(ev);
    ew__keyring_free(k);
    assert_int_equal(ew_bus_close(bus), 0);
}

static void test_validation_runs_on_the_plaintext(void **state)
{
    fx *f = *state;
    ew_bus *bus = bus_open(f, "on");
    ew__keyring *k = keyring(f);
    char user[EW_UUID_LEN + 1], why[600];
    ew_uuid7(user);
    ew_event *ev = registered(user, "d@example.com", "dan");
    /* an email that is not one, slipped in unchecked, then encrypted: the ciphertext itself is
     * well-formed; what it holds is not */
    const ew_type_info *t = ew_event_info(ev);
    size_t email = (size_t)(ew_type_field(t, "email") - t->fields);
    const char *values[64] = {0};
    values[email] = "not an address";
    ew_event *bad;
    ew_error err = {0};
    assert_int_equal(
        ew__event_replace(ev, UINT64_C(1) << email, values, 0, UINT64_C(1) << email, &bad, &err),
        0);
    char *json = sealed_json(k, bad);
    ew_event *got;
    assert_int_equal(receive(bus, json, &got, why, sizeof why), EW__RECV_DEAD);
    assert_non_null(strstr(why, "EW_EDATA"));
    assert_non_null(strstr(why, "is not an email address"));
    /* opened while decoded: checked all the same (and as decoding then unsealing does) */
    assert_int_equal(open_json(k, json, &got, &err), EW_EDATA);
    assert_non_null(strstr(err.msg, "is not an email address"));
    /* plaintext that looks like ciphertext is refused when the event is built */
    const char *roles[] = {"user"};
    ew_user_registered d = {
        .user_id = user, .email = "e@example.com", .username = "ewenc1.x.y", .roles = {roles, 1}};
    ew_event *fake = NULL;
    assert_int_equal(ew_user_registered_new(&fake, &d, &(ew_event_attrs){.source = "t"}, &err),
                     EW_EDATA);
    free(json);
    ew_event_unref(bad);
    ew_event_unref(ev);
    ew__keyring_free(k);
    assert_int_equal(ew_bus_close(bus), 0);
}

static void test_rotation_keeps_every_old_event_readable(void **state)
{
    fx *f = *state;
    ew_error err = {0};
    assert_int_equal(ew_config_set(f->cfg, "EVENT_KEY_CACHE_SECONDS", "0", &err), 0);
    ew__keyring *k = keyring(f), *running = keyring(f);
    enum { N = 5 };
    char *json[N];
    ew_event *evs[N];
    for (int i = 0; i < N; i++) {
        char user[EW_UUID_LEN + 1], email[64];
        ew_uuid7(user);
        snprintf(email, sizeof email, "user%d@example.com", i);
        evs[i] = registered(user, email, "someone");
        json[i] = sealed_json(k, evs[i]);
    }
    assert_int_equal(ew__keyring_load(running, &err), 0); /* holds the old key in memory */
    unsigned char before[32], after[32];
    FILE *kf = fopen(f->kek, "rb");
    assert_int_equal(fread(before, 1, 32, kf), 32);
    fclose(kf);
    size_t n = 0;
    if (ew__keyring_rotate(k, &n, &err)) fail_msg("rotate: %s", err.msg);
    assert_int_equal(n, N);
    kf = fopen(f->kek, "rb");
    assert_int_equal(fread(after, 1, 32, kf), 32);
    fclose(kf);
    assert_memory_not_equal(before, after, 32);
    /* a fresh process with the new file, the rotating one, and one that started before */
    ew__keyring *fresh = keyring(f);
    ew__keyring *const all[] = {fresh, k, running};
    for (int j = 0; j < 3; j++)
        for (int i = 0; i < N; i++) {
            ew_event *back;
            if (open_json(all[j], json[i], &back, &err)) fail_msg("%d/%d: %s", j, i, err.msg);
            assert_true(ew_event_equal(back, evs[i]));
            ew_event_unref(back);
        }
    /* the process that started before wraps a new subject's key with the new key */
    char user[EW_UUID_LEN + 1];
    ew_uuid7(user);
    ew_event *late = registered(user, "late@example.com", "late");
    char *lj = sealed_json(running, late);
    ew_event *back;
    if (open_json(fresh, lj, &back, &err)) fail_msg("%s", err.msg);
    assert_true(ew_event_equal(back, late));
    ew_event_unref(back);
    free(lj);
    ew_event_unref(late);
    /* the old key file no longer opens the store */
    ew__keyring_free(fresh);
    write_file(f->kek, before, 32, 0600);
    fresh = keyring(f);
    assert_int_equal(ew__keyring_load(fresh, &err), EW_ECONFIG);
    ew__keyring_free(fresh);
    for (int i = 0; i < N; i++) {
        free(json[i]);
        ew_event_unref(evs[i]);
    }
    ew__keyring_free(k);
    ew__keyring_free(running);
}

/* Another process's rotation has committed but not yet renamed KEY_FILE.new over the key file:
 * a running keyring that needs a new key (or an old one unwrapped) takes the store's key from
 * KEY_FILE.new instead of failing; any other key there is still refused. */
static void test_a_rotation_between_commit_and_rename(void **state)
{
    fx *f = *state;
    ew_error err = {0};
    assert_int_equal(ew_config_set(f->cfg, "EVENT_KEY_CACHE_SECONDS", "0", &err), 0);
    ew__keyring *k = keyring(f), *running = keyring(f);
    char u1[EW_UUID_LEN + 1], u2[EW_UUID_LEN + 1], next[160];
    ew_uuid7(u1);
    ew_uuid7(u2);
    ew_event *e1 = registered(u1, "one@example.com", "one"),
             *e2 = registered(u2, "two@example.com", "two");
    char *j1 = sealed_json(k, e1);
    assert_int_equal(ew__keyring_load(running, &err), 0); /* holds the old key */
    unsigned char old[32], now[32];
    FILE *kf = fopen(f->kek, "rb");
    assert_int_equal(fread(old, 1, 32, kf), 32);
    fclose(kf);
    size_t n;
    if (ew__keyring_rotate(k, &n, &err)) fail_msg("rotate: %s", err.msg);
    /* back to the moment before the rename: the new key in KEY_FILE.new, the old in the file */
    kf = fopen(f->kek, "rb");
    assert_int_equal(fread(now, 1, 32, kf), 32);
    fclose(kf);
    snprintf(next, sizeof next, "%s.new", f->kek);
    write_file(next, now, 32, 0600);
    write_file(f->kek, old, 32, 0600);
    char *j2 = sealed_json(running, e2); /* a new key, wrapped with the store's key */
    ew_event *back;
    ew__keyring *starting = keyring(f); /* a process that starts in that moment */
    if (open_json(starting, j1, &back, &err)) fail_msg("%s", err.msg);
    assert_true(ew_event_equal(back, e1));
    ew_event_unref(back);
    ew__keyring_free(starting);
    if (open_json(running, j1, &back, &err)) fail_msg("%s", err.msg);
    assert_true(ew_event_equal(back, e1));
    ew_event_unref(back);
    /* once renamed, every process reads the new key from the file */
    assert_int_equal(rename(next, f->kek), 0);
    ew__keyring *fresh = keyring(f);
    if (open_json(fresh, j2, &back, &err)) fail_msg("%s", err.msg);
    assert_true(ew_event_equal(back, e2));
    ew_event_unref(back);
    ew__keyring_free(fresh);
    /* a KEY_FILE.new of another key is no way in */
    unsigned char other[32];
    memset(other, 9, sizeof other);
    write_file(next, other, 32, 0600);
    write_file(f->kek, old, 32, 0600);
    fresh = keyring(f);
    assert_int_equal(ew__keyring_load(fresh, &err), EW_ECONFIG);
    assert_non_null(strstr(err.msg, "is not the key"));
    ew__keyring_free(fresh);
    free(j1);
    free(j2);
    ew_event_unref(e1);
    ew_event_unref(e2);
    ew__keyring_free(running);
    ew__keyring_free(k);
}

static void test_a_shredded_subject_decodes_as_erased(void **state)
{
    fx *f = *state;
    ew_bus *bus = bus_open(f, "on");
    ew__keyring *k = keyring(f);
    char gone[EW_UUID_LEN + 1], kept[EW_UUID_LEN + 1], why[600];
    ew_uuid7(gone);
    ew_uuid7(kept);
    ew_event *a = registered(gone, "gone@example.com", "gone"),
             *b = registered(kept, "kept@example.com", "kept");
    char *ja = sealed_json(k, a), *jb = sealed_json(k, b);
    ew_error err = {0};
    assert_int_equal(ew__keyring_shred(k, gone, &err), 0);
    assert_int_equal(ew__keyring_shred(k, gone, &err), 0); /* idempotent */
    ew_event *back;
    assert_int_equal(open_json(k, ja, &back, &err), 0);
    assert_true(ew_event_erased(back));
    assert_string_equal(ew_user_registered_data(back)->email, "");
    assert_string_equal(ew_user_registered_data(back)->user_id, gone);
    ew_event_unref(back);
    assert_int_equal(open_json(k, jb, &back, &err), 0);
    assert_false(ew_event_erased(back));
    assert_true(ew_event_equal(back, b));
    ew_event_unref(back);
    /* through the receive path: an erased event for handlers, not a dead letter */
    ew_event *got;
    assert_int_equal(receive(bus, ja, &got, why, sizeof why), EW__RECV_EVENT);
    assert_true(ew_event_erased(got));
    ew_event_unref(got);
    assert_int_equal(ew_memdlq_count(ew_bus_dead_letters(bus)), 0);
    /* new personal data about the erased user is encrypted under a key nobody keeps */
    char *again = sealed_json(k, a);
    assert_null(strstr(again, "gone@example.com"));
    assert_int_equal(open_json(k, again, &back, &err), 0);
    assert_true(ew_event_erased(back));
    ew_event_unref(back);
    size_t live, erased;
    assert_int_equal(ew__keyring_count(k, &live, &erased, &err), 0);
    assert_int_equal(live, 1);
    assert_int_equal(erased, 1);
    free(again);
    free(ja);
    free(jb);
    ew_event_unref(a);
    ew_event_unref(b);
    ew__keyring_free(k);
    assert_int_equal(ew_bus_close(bus), 0);
}

/* An object field (JSON text) sealed as it is encoded and opened as it is decoded comes back
 * as the same compact JSON; an absent optional personal field stays absent. */
static void test_object_and_absent_fields_seal_and_open_while_coded(void **state)
{
    fx *f = *state;
    ew__keyring *k = keyring(f);
    char user[EW_UUID_LEN + 1];
    ew_uuid7(user);
    ew_user_preferences_updated p = {.user_id = user,
                                     .preferences = "{ \"theme\": \"dark\", \"lang\": [\"fr\"] }"};
    ew_user_profile_created c = {.user_id = user}; /* no display_name */
    ew_event *ev, *pc;
    ew_error err = {0};
    assert_int_equal(
        ew_user_preferences_updated_new(&ev, &p, &(ew_event_attrs){.source = "t"}, &err), 0);
    assert_int_equal(ew_user_profile_created_new(&pc, &c, &(ew_event_attrs){.source = "t"}, &err),
                     0);
    char *json = sealed_json(k, ev), *jc = sealed_json(k, pc);
    assert_null(strstr(json, "dark"));
    assert_non_null(strstr(json, "\"preferences\":\"ewenc1."));
    assert_null(strstr(jc, "display_name"));
    ew_event *back;
    if (open_json(k, json, &back, &err)) fail_msg("%s", err.msg);
    assert_string_equal(ew_user_preferences_updated_data(back)->preferences,
                        "{\"theme\":\"dark\",\"lang\":[\"fr\"]}");
    assert_true(ew_event_equal(back, ev));
    ew_event_unref(back);
    if (open_json(k, jc, &back, &err)) fail_msg("%s", err.msg);
    assert_true(ew_event_equal(back, pc));
    assert_ptr_equal(ew__event_received(back), back); /* nothing was sealed */
    ew_event_unref(back);
    free(json);
    free(jc);
    ew_event_unref(ev);
    ew_event_unref(pc);
    ew__keyring_free(k);
}

/* A v1 user.registered (before roles), sealed: opened after its upcast to v2, and its
 * received form is the v1 event as it came. */
static void test_an_old_version_is_opened_as_upcast(void **state)
{
    fx *f = *state;
    ew__keyring *k = keyring(f);
    char user[EW_UUID_LEN + 1];
    ew_uuid7(user);
    ew_event *ev = registered(user, "old@example.com", "old_timer");
    char *json = sealed_json(k, ev);
    /* v2's text made v1's: the version, the schema, no roles (the ciphertext's associated data
     * names the type, not the version) */
    char *v1 = malloc(strlen(json) + 1);
    const char *cuts[][2] = {{"\"eventversion\":2", "\"eventversion\":1"},
                             {"user.registered:2\"", "user.registered:1\""},
                             {",\"roles\":[\"user\"]", ""}};
    strcpy(v1, json);
    for (size_t i = 0; i < 3; i++) {
        char *at = strstr(v1, cuts[i][0]);
        assert_non_null(at);
        size_t ol = strlen(cuts[i][0]), nl = strlen(cuts[i][1]);
        memmove(at + nl, at + ol, strlen(at + ol) + 1);
        memcpy(at, cuts[i][1], nl);
    }
    ew_event *back;
    ew_error err = {0};
    if (ew__keyring_decode(k, v1, strlen(v1), NULL, &back, &err)) fail_msg("%s", err.msg);
    assert_false(ew_event_encrypted(back));
    assert_int_equal(ew_event_version(back), 2);
    const ew_user_registered *d = ew_user_registered_data(back);
    assert_string_equal(d->email, "old@example.com");
    assert_int_equal(d->roles.count, 1);
    const ew_event *r = ew__event_received(back);
    assert_int_equal(ew_event_version(r), 1);
    assert_true(ew_event_encrypted(r));
    ew_event_unref(back);
    free(v1);
    free(json);
    ew_event_unref(ev);
    ew__keyring_free(k);
}

/* The received form of an event opened while decoded is made the first time it is asked for:
 * threads asking at once all get the one made. */
enum { ASKERS = 8 };

static void *ask_received(void *arg)
{
    return (void *)ew__event_received(arg);
}

static void test_the_received_form_is_made_once_for_all_threads(void **state)
{
    fx *f = *state;
    ew__keyring *k = keyring(f);
    char user[EW_UUID_LEN + 1];
    ew_uuid7(user);
    ew_event *ev = registered(user, "many@example.com", "many");
    char *json = sealed_json(k, ev);
    for (int round = 0; round < 20; round++) {
        ew_event *back;
        ew_error err = {0};
        if (ew__keyring_decode(k, json, strlen(json), NULL, &back, &err)) fail_msg("%s", err.msg);
        pthread_t th[ASKERS];
        void *got[ASKERS];
        for (int i = 0; i < ASKERS; i++)
            assert_int_equal(pthread_create(&th[i], NULL, ask_received, back), 0);
        for (int i = 0; i < ASKERS; i++)
            assert_int_equal(pthread_join(th[i], &got[i]), 0);
        for (int i = 0; i < ASKERS; i++) {
            assert_ptr_equal(got[i], got[0]);
            assert_ptr_not_equal(got[i], back);
        }
        assert_true(ew_event_encrypted(got[0]));
        ew_event_unref(back); /* frees the received form too: ASan's leak check */
    }
    free(json);
    ew_event_unref(ev);
    ew__keyring_free(k);
}

static ew_handler_result remember(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    (void)ctx;
    ew_event **seen = ud;
    *seen = ew_event_ref(ev);
    return EW_HANDLER_OK;
}

static void test_memory_bus_handlers_get_plaintext(void **state)
{
    fx *f = *state;
    ew_bus *bus = bus_open(f, "on");
    ew_event *seen = NULL;
    ew_error err = {0};
    assert_int_equal(ew_bus_subscribe(bus, "user.registered", remember, &seen, NULL, &err), 0);
    assert_int_equal(ew_bus_start(bus, &err), 0);
    char user[EW_UUID_LEN + 1];
    ew_uuid7(user);
    ew_event *ev = registered(user, "m@example.com", "mem");
    assert_int_equal(ew_bus_publish(bus, ev, &err), 0);
    assert_int_equal(ew_bus_wait_for_events(bus, 5000, &err), 0);
    assert_non_null(seen);
    assert_false(ew_event_encrypted(seen));
    assert_true(ew_event_equal(seen, ev));
    ew_event_unref(seen);
    ew_event_unref(ev);
    assert_int_equal(ew_bus_close(bus), 0);
}

static void test_encryption_off_refuses_what_it_cannot_read(void **state)
{
    fx *f = *state;
    ew__keyring *k = keyring(f);
    ew_bus *bus = bus_open(f, "off");
    ew__keyring *none;
    ew_error err = {0};
    assert_int_equal(ew_config_set(f->cfg, "EVENT_ENCRYPTION", "off", &err), 0);
    assert_int_equal(ew__keyring_new(&none, f->cfg, NULL, &err), 0);
    assert_null(none);
    char user[EW_UUID_LEN + 1], why[600];
    ew_uuid7(user);
    ew_event *ev = registered(user, "o@example.com", "off");
    char *json = sealed_json(k, ev);
    ew_event *got;
    assert_int_equal(receive(bus, json, &got, why, sizeof why), EW__RECV_DEAD);
    assert_non_null(strstr(why, "EVENT_ENCRYPTION=off"));
    /* and what it publishes itself is in clear, as documented */
    char *plain;
    assert_int_equal(ew_event_encode(ev, &plain, NULL, &err), 0);
    assert_int_equal(receive(bus, plain, &got, why, sizeof why), EW__RECV_EVENT);
    assert_string_equal(ew_user_registered_data(got)->email, "o@example.com");
    ew_event_unref(got);
    free(plain);
    free(json);
    ew_event_unref(ev);
    ew__keyring_free(k);
    assert_int_equal(ew_bus_close(bus), 0);
}

/* ---- PostgreSQL ------------------------------------------------------------------------------ */

/* How many files of the case's database hold needle. */
static int pg_files_holding(const fx *f, const unsigned char *needle, size_t n)
{
    int count = ew_test_pg_files_holding(f->pg_url, needle, n, NULL, 0);
    if (count < 0) fail_msg("the server's files cannot be searched");
    return count;
}

/* The subject's wrapped data key as the PostgreSQL key store holds it (72 bytes), found in the
 * server's files before anything is shredded: so that a search that later finds it in none of
 * them could have failed. */
static void wrapped_key_of(const fx *f, const char *subject, unsigned char out[72])
{
    char *hex = pg_value(f,
                         "SELECT encode(wrapped, 'hex') FROM key_store.subject_keys WHERE "
                         "subject = $1",
                         subject);
    assert_non_null(hex);
    assert_int_equal(strlen(hex), 2 * 72);
    for (size_t i = 0; i < 72; i++)
        assert_int_equal(sscanf(hex + 2 * i, "%2hhx", &out[i]), 1);
    free(hex);
    if (pg_files_holding(f, out, 72) < 1)
        fail_msg("the wrapped key is in no file of the database: the search sees nothing");
}

/* On PostgreSQL a shred leaves the destroyed key in none of the server's files (the row version
 * that held it is not left for a vacuum to maybe overwrite): found there before, so that the
 * search could fail. The key store's other subject keeps its key. */
static void test_a_shred_leaves_no_trace_in_postgresql_files(void **state)
{
    fx *f = *state;
    ew__keyring *k = keyring(f);
    char gone[EW_UUID_LEN + 1], kept[EW_UUID_LEN + 1];
    ew_uuid7(gone);
    ew_uuid7(kept);
    ew_event *a = registered(gone, "gone@example.com", "gone"),
             *b = registered(kept, "kept@example.com", "kept");
    char *ja = sealed_json(k, a), *jb = sealed_json(k, b);
    unsigned char wrapped[72];
    wrapped_key_of(f, gone, wrapped);
    ew_error err = {0};
    assert_int_equal(ew__keyring_shred(k, gone, &err), 0);
    assert_int_equal(pg_files_holding(f, wrapped, sizeof wrapped), 0);
    assert_int_equal(ew__keyring_shred(k, gone, &err), 0); /* idempotent */
    ew__keyring *fresh = keyring(f);
    ew_event *back;
    assert_int_equal(open_json(fresh, ja, &back, &err), 0);
    assert_true(ew_event_erased(back));
    ew_event_unref(back);
    if (open_json(fresh, jb, &back, &err)) fail_msg("%s", err.msg);
    assert_true(ew_event_equal(back, b));
    ew_event_unref(back);
    size_t live, erased;
    assert_int_equal(ew__keyring_count(fresh, &live, &erased, &err), 0);
    assert_int_equal(live, 1);
    assert_int_equal(erased, 1);
    ew__keyring_free(fresh);
    free(ja);
    free(jb);
    ew_event_unref(a);
    ew_event_unref(b);
    ew__keyring_free(k);
}

/* A session in a transaction older than the shred can still see the row version that held the
 * key, and VACUUM FULL copies such a version into its new file: the shred rewrites again until
 * none is left, and when the older transaction outlasts its wait it says so (EW_EAGAIN) and
 * leaves the tombstone; shredding again once that transaction ended leaves no trace. */
static void test_a_shred_outwaits_an_older_snapshot_in_postgresql_files(void **state)
{
    fx *f = *state;
    ew__keyring *k = keyring(f);
    char gone[EW_UUID_LEN + 1];
    ew_uuid7(gone);
    ew_event *a = registered(gone, "gone@example.com", "gone");
    char *ja = sealed_json(k, a);
    unsigned char wrapped[72];
    wrapped_key_of(f, gone, wrapped);
    /* the older transaction: a snapshot taken before the shred, and held */
    PGconn *old = PQconnectdb(f->pg_url);
    assert_int_equal(PQstatus(old), CONNECTION_OK);
    PGresult *r = PQexec(old, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    ew_error err = {0};
    assert_int_equal(ew__keyring_shred(k, gone, &err), EW_EAGAIN);
    assert_non_null(strstr(err.msg, "older than the shred"));
    /* the situation the case names: the rewrite kept the key for the older snapshot */
    assert_true(pg_files_holding(f, wrapped, sizeof wrapped) >= 1);
    ew_event *back;
    assert_int_equal(open_json(k, ja, &back, &err), 0);
    assert_true(ew_event_erased(back)); /* the key is destroyed all the same */
    ew_event_unref(back);
    r = PQexec(old, "COMMIT");
    PQclear(r);
    PQfinish(old);
    assert_int_equal(ew__keyring_shred(k, gone, &err), 0);
    assert_int_equal(pg_files_holding(f, wrapped, sizeof wrapped), 0);
    free(ja);
    ew_event_unref(a);
    ew__keyring_free(k);
}

/* Ends the sessions of the key store's connections, as a server restart or an idle timeout
 * does. */
static void end_key_store_sessions(const fx *f)
{
    char *n = pg_value(f,
                       "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                       "application_name = 'eventwire-keys' AND datname = current_database()",
                       NULL);
    assert_string_equal(n, "1");
    free(n);
}

/* The server ends the key store's session: the keyring connects again at its next read, new
 * key, shred and rotation. */
static void test_the_postgresql_key_store_reconnects(void **state)
{
    fx *f = *state;
    ew_error err = {0};
    assert_int_equal(ew_config_set(f->cfg, "EVENT_KEY_CACHE_SECONDS", "0", &err), 0);
    ew__keyring *k = keyring(f);
    char u1[EW_UUID_LEN + 1], u2[EW_UUID_LEN + 1];
    ew_uuid7(u1);
    ew_uuid7(u2);
    ew_event *e1 = registered(u1, "one@example.com", "one"),
             *e2 = registered(u2, "two@example.com", "two");
    char *j1 = sealed_json(k, e1);
    end_key_store_sessions(f);
    ew_event *back;
    if (open_json(k, j1, &back, &err)) fail_msg("a read after the session ended: %s", err.msg);
    assert_true(ew_event_equal(back, e1));
    ew_event_unref(back);
    end_key_store_sessions(f);
    char *j2 = sealed_json(k, e2); /* a new subject: a read, then a transaction */
    end_key_store_sessions(f);
    size_t n = 0;
    if (ew__keyring_rotate(k, &n, &err))
        fail_msg("a rotation after the session ended: %s", err.msg);
    assert_int_equal(n, 2);
    end_key_store_sessions(f);
    if (ew__keyring_shred(k, u1, &err)) fail_msg("a shred after the session ended: %s", err.msg);
    assert_int_equal(open_json(k, j1, &back, &err), 0);
    assert_true(ew_event_erased(back));
    ew_event_unref(back);
    if (open_json(k, j2, &back, &err)) fail_msg("%s", err.msg);
    assert_true(ew_event_equal(back, e2));
    ew_event_unref(back);
    free(j1);
    free(j2);
    ew_event_unref(e1);
    ew_event_unref(e2);
    ew__keyring_free(k);
}

/* A deployment whose key store was on PostgreSQL before the data keys were kept there has them
 * in the SQLite store beside EVENT_STORE_URL's file: the first keyring on PostgreSQL takes its
 * fingerprint, keys and tombstones, so old events still open, and erased subjects stay erased;
 * later keyrings import nothing again. */
static void test_postgresql_takes_the_data_keys_kept_in_sqlite_before(void **state)
{
    fx *f = *state;
    ew_error err = {0};
    assert_int_equal(ew_config_set(f->cfg, "KEY_STORE_URL", "", &err), 0); /* as before */
    ew__keyring *before = keyring(f);
    char kept[EW_UUID_LEN + 1], gone[EW_UUID_LEN + 1];
    ew_uuid7(kept);
    ew_uuid7(gone);
    ew_event *a = registered(kept, "kept@example.com", "kept"),
             *b = registered(gone, "gone@example.com", "gone");
    char *ja = sealed_json(before, a), *jb = sealed_json(before, b);
    assert_int_equal(ew__keyring_shred(before, gone, &err), 0);
    assert_null(strstr(ew__keyring_store_name(before), "postgres"));
    ew__keyring_free(before);
    assert_int_equal(ew_config_set(f->cfg, "KEY_STORE_URL", f->pg_url, &err), 0);
    for (int round = 0; round < 2; round++) {
        ew__keyring *k = keyring(f);
        ew_event *back;
        if (open_json(k, ja, &back, &err)) fail_msg("round %d: %s", round, err.msg);
        assert_true(ew_event_equal(back, a));
        ew_event_unref(back);
        assert_int_equal(open_json(k, jb, &back, &err), 0);
        assert_true(ew_event_erased(back));
        ew_event_unref(back);
        size_t live, erased;
        assert_int_equal(ew__keyring_count(k, &live, &erased, &err), 0);
        assert_int_equal(live, 1);
        assert_int_equal(erased, 1);
        ew__keyring_free(k);
    }
    char *n = pg_value(f, "SELECT count(*) FROM key_store.subject_keys", NULL);
    assert_string_equal(n, "2");
    free(n);
    /* the old file keeps no copy that a later erasure would miss */
    char path[128];
    snprintf(path, sizeof path, "%s/keys/keys.db", f->dir);
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM subject_keys", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(ja);
    free(jb);
    ew_event_unref(a);
    ew_event_unref(b);
}

/* ---- the cache ------------------------------------------------------------------------------- */

/* Seals an event of each subject of users[0..n): the key store reads that took. */
static size_t seal_all(ew__keyring *k, char (*users)[EW_UUID_LEN + 1], size_t n)
{
    size_t before = ew__keyring_store_reads(k);
    for (size_t i = 0; i < n; i++) {
        ew_event *ev = registered(users[i], "c@example.com", "cached");
        free(sealed_json(k, ev));
        ew_event_unref(ev);
    }
    return ew__keyring_store_reads(k) - before;
}

/* The 1,000 users that the direct-mapped cache of 1,024 slots let collide (every miss a key store
 * read) all stay cached in the default one: sealing their events again reads nothing. */
static void test_the_cache_keeps_the_subjects_it_has_room_for(void **state)
{
    enum { N = 1000 };
    fx *f = *state;
    ew__keyring *k = keyring(f);
    static char users[N][EW_UUID_LEN + 1];
    for (int i = 0; i < N; i++)
        ew_uuid7(users[i]);
    assert_true(seal_all(k, users, N) >= N); /* each key read (made) once */
    assert_int_equal(seal_all(k, users, N), 0);
    assert_int_equal(seal_all(k, users, N), 0);
    ew__keyring_free(k);
}

/* A cache of one set (EVENT_KEY_CACHE_SIZE=8): a ninth subject drops the least recently used one,
 * which is read again when next needed, and not the one used a moment ago. */
static void test_a_full_set_drops_its_least_recently_used(void **state)
{
    fx *f = *state;
    ew_error err = {0};
    assert_int_equal(ew_config_set(f->cfg, "EVENT_KEY_CACHE_SIZE", "8", &err), 0);
    ew__keyring *k = keyring(f);
    char users[9][EW_UUID_LEN + 1];
    for (int i = 0; i < 9; i++)
        ew_uuid7(users[i]);
    assert_true(seal_all(k, users, 8) >= 8);
    assert_int_equal(seal_all(k, users, 8), 0);     /* eight fit */
    assert_int_equal(seal_all(k, users, 1), 0);     /* users[0] used last: users[1] is the oldest */
    assert_int_equal(seal_all(k, users + 8, 1), 2); /* read, made, read: users[1] dropped */
    assert_int_equal(seal_all(k, users, 1), 0);
    assert_int_equal(seal_all(k, users + 8, 1), 0);
    assert_int_equal(seal_all(k, users + 1, 1), 1); /* read again (dropping users[2]) */
    assert_int_equal(seal_all(k, users + 2, 1), 1);
    /* too small a cache is refused with its range */
    assert_int_equal(ew_config_set(f->cfg, "EVENT_KEY_CACHE_SIZE", "7", &err), EW_ECONFIG);
    ew__keyring_free(k);
}

/* A key another process destroyed stays usable here for at most EVENT_KEY_CACHE_SECONDS; a
 * shred in this process drops it at once. */
static void test_a_cached_key_lives_its_seconds_and_no_more(void **state)
{
    fx *f = *state;
    ew_error err = {0};
    assert_int_equal(ew_config_set(f->cfg, "EVENT_KEY_CACHE_SECONDS", "1", &err), 0);
    ew__keyring *k = keyring(f), *other = keyring(f);
    char a[EW_UUID_LEN + 1], b[EW_UUID_LEN + 1];
    ew_uuid7(a);
    ew_uuid7(b);
    ew_event *ea = registered(a, "a@example.com", "a"), *eb = registered(b, "b@example.com", "b");
    char *ja = sealed_json(k, ea), *jb = sealed_json(k, eb);
    assert_int_equal(ew__keyring_shred(other, a, &err), 0);
    ew_event *back;
    if (open_json(k, ja, &back, &err)) fail_msg("%s", err.msg);
    assert_false(ew_event_erased(back)); /* cached: still the key */
    ew_event_unref(back);
    assert_int_equal(ew__keyring_shred(k, b, &err), 0);
    assert_int_equal(open_json(k, jb, &back, &err), 0);
    assert_true(ew_event_erased(back)); /* this process's own shred: at once */
    ew_event_unref(back);
    usleep(1100 * 1000);
    assert_int_equal(open_json(k, ja, &back, &err), 0);
    assert_true(ew_event_erased(back)); /* read again after its second */
    ew_event_unref(back);
    free(ja);
    free(jb);
    ew_event_unref(ea);
    ew_event_unref(eb);
    ew__keyring_free(other);
    ew__keyring_free(k);
}

/* ---- golden vectors: the wire format of a sealed field, pinned ------------------------------ */

/* The fixed inputs: the key-encryption key, the subject's data key, the keyring's nonce prefix
 * (its counter starts at 0), the event. */
#define G_SUBJECT "0190a4c2-7b1e-7c3d-8e4f-5a6b7c8d9e0f"
#define G_ID "0190a4c2-7b1e-7c3d-8e4f-000000000001"
#define G_TIME_US INT64_C(1767225600000000) /* 2026-01-01T00:00:00Z */

static void golden_bytes(unsigned char *b, size_t n, unsigned char first)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (unsigned char)(first + i);
}

/* The event of the vectors: user.registered of G_SUBJECT, id G_ID, at G_TIME_US. */
static ew_event *golden_event(void)
{
    const char *roles[] = {"user"};
    ew_user_registered d = {.user_id = G_SUBJECT,
                            .email = "ada.lovelace@example.com",
                            .username = "ada",
                            .roles = {roles, 1}};
    ew_event *ev;
    ew_error err = {0};
    ew_event_attrs a = {
        .source = "auth-service", .subject = G_SUBJECT, .id = G_ID, .time_us = G_TIME_US};
    if (ew_user_registered_new(&ev, &d, &a, &err)) fail_msg("%s", err.msg);
    return ev;
}

/* A keyring of f whose key-encryption key, G_SUBJECT's data key and nonces are the fixed ones:
 * the key file written before the first load, the data key put in the key store wrapped by it
 * (through the data-key tables, as the keyring itself would), the nonces through
 * ew__keyring_set_nonces. */
static ew__keyring *golden_keyring(fx *f)
{
    unsigned char kek[32], dek[32], w[24 + 32 + 16], prefix[16];
    golden_bytes(kek, sizeof kek, 0x40);
    golden_bytes(dek, sizeof dek, 0x80);
    golden_bytes(prefix, sizeof prefix, 0xA0);
    char folder[96];
    snprintf(folder, sizeof folder, "%s/keys", f->dir);
    assert_int_equal(mkdir(folder, 0700), 0);
    int fd = open(f->kek, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, kek, sizeof kek), (ssize_t)sizeof kek);
    close(fd);
    /* the data key wrapped as the keyring wraps one: XChaCha20-Poly1305 under the
     * key-encryption key, the subject as associated data, the nonce first */
    golden_bytes(w, 24, 0x10);
    crypto_aead_xchacha20poly1305_ietf_encrypt(w + 24, NULL, dek, sizeof dek,
                                               (const unsigned char *)G_SUBJECT, strlen(G_SUBJECT),
                                               NULL, w, kek);
    ew_keys *store;
    const ew__datakeys_ops *ops;
    ew__datakeys *dk;
    ew_error err = {0};
    char url[160];
    snprintf(url, sizeof url, "sqlite:%s/keys.db", folder);
    if (ew_keys_open(&store, &(ew_keys_options){.url = url}, &err) ||
        ew__datakeys_open(store, &ops, &dk, &err) || ops->insert(dk, G_SUBJECT, w, sizeof w, &err))
        fail_msg("%s", err.msg);
    ops->close(dk);
    ew_keys_close(store);
    ew__keyring *k = keyring(f);
    if (ew__keyring_load(k, &err)) fail_msg("%s", err.msg);
    ew__keyring_set_nonces(k, prefix, 0);
    return k;
}

/* What the sealed field must be, made here from libsodium's primitives and nothing of the
 * keyring's: "ewenc1." SUBJECT "." base64url(nonce || XChaCha20-Poly1305 ciphertext || tag),
 * without padding, the nonce the prefix then the counter (64 bits, little-endian), the
 * associated data "ewenc1|TYPE|FIELD|SUBJECT|EVENT_ID" (docs/encryption.md). */
static void golden_token(char *out, size_t cap, const char *field, const char *plain,
                         uint64_t counter)
{
    unsigned char dek[32], nonce[24], sealed[24 + 64 + 16];
    golden_bytes(dek, sizeof dek, 0x80);
    golden_bytes(nonce, 16, 0xA0);
    for (int i = 0; i < 8; i++)
        nonce[16 + i] = (unsigned char)(counter >> (8 * i));
    char aad[160];
    int alen = snprintf(aad, sizeof aad, "ewenc1|user.registered|%s|" G_SUBJECT "|" G_ID, field);
    size_t plen = strlen(plain);
    assert_true(plen <= 64);
    memcpy(sealed, nonce, 24);
    crypto_aead_xchacha20poly1305_ietf_encrypt(sealed + 24, NULL, (const unsigned char *)plain,
                                               plen, (const unsigned char *)aad, (size_t)alen, NULL,
                                               nonce, dek);
    char b64[200];
    sodium_bin2base64(b64, sizeof b64, sealed, 24 + plen + 16,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    snprintf(out, cap, "ewenc1." G_SUBJECT ".%s", b64);
}

/* The two sealed fields and the whole event, as they must be on the wire byte for byte. */
#define G_EMAIL                                                                                    \
    "ewenc1." G_SUBJECT                                                                            \
    ".oKGio6SlpqeoqaqrrK2urwAAAAAAAAAACqREzwvWeOx2pnGhggD_p83CdEa4gvLXQekrccGPu0OA"                \
    "olRjfl6tew"
#define G_USERNAME "ewenc1." G_SUBJECT ".oKGio6SlpqeoqaqrrK2urwEAAAAAAAAA3rhuQCIG4_D_WtIQ_PuJQ686gA"
static const char golden_json[] =
    "{\"specversion\":\"1.0\",\"id\":\"" G_ID "\",\"source\":\"auth-service\","
    "\"type\":\"user.registered\",\"subject\":\"" G_SUBJECT "\","
    "\"time\":\"2026-01-01T00:00:00.000000Z\",\"datacontenttype\":\"application/json\","
    "\"dataschema\":\"urn:eventwire:schema:user.registered:2\",\"eventversion\":2,"
    "\"correlationid\":\"" G_ID "\",\"data\":{\"user_id\":\"" G_SUBJECT "\","
    "\"email\":\"" G_EMAIL "\",\"username\":\"" G_USERNAME "\",\"roles\":[\"user\"]}}";

/* Golden vectors: with a fixed key-encryption key, data key and nonces, the sealed fields and
 * the whole encoded user.registered are exactly these bytes, whichever way they are made
 * (sealed while encoded, or sealed then encoded), they are what libsodium's primitives make
 * of the documented layout, and they decode back to the event. A change of alphabet, layout,
 * associated data or nonce on both sides at once fails here. */
static void test_golden_vectors_pin_the_wire_format(void **state)
{
    fx *f = *state;
    ew__keyring *k = golden_keyring(f);
    ew_event *ev = golden_event();
    char want[256];
    golden_token(want, sizeof want, "email", "ada.lovelace@example.com", 0);
    assert_string_equal(want, G_EMAIL);
    golden_token(want, sizeof want, "username", "ada", 1);
    assert_string_equal(want, G_USERNAME);

    ew_error err = {0};
    char *json;
    size_t len;
    if (ew__keyring_encode(k, ev, &json, &len, &err)) fail_msg("%s", err.msg);
    assert_string_equal(json, golden_json);
    assert_int_equal(len, sizeof golden_json - 1);
    free(json);

    unsigned char prefix[16];
    golden_bytes(prefix, sizeof prefix, 0xA0);
    ew__keyring_set_nonces(k, prefix, 0); /* the same nonces again, the other way */
    ew_event *sealed;
    if (ew__keyring_seal(k, ev, &sealed, &err)) fail_msg("%s", err.msg);
    assert_int_equal(ew_event_encode(sealed, &json, &len, &err), 0);
    assert_string_equal(json, golden_json);
    free(json);
    ew_event_unref(sealed);

    ew_event *back;
    if (open_json(k, golden_json, &back, &err)) fail_msg("%s", err.msg);
    assert_true(ew_event_equal(back, ev));
    ew_event_unref(back);
    /* a keyring that never had these nonces opens them too: the nonce travels in the field */
    ew__keyring *other = keyring(f);
    if (ew__keyring_decode(other, golden_json, sizeof golden_json - 1, NULL, &back, &err))
        fail_msg("%s", err.msg);
    assert_true(ew_event_equal(back, ev));
    ew_event_unref(back);
    ew__keyring_free(other);
    ew_event_unref(ev);
    ew__keyring_free(k);
}

/* The bus's publish seals and signs in one copy of each event (ew__evauth_sign_sealed): the
 * event is the one that sealing then signing made — the same bytes under the same nonces, a
 * tag that verifies, fields that open; an event with nothing to seal is signed as before. */
static void test_sealed_and_signed_in_one_copy(void **state)
{
    fx *f = *state;
    ew__keyring *k = golden_keyring(f);
    ew_event *ev = golden_event();
    ew_policy *pol;
    ew_evauth *a;
    ew_error err = {0};
    char key_file[128];
    snprintf(key_file, sizeof key_file, "%s/keys/auth-service.bus.key", f->dir);
    if (ew_policy_parse(&pol, "publish * #\n", 12, "test", &err) ||
        ew_evauth_open(
            &a,
            &(ew_evauth_options){
                .config = f->cfg, .service = "auth-service", .key_file = key_file, .policy = pol},
            &err))
        fail_msg("%s", err.msg);
    unsigned char prefix[16];
    golden_bytes(prefix, sizeof prefix, 0xA0);
    ew__keyring_set_nonces(k, prefix, 0);
    ew_event *sealed, *two, *one;
    if (ew__keyring_seal(k, ev, &sealed, &err) || ew_evauth_sign(a, sealed, &two, &err))
        fail_msg("%s", err.msg);
    ew__keyring_set_nonces(k, prefix, 0); /* the same nonces again, the other way */
    uint64_t mask;
    const char *values[64];
    ew_buf text;
    ew_buf_init(&text);
    if (ew__keyring_seal_fields(k, ev, &mask, values, &text, &err) ||
        ew__evauth_sign_sealed(a, ev, mask, values, &one, &err))
        fail_msg("%s", err.msg);
    assert_true(mask != 0);
    ew_buf_release(&text);
    char *j1, *j2;
    assert_int_equal(ew_event_encode(one, &j1, NULL, &err), 0);
    assert_int_equal(ew_event_encode(two, &j2, NULL, &err), 0);
    assert_string_equal(j1, j2);
    assert_non_null(strstr(j1, G_EMAIL));
    assert_true(ew_event_encrypted(one));
    assert_int_equal(ew_evauth_verify(a, one, &err), 0);
    ew_event *plain;
    if (ew__keyring_unseal(k, one, &plain, &err)) fail_msg("%s", err.msg);
    assert_string_equal(ew_user_registered_data(plain)->email, "ada.lovelace@example.com");
    assert_string_equal(ew_user_registered_data(plain)->username, "ada");
    ew_event_unref(plain);
    free(j1);
    free(j2);
    ew_event_unref(one);
    ew_event_unref(two);
    ew_event_unref(sealed);

    /* nothing to seal: what ew_evauth_sign makes */
    ew_event *done;
    const char *svcs[] = {"user-service"};
    assert_int_equal(
        ew_user_deletion_completed_new(
            &done,
            &(ew_user_deletion_completed){
                .request_id = G_ID, .user_id = G_SUBJECT, .services = {svcs, 1}},
            &(ew_event_attrs){.source = "auth-service", .id = G_ID, .time_us = G_TIME_US}, &err),
        0);
    if (ew__keyring_seal_fields(k, done, &mask, values, &text, &err) ||
        ew__evauth_sign_sealed(a, done, mask, values, &one, &err) ||
        ew_evauth_sign(a, done, &two, &err))
        fail_msg("%s", err.msg);
    assert_int_equal(mask, 0);
    assert_true(ew_event_equal(one, two));
    assert_int_equal(ew_evauth_verify(a, one, &err), 0);
    ew_buf_release(&text);
    ew_event_unref(one);
    ew_event_unref(two);
    ew_event_unref(done);
    ew_evauth_close(a);
    ew_policy_free(pol);
    ew_event_unref(ev);
    ew__keyring_free(k);
}

#define CASE(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
/* A case of the key store, on SQLite and on PostgreSQL (case_db.h's BOTH takes another form). */
#define STORES(f)                                                                                  \
    {#f "_on_sqlite", f, setup_sqlite, teardown, NULL},                                            \
    {                                                                                              \
#f "_on_postgresql", f, setup_postgres, teardown, NULL                                     \
    }
#define PG(f) cmocka_unit_test_setup_teardown(f, setup_postgres, teardown)
static const struct CMUnitTest tests[] = {
    STORES(test_new_keys_from_many_threads_at_once),
    STORES(test_a_batch_makes_its_new_keys_in_one_commit),
    STORES(test_a_key_made_ahead_of_a_transaction),
    CASE(test_the_wire_carries_ciphertext),
    CASE(test_golden_vectors_pin_the_wire_format),
    CASE(test_sealed_and_signed_in_one_copy),
    CASE(test_a_failed_commit_leaves_the_key_store_unlocked),
    CASE(test_object_and_absent_fields_seal_and_open_while_coded),
    CASE(test_an_old_version_is_opened_as_upcast),
    CASE(test_the_received_form_is_made_once_for_all_threads),
    STORES(test_a_missing_key_file_is_refused_when_keys_exist),
    STORES(test_a_wrong_or_exposed_key_file_is_refused),
    CASE(test_tampered_ciphertext_is_dead_lettered),
    CASE(test_validation_runs_on_the_plaintext),
    STORES(test_rotation_keeps_every_old_event_readable),
    STORES(test_a_rotation_between_commit_and_rename),
    STORES(test_a_shredded_subject_decodes_as_erased),
    CASE(test_memory_bus_handlers_get_plaintext),
    CASE(test_encryption_off_refuses_what_it_cannot_read),
    PG(test_a_shred_leaves_no_trace_in_postgresql_files),
    PG(test_a_shred_outwaits_an_older_snapshot_in_postgresql_files),
    PG(test_the_postgresql_key_store_reconnects),
    PG(test_postgresql_takes_the_data_keys_kept_in_sqlite_before),
    CASE(test_the_cache_keeps_the_subjects_it_has_room_for),
    CASE(test_a_full_set_drops_its_least_recently_used),
    STORES(test_a_cached_key_lives_its_seconds_and_no_more),
};

EW_TEST_MAIN(tests)
