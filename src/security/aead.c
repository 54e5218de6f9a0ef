/* eventwire — ChaCha20-Poly1305 for short fields (aead.h): the keystream of the Poly1305 key
 * block and the message's blocks at once (block 0 is the key, the message starts at block 1, as
 * RFC 8439 lays them out), and the tag computed here, straight from the associated data and the
 * ciphertext where they lie: ad, zeros to 16, ciphertext, zeros to 16, the two lengths as 64-bit
 * little-endian numbers (RFC 8439 §2.8). test_aead compares every byte with libsodium's.
 *
 * Why a ChaCha20 of our own: on inputs under 256 bytes libsodium's computes one block at a time
 * (about 500 instructions a block); with AVX2 two blocks go through the rounds together, one in
 * each half of the registers (about 500 for both). Without AVX2, libsodium's.
 *
 * Why a Poly1305 of our own: libsodium's (SSE2) first computes powers of r for four blocks at a
 * time, which on the ten blocks of a field costs more than the blocks themselves (1,400
 * instructions a tag against about 500 here). This one computes in radix 2^64 as OpenSSL's C
 * Poly1305 does (crypto/poly1305/poly1305.c): four 64x64-bit products a block in unsigned
 * __int128, no branch and no memory access that depends on the key or the data. Tags are still
 * compared by crypto_verify_16 (constant time). */
#include "security/aead.h"

#include <sodium.h>
#include <stdint.h>
#include <string.h>

#define SHORT 256 /* longer messages or associated data: libsodium's own */

typedef unsigned __int128 u128;

/* Poly1305 over whole 16-byte blocks (every block the AEAD feeds is whole: it pads with zeros),
 * in radix 2^64: h = h0 + h1 2^64 + h2 2^128, r = r0 + r1 2^64. Clamping leaves r1 a multiple of
 * 4, so that r1 2^128 = (r1 / 4) 2^130 = 5 r1 / 4 (mod 2^130 - 5): s1. */
typedef struct poly {
    uint64_t r0, r1, s1; /* r clamped; s1 = r1 + r1 / 4 */
    uint64_t h0, h1, h2; /* the accumulator, partly reduced: below 2^130 + 2^128 */
    uint64_t pad0, pad1; /* s of the one-time key, added at the end */
} poly;

static inline uint64_t le64_load(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline void le64_store(unsigned char *p, uint64_t v)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, 8);
}

static void poly_init(poly *st, const unsigned char key[32])
{
    /* r &= 0x0ffffffc0ffffffc0ffffffc0fffffff */
    st->r0 = le64_load(key) & UINT64_C(0x0ffffffc0fffffff);
    st->r1 = le64_load(key + 8) & UINT64_C(0x0ffffffc0ffffffc);
    st->s1 = st->r1 + (st->r1 >> 2);
    st->h0 = st->h1 = st->h2 = 0;
    st->pad0 = le64_load(key + 16);
    st->pad1 = le64_load(key + 24);
}

/* a + b + carry (0 or 1), and the carry out into *carry: add and adc, whatever the values. */
static inline uint64_t add_carry(uint64_t a, uint64_t b, uint64_t *carry)
{
    uint64_t s, t;
    uint64_t c1 = __builtin_add_overflow(a, b, &s), c2 = __builtin_add_overflow(s, *carry, &t);
    *carry = c1 | c2;
    return t;
}

/* h = (h + block + 2^128) r mod 2^130 - 5 (partly), for each of the n blocks at m. No branch and
 * no memory access depends on the data or the key. */
static void poly_blocks(poly *st, const unsigned char *m, size_t n)
{
    const uint64_t r0 = st->r0, r1 = st->r1, s1 = st->s1;
    uint64_t h0 = st->h0, h1 = st->h1, h2 = st->h2, c;
    for (; n; n--, m += 16) {
        c = 0;
        h0 = add_carry(h0, le64_load(m), &c);
        h1 = add_carry(h1, le64_load(m + 8), &c);
        h2 += c + 1;
        /* h r: h0 r0 + (h0 r1 + h1 r0) 2^64 + (h1 r1 + h2 r0) 2^128 + h2 r1 2^192, with
         * r1 2^128 = s1 */
        u128 d0 = (u128)h0 * r0 + (u128)h1 * s1;
        u128 d1 = (u128)h0 * r1 + (u128)h1 * r0 + h2 * s1 + (uint64_t)(d0 >> 64);
        h0 = (uint64_t)d0;
        h1 = (uint64_t)d1;
        h2 = h2 * r0 + (uint64_t)(d1 >> 64);
        /* what is above 2^130, times 5, back into the bottom */
        uint64_t above = (h2 >> 2) + (h2 & ~UINT64_C(3));
        h2 &= 3;
        c = 0;
        h0 = add_carry(h0, above, &c);
        h1 = add_carry(h1, 0, &c);
        h2 += c;
    }
    st->h0 = h0;
    st->h1 = h1;
    st->h2 = h2;
}

