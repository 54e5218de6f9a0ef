/* analytics-service: the process (the service itself is service.c, on the runtime of
 * services/common). */
#include "analytics.h"

int main(int argc, char **argv)
{
    static analytics a;
    svc_def def = analytics_service(&a);
    return svc_main(&def, argc, argv);
}
