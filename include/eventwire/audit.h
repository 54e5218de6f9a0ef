/* eventwire — a tamper-evident audit trail: who did what, appended to a hash chain.
 *
 * Each service keeps its own chain in its own database (tables event_store.audit_log,
 * audit_head and audit_checkpoints, made by ew_audit_open). An entry names an actor, an action
 * and a subject by id — never personal data in clear — with optional details (JSON), its time,
 * and the hash of the entry before it: BLAKE2b-256 over the previous hash and the entry's
 * fields, each with its length. Every EW_AUDIT_CHECKPOINT_EVERY entries (and on request) the
 * head is signed with the service's Ed25519 key (a key file, made 0600 at first use). Editing,
 * deleting, inserting or reordering entries breaks the chain at the first one touched, and
 * ew_audit_verify() names it; cutting the newest entries off is seen against the latest
 * signed checkpoint. What it cannot see: someone holding the service's key can rewrite the
 * chain and sign it again — keep checkpoints off the machine (`ewctl audit checkpoint`).
 *
 * Threads: appends on one ew_audit are serialised (and, across processes, by the database's
 * row lock on audit_head). */
#ifndef EVENTWIRE_AUDIT_H
#define EVENTWIRE_AUDIT_H

#include <stdint.h>
#include "eventwire/error.h"
#include "eventwire/store.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EW_AUDIT_CHECKPOINT_EVERY 100
#define EW_AUDIT_PUBLIC_KEY_HEX 64 /* an Ed25519 public key in hex, without the NUL */

typedef struct ew_audit ew_audit;

/* Opens the chain of `service` in db (borrowed until close), making its tables when missing,
 * with the signing key in key_file: read when it exists (it must be 0600 and ours), made when it
 * does not (its folder 0700; the public key beside it as key_file + ".pub", in hex).
 * EW_ECONFIG for a key file that is unreadable, malformed or open to others. */
int ew_audit_open(ew_audit **out, ew_store *db, const char *service, const char *key_file,
                  ew_error *err);

/* Signs the head one last time when entries came after the last checkpoint, and frees. */
void ew_audit_close(ew_audit *a);

/* Appends one entry in a transaction of its own. actor: who ("user:ID", "operator",
 * "service:NAME"); action: what ("auth.login", "auth.login_failed", "user.role_changed", ...);
 * subject: on whom or what (an id; NULL for none); details: a JSON object or NULL. *seq (when
 * not NULL) gets its number. */
int ew_audit_append(ew_audit *a, const char *actor, const char *action, const char *subject,
                    const char *details, int64_t *seq, ew_error *err);

/* Appends one entry as ew_audit_append does, but in t, a transaction the caller has open on
 * the chain's own store (the db of ew_audit_open; EW_EINVAL for another): the entry commits or
 * rolls back with t, so an action and its record are there together or not at all. The
 * chain's head stays locked until t ends; a failure leaves t able only to roll back. *seq (when
 * not NULL) gets the number the entry has once t commits. From the thread that has t open. */
int ew_audit_append_in(ew_audit *a, ew_txn *t, const char *actor, const char *action,
                       const char *subject, const char *details, int64_t *seq, ew_error *err);

/* Signs the head now (nothing when there is no entry). */
int ew_audit_checkpoint(ew_audit *a, ew_error *err);

/* One entry as read back. Strings are borrowed for the callback. */
typedef struct ew_audit_entry {
    int64_t seq;
    const char *recorded_at; /* RFC 3339 */
    const char *actor, *action, *subject, *details;
    const char *hash, *prev_hash; /* hex */
} ew_audit_entry;

typedef int (*ew_audit_fn)(void *ud, const ew_audit_entry *e);

/* Entries in order, those of subject only when it is not NULL, recorded at since_us or later
 * (0: all). A nonzero return of fn stops the listing and is returned. */
int ew_audit_list(ew_store *db, const char *subject, int64_t since_us, ew_audit_fn fn, void *ud,
                  ew_error *err);

/* The latest signed checkpoint. */
typedef struct ew_audit_checkpoint_row {
    int64_t seq;
    char hash[65];
    char signed_at[40];
    char public_key[EW_AUDIT_PUBLIC_KEY_HEX + 1];
    char signature[129];
} ew_audit_checkpoint_row;

/* *found 0 when the chain has none yet. */
int ew_audit_latest_checkpoint(ew_store *db, ew_audit_checkpoint_row *out, int *found,
                               ew_error *err);

/* What verification found. */
typedef struct ew_audit_report {
    int64_t entries;     /* read */
    int64_t checkpoints; /* whose signature and hash held */
    int64_t first_bad;   /* 0: the chain holds; else the first entry (or checkpoint's seq) that
                            does not */
    char reason[256];    /* why, when first_bad */
} ew_audit_report;

/* Walks the whole chain and its checkpoints. public_key_hex: the key the checkpoints must be
 * signed with (from the .pub file); NULL trusts the key written in each checkpoint. Returns 0
 * when it could read the chain (then see out->first_bad), or the database's error. */
int ew_audit_verify(ew_store *db, const char *public_key_hex, ew_audit_report *out, ew_error *err);

#ifdef __cplusplus
}
#endif
#endif
