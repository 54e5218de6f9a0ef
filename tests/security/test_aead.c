/* Tests of ChaCha20-Poly1305 for short fields (src/security/aead.c): byte for byte what
 * libsodium's crypto_aead_chacha20poly1305_ietf_encrypt() makes, for every message length up
 * to beyond the short path's limit and associated data of many lengths; what it makes, libsodium
 * opens, and the other way round; a changed byte anywhere is refused, leaving the output as it
 * was (or zeroed, by libsodium's for long ones). */
#include <sodium.h>
#include <string.h>
#include "security/aead.h"
#include "support/ew_test.h"

enum { MAX_M = 300, MAX_A = 300 };

static void test_the_bytes_are_libsodiums(void **state)
{
    (void)state;
    assert_true(sodium_init() >= 0);
    static unsigned char m[MAX_M], ad[MAX_A], mine[MAX_M + 16], theirs[MAX_M + 16], back[MAX_M];
    unsigned char key[32], nonce[12];
    static const size_t alens[] = {0, 1, 15, 16, 17, 63, 100, 255, 256, 257, 300};
    size_t cases = 0;
    for (size_t mlen = 0; mlen <= MAX_M; mlen++)
        for (size_t a = 0; a < sizeof alens / sizeof alens[0]; a++) {
            size_t alen = alens[a];
            randombytes_buf(key, sizeof key);
            randombytes_buf(nonce, sizeof nonce);
            randombytes_buf(m, mlen);
            randombytes_buf(ad, alen);
            ew__aead_encrypt(mine, m, mlen, ad, alen, nonce, key);
            unsigned long long tl = 0;
            crypto_aead_chacha20poly1305_ietf_encrypt(theirs, &tl, m, mlen, ad, alen, NULL, nonce,
                                                      key);
            assert_int_equal(tl, mlen + 16);
            assert_memory_equal(mine, theirs, mlen + 16);
            memset(back, 0xAA, sizeof back);
            assert_int_equal(ew__aead_decrypt(back, theirs, mlen + 16, ad, alen, nonce, key), 0);
            if (mlen) assert_memory_equal(back, m, mlen);
            cases++;
        }
    assert_int_equal(cases, (MAX_M + 1) * (sizeof alens / sizeof alens[0]));
}

static void test_a_changed_byte_is_refused(void **state)
{
    (void)state;
    assert_true(sodium_init() >= 0);
    static const size_t mlens[] = {0, 1, 24, 64, 65, 200, 256, 257, 300};
    unsigned char key[32], nonce[12], m[MAX_M], ad[40], c[MAX_M + 16], out[MAX_M];
    for (size_t i = 0; i < sizeof mlens / sizeof mlens[0]; i++) {
        size_t mlen = mlens[i], clen = mlen + 16;
        randombytes_buf(key, sizeof key);
        randombytes_buf(nonce, sizeof nonce);
        randombytes_buf(m, mlen);
        randombytes_buf(ad, sizeof ad);
        ew__aead_encrypt(c, m, mlen, ad, sizeof ad, nonce, key);
        for (size_t at = 0; at < clen; at++) { /* every byte of ciphertext and tag */
            c[at] ^= 0x01;
            memset(out, 0x5A, sizeof out);
            assert_int_equal(ew__aead_decrypt(out, c, clen, ad, sizeof ad, nonce, key), -1);
            for (size_t j = 0; j < mlen; j++) /* nothing released (libsodium's zeroes it) */
                assert_true(out[j] == 0x5A || (mlen > 256 && out[j] == 0));
            c[at] ^= 0x01;
        }
        ad[0] ^= 0x80; /* the associated data */
        assert_int_equal(ew__aead_decrypt(out, c, clen, ad, sizeof ad, nonce, key), -1);
        ad[0] ^= 0x80;
        nonce[11] ^= 1; /* the nonce */
        assert_int_equal(ew__aead_decrypt(out, c, clen, ad, sizeof ad, nonce, key), -1);
        nonce[11] ^= 1;
        assert_int_equal(ew__aead_decrypt(out, c, clen, ad, sizeof ad, nonce, key), 0);
        assert_int_equal(ew__aead_decrypt(out, c, 15, ad, sizeof ad, nonce, key), -1);
    }
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_the_bytes_are_libsodiums),
    cmocka_unit_test(test_a_changed_byte_is_refused),
};

EW_TEST_MAIN(tests)
