/* Tests of the key files' parsers (src/security/keyfile.c, and auth-service's token keys in
 * services/common/svc_auth.c): what the writers make is read back; a file with anything more or
 * less is refused with a sentence naming it; an Ed25519 secret key whose public half is not its
 * seed's is refused (every signature made with it would fail to verify); a key-encryption key
 * of 32 zero bytes is refused; base64url is decoded strictly (libsodium 1.0.18 reads any byte
 * past 0x7F as '_'), in key files, access tokens and bus tags alike. Their fuzz harness is
 * tests/fuzz/fuzz_keyfile.c. */
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include "core/base64.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "security/keyfile.h"
#include "support/ew_test.h"
#include "svc_auth.h"

static void bus_line(char *out, size_t cap, const char *kid, const char *alg,
                     const unsigned char *key, size_t n, const char *end)
{
    char hex[2 * crypto_sign_SECRETKEYBYTES + 1];
    sodium_bin2hex(hex, sizeof hex, key, n);
    snprintf(out, cap, "ewkey1 %s %s %s%s", kid, alg, hex, end);
}

static void test_a_bus_key_file_reads_back_and_nothing_else_does(void **state)
{
    (void)state;
    unsigned char mac[32], pk[32], sk[64];
    randombytes_buf(mac, sizeof mac);
    crypto_sign_keypair(pk, sk);
    char line[300];
    ew__bus_keyfile kf;
    ew_error err = {0};
    bus_line(line, sizeof line, "0123456789abcdef", "mac", mac, 32, "\n");
    assert_int_equal(ew__bus_keyfile_parse("k", line, strlen(line), &kf, &err), 0);
    assert_string_equal(kf.kid, "0123456789abcdef");
    assert_int_equal(kf.alg, EW_KEY_MAC);
    assert_int_equal(kf.secret_len, 32);
    assert_memory_equal(kf.secret, mac, 32);
    bus_line(line, sizeof line, "fedcba9876543210", "ed25519", sk, 64, "");
    assert_int_equal(ew__bus_keyfile_parse("k", line, strlen(line), &kf, &err), 0);
    assert_int_equal(kf.alg, EW_KEY_ED25519);
    assert_memory_equal(kf.secret, sk, 64);

    /* each refused, naming the file, with nothing of the key left in kf */
    static const struct {
        const char *kid, *alg, *end;
        size_t bytes;
        const char *why;
    } bad[] = {
        {"0123456789abcdef", "mac", "\nmore\n", 32, "not an eventwire bus key"},
        {"0123456789abcdef", "mac", " \n", 32, "not an eventwire bus key"},
        {"0123456789abcdef", "mac", "\n\n", 32, "not an eventwire bus key"},
        {"0123456789ABCDEF", "mac", "\n", 32, "key id"},
        {"0123456789abcde", "mac", "\n", 32, "key id"},
        {"0123456789abcdef", "hmac", "\n", 32, "algorithm"},
        {"0123456789abcdef", "mac", "\n", 31, "not 32 bytes of hex"},
        {"0123456789abcdef", "ed25519", "\n", 32, "not 64 bytes of hex"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bus_line(line, sizeof line, bad[i].kid, bad[i].alg, bad[i].bytes == 32 ? mac : sk,
                 bad[i].bytes, bad[i].end);
        memset(&kf, 0x55, sizeof kf);
        err = (ew_error){0};
        assert_int_equal(ew__bus_keyfile_parse("/k/f.bus.key", line, strlen(line), &kf, &err),
                         EW_ECONFIG);
        if (!strstr(err.msg, bad[i].why) || !strstr(err.msg, "/k/f.bus.key"))
            fail_msg("case %zu: %s", i, err.msg);
        assert_true(sodium_is_zero(kf.secret, sizeof kf.secret));
    }
    /* a NUL inside the algorithm, and a file longer than any key file */
    static const char nul[] = "ewkey1 0123456789abcdef mac\0x 00";
    assert_int_equal(ew__bus_keyfile_parse("k", nul, sizeof nul - 1, &kf, &err), EW_ECONFIG);
    char big[EW__BUS_KEYFILE_MAX + 2];
    memset(big, ' ', sizeof big);
    assert_int_equal(ew__bus_keyfile_parse("k", big, sizeof big, &kf, &err), EW_ECONFIG);
    assert_non_null(strstr(err.msg, "longer than a key file"));
    assert_int_equal(ew__bus_keyfile_parse("k", "", 0, &kf, &err), EW_ECONFIG);
}

static void test_an_ed25519_key_whose_halves_disagree_is_refused(void **state)
{
    (void)state;
    unsigned char pk[32], sk[64], pk2[32];
    crypto_sign_keypair(pk, sk);
    assert_true(ew__ed25519_sk_consistent(sk));
    assert_true(svc_token_secret_consistent(sk));
    sk[40] ^= 1; /* the public half */
    assert_false(ew__ed25519_sk_consistent(sk));
    assert_false(svc_token_secret_consistent(sk));
    char line[300];
    ew__bus_keyfile kf;
    ew_error err = {0};
    bus_line(line, sizeof line, "fedcba9876543210", "ed25519", sk, 64, "\n");
    assert_int_equal(ew__bus_keyfile_parse("k", line, strlen(line), &kf, &err), EW_ECONFIG);
    assert_non_null(strstr(err.msg, "public half"));
    unsigned char ask[64];
    assert_int_equal(ew__audit_key_parse("/a.key", sk, 64, ask, pk2, &err), EW_ECONFIG);
    assert_non_null(strstr(err.msg, "not an Ed25519 secret key"));
    char b64[128];
    sodium_bin2base64(b64, sizeof b64, sk, 64, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    unsigned char tk[64];
    assert_int_equal(svc_token_key_parse(b64, strlen(b64), tk, 64), -1);
    /* and the key as it was made is taken by each */
    sk[40] ^= 1;
    assert_int_equal(ew__audit_key_parse("/a.key", sk, 64, ask, pk2, &err), 0);
    assert_memory_equal(pk2, pk, 32);
    sodium_bin2base64(b64, sizeof b64, sk, 64, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    strcat(b64, "\n");
    assert_int_equal(svc_token_key_parse(b64, strlen(b64), tk, 64), 0);
    assert_memory_equal(tk, sk, 64);
}

static void test_a_token_key_file_holds_the_key_and_line_ends_only(void **state)
{
    (void)state;
    unsigned char pk[32], out[32];
    randombytes_buf(pk, sizeof pk);
    char b64[128], text[160];
    sodium_bin2base64(b64, sizeof b64, pk, 32, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    static const char *const ends[] = {"", "\n", "\r\n"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(text, sizeof text, "%s%s", b64, ends[i]);
        assert_int_equal(svc_token_key_parse(text, strlen(text), out, 32), 0);
        assert_memory_equal(out, pk, 32);
    }
    static const char *const bad[] = {" trailing\n", "=\n", "\nAAAA", "\xeb"};
    for (size_t i = 0; i < 4; i++) {
        snprintf(text, sizeof text, "%s%s", b64, bad[i]);
        assert_int_equal(svc_token_key_parse(text, strlen(text), out, 32), -1);
    }
    assert_int_equal(svc_token_key_parse(b64, strlen(b64) - 1, out, 32), -1);
}

static void test_a_key_encryption_key_is_32_bytes_not_all_zero(void **state)
{
    (void)state;
    unsigned char buf[33], kek[32];
    randombytes_buf(buf, sizeof buf);
    ew_error err = {0};
    assert_int_equal(ew__kek_parse("/k", buf, 32, kek, &err), 0);
    assert_memory_equal(kek, buf, 32);
    assert_int_equal(ew__kek_parse("/k", buf, 33, kek, &err), EW_ECONFIG);
    assert_non_null(strstr(err.msg, "33 bytes, 32 expected"));
    assert_int_equal(ew__kek_parse("/k", buf, 31, kek, &err), EW_ECONFIG);
    memset(buf, 0, sizeof buf);
    assert_int_equal(ew__kek_parse("/k", buf, 32, kek, &err), EW_ECONFIG);
    assert_non_null(strstr(err.msg, "zero bytes"));
}

static void test_base64url_takes_its_alphabet_only(void **state)
{
    (void)state;
    unsigned char out[8];
    size_t got = 0;
    assert_int_equal(ew__b64url_decode(out, sizeof out, "AAA_", 4, &got), 0);
    assert_int_equal(got, 3);
    assert_int_equal(out[2], 63);
    for (int c = 0; c < 256; c++) {
        char t[4] = {'A', 'A', 'A', (char)c};
        int ours = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   c == '-' || c == '_';
        if (ew__b64url_decode(out, sizeof out, t, 4, &got) != (ours ? 0 : -1))
            fail_msg("byte 0x%02x", c);
    }
    assert_int_equal(ew__b64url_decode(out, sizeof out, "AAA", 3, &got), 0);
    assert_int_equal(ew__b64url_decode(out, sizeof out, "AAB", 3, &got), -1); /* unused bits */
    assert_int_equal(ew__b64url_decode(out, sizeof out, "AAAA=", 5, &got), -1);
    assert_int_equal(ew__b64url_span("ab-_\xeb", 5), 4);
}

/* A token whose signature has a '_' replaced by a byte past 0x7F was accepted as the token it
 * was made from: libsodium 1.0.18 decodes such a byte as '_'. */
static void test_a_token_with_a_byte_past_ascii_is_refused(void **state)
{
    (void)state;
    svc_token_keys k;
    crypto_sign_keypair(k.pk, k.sk);
    const char *roles[] = {"user"};
    char tok[SVC_TOKEN_MAX];
    char *underscore = NULL;
    char uid[EW_UUID_LEN + 1], sid[EW_UUID_LEN + 1];
    ew_uuid7(uid);
    int64_t now = ew_now_us() / 1000000;
    for (int i = 0; i < 1000 && !underscore; i++) {
        ew_uuid7(sid);
        assert_int_equal(svc_token_sign(&k, uid, sid, roles, 1, now, now + 60, tok, sizeof tok), 0);
        underscore = strchr(strrchr(tok, '.'), '_');
    }
    assert_non_null(underscore);
    svc_claims c;
    assert_int_equal(svc_token_verify(k.pk, tok, now, &c), SVC_TOKEN_OK);
    *underscore = (char)0xeb;
    assert_int_equal(svc_token_verify(k.pk, tok, now, &c), SVC_TOKEN_MALFORMED);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_base64url_takes_its_alphabet_only),
    cmocka_unit_test(test_a_token_with_a_byte_past_ascii_is_refused),
    cmocka_unit_test(test_a_bus_key_file_reads_back_and_nothing_else_does),
    cmocka_unit_test(test_an_ed25519_key_whose_halves_disagree_is_refused),
    cmocka_unit_test(test_a_token_key_file_holds_the_key_and_line_ends_only),
    cmocka_unit_test(test_a_key_encryption_key_is_32_bytes_not_all_zero),
};

EW_TEST_MAIN(tests)
