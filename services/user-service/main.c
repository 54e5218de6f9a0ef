/* user-service: the process (the service itself is service.c, on the runtime of services/common).
 */
#include "user.h"

int main(int argc, char **argv)
{
    static usvc u;
    svc_def def = user_service(&u);
    return svc_main(&def, argc, argv);
}
