/* eventwire — strict decoding of base64url without padding (RFC 4648 section 5), the form of
 * bus tags (ewauth), access tokens and auth-service's key files. libsodium 1.0.18 (Debian 12)
 * decodes every byte from 0x80 to 0xFF as the alphabet's last character ('_'), so that one tag,
 * token or key has 129 spellings per '_'; this decoder takes the alphabet's 64 characters only. */
#ifndef EW_CORE_BASE64_H
#define EW_CORE_BASE64_H

#include <stddef.h>

/* How many of in's first len bytes are characters of the base64url alphabet (A-Z a-z 0-9 - _). */
size_t ew__b64url_span(const char *in, size_t len);

/* Decodes in[0..len) into out (cap bytes): 0 and *outlen, or -1 when a byte is not of the
 * alphabet, the length or its last character's unused bits are not those of an encoding, or the
 * result does not fit. */
int ew__b64url_decode(unsigned char *out, size_t cap, const char *in, size_t len, size_t *outlen);

#endif
