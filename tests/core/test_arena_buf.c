/* Tests of src/core/arena.c and src/core/buf.c: the bump allocator (growth, alignment, big
 * requests, release and reuse) and the growable buffer (appends, printf, reserve, steal, and the
 * sticky out-of-memory state). */
#include <stdalign.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include "support/ew_test.h"
#include "core/arena.h"
#include "core/buf.h"
#include "eventwire/error.h"

#define ALIGN alignof(max_align_t)

static bool aligned(const void *p)
{
    return ((uintptr_t)p & (ALIGN - 1)) == 0;
}

/* ---- arena ---------------------------------------------------------------------------------- */

static void test_arena_many_small_allocations_keep_their_contents(void **state)
{
    enum { N = 20000 };
    unsigned char **ptrs = malloc(N * sizeof *ptrs);
    assert_non_null(ptrs);
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    for (size_t i = 0; i < N; i++) {
        size_t n = 1 + i % 200;
        ptrs[i] = ew_arena_alloc(&a, n);
        assert_non_null(ptrs[i]);
        memset(ptrs[i], (int)(i & 0xff), n);
    }
    /* Nothing overlapped: every block still holds its own pattern. */
    for (size_t i = 0; i < N; i++) {
        size_t n = 1 + i % 200;
        for (size_t j = 0; j < n; j++)
            if (ptrs[i][j] != (unsigned char)(i & 0xff)) fail_msg("block %zu byte %zu", i, j);
    }
    ew_arena_release(&a);
    free(ptrs);
}

static void test_arena_allocations_are_aligned(void **state)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    for (size_t n = 0; n < 300; n++) {
        void *p = ew_arena_alloc(&a, n);
        assert_non_null(p);
        assert_true(aligned(p));
    }
    ew_arena_release(&a);
    /* A caller's block that is not aligned itself. */
    static char block[1024 + 1];
    ew_arena_init(&a, block + 1, sizeof block - 1);
    for (size_t n = 1; n < 100; n++)
        assert_true(aligned(ew_arena_alloc(&a, n)));
    ew_arena_release(&a);
}

static void test_arena_zero_size_allocations_are_distinct(void **state)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    void *p = ew_arena_alloc(&a, 0), *q = ew_arena_alloc(&a, 0);
    assert_non_null(p);
    assert_non_null(q);
    assert_ptr_not_equal(p, q);
    ew_arena_release(&a);
}

static void test_arena_inline_buffer_is_used_first(void **state)
{
    alignas(max_align_t) char block[256];
    ew_arena a;
    ew_arena_init(&a, block, sizeof block);
    char *p = ew_arena_alloc(&a, 100), *q = ew_arena_alloc(&a, 100);
    assert_true(p >= block && p + 100 <= block + sizeof block);
    assert_true(q >= block && q + 100 <= block + sizeof block);
    assert_null(a.head);               /* no malloc yet */
    char *r = ew_arena_alloc(&a, 100); /* 3 x 112 rounded bytes do not fit in 256 */
    assert_non_null(r);
    assert_true(r < block || r >= block + sizeof block);
    assert_non_null(a.head);
    ew_arena_release(&a);
}

static void test_arena_large_allocation_gets_its_own_chunk(void **state)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    char *small1 = ew_arena_alloc(&a, 16);
    assert_non_null(small1);
    size_t big = 1 << 20;
    char *p = ew_arena_alloc(&a, big);
    assert_non_null(p);
    assert_true(aligned(p));
    memset(p, 0xAB, big);
    /* The chunk being filled is still the one small allocations come from. */
    char *small2 = ew_arena_alloc(&a, 16);
    assert_ptr_equal(small2, small1 + 16);
    /* Allocations bigger than any chunk, one after another. */
    for (int i = 0; i < 4; i++) {
        char *q = ew_arena_alloc(&a, 200000);
        assert_non_null(q);
        memset(q, i, 200000);
    }
    assert_int_equal((unsigned char)p[big - 1], 0xAB);
    ew_arena_release(&a);
}

