/* eventwire — authenticated events (eventwire/evauth.h): the service's key file, the canonical
 * form, tags and signatures, the verifiers' cache of the key store, and the policy checks. */
#include "eventwire/evauth.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "core/base64.h"
#include "core/buf.h"
#include "core/files.h"
#include "catalog/event_internal.h"
#include "eventwire/catalog.h"
#include "eventwire/clock.h"
#include "security/evauth_internal.h"
#include "security/keyfile.h"

#define EXT_AUTH "ewauth"
#define EXT_KID "ewkid"
#define TAG_MAC "mac1:"
#define TAG_ED "ed1:"
#define CANON_TAG "eventwire ewauth v1" /* with its NUL, the first bytes of the canonical form */
#define RELOAD_EVERY_US 1000000LL       /* the signer looks at its key file at most this often */
#define REFRESH_EVERY_US 5000000LL /* the verifiers' cache reads the key store again this often */
#define MAX_CACHE 4096
#define POLICY_ROWS 16 /* the sources whose policy answers are kept (the service's own first) */

/* The policy's answers for one source, by type id: 0 not asked yet, 1 allowed, 2 refused. A
 * policy never changes (policy.h has no call that would), so an answer holds for the handle's
 * life; asking the policy is a walk over its lines with a pattern match each, per event. */
typedef struct policy_row {
    char *source; /* set before the row is counted, and never changed */
    atomic_uchar ok[EW_T__COUNT];
} policy_row;

struct ew_evauth {
    char *service;
    char *owner; /* "service:" + service */
    char *key_file;
    ew_key_alg mode; /* what this service signs with, and how strict verifying is */
    ew_keys *keys;
    bool own_keys;
    ew_policy *policy;
    bool own_policy;
    ew_evauth_notice_fn notice;
    void *notice_ud;

    pthread_mutex_t sign_mu; /* the signing key, and when its file was looked at */
    char kid[EW_KEY_ID_LEN + 1];
    ew_key_alg alg;
    unsigned char secret[crypto_sign_SECRETKEYBYTES]; /* MAC key (32) or Ed25519 secret (64) */
    struct stat file_st;
    int64_t checked_us;

    pthread_mutex_t cache_mu; /* the verifiers' copy of the key store */
    ew_key *cache;
    size_t ncache, capcache;
    int64_t refreshed_us;

    pthread_mutex_t rows_mu; /* adding a row; rows[0..nrows) are read without it */
    policy_row rows[POLICY_ROWS];
    atomic_size_t nrows;
};

static void note(ew_evauth *a, ew_evauth_notice_kind k, const ew_event *ev, const char *detail)
{
    if (a->notice) a->notice(a->notice_ud, k, ev, detail);
}

/* ---- the canonical form -------------------------------------------------------------------- */

static void put_u64(ew_buf *b, uint64_t v)
{
    unsigned char x[8];
    for (int i = 7; i >= 0; i--, v >>= 8)
        x[i] = (unsigned char)v;
    ew_buf_append(b, (const char *)x, 8);
}

/* A field: present or not, its length, its bytes — no two events share a form by moving bytes
 * from one field to the next. */
static void put_field(ew_buf *b, const char *s)
{
    ew_buf_putc(b, s ? 1 : 0);
    if (!s) return;
    size_t n = strlen(s);
    put_u64(b, n);
    ew_buf_append(b, s, n);
}

/* The canonical form of ev, or with sealer (not NULL) of the event that sealing ev with it
 * makes: its data is what that event's encoding carries. */
