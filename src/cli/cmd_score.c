/* tbert score (placeholder until its issue lands). */
#include <string.h>

#include "cli.h"

int cmd_score(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--help")) {
        printf("usage: tbert score [options]\n\n(not implemented yet)\n");
        return CLI_OK;
    }
    fprintf(stderr, "tbert score: not implemented yet\n");
    return CLI_USAGE;
}
