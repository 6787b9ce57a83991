/* Shared helpers of the tbert subcommands. Each subcommand lives in src/cli/cmd_NAME.c. */
#ifndef TBERT_CLI_H
#define TBERT_CLI_H

#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>

#include "tbert/common.h"

/* Exit statuses (CONVENTIONS.md). */
enum { CLI_OK = 0, CLI_CHECK_FAILED = 1, CLI_USAGE = 2 };

int cmd_tokenize(int argc, char **argv);
int cmd_embed(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_predict(int argc, char **argv);
int cmd_score(int argc, char **argv);
int cmd_filter(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_threshold(int argc, char **argv);
int cmd_learn(int argc, char **argv);
int cmd_forget(int argc, char **argv);
int cmd_export(int argc, char **argv);

/* Prints "tbert: <err->msg>" on stderr and returns CLI_USAGE. */
int cli_report(const tbert_error *err);
/* Prints "tbert CMD: <message>" on stderr and returns CLI_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* getopt_long wrapper state: resets getopt and reports unknown options / missing arguments as one line.
 * Use: int c; while ((c = cli_getopt(cmd, argc, argv, shortopts, longopts)) != -1) { if (c == '?') return CLI_USAGE; ... } */
int cli_getopt(const char *cmd, int argc, char **argv, const char *shortopts, const struct option *longopts);
void cli_getopt_reset(void);

/* Strict number parsing: the whole string must be a number within [lo, hi]. */
bool cli_parse_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out);
bool cli_parse_double(const char *cmd, const char *opt, const char *s, double lo, double hi, double *out);

/* true when stderr is a terminal (progress bars) */
bool cli_stderr_is_tty(void);

#endif
