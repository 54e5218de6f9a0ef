/* eventwire — the formats of the key files the library reads (keyfile.h): parsers that take
 * a file's bytes and either return the key or say what is wrong with the file. */
#include "security/keyfile.h"

#include <stdbool.h>
#include <string.h>

/* The next field of text[*at..n): up to the next space or newline; its length, 0 for none. */
static size_t field(const char *text, size_t n, size_t *at, const char **start)
{
    *start = text + *at;
    size_t i = *at;
    while (i < n && text[i] != ' ' && text[i] != '\n')
        i++;
    size_t len = i - *at;
    *at = i;
    return len;
}

static bool is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

int ew__ed25519_sk_consistent(const unsigned char sk[crypto_sign_SECRETKEYBYTES])
{
    unsigned char pk[crypto_sign_PUBLICKEYBYTES], sk2[crypto_sign_SECRETKEYBYTES];
    crypto_sign_seed_keypair(pk, sk2, sk); /* the seed is the first half */
    int same = sodium_memcmp(pk, sk + crypto_sign_SEEDBYTES, sizeof pk) == 0;
    sodium_memzero(sk2, sizeof sk2);
    return same;
}

int ew__bus_keyfile_parse(const char *path, const char *text, size_t n, ew__bus_keyfile *kf,
                          ew_error *err)
{
    memset(kf, 0, sizeof *kf);
    if (n == 0) return ew_error_set(err, EW_ECONFIG, "key file %s: empty", path);
    if (n > EW__BUS_KEYFILE_MAX)
        return ew_error_set(err, EW_ECONFIG, "key file %s: longer than a key file (%zu bytes)",
                            path, n);
    /* "ewkey1 KID ALG HEX", then one newline or nothing: what keyfile_write makes */
    const char *f[4];
    size_t len[4], at = 0;
    bool ok = true;
    for (int i = 0; i < 4 && ok; i++) {
        len[i] = field(text, n, &at, &f[i]);
        ok = len[i] > 0 && (i == 3 || (at < n && text[at++] == ' '));
    }
    if (ok && at < n) ok = text[at] == '\n' && at + 1 == n;
    if (!ok || len[0] != strlen(EW__BUS_KEYFILE_MAGIC) ||
        memcmp(f[0], EW__BUS_KEYFILE_MAGIC, len[0]) != 0)
        return ew_error_set(
            err, EW_ECONFIG,
            "key file %s: not an eventwire bus key (one line: " EW__BUS_KEYFILE_MAGIC
            " KID ALG HEX)",
            path);
    if (len[1] != EW_KEY_ID_LEN || !is_lower_hex(f[1], len[1]))
        return ew_error_set(err, EW_ECONFIG, "key file %s: its key id is not %d hex digits", path,
                            EW_KEY_ID_LEN);
    char alg[16] = "";
    if (len[2] < sizeof alg && !memchr(f[2], '\0', len[2])) {
        memcpy(alg, f[2], len[2]);
        alg[len[2]] = '\0';
    }
    if (!alg[0] || !(kf->alg = ew_key_alg_from_name(alg)))
        return ew_error_set(err, EW_ECONFIG, "key file %s: its algorithm is not mac or ed25519",
                            path);
    size_t want = kf->alg == EW_KEY_MAC ? crypto_generichash_KEYBYTES : crypto_sign_SECRETKEYBYTES;
    if (len[3] != 2 * want || !is_lower_hex(f[3], len[3]) ||
        sodium_hex2bin(kf->secret, sizeof kf->secret, f[3], len[3], NULL, &kf->secret_len, NULL) !=
            0 ||
        kf->secret_len != want) {
        sodium_memzero(kf, sizeof *kf);
        return ew_error_set(err, EW_ECONFIG, "key file %s: its key is not %zu bytes of hex", path,
                            want);
    }
    if (kf->alg == EW_KEY_ED25519 && !ew__ed25519_sk_consistent(kf->secret)) {
        sodium_memzero(kf, sizeof *kf);
        return ew_error_set(err, EW_ECONFIG,
                            "key file %s: its Ed25519 key's public half is not its seed's", path);
    }
    memcpy(kf->kid, f[1], EW_KEY_ID_LEN);
    kf->kid[EW_KEY_ID_LEN] = '\0';
    return 0;
}

int ew__kek_parse(const char *path, const unsigned char *buf, size_t n,
                  unsigned char kek[EW__KEK_BYTES], ew_error *err)
{
    if (n != EW__KEK_BYTES)
        return ew_error_set(err, EW_ECONFIG,
                            "key-encryption key %s: not a key (%zu bytes, %d "
                            "expected)",
                            path, n, EW__KEK_BYTES);
    if (sodium_is_zero(buf, n))
        return ew_error_set(err, EW_ECONFIG, "key-encryption key %s: not a key (%d zero bytes)",
                            path, EW__KEK_BYTES);
    memcpy(kek, buf, EW__KEK_BYTES);
    return 0;
}

int ew__audit_key_parse(const char *path, const unsigned char *buf, size_t n,
                        unsigned char sk[crypto_sign_SECRETKEYBYTES],
                        unsigned char pk[crypto_sign_PUBLICKEYBYTES], ew_error *err)
{
    if (n != crypto_sign_SECRETKEYBYTES)
        return ew_error_set(err, EW_ECONFIG,
                            "audit key %s: not an Ed25519 secret key (%zu bytes, %d expected)",
                            path, n, crypto_sign_SECRETKEYBYTES);
    if (!ew__ed25519_sk_consistent(buf))
        return ew_error_set(err, EW_ECONFIG,
                            "audit key %s: not an Ed25519 secret key (its public half is not its "
                            "seed's)",
                            path);
    memcpy(sk, buf, crypto_sign_SECRETKEYBYTES);
    crypto_sign_ed25519_sk_to_pk(pk, sk);
    return 0;
}
