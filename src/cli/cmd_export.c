/* tbert export: a head's encoder (the base model with the head's fine-tuned tensors laid over it) as a complete
 * Hugging Face BERT folder: the base's config.json and tokenizer files, and model.safetensors with every
 * weight under transformers' BertModel names in float32. Written into a temp folder beside OUT, fsynced,
 * then renamed to OUT (an existing OUT, with --force, is swapped out by one renameat2 exchange and removed). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "tbert/fileio.h"
#include "tbert/finetune.h"
#include "tbert/model.h"
#include "tbert/safetensors.h"

static const char *const CMD = "export";

/* the base folder's files that travel unchanged (those it has; model.safetensors is written anew) */
static const char *const COPIED[] = {"config.json",  "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                                     "tokenizer.json", "added_tokens.json"};
enum { MAX_COPIED_BYTES = 1 << 26 };

static void usage(FILE *f) {
    fprintf(f,
            "usage: tbert export --head CKPT_DIR --out MODEL_DIR [options]\n"
            "\n"
            "Writes the encoder a head uses as a complete Hugging Face BERT model folder: the base model's\n"
            "config.json, vocab.txt and tokenizer files (those it has), and model.safetensors with every weight\n"
            "under transformers' BertModel names (embeddings.*, encoder.layer.N.*, pooler.* when the base has\n"
            "one) in float32, the tensors the head fine-tuned (tbert train --finetune K) in place of the base's.\n"
            "transformers' BertModel.from_pretrained(MODEL_DIR) loads it, and tbert --model MODEL_DIR gives the\n"
            "embeddings the head's encoder gives. A head with a frozen encoder exports its base in float32.\n"
            "The folder is written beside MODEL_DIR under a temp name, fsynced, and renamed into place.\n"
            "\n"
            "options:\n"
            "  --head CKPT_DIR         the head (a folder with best.safetensors, or the .safetensors file)\n"
            "  --out MODEL_DIR         the folder to write; must not exist or be empty, unless --force\n"
            "  --model NAME|DIR        the base model the head was trained on (default minilm); a fine-tuned head\n"
            "                          refuses any other (its sha256 is in the head's recipe)\n"
            "  --force                 replace MODEL_DIR when it exists and is not empty\n"
            "  --quiet                 no summary line on stderr\n"
            "  --help                  this text\n");
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

static void remove_tree(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static tbert_status fsync_path(const char *path, tbert_error *err) {
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd < 0 || fsync(fd) != 0) {
        int e = errno;
        if (fd >= 0) close(fd);
        return tbert_fail(err, TBERT_E_IO, "%s: fsync failed: %s", path, strerror(e));
    }
    close(fd);
    return TBERT_OK;
}

/* 1 when dir is an empty folder, 0 when it holds something, -1 when it cannot be read */
static int dir_empty(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int empty = 1;
    struct dirent *e;
    while (empty && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
    closedir(d);
    return empty;
}

static bool same_file(const char *a, const char *b) {
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static tbert_status write_weights(const tbert_model *m, const char *path, tbert_error *err) {
    tbert_model_tensor *t = NULL;
    int n = 0;
    tbert_status st = tbert_model_tensors(m, &t, &n, err);
    tbert_st_writer *w = st ? NULL : tbert_st_writer_new();
    if (!st && !w) st = tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", path);
    for (int i = 0; !st && i < n; i++)
        st = tbert_st_writer_add(w, t[i].name, TBERT_DT_F32, t[i].ndim, t[i].shape, t[i].data, err);
    /* transformers refuses a safetensors file whose "format" is not one of its frameworks */
    if (!st) st = tbert_st_writer_meta(w, "format", "pt", err);
    if (!st) st = tbert_st_writer_meta(w, "tbert_base_model_sha256", m->weights_sha256, err);
    if (!st && m->finetune_sha256[0]) st = tbert_st_writer_meta(w, "tbert_finetune_sha256", m->finetune_sha256, err);
    if (!st) st = tbert_st_writer_save(w, path, err);
    tbert_st_writer_free(w);
    free(t);
    return st;
}

static tbert_status write_folder(const tbert_model *m, const char *tmp, tbert_error *err) {
    tbert_status st = TBERT_OK;
    char from[PATH_MAX + 64], to[PATH_MAX + 64];
    for (size_t i = 0; !st && i < sizeof COPIED / sizeof COPIED[0]; i++) {
        snprintf(from, sizeof from, "%s/%s", m->dir, COPIED[i]);
        if (!tbert_is_regular_file(from)) continue;
        char *buf = NULL;
        size_t len = 0;
        snprintf(to, sizeof to, "%s/%s", tmp, COPIED[i]);
        st = tbert_read_file(from, MAX_COPIED_BYTES, &buf, &len, err);
        if (!st) st = tbert_write_file_atomic(to, buf, len, err);
        free(buf);
    }
    snprintf(to, sizeof to, "%s/model.safetensors", tmp);
    if (!st) st = write_weights(m, to, err);
    if (!st) st = fsync_path(tmp, err);
    return st;
}

/* Moves the finished temp folder to out: a rename, or with an existing out an exchange, then the old one removed. */
static tbert_status move_in(const char *tmp, const char *out, bool exists, tbert_error *err) {
    if (exists) {
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, out, RENAME_EXCHANGE) != 0)
            return tbert_fail(err, TBERT_E_IO, "%s: cannot replace: %s", out, strerror(errno));
        remove_tree(tmp); /* now the old folder */
    } else if (rename(tmp, out) != 0) {
        return tbert_fail(err, TBERT_E_IO, "%s: cannot create: %s", out, strerror(errno));
    }
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s", out);
    char *slash = strrchr(parent, '/');
    if (!slash) snprintf(parent, sizeof parent, ".");
    else if (slash == parent) parent[1] = 0;
    else *slash = 0;
    return fsync_path(parent, err);
}

int cmd_export(int argc, char **argv) {
    static const struct option opts[] = {
        {"head", required_argument, 0, 'H'}, {"out", required_argument, 0, 'o'}, {"model", required_argument, 0, 'm'},
        {"force", no_argument, 0, 'f'},      {"quiet", no_argument, 0, 'q'},     {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *head = NULL, *out_arg = NULL, *model = NULL;
    bool force = false, quiet = false;
    int c;
    while ((c = cli_getopt(CMD, argc, argv, "", opts)) != -1) {
        switch (c) {
        case 'H': head = optarg; break;
        case 'o': out_arg = optarg; break;
        case 'm': model = optarg; break;
        case 'f': force = true; break;
        case 'q': quiet = true; break;
        case 'h': usage(stdout); return CLI_OK;
        default: return CLI_USAGE;
        }
    }
    if (optind < argc) return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (!head || !out_arg) return cli_usage_error(CMD, "--head CKPT_DIR and --out MODEL_DIR are required");
    char out[PATH_MAX];
    if (snprintf(out, sizeof out, "%s", out_arg) >= (int)sizeof out - 32) return cli_usage_error(CMD, "--out: path too long");
    for (size_t n = strlen(out); n > 1 && out[n - 1] == '/'; n--) out[n - 1] = 0;

    tbert_error err = {0};
    struct stat sb;
    bool exists = lstat(out, &sb) == 0;
    if (exists && !S_ISDIR(sb.st_mode)) return cli_usage_error(CMD, "%s: exists and is not a folder", out);
    int empty = exists ? dir_empty(out) : 1;
    if (empty < 0) return cli_usage_error(CMD, "%s: cannot read the folder: %s", out, strerror(errno));
    if (!empty && !force) return cli_usage_error(CMD, "%s: exists and is not empty (--force replaces it)", out);

    char dir[4096];
    tbert_model *m = NULL;
    tbert_classifier *clf = NULL;
    tbert_status st = tbert_resolve_model_dir(model, dir, sizeof dir, &err);
    if (!st && exists && (same_file(out, dir) || same_file(out, head)))
        st = tbert_fail(&err, TBERT_E_ARG, "%s: is the base model or the head; export to another folder", out);
    if (!st) st = tbert_model_load(dir, &m, &err);
    if (!st) st = tbert_classifier_load(head, m, &clf, &err);
    if (!st) st = tbert_model_apply_finetune(m, head, tbert_classifier_recipe(clf), &err);
    char tmp[PATH_MAX];
    bool made = false;
    if (!st) {
        snprintf(tmp, sizeof tmp, "%s.tbert-export-XXXXXX", out);
        made = mkdtemp(tmp) != NULL;
        if (!made) st = tbert_fail(&err, TBERT_E_IO, "%s: cannot create a temp folder beside it: %s", out, strerror(errno));
        mode_t um = umask(0); /* a model folder as mkdir makes one, not mkdtemp's 0700 */
        umask(um);
        if (made && chmod(tmp, 0777 & ~um) != 0) st = tbert_fail(&err, TBERT_E_IO, "%s: chmod: %s", tmp, strerror(errno));
    }
    if (!st) st = write_folder(m, tmp, &err);
    if (!st) st = move_in(tmp, out, exists, &err);
    if (st && made && tbert_is_dir(tmp)) remove_tree(tmp);
    if (!st && !quiet) {
        const tbert_recipe *r = tbert_classifier_recipe(clf);
        if (r->finetune.layers > 0)
            fprintf(stderr, "tbert export: %s with the %d fine-tuned layer(s)%s of %s -> %s\n", dir, r->finetune.layers,
                    r->finetune.embeddings ? " and embeddings" : "", head, out);
        else
            fprintf(stderr, "tbert export: %s (the head's encoder is frozen: the base in float32) -> %s\n", dir, out);
        if (r->layers < m->cfg.layers)
            fprintf(stderr, "tbert export: the head uses the first %d of the %d layers: embed with --layers %d "
                            "(transformers: hidden_states[%d])\n", r->layers, m->cfg.layers, r->layers, r->layers);
    }
    tbert_classifier_free(clf);
    tbert_model_free(m);
    return st ? cli_report(&err) : CLI_OK;
}