/* The n bytes at m, then zeros to a multiple of 16. */
static void poly_padded(poly *st, const unsigned char *m, size_t n)
{
    poly_blocks(st, m, n / 16);
    if (n % 16) {
        unsigned char last[16] = {0};
        memcpy(last, m + n / 16 * 16, n % 16);
        poly_blocks(st, last, 1);
    }
}

/* The tag: h fully reduced mod 2^130 - 5, plus pad, mod 2^128. Wipes the state. */
static void poly_finish(poly *st, unsigned char tag[16])
{
    uint64_t h0 = st->h0, h1 = st->h1, h2 = st->h2, c = 0;
    /* g = h + 5: it reaches 2^130 exactly when h >= p (h < 2p), and then h - p is g's bottom */
    uint64_t g0 = add_carry(h0, 5, &c), g1 = add_carry(h1, 0, &c), g2 = h2 + c;
    uint64_t mask = 0 - (g2 >> 2); /* all ones when h >= p */
    h0 = (h0 & ~mask) | (g0 & mask);
    h1 = (h1 & ~mask) | (g1 & mask);
    c = 0;
    h0 = add_carry(h0, st->pad0, &c);
    h1 = add_carry(h1, st->pad1, &c);
    le64_store(tag, h0);
    le64_store(tag + 8, h1);
    sodium_memzero(st, sizeof *st);
}

void ew__poly1305(unsigned char tag[16], const unsigned char *m, size_t n,
                  const unsigned char key[32])
{
    poly st;
    poly_init(&st, key);
    poly_blocks(&st, m, n / 16);
    poly_finish(&st, tag);
}

/* The tag of ciphertext c under the one-time key (block 0's first 32 bytes). */
static void tag_of(unsigned char tag[16], const unsigned char *ad, size_t alen,
                   const unsigned char *c, size_t clen, const unsigned char *otk)
{
    poly st;
    unsigned char lengths[16];
    poly_init(&st, otk);
    poly_padded(&st, ad, alen);
    poly_padded(&st, c, clen);
    le64_store(lengths, alen);
    le64_store(lengths + 8, clen);
    poly_blocks(&st, lengths, 1);
    poly_finish(&st, tag);
}

/* ---- ChaCha20 --------------------------------------------------------------------------- */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1

/* Keystream blocks 0..n-1, two at a time: each 256-bit register holds one row of the state of
 * block 2i in its low half and of block 2i+1 in its high half (RFC 8439 §2.3), rows turned for
 * the diagonal rounds by lane shuffles; 16- and 8-bit rotations are byte shuffles. */
__attribute__((target("avx2"))) static void keystream_avx2(unsigned char *ks, size_t n,
                                                           const unsigned char nonce[12],
                                                           const unsigned char key[32])
{
    const __m256i r0 = _mm256_setr_epi32(0x61707865, 0x3320646e, 0x79622d32, 0x6b206574, 0x61707865,
                                         0x3320646e, 0x79622d32, 0x6b206574);
    const __m256i r1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)key));
    const __m256i r2 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(key + 16)));
    uint32_t n0, n1, n2;
    memcpy(&n0, nonce, 4);
    memcpy(&n1, nonce + 4, 4);
    memcpy(&n2, nonce + 8, 4);
    __m256i r3 = _mm256_setr_epi32(0, (int)n0, (int)n1, (int)n2, 1, (int)n0, (int)n1, (int)n2);
    const __m256i two = _mm256_setr_epi32(2, 0, 0, 0, 2, 0, 0, 0);
    const __m256i rot16 = _mm256_setr_epi8(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2,
                                           3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    const __m256i rot8 = _mm256_setr_epi8(3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14, 3,
                                          0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14);
#define QUARTER_ROUNDS(a, b, c, d)                                                                 \
    do {                                                                                           \
        a = _mm256_add_epi32(a, b);                                                                \
        d = _mm256_shuffle_epi8(_mm256_xor_si256(d, a), rot16);                                    \
        c = _mm256_add_epi32(c, d);                                                                \
        b = _mm256_xor_si256(b, c);                                                                \
        b = _mm256_or_si256(_mm256_slli_epi32(b, 12), _mm256_srli_epi32(b, 20));                   \
        a = _mm256_add_epi32(a, b);                                                                \
        d = _mm256_shuffle_epi8(_mm256_xor_si256(d, a), rot8);                                     \
        c = _mm256_add_epi32(c, d);                                                                \
        b = _mm256_xor_si256(b, c);                                                                \
        b = _mm256_or_si256(_mm256_slli_epi32(b, 7), _mm256_srli_epi32(b, 25));                    \
    } while (0)
    for (size_t i = 0; i < n; i += 2, ks += 128) {
        __m256i x0 = r0, x1 = r1, x2 = r2, x3 = r3;
        for (int round = 0; round < 10; round++) {
            QUARTER_ROUNDS(x0, x1, x2, x3); /* columns */
            x1 = _mm256_shuffle_epi32(x1, _MM_SHUFFLE(0, 3, 2, 1));
            x2 = _mm256_shuffle_epi32(x2, _MM_SHUFFLE(1, 0, 3, 2));
            x3 = _mm256_shuffle_epi32(x3, _MM_SHUFFLE(2, 1, 0, 3));
            QUARTER_ROUNDS(x0, x1, x2, x3); /* diagonals */
            x1 = _mm256_shuffle_epi32(x1, _MM_SHUFFLE(2, 1, 0, 3));
            x2 = _mm256_shuffle_epi32(x2, _MM_SHUFFLE(1, 0, 3, 2));
            x3 = _mm256_shuffle_epi32(x3, _MM_SHUFFLE(0, 3, 2, 1));
        }
        x0 = _mm256_add_epi32(x0, r0);
        x1 = _mm256_add_epi32(x1, r1);
        x2 = _mm256_add_epi32(x2, r2);
        x3 = _mm256_add_epi32(x3, r3);
        /* block 2i: the low halves, rows in order; block 2i+1: the high halves */
        _mm256_storeu_si256((__m256i *)ks, _mm256_permute2x128_si256(x0, x1, 0x20));
        _mm256_storeu_si256((__m256i *)(ks + 32), _mm256_permute2x128_si256(x2, x3, 0x20));
        if (i + 1 < n) {
            _mm256_storeu_si256((__m256i *)(ks + 64), _mm256_permute2x128_si256(x0, x1, 0x31));
            _mm256_storeu_si256((__m256i *)(ks + 96), _mm256_permute2x128_si256(x2, x3, 0x31));
        }
        r3 = _mm256_add_epi32(r3, two);
    }
#undef QUARTER_ROUNDS
}
#endif