static int canonical_sealed(const ew_event *ev, const ew__sealer *sealer, ew_buf *b)
{
    ew_buf_reserve(b, 1024); /* one allocation for an event of the usual size, not five */
    ew_buf_append(b, CANON_TAG, sizeof CANON_TAG); /* with its NUL */
    put_field(b, ew_event_id(ev));
    put_field(b, ew_event_source(ev));
    put_field(b, ew_event_type(ev));
    put_u64(b, (uint64_t)ew_event_version(ev));
    put_field(b, ew_event_subject(ev));
    put_u64(b, (uint64_t)ew_event_time_us(ev));
    put_field(b, ew_event_dataschema(ev));
    put_field(b, ew_event_correlation_id(ev));
    put_field(b, ew_event_causation_id(ev));
    put_field(b, ew_event_traceparent(ev));
    size_t n = ew_event_extension_count(ev), k = 0;
    for (size_t i = 0; i < n; i++) {
        const ew_event_ext *x = ew_event_extension_at(ev, i);
        k += strcmp(x->name, EXT_AUTH) && strcmp(x->name, EXT_KID);
    }
    put_u64(b, k);
    /* in the order of their names (ew_event_extension_at's), by name and value as text: a
     * binding that carries a number as a string (Kafka headers) keeps the same form */
    for (size_t i = 0; i < n; i++) {
        const ew_event_ext *x = ew_event_extension_at(ev, i);
        if (!strcmp(x->name, EXT_AUTH) || !strcmp(x->name, EXT_KID)) continue;
        put_field(b, x->name);
        put_field(b, x->value);
    }
    size_t at = b->len;
    put_u64(b, 0); /* the data's length, written below */
    if (ew__event_encode_data_sealed(ev, sealer, b, NULL)) return EW_ENOMEM;
    if (b->oom) return EW_ENOMEM;
    uint64_t dl = b->len - at - 8;
    for (int i = 7; i >= 0; i--, dl >>= 8)
        ((unsigned char *)b->data)[at + (size_t)i] = (unsigned char)dl;
    return 0;
}

static int canonical(const ew_event *ev, ew_buf *b)
{
    return canonical_sealed(ev, NULL, b);
}

int ew_evauth_canonical(const ew_event *ev, unsigned char **out, size_t *len, ew_error *err)
{
    if (!ev || !out || !len) return ew_error_set(err, EW_EINVAL, "event and out are required");
    ew_buf b;
    ew_buf_init(&b);
    if (canonical(ev, &b)) {
        ew_buf_release(&b);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    *out = (unsigned char *)ew_buf_steal(&b, len);
    return 0;
}

/* ---- the key file -------------------------------------------------------------------------- */

const char *ew_evauth_key_file(const ew_config *cfg, const char *service, char *buf, size_t n)
{
    const char *dir = cfg ? ew_config_get(cfg, "EVENT_KEY_DIR") : NULL;
    char url[4096];
    int w;
    if (dir && *dir) {
        w = snprintf(buf, n, "%s/%s.bus.key", dir, service);
    } else {
        if (!ew_keys_default_url(cfg, url, sizeof url)) return NULL;
        /* a key store on PostgreSQL: the folder its SQLite file would be in */
        const char *store = cfg ? ew_config_get(cfg, "EVENT_STORE_URL") : NULL;
        if (strncmp(url, "sqlite:", 7) != 0) {
            const char *sp = store && !strncmp(store, "sqlite:", 7) ? store + 7 : NULL,
                       *ss = sp ? strrchr(sp, '/') : NULL;
            snprintf(url, sizeof url, "sqlite:%.*s%s", ss ? (int)(ss - sp + 1) : 0, sp ? sp : "",
                     sp ? "keys/keys.db" : "var/keys/keys.db");
        }
        const char *path = url + 7;
        const char *slash = strrchr(path, '/');
        w = snprintf(buf, n, "%.*s%s.bus.key", slash ? (int)(slash - path + 1) : 0, path, service);
    }
    return w < 0 || (size_t)w >= n ? NULL : buf;
}

typedef struct keyfile {
    char kid[EW_KEY_ID_LEN + 1];
    ew_key_alg alg;
    unsigned char secret[crypto_sign_SECRETKEYBYTES];
    size_t secret_len;
    struct stat st;
} keyfile;

/* Reads path: EW_ENOTFOUND when it does not exist; EW_ECONFIG when it is not ours and 0600 or not
 * a key file (ew__bus_keyfile_parse). */
static int keyfile_read(const char *path, keyfile *kf, ew_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        if (errno == ENOENT) return ew_error_set(err, EW_ENOTFOUND, "no key file %s", path);
        return ew_error_set(err, EW_ECONFIG, "key file %s: %s", path, strerror(errno));
    }
    char buf[EW__BUS_KEYFILE_MAX + 1]; /* one byte more: a longer file is seen as such */
    ssize_t n = -1;
    int rc = 0;
    if (fstat(fd, &kf->st) != 0 || kf->st.st_uid != geteuid() || (kf->st.st_mode & 077))
        rc = ew_error_set(err, EW_ECONFIG, "key file %s: must be a file of this user's, mode 0600",
                          path);
    else
        n = read(fd, buf, sizeof buf);
    int read_errno = errno;
    close(fd);
    if (rc) return rc;
    if (n < 0) return ew_error_set(err, EW_ECONFIG, "key file %s: %s", path, strerror(read_errno));
    ew__bus_keyfile k;
    rc = ew__bus_keyfile_parse(path, buf, (size_t)n, &k, err);
    if (!rc) {
        memcpy(kf->kid, k.kid, sizeof kf->kid);
        kf->alg = k.alg;
        memcpy(kf->secret, k.secret, sizeof kf->secret);
        kf->secret_len = k.secret_len;
    }
    sodium_memzero(&k, sizeof k);
    sodium_memzero(buf, sizeof buf);
    return rc;
}