static void test_arena_refuses_impossible_sizes(void **state)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    assert_null(ew_arena_alloc(&a, SIZE_MAX));
    assert_null(ew_arena_alloc(&a, SIZE_MAX - 20));
    assert_null(ew_arena_strndup(&a, "x", SIZE_MAX));
    assert_non_null(ew_arena_alloc(&a, 8)); /* still usable */
    ew_arena_release(&a);
}

static void test_arena_release_frees_and_allows_reuse(void **state)
{
    alignas(max_align_t) char block[128];
    ew_arena a;
    ew_arena_init(&a, block, sizeof block);
    char *first = ew_arena_alloc(&a, 32);
    for (int i = 0; i < 1000; i++)
        assert_non_null(ew_arena_alloc(&a, 100));
    ew_arena_release(&a); /* ASan's leak check fails the test if a chunk were kept */
    assert_null(a.head);
    assert_int_equal(a.inline_used, 0);
    /* The caller's block is handed out again from its start. */
    assert_ptr_equal(ew_arena_alloc(&a, 32), first);
    for (int i = 0; i < 1000; i++)
        assert_non_null(ew_arena_alloc(&a, 100));
    ew_arena_release(&a);
    ew_arena_release(&a); /* twice is harmless */
}

static void test_arena_strdup_copies_and_terminates(void **state)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    const char src[] = "hello, world";
    char *d = ew_arena_strndup(&a, src, 5);
    assert_string_equal(d, "hello");
    assert_ptr_not_equal(d, src);
    assert_string_equal(ew_arena_strdup(&a, src), src);
    assert_string_equal(ew_arena_strndup(&a, NULL, 0), "");
    ew_arena_release(&a);
}

/* ---- buf ------------------------------------------------------------------------------------ */

static void test_buf_starts_empty_and_appends(void **state)
{
    ew_buf b;
    ew_buf_init(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    ew_buf_append(&b, "", 0); /* any append leaves a C string */
    assert_non_null(b.data);
    assert_string_equal(b.data, "");
    ew_buf_append(&b, "abc", 3);
    ew_buf_puts(&b, "def");
    ew_buf_putc(&b, 'g');
    assert_string_equal(b.data, "abcdefg");
    assert_int_equal(b.len, 7);
    ew_buf_release(&b);
    assert_null(b.data);
}

static void test_buf_grows_by_doubling(void **state)
{
    ew_buf b;
    ew_buf_init(&b);
    size_t caps = 0, last_cap = 0;
    for (size_t i = 0; i < 100000; i++) {
        ew_buf_putc(&b, (char)('a' + i % 26));
        if (b.cap != last_cap) {
            if (last_cap) assert_int_equal(b.cap, last_cap * 2);
            last_cap = b.cap;
            caps++;
        }
        assert_true(b.len < b.cap);
    }
    assert_int_equal(b.len, 100000);
    assert_int_equal(strlen(b.data), 100000);
    assert_int_equal(b.data[99999], 'a' + 99999 % 26);
    assert_true(caps < 20);
    ew_buf_release(&b);
}

static void test_buf_printf_formats_and_grows(void **state)
{
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_printf(&b, "%d-%s", 42, "x");
    ew_buf_printf(&b, "|%05.1f", 3.14159);
    assert_string_equal(b.data, "42-x|003.1");
    char big[5000];
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    ew_buf_printf(&b, "[%s]", big); /* longer than the free space: formatted a second time */
    assert_int_equal(b.len, 10 + 2 + 4999);
    assert_int_equal(b.data[10], '[');
    assert_int_equal(b.data[b.len - 1], ']');
    assert_int_equal(b.data[b.len], '\0');
    ew_buf_printf(&b, "%s", "");
    assert_int_equal(b.len, 10 + 2 + 4999);
    ew_buf_release(&b);
}

static void test_buf_reserve_makes_room_without_moving(void **state)
{
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_puts(&b, "head");
    assert_int_equal(ew_buf_reserve(&b, 10000), 0);
    assert_true(b.cap >= 4 + 10000 + 1);
    char *before = b.data;
    for (int i = 0; i < 10000; i++)
        ew_buf_putc(&b, 'x');
    assert_ptr_equal(b.data, before);
    assert_int_equal(b.len, 10004);
    assert_int_equal(ew_buf_reserve(&b, 0), 0);
    ew_buf_release(&b);
}

static void test_buf_reset_keeps_memory(void **state)
{
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_puts(&b, "some text");
    char *data = b.data;
    size_t cap = b.cap;
    ew_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.cap, cap);
    ew_buf_puts(&b, "new");
    assert_string_equal(b.data, "new");
    ew_buf_release(&b);
}

