/* tbert predict (placeholder until its issue lands). */
#include <string.h>

#include "cli.h"

int cmd_predict(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--help")) {
        printf("usage: tbert predict [options]\n\n(not implemented yet)\n");
        return CLI_OK;
    }
    fprintf(stderr, "tbert predict: not implemented yet\n");
    return CLI_USAGE;
}
