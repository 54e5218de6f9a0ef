/* eventwire — the files the library and its programs make for themselves: private folders, and
 * small files (keys, tokens) that appear whole or not at all.
 *
 * Each returns 0, or -1 with errno set; ew_file_write_new also returns 1 when the file exists. */
#ifndef EW_CORE_FILES_H
#define EW_CORE_FILES_H

#include <stddef.h>
#include <sys/types.h>

/* mkdir -p dir: each folder made is 0700 whatever the umask; one that exists is left as it is. */
int ew_mkdirs(const char *dir);

/* ew_mkdirs of the folder path names a file in (nothing when path has no folder). */
int ew_mkdirs_for(const char *path);

/* Writes data to path with mode, only when path does not exist: the bytes go to a new file beside
 * it, synced, then linked into place, so a reader never sees a part-written file and, when
 * processes race, the first one's file wins: 1 for the others, whose data is dropped. */
int ew_file_write_new(const char *path, const void *data, size_t n, mode_t mode);

/* The same, over whatever path holds (renamed into place). */
int ew_file_replace(const char *path, const void *data, size_t n, mode_t mode);

/* Creates path empty with mode unless it exists. A file that exists is never opened: closing a
 * descriptor drops every lock this process holds on the file, SQLite's included. */
int ew_file_create_empty(const char *path, mode_t mode);

#endif
