/* eventwire — strict base64url decoding (base64.h): the alphabet checked here, the decoding
 * left to libsodium. */
#include "core/base64.h"

#include <sodium.h>

size_t ew__b64url_span(const char *in, size_t len)
{
    size_t i = 0;
    for (; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            break;
    }
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
