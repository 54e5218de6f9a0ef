/* eventwire — the formats of the key files the library reads (internal): a service's bus key
 * (EVENT_KEY_DIR/SERVICE.bus.key), the key-encryption key (EVENT_ENCRYPTION_KEY_FILE) and the
 * audit key. Each parser takes the file's bytes as read, never trusts them, and says what is
 * wrong with the file's path in the sentence; none logs or keeps a copy of what it read. The
 * readers (evauth.c, keyring.c, audit.c) check the file's owner and mode before they read. */
#ifndef EW_SECURITY_KEYFILE_H
#define EW_SECURITY_KEYFILE_H

#include <sodium.h>
#include <stddef.h>
#include "eventwire/error.h"
#include "eventwire/keys.h"

#define EW__BUS_KEYFILE_MAGIC "ewkey1"
#define EW__BUS_KEYFILE_MAX 255 /* longest bus key file read, in bytes */
#define EW__KEK_BYTES 32        /* a key-encryption key: crypto_aead_xchacha20poly1305_ietf */

/* A bus key file: one line "ewkey1 KID ALG HEX\n" (keyfile_write in evauth.c), KID 16 lowercase
 * hex digits, ALG mac (HEX: 32 bytes) or ed25519 (HEX: the 64-byte secret key, seed and public
 * key, the public key the seed's). */
typedef struct ew__bus_keyfile {
    char kid[EW_KEY_ID_LEN + 1];
    ew_key_alg alg;
    unsigned char secret[crypto_sign_SECRETKEYBYTES];
    size_t secret_len; /* 32 for mac, 64 for ed25519 */
} ew__bus_keyfile;

/* Parses the n bytes of a bus key file (at most EW__BUS_KEYFILE_MAX; any bytes). 0 and *kf, or
 * EW_ECONFIG with err naming path and what is wrong (kf then holds nothing of the secret). The
 * caller wipes kf (sodium_memzero) when done. */
int ew__bus_keyfile_parse(const char *path, const char *text, size_t n, ew__bus_keyfile *kf,
                          ew_error *err);

/* Parses the n bytes of a key-encryption key file: exactly 32 bytes, not all zero. 0 and kek,
 * or EW_ECONFIG with err naming path. */
int ew__kek_parse(const char *path, const unsigned char *buf, size_t n,
                  unsigned char kek[EW__KEK_BYTES], ew_error *err);

/* Parses the n bytes of an audit key file: an Ed25519 secret key (64 bytes, seed and public
 * key) whose public half is its seed's. 0, sk and pk, or EW_ECONFIG with err naming path. */
int ew__audit_key_parse(const char *path, const unsigned char *buf, size_t n,
                        unsigned char sk[crypto_sign_SECRETKEYBYTES],
                        unsigned char pk[crypto_sign_PUBLICKEYBYTES], ew_error *err);

/* Whether sk (an Ed25519 secret key: seed, then public key) holds its seed's public key: a key
 * whose halves disagree makes signatures no one can verify. */
int ew__ed25519_sk_consistent(const unsigned char sk[crypto_sign_SECRETKEYBYTES]);

#endif