/* Writes the key file in one step: a new file beside it (0600), then renamed over it. */
static int keyfile_write(const char *path, const char *kid, ew_key_alg alg,
                         const unsigned char *secret, size_t len, ew_error *err)
{
    if (ew_mkdirs_for(path))
        return ew_error_set(err, EW_ECONFIG, "key file %s: cannot make its folder: %s", path,
                            strerror(errno));
    char hex[2 * crypto_sign_SECRETKEYBYTES + 1], line[300];
    sodium_bin2hex(hex, sizeof hex, secret, len);
    int n = snprintf(line, sizeof line, "%s %s %s %s\n", EW__BUS_KEYFILE_MAGIC, kid,
                     ew_key_alg_name(alg), hex);
    int rc = 0;
    if (ew_file_replace(path, line, (size_t)n, 0600))
        rc = ew_error_set(err, EW_ECONFIG, "key file %s: cannot write it: %s", path,
                          strerror(errno));
    sodium_memzero(hex, sizeof hex);
    sodium_memzero(line, sizeof line);
    return rc;
}

/* The store's record of the key a key file holds: the MAC key, or the Ed25519 public key. */
static void key_of_file(const keyfile *kf, const char *owner, ew_key *key)
{
    memset(key, 0, sizeof *key);
    memcpy(key->kid, kf->kid, sizeof key->kid);
    snprintf(key->owner, sizeof key->owner, "%s", owner);
    key->alg = kf->alg;
    if (kf->alg == EW_KEY_MAC) {
        memcpy(key->material, kf->secret, crypto_generichash_KEYBYTES);
        key->material_len = crypto_generichash_KEYBYTES;
    } else {
        crypto_sign_ed25519_sk_to_pk(key->material, kf->secret);
        key->material_len = crypto_sign_PUBLICKEYBYTES;
    }
}

/* ---- rotation ------------------------------------------------------------------------------ */

static int make_key(ew_keys *keys, const char *key_file, const char *service, ew_key_alg alg,
                    int64_t grace_s, char kid_out[EW_KEY_ID_LEN + 1], ew_error *err)
{
    char owner[EW_KEY_OWNER_MAX];
    if (snprintf(owner, sizeof owner, "service:%s", service) >= (int)sizeof owner)
        return ew_error_set(err, EW_EINVAL, "service name too long");
    ew_key key;
    unsigned char sk[EW_KEY_MATERIAL_MAX];
    int rc = ew_key_generate(&key, owner, alg, sk, err);
    if (!rc) rc = ew_keys_rotate(keys, &key, grace_s * 1000000, NULL, err);
    if (!rc)
        rc = keyfile_write(
            key_file, key.kid, alg, alg == EW_KEY_MAC ? key.material : sk,
            alg == EW_KEY_MAC ? crypto_generichash_KEYBYTES : crypto_sign_SECRETKEYBYTES, err);
    if (!rc && kid_out) memcpy(kid_out, key.kid, EW_KEY_ID_LEN + 1);
    sodium_memzero(sk, sizeof sk);
    sodium_memzero(&key, sizeof key);
    return rc;
}

int ew_evauth_rotate(const ew_config *cfg, ew_keys *keys, const char *service, ew_key_alg alg,
                     int64_t grace_s, char kid_out[EW_KEY_ID_LEN + 1], ew_error *err)
{
    if (!keys || !service || !*service || (alg != EW_KEY_MAC && alg != EW_KEY_ED25519))
        return ew_error_set(err, EW_EINVAL, "rotate: key store, service and algorithm needed");
    if (grace_s < 0) return ew_error_set(err, EW_EINVAL, "rotate: a grace period is not negative");
    char path[4096];
    if (!ew_evauth_key_file(cfg, service, path, sizeof path))
        return ew_error_set(err, EW_ECONFIG, "EVENT_KEY_DIR: the path is too long");
    return make_key(keys, path, service, alg, grace_s, kid_out, err);
}