static void test_buf_steal_hands_over_the_data(void **state)
{
    ew_buf b;
    size_t len = 99;
    ew_buf_init(&b);
    ew_buf_puts(&b, "payload");
    char *s = ew_buf_steal(&b, &len);
    assert_string_equal(s, "payload");
    assert_int_equal(len, 7);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
    free(s);
    /* An empty buffer still gives a string to free(). */
    s = ew_buf_steal(&b, &len);
    assert_non_null(s);
    assert_string_equal(s, "");
    assert_int_equal(len, 0);
    free(s);
    s = ew_buf_steal(&b, NULL);
    assert_non_null(s);
    free(s);
    /* The buffer is usable after a steal. */
    ew_buf_puts(&b, "again");
    assert_string_equal(b.data, "again");
    ew_buf_release(&b);
}

static void test_buf_out_of_memory_is_sticky(void **state)
{
    ew_buf b;
    size_t len = 99;
    ew_buf_init(&b);
    ew_buf_puts(&b, "before");
    assert_int_equal(ew_buf_reserve(&b, SIZE_MAX), EW_ENOMEM);
    assert_true(b.oom);
    ew_buf_puts(&b, "ignored");
    ew_buf_putc(&b, '!');
    ew_buf_printf(&b, "%d", 1);
    assert_int_equal(b.len, 6);
    assert_int_equal(ew_buf_reserve(&b, 1), EW_ENOMEM);
    assert_null(ew_buf_steal(&b, &len));
    assert_int_equal(len, 0);
    assert_false(b.oom);              /* the steal emptied it */
    ew_buf_append(&b, "x", SIZE_MAX); /* an append that cannot fit sets it again */
    assert_true(b.oom);
    ew_buf_reset(&b); /* and a reset starts over */
    assert_false(b.oom);
    ew_buf_puts(&b, "ok");
    assert_string_equal(b.data, "ok");
    ew_buf_release(&b);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_arena_many_small_allocations_keep_their_contents),
    cmocka_unit_test(test_arena_allocations_are_aligned),
    cmocka_unit_test(test_arena_zero_size_allocations_are_distinct),
    cmocka_unit_test(test_arena_inline_buffer_is_used_first),
    cmocka_unit_test(test_arena_large_allocation_gets_its_own_chunk),
    cmocka_unit_test(test_arena_refuses_impossible_sizes),
    cmocka_unit_test(test_arena_release_frees_and_allows_reuse),
    cmocka_unit_test(test_arena_strdup_copies_and_terminates),
    cmocka_unit_test(test_buf_starts_empty_and_appends),
    cmocka_unit_test(test_buf_grows_by_doubling),
    cmocka_unit_test(test_buf_printf_formats_and_grows),
    cmocka_unit_test(test_buf_reserve_makes_room_without_moving),
    cmocka_unit_test(test_buf_reset_keeps_memory),
    cmocka_unit_test(test_buf_steal_hands_over_the_data),
    cmocka_unit_test(test_buf_out_of_memory_is_sticky),
};

EW_TEST_MAIN(tests)
