/* eventwire — what the bus uses of authenticated events beside eventwire/evauth.h: signing an
 * event and sealing its personal fields in one copy of it. */
#ifndef EW_SECURITY_EVAUTH_INTERNAL_H
#define EW_SECURITY_EVAUTH_INTERNAL_H

#include <stdint.h>
#include "eventwire/evauth.h"

/* ew_evauth_sign() of the event that replacing ev's fields named by mask (bits by index) with
 * the sealed text values[i] makes (ew__keyring_seal_fields()'s), made as one copy instead of a
 * sealed copy and then a signed copy of that: the same event, the same tag. mask 0 is
 * ew_evauth_sign(). *out holds one reference. Thread-safe. */
int ew__evauth_sign_sealed(ew_evauth *a, const ew_event *ev, uint64_t mask,
                           const char *const *values, ew_event **out, ew_error *err);

#endif
