/* eventwire — what the fuzz harnesses of tests/fuzz share (docs/fuzzing.md).
 *
 * A harness is one file, fuzz_NAME.c, defining LLVMFuzzerTestOneInput() (and, when it needs
 * one-time setup, LLVMFuzzerInitialize()); its seeds are tests/fuzz/corpus/NAME/. The build does
 * the rest: with EW_FUZZ (clang) it becomes the libFuzzer program fuzz_NAME, and in the plain and
 * sanitizer builds it is linked with replay.c into fuzz-replay-NAME, which feeds it every seed
 * as the CTest entry fuzz.NAME.replay. A harness reports a broken property with FUZZ_CHECK,
 * which aborts, so that libFuzzer keeps the input and the replay fails. */
#ifndef EW_TESTS_FUZZ_H
#define EW_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #cond);            \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* data[0..size) as a malloc'ed C string, cut at its first NUL. Caller frees. */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t n = nul ? (size_t)(nul - data) : size;
    char *s = malloc(n + 1);
    if (!s) abort();
    memcpy(s, data, n);
    s[n] = '\0';
    return s;
}

#endif
