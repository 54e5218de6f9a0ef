/* export-service: the process (the service itself is service.c, on the runtime of
 * services/common). */
#include <pthread.h>
#include "export.h"

int main(int argc, char **argv)
{
    static exporter x;
    pthread_mutex_init(&x.mu, NULL);
    svc_def def = export_service(&x);
    int status = svc_main(&def, argc, argv);
    pthread_mutex_destroy(&x.mu);
    return status;
}
