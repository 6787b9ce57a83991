/* tbert learn: registers corrections (DIR/learned.jsonl, as spamd TELL does) and retrains the head with them;
 * --unlearn takes corrections back, --rollback restores the previous head (src/learn.c). */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "tbert/learn.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: tbert learn --head DIR (--spam|--ham) FILE... [--unlearn] [--no-retrain] [--full] [--keep N]\n"
            "                   [--device D] [--threads N]\n"
            "       tbert learn --head DIR --retrain [--warm]\n"
            "       tbert learn --head DIR --rollback\n\n"
            "Learning from mistakes. Each FILE is one message; it is registered as spam or ham in DIR/learned.jsonl\n"
            "(appended under a lock and fsynced before anything else happens: the same log spamd TELL and HTTP\n"
            "/learn write), then the head is retrained with every correction in force. By default the retrain is\n"
            "warm: from DIR/learn.state (the training rows and fold heads `tbert train` kept), each fold head\n"
            "continues for a few epochs with the corrections added, nothing but the new messages is parsed or\n"
            "encoded, and the threshold is re-chosen from the new out-of-fold scores (seconds). --full (and\n"
            "--retrain) is `tbert train` again with the same settings and training mail (DIR/training.json) plus\n"
            "the corrections: messages already encoded come from the feature store, the rest is parsed, encoded\n"
            "and trained from scratch; a head without learn.state retrains in full. Either way the threshold is\n"
            "re-chosen from out-of-fold scores with the rule that chose the current one, the new head replaces the\n"
            "old one atomically, the old one is kept in DIR/history/N (the last --keep), and a running\n"
            "`tbert serve --head DIR` picks the new head up. docs/learn.md tells the details.\n\n"
            "  --head DIR       a head folder from `tbert train --ham/--spam`\n"
            "  --spam, --ham    the class the FILEs belong to\n"
            "  --unlearn        take the FILEs' earlier corrections back (as spamc -L forget)\n"
            "  --no-retrain     register only (retrain later with --retrain)\n"
            "  --full           retrain from scratch instead of warm-starting\n"
            "  --retrain        retrain with the corrections in force, registering nothing (in full unless --warm)\n"
            "  --warm           with --retrain: warm-start (as learning a message does)\n"
            "  --rollback       put the previous head (DIR/history) back, atomically\n"
            "  --keep N         previous heads kept (default 5)\n"
            "  --device D       auto|cpu|cuda[:N]  --threads N\n"
            "  --quiet          no progress lines\n\n"
            "Prints one line: the corrections registered and in force, documents encoded, the new threshold, seconds.\n"
            "exit status: 0 done; 2 bad usage or failure (the head is then unchanged).\n");
}

enum { O_HEAD = 256, O_SPAM, O_HAM, O_UNLEARN, O_NORETRAIN, O_RETRAIN, O_ROLLBACK, O_KEEP, O_DEVICE, O_THREADS, O_QUIET, O_HELP, O_FULL, O_WARM };
static const struct option longopts[] = {{"head", required_argument, 0, O_HEAD},     {"spam", no_argument, 0, O_SPAM},
                                          {"ham", no_argument, 0, O_HAM},              {"unlearn", no_argument, 0, O_UNLEARN},
                                          {"no-retrain", no_argument, 0, O_NORETRAIN}, {"retrain", no_argument, 0, O_RETRAIN},
                                          {"rollback", no_argument, 0, O_ROLLBACK},    {"keep", required_argument, 0, O_KEEP},
                                          {"device", required_argument, 0, O_DEVICE},  {"threads", required_argument, 0, O_THREADS},
                                          {"quiet", no_argument, 0, O_QUIET},          {"help", no_argument, 0, O_HELP},
                                          {"full", no_argument, 0, O_FULL},            {"warm", no_argument, 0, O_WARM},
                                          {0, 0, 0, 0}};

/* The long name of option value c (its longopts entry). */
static const char *learn_option_name(int c) {
    for (const struct option *p = longopts; p->name; p++)
        if (p->val == c) return p->name;
    return "?";
}

/* The options tbert learn and tbert forget share. Returns true when c is one of them; *rc is set (>= 0) when the
 * command must stop with that status (a bad value). */
static bool shared_option(const char *cmd, int c, tbert_learn_opts *o, int *rc) {
    long v;
    tbert_error err;
    switch (c) {
    case O_HEAD: o->head = optarg; return true;
    case O_NORETRAIN: o->no_retrain = true; return true;
    case O_FULL: o->full = true; return true;
    case O_QUIET: o->quiet = true; return true;
    case O_DEVICE:
        if (tbert_device_parse(optarg, &o->device, &err)) *rc = cli_report(&err);
        return true;
    case O_THREADS:
        if (!cli_parse_int(cmd, "--threads", optarg, 1, 1024, &v)) *rc = CLI_USAGE;
        else o->threads = (int)v;
        return true;
    default: return false;
    }
}

