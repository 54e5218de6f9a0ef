/* eventwire — the library's version.
 *
 * The one place the version is written: CMake reads it from here (project(... VERSION)), and from
 * it come the shared library's name (libeventwire.so.MAJOR), eventwire.pc and the CMake package.
 * There is no ABI promise before 1.0: any 0.x release may change the ABI and stays
 * libeventwire.so.0, so a program is rebuilt against each (the CMake package accepts only the same
 * MAJOR.MINOR); from 1.0 the SONAME's number changes when the ABI does.
 * EW_VERSION_* say which header a program was compiled against, ew_version() which library it
 * runs with. */
#ifndef EVENTWIRE_VERSION_H
#define EVENTWIRE_VERSION_H

#ifdef __cplusplus
extern "C" {
#endif

#define EW_VERSION_MAJOR 0
#define EW_VERSION_MINOR 1
#define EW_VERSION_PATCH 0

#define EW_VERSION_STRING "0.1.0" /* MAJOR.MINOR.PATCH; CMake checks that they agree */
/* MAJOR * 1000000 + MINOR * 1000 + PATCH, for comparisons in #if (SQLITE_VERSION_NUMBER). */
#define EW_VERSION_NUMBER (EW_VERSION_MAJOR * 1000000 + EW_VERSION_MINOR * 1000 + EW_VERSION_PATCH)

/* The version of the library the program runs with, "MAJOR.MINOR.PATCH"; static storage. */
const char *ew_version(void);

/* EW_VERSION_NUMBER of the library the program runs with. */
int ew_version_number(void);

#ifdef __cplusplus
}
#endif
#endif
