/* eventwire — fuzzes event decoding (src/catalog/event.c) and the upcasters (upcast.c).
 *
 * An input starting with '{' or white space is CloudEvents structured JSON for ew_event_decode(),
 * old versions included (they are upcast); any other is "TYPE\nDATA", the data of a type as an
 * HTTP body or `ewctl publish` gives it to ew_event_from_json(). A refusal must carry its code
 * and a message; an accepted event is of its type's latest version, and it round-trips: encoded
 * and decoded again it is equal, and encodes to the same bytes. */
#include "eventwire/event.h"
#include "fuzz.h"

static void check_refusal(int rc, const ew_error *err, const ew_event *ev)
{
    FUZZ_CHECK(rc < 0 && err->code == rc && err->msg[0] != '\0' && ev == NULL);
}

static void check_event(const ew_event *ev)
{
    const ew_type_info *t = ew_event_info(ev);
    FUZZ_CHECK(t && t->latest && ew_catalog_find(ew_event_type(ev), 0) == t);
    FUZZ_CHECK(ew_event_data_as(ev, ew_event_type_id(ev)) != NULL);
    char *json = NULL, *json2 = NULL;
    size_t len = 0, len2 = 0;
    ew_error err = {0};
    int rc = ew_event_encode(ev, &json, &len, &err);
    FUZZ_CHECK(rc == 0 && json && strlen(json) == len);
    ew_event *back = NULL;
    rc = ew_event_decode(&back, json, len, NULL, &err);
    if (rc) fprintf(stderr, "re-decode: %s: %s\n%s\n", ew_err_name(rc), err.msg, json);
    FUZZ_CHECK(rc == 0);
    FUZZ_CHECK(ew_event_equal(ev, back));
    FUZZ_CHECK(ew_event_encode(back, &json2, &len2, &err) == 0);
    FUZZ_CHECK(len2 == len && memcmp(json, json2, len) == 0);
    ew_event_unref(back);
    free(json);
    free(json2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    ew_event *ev = NULL;
    ew_error err = {0};
    int rc;
    if (size == 0 || text[0] == '{' || text[0] == ' ' || text[0] == '\n' || text[0] == '\t' ||
        text[0] == '\r') {
        rc = ew_event_decode(&ev, text, size, NULL, &err);
    } else {
        const char *nl = memchr(text, '\n', size);
        size_t tlen = nl ? (size_t)(nl - text) : size;
        char *type = fuzz_cstr(data, tlen);
        const char *body = nl ? nl + 1 : text + size;
        ew_event_attrs attrs = {.source = "fuzz", .subject = "fuzz-subject"};
        rc = ew_event_from_json(&ev, type, body, size - (size_t)(body - text), &attrs, &err);
        free(type);
    }
    if (rc) {
        check_refusal(rc, &err, ev);
        return 0;
    }
    check_event(ev);
    ew_event_unref(ev);
    return 0;
}
