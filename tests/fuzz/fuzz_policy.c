/* eventwire — fuzzes the bus policy's parser (src/security/policy.c, eventwire/policy.h): the
 * input is the text of a policy file (EVENT_POLICY_FILE), parsed by ew_policy_parse and then
 * asked every question the receive path and the services ask, for every catalog type, the
 * services of the system, `*`, a foreign name and a few patterns.
 *
 * Properties: a refusal is EW_ECONFIG with a message naming the file; an accepted policy never
 * admits a sensitive type from foreign producers (ew_policy_sensitive), whatever it says; the
 * same text parsed again answers every question the same way. */
#include <strings.h>
#include "eventwire/catalog.h"
#include "eventwire/policy.h"
#include "fuzz.h"

static const char *const services[] = {"auth-service",
                                       "user-service",
                                       "notification-service",
                                       "analytics-service",
                                       "export-service",
                                       "ewctl",
                                       "*",
                                       "a.b-c_9",
                                       ""};
static const char *const patterns[] = {"#",      "user.*",       "user.#", "*.*",
                                       "saga.*", "nothing.here", ""};

/* Every answer of p, folded into a hash, so that two parses can be compared. */
static uint64_t answers(const ew_policy *p)
{
    uint64_t h = 1469598103934665603ull;
#define FOLD(b) (h = (h ^ (uint64_t)(b)) * 1099511628211ull)
    for (size_t t = 0; t < ew_catalog_count(); t++) {
        const char *type = ew_catalog_at(t)->type;
        bool foreign = ew_policy_admits_foreign(p, type);
        if (foreign && ew_policy_sensitive(type))
            fprintf(stderr, "the policy admits %s from foreign producers\n", type);
        FUZZ_CHECK(!(foreign && ew_policy_sensitive(type)));
        FOLD(foreign);
        for (size_t s = 0; s < sizeof services / sizeof services[0]; s++)
            FOLD(ew_policy_may_publish(p, services[s], type));
    }
    for (size_t s = 0; s < sizeof services / sizeof services[0]; s++)
        for (size_t q = 0; q < sizeof patterns / sizeof patterns[0]; q++)
            FOLD(ew_policy_may_subscribe(p, services[s], patterns[q]));
#undef FOLD
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ew_policy *p = NULL;
    ew_error err = {0};
    int rc = ew_policy_parse(&p, (const char *)data, size, "fuzz.conf", &err);
    if (rc) {
        FUZZ_CHECK(rc == EW_ECONFIG);
        FUZZ_CHECK(p == NULL);
        FUZZ_CHECK(strstr(err.msg, "fuzz.conf") != NULL);
        return 0;
    }
    FUZZ_CHECK(p != NULL);
    uint64_t first = answers(p);
    ew_policy *again = NULL;
    FUZZ_CHECK(ew_policy_parse(&again, (const char *)data, size, "fuzz.conf", &err) == 0);
    FUZZ_CHECK(answers(again) == first);
    ew_policy_free(again);
    ew_policy_free(p);
    return 0;
}
