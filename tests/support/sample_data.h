/* Valid sample data for any catalog type: every field of its data struct filled with a value of
 * its kind. One filler for the tests and the benchmarks (header only, no test framework), each
 * choosing the values it needs to see; a NULL or zero value takes the default. */
#ifndef EW_TESTS_SAMPLE_DATA_H
#define EW_TESTS_SAMPLE_DATA_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include "eventwire/catalog.h"

typedef struct ew_sample_values {
    const char *uuid;         /* every uuid field (and so the user the event is about) */
    const char *text;         /* plain strings: "text" */
    const char *first_text;   /* the first plain string field instead of text (an order check's
                                 sequence number) */
    const char *email;        /* "ann@example.com" */
    const char *url;          /* "http://127.0.0.1:8085/exports/1" */
    const char *object;       /* JSON objects: {"a":1} */
    int64_t integer;          /* 0 stays 0 */
    const char *const *roles; /* string lists: {"user"} */
    size_t nroles;
} ew_sample_values;

/* Fills data (t->struct_size bytes, zeroed first). The strings are borrowed: they must outlive
 * the event made from data. */
static inline void ew_sample_fill(const ew_type_info *t, void *data, const ew_sample_values *v)
{
    static const char *const default_roles[] = {"user"};
    memset(data, 0, t->struct_size);
    bool first = true;
    for (size_t i = 0; i < t->nfields; i++) {
        const ew_field_info *f = &t->fields[i];
        char *p = (char *)data + f->offset;
        const char *s = NULL;
        switch (f->kind) {
        case EW_FIELD_STRING:
            s = first && v->first_text ? v->first_text : v->text ? v->text : "text";
            first = false;
            break;
        case EW_FIELD_UUID:
            s = v->uuid;
            break;
        case EW_FIELD_EMAIL:
            s = v->email ? v->email : "ann@example.com";
            break;
        case EW_FIELD_TIME:
            s = "2026-11-27T10:00:00Z";
            break;
        case EW_FIELD_URL:
            s = v->url ? v->url : "http://127.0.0.1:8085/exports/1";
            break;
        case EW_FIELD_OBJECT:
            s = v->object ? v->object : "{\"a\":1}";
            break;
        case EW_FIELD_INT:
            *(int64_t *)(void *)p = v->integer;
            break;
        case EW_FIELD_BOOL:
            *(bool *)p = true;
            break;
        case EW_FIELD_STRLIST:
            ((ew_strlist *)(void *)p)->items = v->roles ? v->roles : default_roles;
            ((ew_strlist *)(void *)p)->count = v->roles ? v->nroles : 1;
            break;
        }
        if (s) *(const char **)(void *)p = s;
    }
}

#endif
