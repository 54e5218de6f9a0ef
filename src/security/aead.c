/* eventwire — ChaCha20-Poly1305 for short fields (aead.h): the Poly1305 key block and the
 * message's blocks in one ChaCha20 call (block 0 is the key, the message starts at block 1,
 * as RFC 8439 lays them out), and the tag in one Poly1305 call over the text libsodium feeds
 * its updates one piece at a time: ad, zeros to 16, ciphertext, zeros to 16, the two lengths
 * as 64-bit little-endian numbers. test_aead compares every byte with libsodium's. */
#include "security/aead.h"

#include <sodium.h>
#include <stdint.h>
#include <string.h>

#define SHORT 256 /* longer messages or associated data: libsodium's own */

static size_t pad16(unsigned char *t, size_t n)
{
    while (n % 16)
        t[n++] = 0;
    return n;
}

static size_t le64(unsigned char *t, size_t n, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        t[n++] = (unsigned char)(v >> (8 * i));
    return n;
}

/* The tag of ciphertext c under the one-time key (block 0's first 32 bytes). */
static void tag_of(unsigned char tag[16], const unsigned char *ad, size_t alen,
                   const unsigned char *c, size_t clen, const unsigned char *otk)
{
    unsigned char t[SHORT + 16 + SHORT + 16 + 16];
    size_t n = alen;
    memcpy(t, ad, alen);
    n = pad16(t, n);
    memcpy(t + n, c, clen);
    n = pad16(t, n + clen);
    n = le64(t, n, alen);
    n = le64(t, n, clen);
    crypto_onetimeauth_poly1305(tag, t, n, otk);
}

void ew__aead_encrypt(unsigned char *c, const unsigned char *m, size_t mlen,
                      const unsigned char *ad, size_t alen, const unsigned char nonce[12],
                      const unsigned char key[32])
{
    if (mlen > SHORT || alen > SHORT) {
        crypto_aead_chacha20poly1305_ietf_encrypt(c, NULL, m, mlen, ad, alen, NULL, nonce, key);
        return;
    }
    unsigned char s[64 + SHORT];
    memset(s, 0, 64);
    memcpy(s + 64, m, mlen);
    crypto_stream_chacha20_ietf_xor_ic(s, s, 64 + mlen, nonce, 0, key);
    memcpy(c, s + 64, mlen);
    tag_of(c + mlen, ad, alen, c, mlen, s);
    sodium_memzero(s, 64); /* the one-time key */
}

int ew__aead_decrypt(unsigned char *m, const unsigned char *c, size_t clen, const unsigned char *ad,
                     size_t alen, const unsigned char nonce[12], const unsigned char key[32])
{
    if (clen < EW__AEAD_TAG_BYTES) return -1;
    size_t mlen = clen - EW__AEAD_TAG_BYTES;
    if (mlen > SHORT || alen > SHORT)
        return crypto_aead_chacha20poly1305_ietf_decrypt(m, NULL, NULL, c, clen, ad, alen, nonce,
                                                         key);
    /* the plaintext is made here, and leaves only when the tag verifies */
    unsigned char s[64 + SHORT], tag[16];
    memset(s, 0, 64);
    memcpy(s + 64, c, mlen);
    crypto_stream_chacha20_ietf_xor_ic(s, s, 64 + mlen, nonce, 0, key);
    tag_of(tag, ad, alen, c, mlen, s);
    int rc = crypto_verify_16(tag, c + mlen);
    if (rc == 0) memcpy(m, s + 64, mlen);
    sodium_memzero(s, 64 + mlen);
    return rc == 0 ? 0 : -1;
}
