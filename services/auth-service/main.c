/* auth-service: the process (the service itself is service.c, on the runtime of services/common).
 */
#include "auth.h"

int main(int argc, char **argv)
{
    static auth a;
    svc_def def = auth_service(&a);
    return svc_main(&def, argc, argv);
}
