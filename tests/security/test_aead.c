/* Tests of ChaCha20-Poly1305 for short fields (src/security/aead.c): byte for byte what
 * libsodium's crypto_aead_chacha20poly1305_ietf_encrypt() makes, for every message length up
 * to beyond the short path's limit and associated data of many lengths; what it makes, libsodium
 * opens, and the other way round; a changed byte anywhere is refused, leaving the output as it
 * was (or zeroed, by libsodium's for long ones). The Poly1305 is aead.c's own: RFC 8439's test
 * vector pins it, and every pair of short lengths crosses each way of padding a block. */
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

/* RFC 8439 §2.8.2: the AEAD test vector, ciphertext and tag. */
static void test_rfc_8439_vector(void **state)
{
    (void)state;
    assert_true(sodium_init() >= 0);
    static const char m[] = "Ladies and Gentlemen of the class of '99: If I could offer you only "
                            "one tip for the future, sunscreen would be it.";
    static const char want[] =
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69"
        "da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad67594"
        "5585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116" /* the ciphertext, then the tag: */
        "1ae10b594f09e26a7e902ecbd0600691";
    const unsigned char nonce[12] = {7, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47};
    const unsigned char ad[12] = {0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1,
                                  0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7};
    unsigned char key[32], c[sizeof m - 1 + 16], back[sizeof m - 1];
    char hex[2 * sizeof c + 1];
    for (int i = 0; i < 32; i++)
        key[i] = (unsigned char)(0x80 + i);
    ew__aead_encrypt(c, (const unsigned char *)m, sizeof m - 1, ad, sizeof ad, nonce, key);
    sodium_bin2hex(hex, sizeof hex, c, sizeof c);
    assert_string_equal(hex, want);
    assert_int_equal(ew__aead_decrypt(back, c, sizeof c, ad, sizeof ad, nonce, key), 0);
    assert_memory_equal(back, m, sizeof back);
}

/* Every message length and every associated-data length up to three blocks, each with the
 * other: whole blocks, partial ones, none. */
static void test_every_padding_is_libsodiums(void **state)
{
    (void)state;
    assert_true(sodium_init() >= 0);
    unsigned char m[48], ad[48], mine[48 + 16], theirs[48 + 16], back[48], key[32], nonce[12];
    for (size_t mlen = 0; mlen <= 48; mlen++)
        for (size_t alen = 0; alen <= 48; alen++) {
            randombytes_buf(key, sizeof key);
            randombytes_buf(nonce, sizeof nonce);
            randombytes_buf(m, mlen);
            randombytes_buf(ad, alen);
            ew__aead_encrypt(mine, m, mlen, ad, alen, nonce, key);
            crypto_aead_chacha20poly1305_ietf_encrypt(theirs, NULL, m, mlen, ad, alen, NULL, nonce,
                                                      key);
            assert_memory_equal(mine, theirs, mlen + 16);
            assert_int_equal(ew__aead_decrypt(back, theirs, mlen + 16, ad, alen, nonce, key), 0);
            if (mlen) assert_memory_equal(back, m, mlen);
        }
}

/* The Poly1305 alone (ew__poly1305) against libsodium's, on the inputs that carry farthest:
 * RFC 8439 appendix A.3's edge cases (#5 to #9: r of 1 or 2, accumulators at or past 2^130 - 5,
 * s that wraps the sum), keys of all ones and all zeros over messages of all ones, and random
 * ones of every whole-block length up to 16 blocks. */
static void test_poly1305_edges_are_libsodiums(void **state)
{
    (void)state;
    assert_true(sodium_init() >= 0);
    unsigned char key[32], m[256], mine[16], theirs[16];
    static const struct {
        unsigned char r0, s_fill;
        size_t n;
        unsigned char m[48];
    } edges[] = {
        {2,
         0x00,
         16,
         {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
          0xFF}},
        {2, 0xFF, 16, {0x02}},
        {1, 0x00, 48, {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                       0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xF0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                       0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x11}},
        {1, 0x00, 48, {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                       0xFF, 0xFF, 0xFF, 0xFF, 0xFB, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE,
                       0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0x01, 0x01, 0x01, 0x01,
                       0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01}},
        {2,
         0x00,
         16,
         {0xFD, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
          0xFF}},
    };
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
        memset(key, 0, sizeof key);
        key[0] = edges[i].r0;
        memset(key + 16, edges[i].s_fill, 16);
        ew__poly1305(mine, edges[i].m, edges[i].n, key);
        crypto_onetimeauth_poly1305(theirs, edges[i].m, edges[i].n, key);
        assert_memory_equal(mine, theirs, 16);
    }
    /* RFC 8439 A.3 #5 and #8 by value: 3 and 0 */
    static const unsigned char three[16] = {3}, zero[16] = {0};
    memset(key, 0, sizeof key);
    key[0] = 2;
    ew__poly1305(mine, edges[0].m, 16, key);
    assert_memory_equal(mine, three, 16);
    key[0] = 1;
    ew__poly1305(mine, edges[3].m, 48, key);
    assert_memory_equal(mine, zero, 16);
    memset(m, 0xFF, sizeof m);
    for (int fill = 0; fill < 2; fill++)
        for (size_t n = 0; n <= sizeof m; n += 16) {
            memset(key, fill ? 0xFF : 0x00, sizeof key);
            ew__poly1305(mine, m, n, key);
            crypto_onetimeauth_poly1305(theirs, m, n, key);
            assert_memory_equal(mine, theirs, 16);
        }
    for (int round = 0; round < 200; round++)
        for (size_t n = 0; n <= sizeof m; n += 16) {
            randombytes_buf(key, sizeof key);
            randombytes_buf(m, n);
            ew__poly1305(mine, m, n, key);
            crypto_onetimeauth_poly1305(theirs, m, n, key);
            assert_memory_equal(mine, theirs, 16);
        }
}

/* The keystream (AVX2, two blocks at a time, where the CPU has it) against libsodium's, for
 * every count of blocks the short path asks for and one more, under random keys and nonces and
 * under keys and nonces of all ones (the counter's lanes next to the nonce's). */
static void test_keystream_is_libsodiums(void **state)
{
    (void)state;
    assert_true(sodium_init() >= 0);
    unsigned char key[32], nonce[12], mine[64 * 7], theirs[64 * 7];
    for (int round = 0; round < 500; round++)
        for (size_t n = 1; n <= 7; n++) {
            if (round == 0) {
                memset(key, 0xFF, sizeof key);
                memset(nonce, 0xFF, sizeof nonce);
            } else {
                randombytes_buf(key, sizeof key);
                randombytes_buf(nonce, sizeof nonce);
            }
            memset(mine, 0xA5, sizeof mine);
            ew__chacha20_keystream(mine, n, nonce, key);
            crypto_stream_chacha20_ietf(theirs, 64 * n, nonce, key);
            assert_memory_equal(mine, theirs, 64 * n);
            for (size_t i = 64 * n; i < sizeof mine; i++) /* nothing written past n blocks */
                assert_int_equal(mine[i], 0xA5);
        }
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
    cmocka_unit_test(test_rfc_8439_vector),
    cmocka_unit_test(test_every_padding_is_libsodiums),
    cmocka_unit_test(test_poly1305_edges_are_libsodiums),
    cmocka_unit_test(test_keystream_is_libsodiums),
    cmocka_unit_test(test_a_changed_byte_is_refused),
};

EW_TEST_MAIN(tests)