void ew__chacha20_keystream(unsigned char *ks, size_t n, const unsigned char nonce[12],
                            const unsigned char key[32])
{
#ifdef HAVE_AVX2_PATH
    if (__builtin_cpu_supports("avx2")) {
        keystream_avx2(ks, n, nonce, key);
        return;
    }
#endif
    crypto_stream_chacha20_ietf(ks, 64 * n, nonce, key);
}

/* c = m ^ ks, n bytes, eight at a time. */
static void xor_bytes(unsigned char *c, const unsigned char *m, const unsigned char *ks, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t a, b;
        memcpy(&a, m + i, 8);
        memcpy(&b, ks + i, 8);
        a ^= b;
        memcpy(c + i, &a, 8);
    }
    for (; i < n; i++)
        c[i] = m[i] ^ ks[i];
}

/* The short path's keystream: block 0 (its first 32 bytes the Poly1305 key), then the
 * message's blocks. */
#define KS_BLOCKS(mlen) (1 + ((mlen) + 63) / 64)
#define KS_MAX (64 * KS_BLOCKS(SHORT))

void ew__aead_encrypt(unsigned char *c, const unsigned char *m, size_t mlen,
                      const unsigned char *ad, size_t alen, const unsigned char nonce[12],
                      const unsigned char key[32])
{
    if (mlen > SHORT || alen > SHORT) {
        crypto_aead_chacha20poly1305_ietf_encrypt(c, NULL, m, mlen, ad, alen, NULL, nonce, key);
        return;
    }
    unsigned char ks[KS_MAX];
    ew__chacha20_keystream(ks, KS_BLOCKS(mlen), nonce, key);
    xor_bytes(c, m, ks + 64, mlen);
    tag_of(c + mlen, ad, alen, c, mlen, ks);
    sodium_memzero(ks, 64 * KS_BLOCKS(mlen));
}

int ew__aead_decrypt(unsigned char *m, const unsigned char *c, size_t clen, const unsigned char *ad,
                     size_t alen, const unsigned char nonce[12], const unsigned char key[32])
{
    if (clen < EW__AEAD_TAG_BYTES) return -1;
    size_t mlen = clen - EW__AEAD_TAG_BYTES;
    if (mlen > SHORT || alen > SHORT)
        return crypto_aead_chacha20poly1305_ietf_decrypt(m, NULL, NULL, c, clen, ad, alen, nonce,
                                                         key);
    /* the plaintext is made only when the tag verifies */
    unsigned char ks[KS_MAX], tag[16];
    ew__chacha20_keystream(ks, KS_BLOCKS(mlen), nonce, key);
    tag_of(tag, ad, alen, c, mlen, ks);
    int rc = crypto_verify_16(tag, c + mlen);
    if (rc == 0) xor_bytes(m, c, ks + 64, mlen);
    sodium_memzero(ks, 64 * KS_BLOCKS(mlen));
    return rc == 0 ? 0 : -1;
}
