/* eventwire — base64url without padding (base64.h): the strict decoder of secrets (the alphabet
 * checked here, the decoding left to libsodium) and the table codec of public bytes. */
#include "core/base64.h"

#include <sodium.h>
#include <stdint.h>

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* The value of each byte in base64url, or -1: built by the compiler from one expression. */
#define B64_VALUE(c)                                                                               \
    ((c) >= 'A' && (c) <= 'Z'   ? (c) - 'A'                                                        \
     : (c) >= 'a' && (c) <= 'z' ? (c) - 'a' + 26                                                   \
     : (c) >= '0' && (c) <= '9' ? (c) - '0' + 52                                                   \
     : (c) == '-'               ? 62                                                               \
     : (c) == '_'               ? 63                                                               \
                                : -1)
#define B64_R4(f, i) f(i), f(i + 1), f(i + 2), f(i + 3)
#define B64_R16(f, i) B64_R4(f, i), B64_R4(f, i + 4), B64_R4(f, i + 8), B64_R4(f, i + 12)
#define B64_R64(f, i) B64_R16(f, i), B64_R16(f, i + 16), B64_R16(f, i + 32), B64_R16(f, i + 48)
#define B64_R256(f) B64_R64(f, 0), B64_R64(f, 64), B64_R64(f, 128), B64_R64(f, 192)

/* For the decoder, the value already in place for each of a group's four characters (shifted by
 * 18, 12, 6 and 0 bits), and bit 31 set for a byte outside the alphabet: a group is the OR of
 * four loads, and one test of bit 31 at the end refuses a bad byte anywhere. */
#define B64_AT(c, shift)                                                                           \
    (B64_VALUE(c) < 0 ? UINT32_C(0x80000000) : (uint32_t)B64_VALUE(c) << (shift))
#define B64_AT18(c) B64_AT(c, 18)
#define B64_AT12(c) B64_AT(c, 12)
#define B64_AT6(c) B64_AT(c, 6)
#define B64_AT0(c) B64_AT(c, 0)
static const uint32_t at18[256] = {B64_R256(B64_AT18)}, at12[256] = {B64_R256(B64_AT12)},
                      at6[256] = {B64_R256(B64_AT6)};
const uint32_t ew__b64url_values[256] = {B64_R256(B64_AT0)};

size_t ew__b64url_span(const char *in, size_t len)
{
    size_t i = 0;
    while (i < len && ew__b64url_char((unsigned char)in[i]))
        i++;
    return i;
}

int ew__b64url_decode(unsigned char *out, size_t cap, const char *in, size_t len, size_t *outlen)
{
    *outlen = 0;
    if (ew__b64url_span(in, len) != len) return -1;
    const char *end = NULL;
    if (sodium_base642bin(out, cap, in, len, NULL, outlen, &end,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
        end != in + len) {
        *outlen = 0;
        return -1;
    }
    return 0;
}

size_t ew__b64url_encode_public(char *restrict out, const unsigned char *restrict in, size_t n)
{
    char *o = out;
    const unsigned char *end = in + n / 3 * 3;
    for (; in < end; in += 3, o += 4) {
        uint32_t v = (uint32_t)in[0] << 16 | (uint32_t)in[1] << 8 | in[2];
        o[0] = alphabet[v >> 18];
        o[1] = alphabet[(v >> 12) & 63];
        o[2] = alphabet[(v >> 6) & 63];
        o[3] = alphabet[v & 63];
    }
    if (n % 3) {
        uint32_t v = (uint32_t)in[0] << 16 | (n % 3 == 2 ? (uint32_t)in[1] << 8 : 0);
        *o++ = alphabet[v >> 18];
        *o++ = alphabet[(v >> 12) & 63];
        if (n % 3 == 2) *o++ = alphabet[(v >> 6) & 63];
    }
    *o = '\0';
    return (size_t)(o - out);
}

int ew__b64url_decode_public(unsigned char *restrict out, const char *restrict in, size_t n,
                             size_t *outlen)
{
    if (n % 4 == 1) return -1;
    const unsigned char *p = (const unsigned char *)in, *end = p + n / 4 * 4;
    unsigned char *o = out;
    uint32_t bad = 0;
    for (; p < end; p += 4, o += 3) {
        uint32_t v = at18[p[0]] | at12[p[1]] | at6[p[2]] | ew__b64url_values[p[3]];
        bad |= v;
        o[0] = (unsigned char)(v >> 16);
        o[1] = (unsigned char)(v >> 8);
        o[2] = (unsigned char)v;
    }
    if (n % 4) { /* 2 or 3 characters: 1 or 2 bytes, the bits below them zero */
        uint32_t v = at18[p[0]] | at12[p[1]] | (n % 4 == 3 ? at6[p[2]] : 0);
        bad |= v | (uint32_t)((v & (n % 4 == 3 ? 0xFFu : 0xFFFFu)) != 0) << 31;
        *o++ = (unsigned char)(v >> 16);
        if (n % 4 == 3) *o++ = (unsigned char)(v >> 8);
    }
    if (bad >> 31) return -1;
    *outlen = (size_t)(o - out);
    return 0;
}
