/* eventwire — fuzzes the parsers of the key files eventwire reads: a service's bus key
 * (EVENT_KEY_DIR/SERVICE.bus.key, ew__bus_keyfile_parse), the key-encryption key
 * (EVENT_ENCRYPTION_KEY_FILE, ew__kek_parse), the audit key (ew__audit_key_parse), all in
 * src/security/keyfile.c, and auth-service's token keys (AUTH_KEY_DIR/auth-token.key and .pub,
 * svc_token_key_parse in services/common/svc_auth.c). The readers check the file's owner and
 * mode and hand these parsers the bytes they read; the first byte of the input picks the file
 * ('b' bus key, 'k' key-encryption key, 'a' audit key, 't' token secret key, 'p' token public
 * key; any other byte: byte % 5), the rest is the file.
 *
 * Properties: a refusal is EW_ECONFIG with a sentence that names the file, and leaves nothing of
 * a key in the output; an accepted file is exactly what the writer makes of the key it holds
 * (the bus key line, base64 without padding, the raw bytes), with at most a line end added; an
 * accepted Ed25519 secret key signs what its public key verifies; the key-encryption key is
 * never all zero. */
#include "eventwire/keys.h"
#include "fuzz.h"
#include "security/keyfile.h"
#include "svc_auth.h"

#define PATH "/keys/the.key"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    if (sodium_init() < 0) abort();
    return 0;
}

/* err is a refusal of the file at PATH, as the readers report it. */
static void check_refusal(int rc, const ew_error *err)
{
    FUZZ_CHECK(rc == EW_ECONFIG && err->code == EW_ECONFIG);
    FUZZ_CHECK(strstr(err->msg, PATH) != NULL);
}

/* in[0..n) is text, or text and one "\n": what a writer makes, with a line end at most. */
static int same_text(const char *text, const uint8_t *in, size_t n)
{
    size_t len = strlen(text);
    if (n == len + 1 && in[len] == '\n') n = len;
    return n == len && memcmp(text, in, n) == 0;
}

/* sk signs what its public half verifies. */
static void check_signs(const unsigned char *sk)
{
    static const unsigned char m[] = "eventwire";
    unsigned char sig[crypto_sign_BYTES], pk[crypto_sign_PUBLICKEYBYTES];
    crypto_sign_ed25519_sk_to_pk(pk, sk);
    crypto_sign_detached(sig, NULL, m, sizeof m, sk);
    FUZZ_CHECK(crypto_sign_verify_detached(sig, m, sizeof m, pk) == 0);
}

static void bus_key(const uint8_t *in, size_t n)
{
    ew__bus_keyfile kf;
    ew_error err = {0};
    int rc = ew__bus_keyfile_parse(PATH, (const char *)in, n, &kf, &err);
    if (rc) {
        check_refusal(rc, &err);
        ew__bus_keyfile zero;
        memset(&zero, 0, sizeof zero);
        FUZZ_CHECK(memcmp(&kf, &zero, sizeof kf) == 0);
        return;
    }
    FUZZ_CHECK(strlen(kf.kid) == EW_KEY_ID_LEN);
    FUZZ_CHECK(kf.alg == EW_KEY_MAC || kf.alg == EW_KEY_ED25519);
    FUZZ_CHECK(kf.secret_len == (kf.alg == EW_KEY_MAC ? 32u : 64u));
    /* keyfile_write's line (src/security/evauth.c) */
    char hex[2 * crypto_sign_SECRETKEYBYTES + 1], line[300];
    sodium_bin2hex(hex, sizeof hex, kf.secret, kf.secret_len);
    snprintf(line, sizeof line, "%s %s %s %s", EW__BUS_KEYFILE_MAGIC, kf.kid,
             ew_key_alg_name(kf.alg), hex);
    FUZZ_CHECK(same_text(line, in, n));
    if (kf.alg == EW_KEY_ED25519) check_signs(kf.secret);
}

static void kek(const uint8_t *in, size_t n)
{
    unsigned char k[EW__KEK_BYTES];
    memset(k, 0, sizeof k);
    ew_error err = {0};
    int rc = ew__kek_parse(PATH, in, n, k, &err);
    if (rc) {
        check_refusal(rc, &err);
        FUZZ_CHECK(sodium_is_zero(k, sizeof k));
        return;
    }
    FUZZ_CHECK(n == sizeof k && memcmp(k, in, n) == 0 && !sodium_is_zero(k, sizeof k));
}

static void audit_key(const uint8_t *in, size_t n)
{
    unsigned char sk[crypto_sign_SECRETKEYBYTES], pk[crypto_sign_PUBLICKEYBYTES];
    memset(sk, 0, sizeof sk);
    ew_error err = {0};
    int rc = ew__audit_key_parse(PATH, in, n, sk, pk, &err);
    if (rc) {
        check_refusal(rc, &err);
        FUZZ_CHECK(sodium_is_zero(sk, sizeof sk));
        return;
    }
    FUZZ_CHECK(n == sizeof sk && memcmp(sk, in, n) == 0);
    FUZZ_CHECK(memcmp(pk, sk + crypto_sign_SEEDBYTES, sizeof pk) == 0);
    check_signs(sk);
}

static void token_key(const uint8_t *in, size_t n, size_t bytes)
{
    unsigned char k[crypto_sign_SECRETKEYBYTES];
    memset(k, 0, sizeof k);
    int rc = svc_token_key_parse((const char *)in, n, k, bytes);
    if (rc) {
        FUZZ_CHECK(rc == -1 && sodium_is_zero(k, sizeof k));
        return;
    }
    /* write_b64_new (services/common/svc_auth.c) writes the base64 and "\n" */
    char text[128];
    sodium_bin2base64(text, sizeof text, k, bytes, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    size_t len = strlen(text);
    FUZZ_CHECK(n >= len && memcmp(text, in, len) == 0);
    for (size_t i = len; i < n; i++)
        FUZZ_CHECK(in[i] == '\n' || in[i] == '\r');
    if (bytes == crypto_sign_SECRETKEYBYTES) check_signs(k);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    const char *kinds = "bkatp", *p = data[0] ? strchr(kinds, data[0]) : NULL;
    int kind = p ? (int)(p - kinds) : data[0] % 5;
    /* an exact-size copy, so that ASan sees a read past the file's end */
    size_t n = size - 1;
    uint8_t *in = malloc(n ? n : 1);
    if (!in) abort();
    memcpy(in, data + 1, n);
    switch (kind) {
    case 0:
        bus_key(in, n);
        break;
    case 1:
        kek(in, n);
        break;
    case 2:
        audit_key(in, n);
        break;
    case 3:
        token_key(in, n, crypto_sign_SECRETKEYBYTES);
        break;
    default:
        token_key(in, n, crypto_sign_PUBLICKEYBYTES);
        break;
    }
    free(in);
    return 0;
}
