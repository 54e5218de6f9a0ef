/* eventwire — ChaCha20-Poly1305 (IETF, RFC 8439 §2.8) for the short fields of events: the
 * bytes of libsodium's crypto_aead_chacha20poly1305_ietf_encrypt() and _decrypt(), at less
 * cost on fields of a few dozen bytes, where libsodium's two ChaCha20 calls and six Poly1305
 * calls per field cost more than the blocks they compute: the keystream two blocks at a time
 * (AVX2, where the CPU has it) and a Poly1305 of our own (radix 2^64), both constant time.
 * Longer inputs go to libsodium. */
#ifndef EW_SECURITY_AEAD_H
#define EW_SECURITY_AEAD_H

#include <stddef.h>

#define EW__AEAD_TAG_BYTES 16

/* c gets mlen bytes of ciphertext then the tag (mlen + EW__AEAD_TAG_BYTES in all). */
void ew__aead_encrypt(unsigned char *c, const unsigned char *m, size_t mlen,
                      const unsigned char *ad, size_t alen, const unsigned char nonce[12],
                      const unsigned char key[32]);

/* m gets clen - EW__AEAD_TAG_BYTES bytes of plaintext: 0; or -1 when clen is shorter than a
 * tag or the tag does not verify, and m holds no plaintext (left as it was, or zeroed on
 * libsodium's path for long fields). */
int ew__aead_decrypt(unsigned char *m, const unsigned char *c, size_t clen, const unsigned char *ad,
                     size_t alen, const unsigned char nonce[12], const unsigned char key[32]);

/* ChaCha20 (IETF, RFC 8439 §2.4) keystream blocks 0 to n - 1 of key and nonce into ks (64 n
 * bytes): crypto_stream_chacha20_ietf()'s bytes, computed two blocks at a time with AVX2 where
 * the CPU has it (libsodium's code works one block at a time on short inputs), else by
 * libsodium. Exposed for test_aead, which compares them with libsodium's. */
void ew__chacha20_keystream(unsigned char *ks, size_t n, const unsigned char nonce[12],
                            const unsigned char key[32]);

/* Poly1305 (RFC 8439 §2.5) of the n bytes at m under the one-time key, n a multiple of 16
 * (what the AEAD feeds it): the tag crypto_onetimeauth_poly1305() makes. Exposed for
 * test_aead, which checks it against libsodium's on the inputs that carry farthest. */
void ew__poly1305(unsigned char tag[16], const unsigned char *m, size_t n,
                  const unsigned char key[32]);

#endif
