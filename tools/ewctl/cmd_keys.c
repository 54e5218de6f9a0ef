/* ewctl keys — the key store the environment names (KEY_STORE_URL, or keys/keys.db beside the
 * event store's file): list its keys, rotate a service's bus key, print the bus policy
 * (docs/bus-auth.md). Keys print as JSON lines, never their secrets. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ewctl.h"
#include "core/buf.h"
#include "core/json.h"
#include "eventwire/clock.h"
#include "eventwire/evauth.h"
#include "eventwire/keys.h"
#include "eventwire/policy.h"
#include "security/keyring.h"

static const char keys_usage[] =
    "usage: ewctl keys list [--service SERVICE]\n"
    "       ewctl keys rotate --service SERVICE [--alg mac|ed25519] [--grace SECONDS]\n"
    "       ewctl keys rotate\n"
    "       ewctl keys policy [--default]\n"
    "\n"
    "The key store KEY_STORE_URL names (by default keys/keys.db beside the event store's file).\n"
    "list prints one JSON object per key: its id, owner, algorithm, when it was made and retired,\n"
    "and whether it is current — never a secret. rotate --service makes a new bus key for\n"
    "SERVICE (algorithm: --alg, else EVENT_AUTH's, else mac), adds it to the store, retires the\n"
    "service's current keys at the end of the grace period (--grace, else\n"
    "EVENT_KEY_GRACE_SECONDS) and replaces the service's key file; a running service signs with\n"
    "the new key within a second, and every service accepts both until the grace period ends;\n"
    "retired keys still verify the events made before. It prints the new key's id. rotate\n"
    "without --service rotates the key-encryption key (EVENT_ENCRYPTION_KEY_FILE): a new key\n"
    "wraps every subject's data key again, in one transaction of the key store, then replaces\n"
    "the key file; events are not touched and stay readable, and running services pick the new\n"
    "key up by themselves. It prints {\"rewrapped\":N,\"erased\":M,\"key_file\":PATH}. policy\n"
    "prints the bus policy in force: EVENT_POLICY_FILE, or the built-in default (--default: the\n"
    "built-in one, whatever EVENT_POLICY_FILE says).\n";

static int open_keys(ew_config **cfg, ew_keys **keys)
{
    ew_error err = {0};
    *keys = NULL;
    int rc = ewctl_config_load(cfg, &err);
    if (rc == 0) rc = ew_keys_open(keys, &(ew_keys_options){.config = *cfg}, &err);
    if (rc) {
        ew_config_free(*cfg);
        *cfg = NULL;
        return ewctl_fail(1, "cannot open the key store: %s", err.msg);
    }
    return 0;
}

static void put_time(ew_buf *b, const char *key, int64_t us)
{
    char t[EW_TIME_LEN + 1];
    ewctl_put_str(b, key, us && ew_time_format(us, t) == 0 ? t : NULL);
}

static int print_key(void *ud, const ew_key *k)
{
    (void)ud;
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_puts(&b, "{\"kid\":");
    ew_json_write_string(&b, k->kid, strlen(k->kid));
    ewctl_put_str(&b, "owner", k->owner);
    ewctl_put_str(&b, "alg", ew_key_alg_name(k->alg));
    put_time(&b, "created_at", k->created_us);
    put_time(&b, "retired_at", k->retired_us);
    ew_buf_printf(&b, ",\"current\":%s}\n", ew_key_current(k, ew_now_us()) ? "true" : "false");
    if (!b.oom) fputs(b.data, stdout);
    ew_buf_release(&b);
    return 0;
}

static int keys_list(int argc, char **argv)
{
    const char *service = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--service") && i + 1 < argc)
            service = argv[++i];
        else
            return ewctl_fail(2, "keys list: unexpected '%s' (ewctl keys --help)", argv[i]);
    }
    char owner[EW_KEY_OWNER_MAX];
    if (service && snprintf(owner, sizeof owner, "service:%s", service) >= (int)sizeof owner)
        return ewctl_fail(2, "keys list: the service name is too long");
    ew_config *cfg;
    ew_keys *keys;
    if (open_keys(&cfg, &keys)) return 1;
    ew_error err = {0};
    int rc = ew_keys_list(keys, service ? owner : NULL, print_key, NULL, &err);
    ew_keys_close(keys);
    ew_config_free(cfg);
    return rc ? ewctl_fail(1, "%s", err.msg) : 0;
}

/* The operator's audit chain in the event store (made when there is none yet: keys may come
 * before the first event), opened before a rotation: a rotation it could not record is not
 * made. 0, or 1 after saying why. */
static int oplog_open(ew_store **st, ew_audit **oplog)
{
    *oplog = NULL;
    if (ewctl_open_store_or_make(st, true)) return 1;
    if (ewctl_oplog_open(*st, oplog)) {
        ew_store_close(*st);
        *st = NULL;
        return 1;
    }
    return 0;
}

static void oplog_close(ew_store *st, ew_audit *oplog)
{
    ew_audit_close(oplog);
    ew_store_close(st);
}

