/* export-service: the process (the service itself is service.c, on the runtime of
 * services/common). */
#include "export.h"

int main(int argc, char **argv)
{
    static exporter x;
    svc_def def = export_service(&x);
    return svc_main(&def, argc, argv);
}
