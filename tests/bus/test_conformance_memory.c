/* The bus conformance suite against the memory backend. */
#include "bus/conformance.h"

static int memory_configure(ew_config *cfg, const char *ns)
{
    return 0;
}

static const cf_backend memory_backend = {
    .name = "memory",
    .configure = memory_configure,
    .durable = false,
    .at_least_once = false,
    .keeps_history = false,
};

static const cf_backend *cf_be(void)
{
    return &memory_backend;
}

static const struct CMUnitTest tests[] = {CF_TESTS};

EW_TEST_MAIN(tests)
