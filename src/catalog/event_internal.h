/* eventwire — what the codec shares with the protocol bindings (src/bus/binding.c). */
#ifndef EW_CATALOG_EVENT_INTERNAL_H
#define EW_CATALOG_EVENT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

/* Is the media type s[0..n) JSON by the CloudEvents JSON format's rule: application/json,
 * text/json or any type/subtype+json, parameters (; charset=utf-8) and case aside? */
bool ew__media_type_json(const char *s, size_t n);

#endif
