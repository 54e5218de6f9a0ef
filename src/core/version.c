/* The version of the library a program runs with (include/eventwire/version.h): compiled into
 * the library, so that a program can compare it with the header it was compiled against. */
#include "eventwire/version.h"

const char *ew_version(void)
{
    return EW_VERSION_STRING;
}

int ew_version_number(void)
{
    return EW_VERSION_NUMBER;
}
