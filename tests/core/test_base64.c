/* Tests of src/core/base64.c's codec of public bytes: the encoding is libsodium's (URL-safe, no
 * padding) byte for byte at every length; the decoder gives the bytes back and refuses exactly
 * what the strict decoder of secrets (ew__b64url_decode) refuses: a byte outside the alphabet at
 * any position, a length of 4k+1, unused bits that are not zero. */
#include <sodium.h>
#include "core/base64.h"
#include "support/ew_test.h"

static void test_encoding_is_libsodiums_at_every_length(void **state)
{
    (void)state;
    assert_true(sodium_init() >= 0);
    unsigned char in[100], back[100];
    char mine[EW__B64URL_LEN(100) + 1], theirs[EW__B64URL_LEN(100) + 1];
    for (int round = 0; round < 20; round++)
        for (size_t n = 0; n <= sizeof in; n++) {
            if (round == 0)
                memset(in, 0xFF, n); /* every 6-bit group '_' */
            else
                randombytes_buf(in, n);
            memset(mine, '#', sizeof mine);
            size_t len = ew__b64url_encode_public(mine, in, n);
            sodium_bin2base64(theirs, sizeof theirs, in, n,
                              sodium_base64_VARIANT_URLSAFE_NO_PADDING);
            assert_int_equal(len, EW__B64URL_LEN(n));
            assert_int_equal(len, strlen(theirs));
            assert_string_equal(mine, theirs); /* NUL-terminated at len */
            size_t got = 0;
            assert_int_equal(ew__b64url_decode_public(back, mine, len, &got), 0);
            assert_int_equal(got, n);
            if (n) assert_memory_equal(back, in, n);
        }
}

/* Each byte value at each position of a whole group and of the 2- and 3-character tails: the
 * two decoders agree on what they refuse, and on what they decode. */
static void test_decoder_refuses_what_the_strict_one_refuses(void **state)
{
    (void)state;
    assert_true(sodium_init() >= 0);
    static const char *const bases[] = {"AAAA", "AA", "AAA", "QUJDRA", "QUJDREU"};
    size_t refused = 0;
    for (size_t b = 0; b < sizeof bases / sizeof bases[0]; b++) {
        size_t n = strlen(bases[b]);
        for (size_t at = 0; at < n; at++)
            for (int c = 0; c < 256; c++) {
                char in[8];
                memcpy(in, bases[b], n);
                in[at] = (char)c;
                unsigned char mine[8], theirs[8];
                size_t got_mine = 0, got_theirs = 0;
                int rc_mine = ew__b64url_decode_public(mine, in, n, &got_mine);
                int rc_theirs = ew__b64url_decode(theirs, sizeof theirs, in, n, &got_theirs);
                assert_int_equal(rc_mine, rc_theirs);
                if (rc_mine == 0) {
                    assert_int_equal(got_mine, got_theirs);
                    assert_memory_equal(mine, theirs, got_mine);
                } else {
                    refused++;
                }
                assert_int_equal(ew__b64url_char((unsigned char)c),
                                 ew__b64url_span(in + at, 1) == 1);
            }
    }
    assert_true(refused > 0);
}

static void test_lengths_and_unused_bits(void **state)
{
    (void)state;
    unsigned char out[8];
    size_t got = 99;
    assert_int_equal(ew__b64url_decode_public(out, "", 0, &got), 0);
    assert_int_equal(got, 0);
    assert_int_equal(ew__b64url_decode_public(out, "A", 1, &got), -1);     /* 4k+1 */
    assert_int_equal(ew__b64url_decode_public(out, "AAAAA", 5, &got), -1); /* 4k+1 */
    assert_int_equal(ew__b64url_decode_public(out, "AA", 2, &got), 0);
    assert_int_equal(got, 1);
    assert_int_equal(ew__b64url_decode_public(out, "AB", 2, &got), -1); /* 4 unused bits */
    assert_int_equal(ew__b64url_decode_public(out, "AQ", 2, &got), 0);  /* 0x01 */
    assert_int_equal(out[0], 0x01);
    assert_int_equal(ew__b64url_decode_public(out, "AAB", 3, &got), -1); /* 2 unused bits */
    assert_int_equal(ew__b64url_decode_public(out, "AAE", 3, &got), 0);  /* 0x00 0x01 */
    assert_int_equal(got, 2);
    assert_int_equal(out[1], 0x01);
    assert_int_equal(ew__b64url_decode_public(out, "AA==", 4, &got), -1); /* no padding */
    assert_int_equal(ew__b64url_decode_public(out, "-_-_", 4, &got), 0);
    assert_int_equal(got, 3);
    assert_int_equal(out[0], 0xFB);
    assert_int_equal(out[1], 0xFF);
    assert_int_equal(out[2], 0xBF);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_encoding_is_libsodiums_at_every_length),
    cmocka_unit_test(test_decoder_refuses_what_the_strict_one_refuses),
    cmocka_unit_test(test_lengths_and_unused_bits),
};

EW_TEST_MAIN(tests)
