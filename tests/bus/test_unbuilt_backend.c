/* What a build without a broker's client library answers. CMakeLists.txt compiles src/bus/bus.c
 * (the table of backends) once more into this test without EW_HAVE_REDIS, EW_HAVE_KAFKA and
 * EW_HAVE_RABBITMQ, as CMake builds it when hiredis, librdkafka and librabbitmq are missing: the
 * rest of the library is the usual one, so what is proved is the table and the error, cheaply. */
#include <stdlib.h>
#include "bus_test_util.h"

#if defined(EW_HAVE_REDIS) || defined(EW_HAVE_KAFKA) || defined(EW_HAVE_RABBITMQ)
#error "test_unbuilt_backend is compiled without the broker backends (CMakeLists.txt)"
#endif

static void unbuilt_is_enotsup(const char *missing)
{
    ew_config *cfg;
    ew_error err = {0};
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_BUS_TYPE", missing, &err), 0);
    ew_bus *bus = (ew_bus *)&err; /* must be cleared */
    assert_int_equal(ew_bus_open(&bus, &(ew_bus_options){.config = cfg}, &err), EW_ENOTSUP);
    assert_null(bus);
    assert_int_equal(err.code, EW_ENOTSUP);
    if (!strstr(err.msg, missing)) fail_msg("the error does not name %s: %s", missing, err.msg);
    /* says what this build has, and only that */
    assert_non_null(strstr(err.msg, "memory"));
    for (const char *other = "redis\0kafka\0rabbitmq\0"; *other; other += strlen(other) + 1)
        if (strcmp(other, missing) != 0 && strstr(err.msg, other))
            fail_msg("the error offers %s, which this build lacks: %s", other, err.msg);
    ew_config_free(cfg);

    /* The same through the environment. */
    assert_int_equal(setenv("EVENT_BUS_TYPE", missing, 1), 0);
    assert_int_equal(ew_bus_open_env(&bus, &err), EW_ENOTSUP);
    assert_non_null(strstr(err.msg, missing));
    unsetenv("EVENT_BUS_TYPE");
}

static void test_unbuilt_redis_is_enotsup(void **state)
{
    unbuilt_is_enotsup("redis");
}

static void test_unbuilt_kafka_is_enotsup(void **state)
{
    unbuilt_is_enotsup("kafka");
}

static void test_unbuilt_rabbitmq_is_enotsup(void **state)
{
    unbuilt_is_enotsup("rabbitmq");
}

/* What is built still opens. */
static void test_built_backends_still_open(void **state)
{
    assert_int_equal(setenv("EVENT_BUS_TYPE", "memory", 1), 0);
    ew_bus *bus = NULL;
    ew_error err = {0};
    assert_int_equal(ew_bus_open_env(&bus, &err), 0);
    assert_string_equal(ew_bus_backend(bus), "memory");
    tb_close(bus);
    unsetenv("EVENT_BUS_TYPE");
}

/* A name no build has is refused as a configuration error, not as unbuilt. */
static void test_unknown_backend_is_a_config_error(void **state)
{
    assert_int_equal(setenv("EVENT_BUS_TYPE", "nats", 1), 0);
    ew_bus *bus = NULL;
    ew_error err = {0};
    int rc = ew_bus_open_env(&bus, &err);
    unsetenv("EVENT_BUS_TYPE");
    if (rc != EW_ECONFIG) fail_msg("EVENT_BUS_TYPE=nats: %s (%s)", ew_err_name(rc), err.msg);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_unbuilt_redis_is_enotsup),
    cmocka_unit_test(test_unbuilt_kafka_is_enotsup),
    cmocka_unit_test(test_unbuilt_rabbitmq_is_enotsup),
    cmocka_unit_test(test_built_backends_still_open),
    cmocka_unit_test(test_unknown_backend_is_a_config_error),
};

EW_TEST_MAIN(tests)