/* ---- open ---------------------------------------------------------------------------------- */

/* Takes kf as the signing key. */
static void use_key(ew_evauth *a, const keyfile *kf)
{
    memcpy(a->kid, kf->kid, sizeof a->kid);
    a->alg = kf->alg;
    memcpy(a->secret, kf->secret, sizeof a->secret);
    a->file_st = kf->st;
}

/* The service's key: the key file's (added to the key store when the store lost it), or a new
 * one when there is no file; a key of another algorithm than EVENT_AUTH's is rotated. */
static int load_key(ew_evauth *a, bool existing_only, int64_t grace_s, ew_error *err)
{
    keyfile kf;
    int rc = keyfile_read(a->key_file, &kf, err);
    if (rc == EW_ENOTFOUND && existing_only)
        return ew_error_set(err, EW_ENOTFOUND,
                            "no key of service %s: its key file %s does not exist (it is made at "
                            "the service's first start)",
                            a->service, a->key_file);
    bool made = false;
    if (rc == EW_ENOTFOUND || (!rc && kf.alg != a->mode && !existing_only)) {
        char kid[EW_KEY_ID_LEN + 1];
        bool first = rc == EW_ENOTFOUND;
        /* with the grace period also at a first start: two instances of the service starting
         * at once each make a key, and the one whose file is overwritten keeps signing with its
         * own until it reads the file again */
        if ((rc = make_key(a->keys, a->key_file, a->service, a->mode, grace_s, kid, err)))
            return rc;
        if ((rc = keyfile_read(a->key_file, &kf, err))) return rc;
        note(a, first ? EW_EVAUTH_KEY_MADE : EW_EVAUTH_KEY_ROTATED, NULL, kf.kid);
        made = true;
    }
    if (rc) return rc;
    if (!made) {
        ew_key stored;
        ew_error e = {0};
        int g = ew_keys_get(a->keys, kf.kid, &stored, &e);
        if (g == EW_ENOTFOUND) {
            ew_key key;
            key_of_file(&kf, a->owner, &key);
            g = ew_keys_add(a->keys, &key, &e);
            if (g == EW_EEXIST) g = 0; /* another instance of the service added it first */
        } else if (!g && strcmp(stored.owner, a->owner) != 0) {
            g = ew_error_set(&e, EW_ECONFIG, "key %s of %s belongs to %s in the key store", kf.kid,
                             a->key_file, stored.owner);
        }
        if (g) {
            sodium_memzero(&kf, sizeof kf);
            return ew_error_set(err, g, "%s", e.msg);
        }
    }
    use_key(a, &kf);
    sodium_memzero(&kf, sizeof kf);
    return 0;
}

