/* eventwire — the bus policy: which service may publish which event types, which service may
 * subscribe to which patterns, and which types foreign (unauthenticated) producers may publish.
 *
 * A policy is a text file of lines (docs/bus-auth.md#the-policy); a line whose first word
 * starts with `#` is a comment:
 *
 *     publish   SERVICE PATTERN [PATTERN ...]   SERVICE may publish the types PATTERN matches
 *     subscribe SERVICE PATTERN [PATTERN ...]   SERVICE may subscribe to what PATTERN covers
 *     foreign   PATTERN [PATTERN ...]           events of these types are admitted without
 *                                               authentication (foreign CloudEvents producers)
 *
 * SERVICE is a service name ([a-z0-9._-]+) or `*` (every authenticated service); PATTERN as for
 * ew_pattern_match (`user.*`, `#`). Nothing is allowed that no line allows. The sensitive types
 * (ew_policy_sensitive) are never admitted from foreign producers, whatever a `foreign` line says.
 * Built-in: EW_POLICY_DEFAULT, the four flows of the reference system.
 *
 * A policy is immutable once parsed: share it between threads freely. */
#ifndef EVENTWIRE_POLICY_H
#define EVENTWIRE_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include "eventwire/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ew_policy ew_policy;

/* The default policy's text (docs/bus-policy.conf is a copy of it). Static string. */
const char *ew_policy_default_text(void);

/* Parses text[0..len) (name: what to call it in messages, a file name). Caller frees with
 * ew_policy_free(). EW_ECONFIG naming the line and what is wrong with it. */
int ew_policy_parse(ew_policy **out, const char *text, size_t len, const char *name, ew_error *err);

/* Reads and parses the file path; path NULL or "" gives the default policy. EW_ECONFIG when it
 * cannot be read or parsed. */
int ew_policy_load(ew_policy **out, const char *path, ew_error *err);

void ew_policy_free(ew_policy *p);

/* May service publish events of type? */
bool ew_policy_may_publish(const ew_policy *p, const char *service, const char *type);

/* May service subscribe to pattern: is every catalog type the pattern matches one that a
 * `subscribe` line of service (or of `*`) allows? */
bool ew_policy_may_subscribe(const ew_policy *p, const char *service, const char *pattern);

/* Are events of type admitted without authentication? Never for a sensitive type. */
bool ew_policy_admits_foreign(const ew_policy *p, const char *type);

/* The types whose forgery does harm no matter who sends them — deletion requests, role
 * changes, token revocations, export completions, collected data, redeliveries: never admitted
 * from foreign producers. */
bool ew_policy_sensitive(const char *type);

#ifdef __cplusplus
}
#endif
#endif
