/* eventwire — field encryption with a data key per subject (docs/security.md#encrypted-fields).
 *
 * A keyring encrypts the fields the catalog marks personal or secret (EW_FIELD_ENCRYPTED) with
 * XChaCha20-Poly1305 under the data key of the event's subject (the data's user_id, else the
 * event's subject), and decrypts them again. Data keys live in the deployment's one key store
 * (eventwire/keys.h, KEY_STORE_URL; tables kek and subject_keys, its migration 002) wrapped by
 * the key-encryption key (EVENT_ENCRYPTION_KEY_FILE), on SQLite or PostgreSQL alike (datakeys.h),
 * and are cached in memory for at most EVENT_KEY_CACHE_SECONDS: EVENT_KEY_CACHE_SIZE of them, in
 * sets of 8 by the subject's hash, a full set dropping its least recently used (each entry
 * EW__KEYRING_SLOT_BYTES bytes, in memory locked from swapping). Erasing a subject destroys its
 * data key: every copy of its encrypted fields, wherever it is, can no longer be read, and
 * decrypting them yields an event marked erased (ew_event_erased) instead of an error.
 *
 * Every function is thread-safe. Two keyrings share nothing but the files. keyring.c keeps the
 * keys and the cache, keyring_seal.c seals and opens fields (keyring_impl.h: what they share). */
#ifndef EW_SECURITY_KEYRING_H
#define EW_SECURITY_KEYRING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "core/buf.h"
#include "eventwire/config.h"
#include "eventwire/error.h"
#include "eventwire/event.h"

typedef struct ew__keyring ew__keyring;

/* The memory a cached data key takes (the subject, the key, its subkey, the bookkeeping). */
#define EW__KEYRING_SLOT_BYTES 224

/* A keyring configured from cfg (EVENT_ENCRYPTION, EVENT_ENCRYPTION_KEY_FILE, KEY_STORE_URL,
 * EVENT_KEY_CACHE_SECONDS, EVENT_KEY_CACHE_SIZE); the default files are beside store_url's SQLite
 * file (NULL: EVENT_STORE_URL's; with KEY_STORE_URL on PostgreSQL, the key file is beside
 * EVENT_STORE_URL's). *out is NULL when EVENT_ENCRYPTION=off. Nothing is read yet: the first
 * call that needs a key loads them (ew__keyring_load). Caller frees it with ew__keyring_free(). */
int ew__keyring_new(ew__keyring **out, const ew_config *cfg, const char *store_url, ew_error *err);
void ew__keyring_free(ew__keyring *k);

/* Reads the key-encryption key and opens the key store; at the first start (no key store, or one
 * without keys) makes both, the key file 0600 in a 0700 folder. A missing key file when the
 * store holds keys, a file of another key, of the wrong size or readable by others: EW_ECONFIG
 * with what is wrong, and nothing is ever written in clear instead. Idempotent. */
int ew__keyring_load(ew__keyring *k, ew_error *err);

/* The key file and the key store this keyring uses (its SQLite file, or its PostgreSQL URL
 * without user and password). Borrowed, valid until it is freed. */
const char *ew__keyring_key_file(const ew__keyring *k);
const char *ew__keyring_store_name(const ew__keyring *k);

/* How many times this keyring has read a data key from the key store: its cache misses. */
size_t ew__keyring_store_reads(ew__keyring *k);

/* ev with its personal and secret fields encrypted (a new event, or ev itself when it has none
 * in clear): *out holds one reference. A subject seen for the first time gets its data key now;
 * an erased subject's fields are encrypted under a key nobody keeps. EW_EINVAL when the event has
 * personal data but neither a user_id nor a subject. */
int ew__keyring_seal(ew__keyring *k, const ew_event *ev, ew_event **out, ew_error *err);

/* What ew__keyring_seal() puts in its copy of ev, without making the copy: *mask the fields it
 * encrypts (bits by index; 0: none, nothing else done), and for each, values[i] its sealed text
 * ("ewenc1.SUBJECT.BASE64URL"), NUL-terminated in text (the caller's, released by it). For one
 * copy of an event that is sealed and changed otherwise too (signed: ew__evauth_sign_sealed). */