int ew_evauth_open(ew_evauth **out, const ew_evauth_options *opts, ew_error *err)
{
    static const ew_evauth_options none;
    if (!out) return ew_error_set(err, EW_EINVAL, "ew_evauth_open: out is NULL");
    *out = NULL;
    if (!opts) opts = &none;
    if (sodium_init() < 0) return ew_error_set(err, EW_ENOMEM, "libsodium did not start");
    ew_config *own_cfg = NULL;
    const ew_config *cfg = opts->config;
    int rc = 0;
    if (!cfg) {
        if ((rc = ew_config_new(&own_cfg, err))) return rc;
        cfg = own_cfg;
    }
    const char *mode = ew_config_get(cfg, "EVENT_AUTH");
    const char *service = opts->service ? opts->service : ew_config_get(cfg, "SERVICE_NAME");
    ew_evauth *a = calloc(1, sizeof *a);
    if (!a) {
        ew_config_free(own_cfg);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    pthread_mutex_init(&a->sign_mu, NULL);
    pthread_mutex_init(&a->cache_mu, NULL);
    pthread_mutex_init(&a->rows_mu, NULL);
    a->notice = opts->notice;
    a->notice_ud = opts->notice_ud;
    a->mode = ew_key_alg_from_name(mode);
    char path[4096];
    size_t ol = strlen(service) + 9;
    if (!a->mode) {
        rc = ew_error_set(err, EW_EINVAL, "EVENT_AUTH=%s: nothing to authenticate with", mode);
    } else if (!*service) {
        rc = ew_error_set(err, EW_EINVAL, "no service name to publish as");
    } else if (!(a->service = strdup(service)) || !(a->owner = malloc(ol))) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    } else {
        snprintf(a->owner, ol, "service:%s", service);
        const char *kf =
            opts->key_file ? opts->key_file : ew_evauth_key_file(cfg, service, path, sizeof path);
        if (!kf)
            rc = ew_error_set(err, EW_ECONFIG, "EVENT_KEY_DIR: the path is too long");
        else if (!(a->key_file = strdup(kf)))
            rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    if (!rc) {
        if (opts->keys) {
            a->keys = opts->keys;
        } else {
            rc = ew_keys_open(&a->keys, &(ew_keys_options){.config = cfg}, err);
            a->own_keys = rc == 0;
        }
    }
    if (!rc) {
        if (opts->policy) {
            a->policy = opts->policy;
        } else {
            rc = ew_policy_load(&a->policy, ew_config_get(cfg, "EVENT_POLICY_FILE"), err);
            a->own_policy = rc == 0;
        }
    }
    if (!rc)
        rc = load_key(a, opts->existing_key_only, ew_config_get_int(cfg, "EVENT_KEY_GRACE_SECONDS"),
                      err);
    ew_config_free(own_cfg);
    if (rc) {
        ew_evauth_close(a);
        return rc;
    }
    a->checked_us = ew_now_us();
    *out = a;
    return 0;
}

void ew_evauth_close(ew_evauth *a)
{
    if (!a) return;
    if (a->own_keys) ew_keys_close(a->keys);
    if (a->own_policy) ew_policy_free(a->policy);
    sodium_memzero(a->secret, sizeof a->secret);
    if (a->cache) sodium_memzero(a->cache, a->capcache * sizeof *a->cache);
    free(a->cache);
    for (size_t i = 0; i < atomic_load(&a->nrows); i++)
        free(a->rows[i].source);
    pthread_mutex_destroy(&a->rows_mu);
    free(a->service);
    free(a->owner);
    free(a->key_file);
    pthread_mutex_destroy(&a->sign_mu);
    pthread_mutex_destroy(&a->cache_mu);
    free(a);
}

const char *ew_evauth_service(const ew_evauth *a)
{
    return a->service;
}

const char *ew_evauth_kid(const ew_evauth *a)
{
    return a->kid;
}

ew_key_alg ew_evauth_alg(const ew_evauth *a)
{
    return a->alg;
}

/* ---- the policy's answers ------------------------------------------------------------------ */

/* The row of src: found, added, or NULL when the rows are full (then the policy is asked). */
static policy_row *row_of(ew_evauth *a, const char *src)
{
    size_t n = atomic_load_explicit(&a->nrows, memory_order_acquire);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(a->rows[i].source, src)) return &a->rows[i];
    policy_row *r = NULL;
    pthread_mutex_lock(&a->rows_mu);
    n = atomic_load_explicit(&a->nrows, memory_order_relaxed);
    for (size_t i = 0; i < n && !r; i++)
        if (!strcmp(a->rows[i].source, src)) r = &a->rows[i];
    if (!r && n < POLICY_ROWS && (a->rows[n].source = strdup(src))) {
        r = &a->rows[n];
        atomic_store_explicit(&a->nrows, n + 1, memory_order_release);
    }
    pthread_mutex_unlock(&a->rows_mu);
    return r;
}

/* ew_policy_may_publish(a->policy, src, ev's type), remembered by source and type id. */
static bool may_publish(ew_evauth *a, const char *src, const ew_event *ev)
{
    const char *type = ew_event_type(ev);
    unsigned t = (unsigned)ew_event_type_id(ev);
    policy_row *r = t > EW_T_NONE && t < EW_T__COUNT ? row_of(a, src) : NULL;
    if (!r) return ew_policy_may_publish(a->policy, src, type);
    unsigned char v = atomic_load_explicit(&r->ok[t], memory_order_relaxed);
    if (!v) {
        v = ew_policy_may_publish(a->policy, src, type) ? 1 : 2;
        atomic_store_explicit(&r->ok[t], v, memory_order_relaxed);
    }
    return v == 1;
}

/* ---- publishing ---------------------------------------------------------------------------- */

