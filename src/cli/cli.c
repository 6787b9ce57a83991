#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cli_report(const tbert_error *err) {
    fprintf(stderr, "tbert: %s\n", err && err->msg[0] ? err->msg : "unknown error");
    return CLI_USAGE;
}

int cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "tbert %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see 'tbert %s --help')\n", cmd);
    va_end(ap);
    return CLI_USAGE;
}

void cli_getopt_reset(void) {
    optind = 0; /* 0 makes glibc reinitialise its internal state */
    opterr = 0;
}

int cli_getopt(const char *cmd, int argc, char **argv, const char *shortopts, const struct option *longopts) {
    int idx = -1;
    char so[128];
    snprintf(so, sizeof so, ":%s", shortopts); /* leading ':' distinguishes a missing argument */
    int c = getopt_long(argc, argv, so, longopts, &idx);
    if (c == '?') {
        const char *bad = argv[optind - 1];
        if (optopt && optopt < 256) cli_usage_error(cmd, "unknown option '-%c'", optopt);
        else cli_usage_error(cmd, "unknown option '%s'", bad ? bad : "?");
        return '?';
    }
    if (c == ':') {
        cli_usage_error(cmd, "option '%s' needs a value", argv[optind - 1]);
        return '?';
    }
    return c;
}

bool cli_parse_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        cli_usage_error(cmd, "%s expects a whole number from %ld to %ld, got '%s'", opt, lo, hi, s);
        return false;
    }
    *out = v;
    return true;
}

bool cli_parse_double(const char *cmd, const char *opt, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi) {
        cli_usage_error(cmd, "%s expects a number from %g to %g, got '%s'", opt, lo, hi, s);
        return false;
    }
    *out = v;
    return true;
}

bool cli_stderr_is_tty(void) { return isatty(STDERR_FILENO) == 1; }
