/* eventwire — what the codec shares with the protocol bindings (src/bus/binding.c). */
#ifndef EW_CATALOG_EVENT_INTERNAL_H
#define EW_CATALOG_EVENT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include "core/buf.h"
#include "eventwire/event.h"

/* Is the media type s[0..n) JSON by the CloudEvents JSON format's rule: application/json,
 * text/json or any type/subtype+json, parameters (; charset=utf-8) and case aside? */
bool ew__media_type_json(const char *s, size_t n);

/* Appends the event's data, as the compact JSON object ew_event_encode() puts in "data", to b:
 * the body of a binary-mode message. EW_ENOMEM when b ran out of memory. */
int ew__event_encode_data(const ew_event *ev, ew_buf *b);

#endif