int ew_evauth_check_publish(ew_evauth *a, const ew_event *ev, ew_error *err)
{
    const char *src = ew_event_source(ev), *type = ew_event_type(ev);
    char why[300];
    if (strcmp(src, a->service) != 0)
        snprintf(why, sizeof why, "%s publishes as itself, not as %.100s (the event's source)",
                 a->service, src);
    else if (!may_publish(a, a->service, ev))
        snprintf(why, sizeof why, "the policy does not let %s publish %s", a->service, type);
    else
        return 0;
    note(a, EW_EVAUTH_PUBLISH_REFUSED, ev, why);
    return ew_error_set(err, EW_EPERM, "%s", why);
}

int ew_evauth_check_subscribe(ew_evauth *a, const char *pattern, ew_error *err)
{
    if (ew_policy_may_subscribe(a->policy, a->service, pattern)) return 0;
    char why[300];
    snprintf(why, sizeof why, "the policy does not let %s subscribe to %.100s", a->service,
             pattern);
    note(a, EW_EVAUTH_SUBSCRIBE_REFUSED, NULL, why);
    return ew_error_set(err, EW_EPERM, "%s", why);
}

/* Looks at the key file again when a second has passed: a rotation replaced it. */
static void maybe_reload(ew_evauth *a)
{
    int64_t now = ew_now_us();
    if (now - a->checked_us < RELOAD_EVERY_US) return;
    a->checked_us = now;
    struct stat st;
    if (stat(a->key_file, &st) != 0) return;
    if (st.st_ino == a->file_st.st_ino && st.st_mtim.tv_sec == a->file_st.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == a->file_st.st_mtim.tv_nsec && st.st_size == a->file_st.st_size)
        return;
    keyfile kf;
    ew_error e = {0};
    if (keyfile_read(a->key_file, &kf, &e) == 0) {
        bool changed = strcmp(kf.kid, a->kid) != 0;
        use_key(a, &kf);
        if (changed) note(a, EW_EVAUTH_KEY_ROTATED, NULL, kf.kid);
    }
    sodium_memzero(&kf, sizeof kf);
}

/* The sealer of sign_sealed(): writes the sealed text it was given (values, by field index) as
 * the JSON string that the sealed event's encoding has there (none of its characters needs
 * escaping: ew__keyring_seal_fields). */
static int write_sealed(void *ud, const ew_event *ev, const ew_field_info *f, const char *p,
                        ew_buf *b, ew_error *err)
{
    (void)p, (void)err;
    const char *const *values = ud;
    const char *v = values[f - ew_event_info(ev)->fields];
    ew_buf_putc(b, '"');
    ew_buf_puts(b, v);
    ew_buf_putc(b, '"');
    return 0;
}

/* ev signed: with mask (not 0), the fields of ev it names replaced by the sealed text values[i],
 * in the same copy; the tag covers that copy. */
