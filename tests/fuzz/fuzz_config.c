/* eventwire — fuzzes the settings (src/core/config.c): ew_config_set() over every setting name
 * with the input as the value, then ew_config_get(), ew_config_get_int(), ew_config_shown() and
 * ew_config_dup().
 *
 * The input, cut at its first NUL, is the value. Properties: a value is kept exactly when it is
 * accepted, a refused one leaves the previous value and says EW_ECONFIG with the setting's name;
 * what ew_config_shown() writes fits its buffer and is the same for a copy. */
#include "eventwire/config.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *value = fuzz_cstr(data, size);
    ew_config *cfg = NULL;
    FUZZ_CHECK(ew_config_new(&cfg, NULL) == 0);
    for (int i = 0; ew_config_describe(i); i++) {
        const char *name = ew_config_describe(i)->name;
        char *before = strdup(ew_config_get(cfg, name));
        FUZZ_CHECK(before != NULL);
        ew_error err = {0};
        int rc = ew_config_set(cfg, name, value, &err);
        if (rc == 0) {
            FUZZ_CHECK(strcmp(ew_config_get(cfg, name), value) == 0);
        } else {
            FUZZ_CHECK(rc == EW_ECONFIG && err.code == rc);
            FUZZ_CHECK(strncmp(err.msg, name, strlen(name)) == 0);
            FUZZ_CHECK(strcmp(ew_config_get(cfg, name), before) == 0);
        }
        (void)ew_config_get_int(cfg, name);
        free(before);
    }
    ew_config *copy = NULL;
    FUZZ_CHECK(ew_config_dup(&copy, cfg, NULL) == 0);
    /* Lookups by name are what costs here (libFuzzer hooks every strcmp): a few sizes only. */
    static const size_t sizes[] = {1, 9, 4096};
    char a[4096], b[4096];
    for (int i = 0; ew_config_describe(i); i++) {
        const char *name = ew_config_describe(i)->name;
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
            memset(a, 'Z', sizes[k]);
            FUZZ_CHECK(ew_config_shown(cfg, name, a, sizes[k]) == a);
            FUZZ_CHECK(strlen(a) < sizes[k]);
        }
        FUZZ_CHECK(ew_config_shown(copy, name, b, sizeof b) == b && strcmp(a, b) == 0);
    }
    ew_error err = {0};
    FUZZ_CHECK(ew_config_set(cfg, value, "x", &err) != 0 || ew_config_get(cfg, value) != NULL);
    FUZZ_CHECK(ew_config_shown(cfg, value, a, sizeof a) == NULL || ew_config_get(cfg, value));
    ew_config_free(copy);
    ew_config_free(cfg);
    free(value);
    return 0;
}
