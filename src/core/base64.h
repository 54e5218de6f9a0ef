/* eventwire — base64url without padding (RFC 4648 section 5).
 *
 * Two codecs. The strict decoder of secrets (ew__b64url_decode: bus keys, access tokens,
 * auth-service's key files) leaves the decoding to libsodium, whose code runs in constant time;
 * libsodium 1.0.18 (Debian 12) decodes every byte from 0x80 to 0xFF as the alphabet's last
 * character ('_'), so that one tag, token or key has 129 spellings per '_': the alphabet is
 * checked here first. The codec of public bytes (ew__b64url_encode_public, _decode_public:
 * ciphertext, nonces, tags) looks characters up in tables indexed by the data, which costs a
 * third of libsodium's on the short fields of events and is as strict, but lets the data's
 * values show in cache timing: never for a secret. */
#ifndef EW_CORE_BASE64_H
#define EW_CORE_BASE64_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* How many of in's first len bytes are characters of the base64url alphabet (A-Z a-z 0-9 - _). */
size_t ew__b64url_span(const char *in, size_t len);

/* Decodes in[0..len) into out (cap bytes): 0 and *outlen, or -1 when a byte is not of the
 * alphabet, the length or its last character's unused bits are not those of an encoding, or the
 * result does not fit. Constant time in the data (libsodium). */
int ew__b64url_decode(unsigned char *out, size_t cap, const char *in, size_t len, size_t *outlen);

/* The length of the encoding of n bytes (without a NUL). */
#define EW__B64URL_LEN(n) (((n) / 3) * 4 + ((n) % 3 ? (n) % 3 + 1 : 0))

/* Writes the encoding of in[0..n) to out (room for EW__B64URL_LEN(n) + 1) and a NUL after it:
 * its length. Not for secrets (see above). */
size_t ew__b64url_encode_public(char *out, const unsigned char *in, size_t n);

/* Decodes in[0..n) into out (room for n * 3 / 4 bytes): 0 and *outlen, or -1 when a byte is
 * not of the alphabet, or the length or the last character's unused bits are not those of an
 * encoding (what ew__b64url_decode refuses). Not for secrets (see above). */
int ew__b64url_decode_public(unsigned char *out, const char *in, size_t n, size_t *outlen);

/* Each byte's base64url value, or bit 31 set for a byte outside the alphabet. */
extern const uint32_t ew__b64url_values[256];

/* Is c a character of the base64url alphabet? One table load, inlined. */
static inline bool ew__b64url_char(unsigned char c)
{
    return !(ew__b64url_values[c] >> 31);
}

#endif