static int sign_sealed(ew_evauth *a, const ew_event *ev, uint64_t mask, const char *const *values,
                       ew_event **out, ew_error *err)
{
    ew_buf b;
    ew_buf_init(&b);
    ew__sealer sealer = {.fields = mask, .seal = write_sealed, .ud = (void *)values};
    if (canonical_sealed(ev, mask ? &sealer : NULL, &b)) {
        ew_buf_release(&b);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    char kid[EW_KEY_ID_LEN + 1], tag[8 + 90];
    unsigned char raw[crypto_sign_BYTES];
    pthread_mutex_lock(&a->sign_mu);
    maybe_reload(a);
    memcpy(kid, a->kid, sizeof kid);
    size_t rawlen;
    const char *prefix;
    if (a->alg == EW_KEY_MAC) {
        crypto_generichash(raw, 32, (const unsigned char *)b.data, b.len, a->secret,
                           crypto_generichash_KEYBYTES);
        rawlen = 32;
        prefix = TAG_MAC;
    } else {
        crypto_sign_detached(raw, NULL, (const unsigned char *)b.data, b.len, a->secret);
        rawlen = crypto_sign_BYTES;
        prefix = TAG_ED;
    }
    pthread_mutex_unlock(&a->sign_mu);
    ew_buf_release(&b);
    size_t pl = strlen(prefix);
    memcpy(tag, prefix, pl);
    ew__b64url_encode_public(tag + pl, raw, rawlen); /* a tag is public: it is on the wire */

    /* the event again, its extensions but earlier ewauth and ewkid, and the two */
    size_t n = ew_event_extension_count(ev), k = 0;
    ew_event_ext stack[16], *x = n + 2 <= 16 ? stack : malloc((n + 2) * sizeof *x);
    if (!x) return ew_error_set(err, EW_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const ew_event_ext *e = ew_event_extension_at(ev, i);
        if (strcmp(e->name, EXT_AUTH) && strcmp(e->name, EXT_KID)) x[k++] = *e;
    }
    x[k++] = (ew_event_ext){EXT_AUTH, EW_EXT_STRING, tag};
    x[k++] = (ew_event_ext){EXT_KID, EW_EXT_STRING, kid};
    int rc;
    if (mask) { /* one copy, sealed and signed */
        rc = ew__event_replace_exts(ev, mask, values, mask, 0, x, k, out, err);
    } else {
        ew_event_attrs at = {
            .source = ew_event_source(ev),
            .subject = ew_event_subject(ev),
            .id = ew_event_id(ev),
            .time_us = ew_event_time_us(ev),
            .correlation_id = ew_event_correlation_id(ev),
            .causation_id = ew_event_causation_id(ev),
            .traceparent = ew_event_traceparent(ev),
            .dataschema = ew_event_dataschema(ev),
            .extensions = x,
            .nextensions = k,
        };
        rc = ew__event_with_attrs(ev, &at, out, err); /* encrypted fields stay encrypted */
    }
    if (x != stack) free(x);
    return rc;
}

int ew_evauth_sign(ew_evauth *a, const ew_event *ev, ew_event **out, ew_error *err)
{
    return sign_sealed(a, ev, 0, NULL, out, err);
}

int ew__evauth_sign_sealed(ew_evauth *a, const ew_event *ev, uint64_t mask,
                           const char *const *values, ew_event **out, ew_error *err)
{
    return sign_sealed(a, ev, mask, values, out, err);
}

/* ---- verifying ----------------------------------------------------------------------------- */

typedef struct reload_ud {
    ew_key *keys;
    size_t n, cap;
    int oom;
} reload_ud;

static int collect(void *ud, const ew_key *key)
{
    reload_ud *r = ud;
    if (r->n == r->cap) {
        size_t nc = r->cap ? 2 * r->cap : 32;
        if (nc > MAX_CACHE) return 0;
        ew_key *nk = realloc(r->keys, nc * sizeof *nk);
        if (!nk) {
            r->oom = 1;
            return 1;
        }
        r->keys = nk;
        r->cap = nc;
    }
    r->keys[r->n++] = *key;
    return 0;
}

/* Reads every key of the store into the cache (under cache_mu). Retirements of keys already
 * cached (a rotation) are seen this way, at most REFRESH_EVERY_US late. */
static void refresh(ew_evauth *a, int64_t now)
{
    reload_ud r = {0};
    ew_error e = {0};
    if (ew_keys_list(a->keys, NULL, collect, &r, &e) == 0 && !r.oom) {
        if (a->cache) sodium_memzero(a->cache, a->capcache * sizeof *a->cache);
        free(a->cache);
        a->cache = r.keys;
        a->ncache = r.n;
        a->capcache = r.cap;
        a->refreshed_us = now;
        return;
    }
    if (r.keys) sodium_memzero(r.keys, r.cap * sizeof *r.keys);
    free(r.keys);
}

/* The key kid into *out: from the cache, or from the store (an event of a key made since). */
static int find_key(ew_evauth *a, const char *kid, ew_key *out)
{
    int64_t now = ew_now_us();
    pthread_mutex_lock(&a->cache_mu);
    if (now - a->refreshed_us > REFRESH_EVERY_US) refresh(a, now);
    int found = 0;
    for (size_t i = 0; i < a->ncache && !found; i++)
        if (!strcmp(a->cache[i].kid, kid)) {
            *out = a->cache[i];
            found = 1;
        }
    pthread_mutex_unlock(&a->cache_mu);
    if (found) return 0;
    ew_error e = {0};
    if (ew_keys_get(a->keys, kid, out, &e)) return -1;
    pthread_mutex_lock(&a->cache_mu);
    if (a->ncache < MAX_CACHE) {
        if (a->ncache == a->capcache) {
            size_t nc = a->capcache ? 2 * a->capcache : 32;
            ew_key *nk = realloc(a->cache, nc * sizeof *nk);
            if (nk) {
                a->cache = nk;
                a->capcache = nc;
            }
        }
        if (a->ncache < a->capcache) a->cache[a->ncache++] = *out;
    }
    pthread_mutex_unlock(&a->cache_mu);
    return 0;
}

static int refuse(ew_evauth *a, const ew_event *ev, int code, ew_error *err, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int refuse(ew_evauth *a, const ew_event *ev, int code, ew_error *err, const char *fmt, ...)
{
    char why[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    note(a, EW_EVAUTH_RECEIVE_REFUSED, ev, why);
    return ew_error_set(err, code, "%s", why);
}

int ew_evauth_verify(ew_evauth *a, const ew_event *ev_in, ew_error *err)
{
    /* The event as it came: an old version before its upcast, ciphertext before decryption. Its
     * publisher's catalog may not know the version this one reads it as. */
    const ew_event *ev = ew__event_received(ev_in);
    const ew_event_ext *xa = ew_event_extension(ev, EXT_AUTH),
                       *xk = ew_event_extension(ev, EXT_KID);
    const char *type = ew_event_type(ev), *src = ew_event_source(ev);
    if (!xa && !xk) {
        if (ew_policy_admits_foreign(a->policy, type)) return 0;
        return refuse(a, ev, EW_EAUTH, err,
                      "unauthenticated: %s from %.100s carries no ewauth, and the policy admits "
                      "no foreign producer of it",
                      type, src);
    }
    if (!xa || !xk || xa->kind != EW_EXT_STRING || xk->kind != EW_EXT_STRING)
        return refuse(a, ev, EW_EAUTH, err, "unauthenticated: ewauth and ewkid go together");
    ew_key key;
    if (find_key(a, xk->value, &key))
        return refuse(a, ev, EW_EAUTH, err, "unknown key '%.40s' (not in the key store)",
                      xk->value);
    size_t ol = strlen(key.owner);
    if (ol < 9 || strncmp(key.owner, "service:", 8) || strcmp(key.owner + 8, src))
        return refuse(a, ev, EW_EAUTH, err,
                      "key %s belongs to %s, not to the event's source %.100s", key.kid, key.owner,
                      src);
    int64_t t = ew_event_time_us(ev);
    if (key.retired_us && t >= key.retired_us)
        return refuse(a, ev, EW_EAUTH, err,
                      "key %s was retired before the event was made: it only verifies older "
                      "events",
                      key.kid);
    /* With signatures, a MAC key (which every holder of the store has) is history only. */
    if (a->mode == EW_KEY_ED25519 && key.alg == EW_KEY_MAC && !key.retired_us)
        return refuse(a, ev, EW_EAUTH, err,
                      "EVENT_AUTH=ed25519: key %s is a MAC key that was never retired", key.kid);
    const char *prefix = key.alg == EW_KEY_MAC ? TAG_MAC : TAG_ED;
    size_t pl = strlen(prefix), want = key.alg == EW_KEY_MAC ? 32 : crypto_sign_BYTES, got = 0;
    unsigned char raw[crypto_sign_BYTES];
    const char *v = xa->value;
    /* the tag as it came is public (the decoder of public bytes); the comparison below of what
     * it should be is in constant time */
    if (strncmp(v, prefix, pl) != 0 || strlen(v + pl) != EW__B64URL_LEN(want) ||
        ew__b64url_decode_public(raw, v + pl, EW__B64URL_LEN(want), &got) != 0 || got != want)
        return refuse(a, ev, EW_EAUTH, err, "ewauth is not a %s tag of key %s",
                      ew_key_alg_name(key.alg), key.kid);
    ew_buf b;
    ew_buf_init(&b);
    if (canonical(ev, &b)) {
        ew_buf_release(&b);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    bool ok;
    if (key.alg == EW_KEY_MAC) {
        unsigned char mac[32];
        crypto_generichash(mac, 32, (const unsigned char *)b.data, b.len, key.material,
                           crypto_generichash_KEYBYTES);
        ok = sodium_memcmp(mac, raw, 32) == 0;
    } else {
        ok = crypto_sign_verify_detached(raw, (const unsigned char *)b.data, b.len, key.material) ==
             0;
    }
    ew_buf_release(&b);
    sodium_memzero(&key, sizeof key);
    if (!ok)
        return refuse(a, ev, EW_EAUTH, err,
                      "the tag of %s %s does not verify with key %s: forged or altered", type,
                      ew_event_id(ev), xk->value);
    if (!may_publish(a, src, ev))
        return refuse(a, ev, EW_EPERM, err, "the policy does not let %.100s publish %s", src, type);
    return 0;
}
