/* notification-service: the process (the service itself is service.c, on the runtime of
 * services/common). */
#include <curl/curl.h>
#include <stdio.h>
#include "notification.h"

int main(int argc, char **argv)
{
    /* before any thread: libcurl's global state is not thread-safe to set up */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "%s: libcurl cannot be initialised\n", NOTIF_SERVICE);
        return 1;
    }
    static notif n;
    svc_def def = notif_service(&n);
    int status = svc_main(&def, argc, argv);
    curl_global_cleanup();
    return status;
}
