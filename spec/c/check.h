/* A minimal assertion helper for the C unit tests (run by ctest). */
#ifndef NUNCIO_CHECK_H
#define NUNCIO_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failures;
static int check_count;

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        check_count++;                                                                                                 \
        if (!(cond)) {                                                                                                 \
            check_failures++;                                                                                          \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);                                  \
        }                                                                                                              \
    } while (0)

#define CHECK_STR(got, want) CHECK((got) != NULL && strcmp((got), (want)) == 0)

#define CHECK_DONE()                                                                                                   \
    do {                                                                                                               \
        printf("%d passed, %d failed\n", check_count - check_failures, check_failures);                               \
        return check_failures ? 1 : 0;                                                                                 \
    } while (0)

#endif