int ew__keyring_seal_fields(ew__keyring *k, const ew_event *ev, uint64_t *mask,
                            const char *values[64], ew_buf *text, ew_error *err);

/* ew_event_encode() of ew__keyring_seal()'s event, without building it: each field is
 * encrypted as the encoder writes it. The same bytes, for the same nonces; the same errors.
 * Caller frees *out. */
int ew__keyring_encode(ew__keyring *k, const ew_event *ev, char **out, size_t *out_len,
                       ew_error *err);

/* Makes, in one transaction of the key store, the data keys that the subjects of evs[0..n)
 * lack, before a batch is sealed event by event: a batch of new subjects costs the key store one
 * commit instead of one each. Subjects with a key (or a tombstone) are left as they are; events
 * without personal fields in clear, or whose subject cannot name a key, are skipped (sealing
 * reports those). */
int ew__keyring_prepare(ew__keyring *k, const ew_event *const *evs, size_t n, ew_error *err);

/* Makes the data keys of subjects[0..n) that the key store lacks (a subject with a key or a
 * tombstone is left as it is), and caches them: what the first seal under a new subject does,
 * done ahead of time. A caller about to write events of new subjects inside a transaction of a
 * store calls it first, so that the key store's commit is not made while that transaction holds
 * the store. Several subjects at once take one commit, and so do threads calling it at once.
 * The keys are durable when it returns. EW_EINVAL for a subject that cannot name a key. */
int ew__keyring_ready(ew__keyring *k, const char *const *subjects, size_t n, ew_error *err);

/* ev with its encrypted fields decrypted and checked as plaintext (a new event, or ev itself when
 * it has none): *out holds one reference. An erased subject's fields come back empty, the event
 * marked erased. EW_ECRYPTO when a field does not authenticate (tampered, or encrypted under a
 * key this store never had); EW_EDATA when the plaintext is not what its field holds. */
int ew__keyring_unseal(ew__keyring *k, const ew_event *ev, ew_event **out, ew_error *err);

/* ew_event_decode() then ew__keyring_unseal(), building one event: each sealed field is
 * decrypted and checked as the decoder builds the event's data. The same event and the same
 * errors; its received form (the ciphertext as it came) is built only if asked for
 * (ew__event_received). *out holds one reference. */
int ew__keyring_decode(ew__keyring *k, const char *json, size_t len, const ew_decode_opts *opts,
                       ew_event **out, ew_error *err);

/* Destroys the subject's data key (crypto-shredding), keeping a tombstone so that no new key is
 * made for it, and forgets it in this keyring's cache. Other processes stop using theirs within
 * EVENT_KEY_CACHE_SECONDS. Idempotent. */
int ew__keyring_shred(ew__keyring *k, const char *subject, ew_error *err);

/* Forgets the subject's cached key (it is read from the key store when next needed). */
void ew__keyring_forget(ew__keyring *k, const char *subject);

/* Rotates the key-encryption key: a new one wraps every live data key again, in one transaction
 * of the key store, then replaces the key file (through KEY_FILE.new and a rename). Events are
 * not touched. *rewrapped (may be NULL) gets the number of data keys. Running processes pick
 * the new key file up when an unwrap or a wrap meets the new key. */
int ew__keyring_rotate(ew__keyring *k, size_t *rewrapped, ew_error *err);

/* For the tests of the wire format only (test_keyring's golden vectors): the field nonces of
 * this keyring start with prefix from now on and count from next, and the cache is emptied (its
 * subkeys are of the old prefix). Nonces must never repeat under one data key: a keyring in
 * service never calls this. */
void ew__keyring_set_nonces(ew__keyring *k, const unsigned char prefix[16], uint64_t next);

/* Counts of the key store: live data keys and erased subjects. */
int ew__keyring_count(ew__keyring *k, size_t *live, size_t *erased, ew_error *err);

#endif
