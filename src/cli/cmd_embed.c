/* tbert embed (placeholder until its issue lands). */
#include <string.h>

#include "cli.h"

int cmd_embed(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--help")) {
        printf("usage: tbert embed [options]\n\n(not implemented yet)\n");
        return CLI_OK;
    }
    fprintf(stderr, "tbert embed: not implemented yet\n");
    return CLI_USAGE;
}