int cmd_learn(int argc, char **argv) {
    const char *cmd = "learn";
    tbert_learn_opts o = {0};
    o.device.kind = TBERT_DEVICE_AUTO;
    bool rollback = false, retrain = false, warm = false;
    int c, classes = 0;
    long v;
    int rc = -1;
    tbert_error err;
    while ((c = cli_getopt(cmd, argc, argv, "h", longopts)) != -1) {
        switch (c) {
        case 'h':
        case O_HELP: usage(stdout); return CLI_OK;
        case O_SPAM: o.klass = "spam"; classes++; break;
        case O_HAM: o.klass = "ham"; classes++; break;
        case O_UNLEARN: o.unlearn = true; break;
        case O_RETRAIN: retrain = true; break;
        case O_ROLLBACK: rollback = true; break;
        case O_KEEP:
            if (!cli_parse_int(cmd, "--keep", optarg, 1, 1000, &v)) return CLI_USAGE;
            o.keep = (int)v;
            break;
        case O_WARM: warm = true; break;
        default:
            if (!shared_option(cmd, c, &o, &rc)) return CLI_USAGE;
            if (rc >= 0) return rc;
        }
    }
    if (!o.head) return cli_usage_error(cmd, "--head DIR is required");
    o.files = (const char *const *)argv + optind;
    o.n_files = argc - optind;
    if (rollback) {
        if (classes || o.n_files || retrain || o.unlearn || o.no_retrain || o.full || warm)
            return cli_usage_error(cmd, "--rollback takes only --head DIR");
        if (tbert_learn_rollback(o.head, &err)) return cli_report(&err);
        printf("rolled back: %s holds its previous head\n", o.head);
        return CLI_OK;
    }
    tbert_learn_result r = {0};
    if (retrain) {
        if (classes || o.n_files || o.unlearn || o.no_retrain) return cli_usage_error(cmd, "--retrain takes no messages");
        if (warm && o.full) return cli_usage_error(cmd, "--warm and --full exclude each other");
        o.full = !warm; /* --retrain: the full retrain, as before; --warm asks for the warm start */
        if (tbert_learn_retrain(&o, &r, &err)) return cli_report(&err);
    } else {
        if (warm) return cli_usage_error(cmd, "--warm goes with --retrain (learning a message is warm unless --full)");
        if (classes != 1) return cli_usage_error(cmd, "give exactly one of --spam or --ham");
        if (!o.n_files) return cli_usage_error(cmd, "give at least one message FILE");
        if (tbert_learn(&o, &r, &err)) return cli_report(&err);
    }
    printf("%s %d message(s); in force: %d ham, %d spam", o.unlearn ? "unlearned" : "learned", r.registered, r.learned_ham,
           r.learned_spam);
    if (r.retrained)
        printf("; retrained%s on %d documents (%d encoded), threshold %.6g, %.2f s", r.warm ? " (warm)" : "", r.docs, r.docs_encoded,
               (double)r.threshold, r.seconds_register + r.seconds_retrain);
    printf("\n");
    return CLI_OK;
}

/* ---- tbert forget ---- */
static void forget_usage(FILE *f) {
    fprintf(f,
            "usage: tbert forget --head DIR [--no-retrain] [--full] [--device D] [--threads N] [--quiet] FILE...\n\n"
            "Forgets messages (one per FILE): removes what the feature store keeps of each (its encoded dense block,\n"
            "under the head's recipe and model) and appends a removal of it to DIR/learned.jsonl, so that a\n"
            "correction of it is no longer in force; the head is then retrained without it when it was one (unless\n"
            "--no-retrain; warm as in tbert learn unless --full). A message in the folders the head was trained\n"
            "from stays in its training set: take it out of the folder and retrain (`tbert learn --head DIR\n"
            "--retrain`).\n\n"
            "Prints one line: messages forgotten, store entries removed, corrections in force.\n"
            "exit status: 0 done; 2 bad usage or failure.\n");
}

int cmd_forget(int argc, char **argv) {
    const char *cmd = "forget";
    tbert_learn_opts o = {0};
    o.device.kind = TBERT_DEVICE_AUTO;
    int c, rc = -1;
    tbert_error err;
    while ((c = cli_getopt(cmd, argc, argv, "h", longopts)) != -1) {
        switch (c) {
        case 'h':
        case O_HELP: forget_usage(stdout); return CLI_OK;
        case '?': return CLI_USAGE;
        default:
            if (!shared_option(cmd, c, &o, &rc))
                return cli_usage_error(cmd, "--%s is an option of tbert learn, not of forget", learn_option_name(c));
            if (rc >= 0) return rc;
        }
    }
    if (!o.head) return cli_usage_error(cmd, "--head DIR is required");
    o.files = (const char *const *)argv + optind;
    o.n_files = argc - optind;
    if (!o.n_files) return cli_usage_error(cmd, "give at least one message FILE");
    tbert_learn_result r;
    int removed;
    if (tbert_forget(&o, &r, &removed, &err)) return cli_report(&err);
    printf("forgot %d message(s): %d store entr%s removed; in force: %d ham, %d spam", r.registered, removed, removed == 1 ? "y" : "ies",
           r.learned_ham, r.learned_spam);
    if (r.retrained) printf("; retrained%s on %d documents, threshold %.6g", r.warm ? " (warm)" : "", r.docs, (double)r.threshold);
    printf("\n");
    return CLI_OK;
}
