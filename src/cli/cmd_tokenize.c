/* tbert tokenize (placeholder until its issue lands). */
#include <string.h>

#include "cli.h"

int cmd_tokenize(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--help")) {
        printf("usage: tbert tokenize [options]\n\n(not implemented yet)\n");
        return CLI_OK;
    }
    fprintf(stderr, "tbert tokenize: not implemented yet\n");
    return CLI_USAGE;
}