/* The key-encryption key's rotation (src/security/keyring.h). */
static int rotate_kek(void)
{
    ew_config *cfg = NULL;
    ew__keyring *k = NULL;
    ew_error err = {0};
    int rc = ewctl_config_load(&cfg, &err);
    if (rc == 0) rc = ew__keyring_new(&k, cfg, NULL, &err);
    ew_config_free(cfg);
    if (rc) return ewctl_fail(1, "%s", err.msg);
    if (!k) return ewctl_fail(1, "EVENT_ENCRYPTION=off: there is no key-encryption key to rotate");
    ew_store *st;
    ew_audit *oplog;
    if (oplog_open(&st, &oplog)) {
        ew__keyring_free(k);
        return 1;
    }
    size_t n = 0, live = 0, erased = 0;
    if (ew__keyring_rotate(k, &n, &err) || ew__keyring_count(k, &live, &erased, &err)) {
        ew__keyring_free(k);
        oplog_close(st, oplog);
        return ewctl_fail(1, "cannot rotate the key-encryption key: %s", err.msg);
    }
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_printf(&b, "{\"rewrapped\":%zu,\"erased\":%zu", n, erased);
    ewctl_put_str(&b, "key_file", ew__keyring_key_file(k));
    ew_buf_puts(&b, "}\n");
    fputs(b.data, stdout);
    ew_buf_release(&b);
    ew__keyring_free(k);
    /* figures only: which subjects' keys were rewrapped is nobody's business here */
    char details[96];
    snprintf(details, sizeof details, "{\"rewrapped\":%zu,\"erased\":%zu}", n, erased);
    int status = ewctl_oplog(oplog, "keys.kek_rotated", NULL, details);
    oplog_close(st, oplog);
    return status;
}

static int keys_rotate(int argc, char **argv)
{
    const char *service = NULL, *alg_name = NULL, *grace = NULL;
    for (int i = 0; i < argc; i++) {
        const char **dst = !strcmp(argv[i], "--service") ? &service
                           : !strcmp(argv[i], "--alg")   ? &alg_name
                           : !strcmp(argv[i], "--grace") ? &grace
                                                         : NULL;
        if (!dst) return ewctl_fail(2, "keys rotate: unexpected '%s' (ewctl keys --help)", argv[i]);
        if (i + 1 >= argc) return ewctl_fail(2, "%s needs a value", argv[i]);
        *dst = argv[++i];
    }
    if (!service && (alg_name || grace))
        return ewctl_fail(2, "--alg and --grace are for a service's bus key: ewctl keys rotate "
                             "--service SERVICE");
    if (!service) return rotate_kek();
    for (const char *p = service; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' ||
              *p == '-') ||
            p - service > 100)
            return ewctl_fail(2, "--service '%s': a service name is a-z, 0-9, '.', '_', '-'",
                              service);
    if (!*service) return ewctl_fail(2, "--service needs a name");
    ew_config *cfg;
    ew_keys *keys;
    if (open_keys(&cfg, &keys)) return 1;
    ew_key_alg alg = ew_key_alg_from_name(alg_name ? alg_name : ew_config_get(cfg, "EVENT_AUTH"));
    if (!alg) alg = alg_name ? 0 : EW_KEY_MAC;
    int64_t grace_s = ew_config_get_int(cfg, "EVENT_KEY_GRACE_SECONDS");
    int status = 0;
    if (!alg) {
        status = ewctl_fail(2, "--alg '%s': mac or ed25519", alg_name);
    } else if (grace) {
        char *end;
        errno = 0;
        long long g = strtoll(grace, &end, 10);
        if (errno || end == grace || *end || g < 0 || g > 31536000)
            status = ewctl_fail(2, "--grace takes seconds from 0 to 31536000, not '%s'", grace);
        grace_s = g;
    }
    ew_store *st = NULL;
    ew_audit *oplog = NULL;
    if (!status && oplog_open(&st, &oplog)) status = 1;
    if (!status) {
        char kid[EW_KEY_ID_LEN + 1];
        ew_error err = {0};
        if (ew_evauth_rotate(cfg, keys, service, alg, grace_s, kid, &err)) {
            status = ewctl_fail(1, "cannot rotate the key of %s: %s", service, err.msg);
        } else {
            printf("{\"service\":\"%s\",\"kid\":\"%s\",\"alg\":\"%s\",\"grace_seconds\":%lld}\n",
                   service, kid, ew_key_alg_name(alg), (long long)grace_s);
            char subject[160], details[160];
            snprintf(subject, sizeof subject, "service:%s", service);
            snprintf(details, sizeof details,
                     "{\"kid\":\"%s\",\"alg\":\"%s\",\"grace_seconds\":%lld}", kid,
                     ew_key_alg_name(alg), (long long)grace_s);
            status = ewctl_oplog(oplog, "bus.key_rotated", subject, details);
        }
    }
    if (st) oplog_close(st, oplog);
    ew_keys_close(keys);
    ew_config_free(cfg);
    return status;
}

static int keys_policy(int argc, char **argv)
{
    bool def = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--default"))
            def = true;
        else
            return ewctl_fail(2, "keys policy: unexpected '%s' (ewctl keys --help)", argv[i]);
    }
    const char *file = def ? NULL : getenv("EVENT_POLICY_FILE");
    if (!file || !*file) {
        fputs(ew_policy_default_text(), stdout);
        return 0;
    }
    /* the file as it is, once it parses */
    ew_policy *p;
    ew_error err = {0};
    if (ew_policy_load(&p, file, &err)) return ewctl_fail(1, "%s", err.msg);
    ew_policy_free(p);
    FILE *f = fopen(file, "rb");
    if (!f) return ewctl_fail(1, "%s: %s", file, strerror(errno));
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, n, stdout);
    fclose(f);
    return 0;
}

int ewctl_keys(int argc, char **argv)
{
    if (argc == 0) {
        fputs(keys_usage, stderr);
        return 2;
    }
    if (ewctl_wants_help(argc, argv)) {
        fputs(keys_usage, stdout);
        return 0;
    }
    if (!strcmp(argv[0], "list")) return keys_list(argc - 1, argv + 1);
    if (!strcmp(argv[0], "rotate")) return keys_rotate(argc - 1, argv + 1);
    if (!strcmp(argv[0], "policy")) return keys_policy(argc - 1, argv + 1);
    ewctl_fail(2, "keys: unknown subcommand '%s'", argv[0]);
    fputs(keys_usage, stderr);
    return 2;
}
