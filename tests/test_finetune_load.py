#!/usr/bin/env python3
"""Fine-tuned heads load everywhere, and `tbert export` (issue 15; briefs: ftformat). No torch: the fine-tuned
head is made here from a frozen one (train on the committed bert_tiny_shape model, then add to best.safetensors
perturbed copies of the top layer's 16 tensors, two embedding tensors and the pooler as finetune.* F32 tensors,
and the recipe's version 2 "finetune" key), as `tbert train --finetune 1` would write it.
1. export: the folder holds the base's config.json / vocab.txt / tokenizer_config.json byte for byte, and a
   model.safetensors with every BertModel tensor (names without `bert.`, shapes from config.json, F32): the
   fine-tuned ones equal to the head's finetune.* values, the others to the base's, bit for bit;
2. embed --model EXPORTED equals embed --model BASE --head FT bit for bit, and differs from the base's;
3. score / eval / predict / filter with the fine-tuned head differ from the frozen head and equal the exported model with
   the same head made frozen (finetune key and tensors removed), record for record; serve gives score's p, and
   its SIGHUP reload swaps to the frozen head and back;
4. the row store: the fine-tuned head's eval encodes again (its own dense-block key), frozen rows are not read;
   tbert forget removes a message's row under the fine-tuned head's key; tbert threshold keeps the encoder
   tensors when it rewrites best.safetensors;
5. refusals, exit 2 with one line: a base with other weights ("fine-tuned from base model"), a wrong shape, a
   tensor outside the fine-tuned layers, a missing layer tensor, finetune tensors under a frozen recipe; export
   into a non-empty folder without --force, and into the head's folder;
6. tbert's last hidden state of the base + overlay equals transformers' BertModel on the exported folder
   (committed golden, tests/golden/make_export_golden.py) at atol 1e-4 + rtol 1e-4.
Needs numpy + safetensors (scripts/python-env.sh; a failure without them, not a skip)."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

TESTS = os.environ.get("TBERT_TESTS_DIR", os.path.dirname(os.path.abspath(__file__)))
try:
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file
    sys.path.insert(0, os.path.join(TESTS, "util"))
    from finetune_fixture import base_sha256, base_tensors, bert_names, finetune_tensors, read_head, write_head
except ImportError as e:  # a test dependency (scripts/python-env.sh), not an external prerequisite: a failure
    print("FAIL: %s (run scripts/python-env.sh; ctest uses TBERT_PYTHON)" % e)
    sys.exit(1)

BIN = os.environ.get("TBERT_BIN")
if not BIN or not os.path.exists(BIN):
    print("FAIL: TBERT_BIN not set")
    sys.exit(1)
MODEL = os.path.join(TESTS, "models", "bert_tiny_shape")  # F32, `bert.` prefix, pooler, 2 layers, H 128
DATA = os.path.join(TESTS, "data", "head", "tiny.tsv")
MAIL = os.path.join(TESTS, "data", "mail", "alternative.eml")
GOLDEN = os.path.join(TESTS, "data", "finetune", "export_golden.npz")  # tests/golden/make_export_golden.py
for f in (os.path.join(MODEL, "model.safetensors"), DATA, MAIL, GOLDEN):
    if not os.path.exists(f):
        print("FAIL: missing committed fixture", f)
        sys.exit(1)
SEED = int(os.environ.get("TBERT_TEST_SEED", "15"))
print("seed", SEED)
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def run(args, env, stdin=None, ok=(0,)):
    p = subprocess.run([BIN] + args, env=env, capture_output=True, input=stdin)
    if p.returncode not in ok:
        print("FAIL: tbert", " ".join(args), "->", p.returncode, p.stderr.decode(errors="replace"))
        sys.exit(1)
    sanitizer_clean("tbert " + args[0], p.stderr.decode(errors="replace"))
    return p


def sanitizer_clean(what, log):  # ASan/UBSan builds: no report
    check("Sanitizer" not in log and "runtime error:" not in log, "%s: sanitizer report: %s" % (what, log[-2000:]))


def expect_refusal(what, args, env, needle):
    p = subprocess.run([BIN] + args, env=env, capture_output=True)
    err = p.stderr.decode(errors="replace")
    check(p.returncode == 2, "%s: exit %d, expected 2 (%s)" % (what, p.returncode, err.strip()))
    check(err.count("\n") == 1, "%s: stderr is not one line: %r" % (what, err))
    check(needle in err, "%s: message lacks %r: %s" % (what, needle, err.strip()))
    sanitizer_clean(what, err)


def mail_scores(env, heads):
    """`tbert score`'s p of MAIL for each head (full precision)."""
    return {h: json.loads(run(["score", "--threads", "1", "--quiet", "--model", MODEL, "--head", h, MAIL], env).stdout)["score"]
            for h in heads}


def check_serve(env, tmp, fthead, h0, want):
    """serve loads the fine-tuned head, and its SIGHUP reload swaps between fine-tuned and frozen heads (want: each
    head's score of MAIL)."""
    served = os.path.join(tmp, "served")
    os.makedirs(served)
    best = lambda h: os.path.join(h, "best.safetensors")
    def swap_in(h):
        shutil.copyfile(best(h), best(served) + ".new")
        os.replace(best(served) + ".new", best(served))
    swap_in(fthead)
    log = os.path.join(tmp, "serve.log")
    srv = subprocess.Popen([BIN, "serve", "--device", "cpu", "--threads", "1", "--model", MODEL, "--head", served, "--http",
                            "127.0.0.1:0"], env=env, stderr=open(log, "w"))
    try:
        def wait_log(needle, count=1):
            for _ in range(300):
                if open(log).read().count(needle) >= count:
                    return True
                if srv.poll() is not None:
                    break
                time.sleep(0.1)
            print(open(log).read())
            return False
        if not wait_log("listening on http"):
            check(False, "serve: did not start")
            return
        port = int(re.search(r"listening on http 127\.0\.0\.1:(\d+)", open(log).read()).group(1))
        post = lambda: json.loads(urllib.request.urlopen("http://127.0.0.1:%d/score" % port, data=open(MAIL, "rb").read(),
                                                         timeout=30).read())["p"]
        got = [post()]
        for n, h in enumerate((h0, fthead), 1):
            swap_in(h)
            srv.send_signal(signal.SIGHUP)
            check(wait_log("reloaded: head", n), "serve: reload %d not logged" % n)
            got.append(post())
        print("serve: p %s (fine-tuned, frozen after SIGHUP, fine-tuned after SIGHUP); score gives %s" % (got, want))
        check(abs(got[0] - want[fthead]) <= 2e-6 and abs(got[2] - want[fthead]) <= 2e-6, "serve: fine-tuned head's p")
        check(abs(got[1] - want[h0]) <= 2e-6 and abs(want[h0] - want[fthead]) > 1e-5, "serve: frozen head's p after reload")
    finally:
        srv.terminate()
        srv.wait(timeout=30)
        sanitizer_clean("serve", open(log).read())


def main():
    tmp = tempfile.mkdtemp(prefix="tbert_ftload.")
    try:
        env = dict(os.environ, TBERT_CACHE=os.path.join(tmp, "cache"))
        h0 = os.path.join(tmp, "h0")
        run(["train", "--model", MODEL, "--data", DATA, "--max-len", "32", "--hidden", "8", "--epochs", "3", "--batch", "8",
             "--threads", "1", "--quiet", "--out", h0], env)
        head, meta = read_head(os.path.join(h0, "best.safetensors"))
        recipe = json.loads(meta["recipe"])
        check(recipe["recipe_version"] == 2 and "finetune" not in recipe, "a frozen head: recipe v2 without finetune")
        cfg = json.load(open(os.path.join(MODEL, "config.json")))
        base = base_tensors(MODEL)
        base_sha = base_sha256(MODEL)
        names = bert_names(cfg, "pooler.dense.weight" in base)
        # the fine-tuned head: the top layer of 2, two embedding tensors and the pooler changed
        top = cfg["num_hidden_layers"] - 1
        ft = finetune_tensors(MODEL, 1, SEED)
        check(len(ft) == 16 + 3, "fixture: %d finetune tensors" % len(ft))
        fthead = os.path.join(tmp, "ft")
        ftkey = {"layers": 1, "embeddings": True, "base_model_sha256": base_sha}
        write_head(fthead, {**head, **ft}, meta, ftkey)
        # the same head, frozen: for the exported model
        frozen = os.path.join(tmp, "ft_frozen")
        write_head(frozen, head, meta)

        # 1. export
        exp = os.path.join(tmp, "exported")
        run(["export", "--model", MODEL, "--head", fthead, "--out", exp, "--quiet"], env)
        for f in ("config.json", "vocab.txt", "tokenizer_config.json"):
            check(open(os.path.join(exp, f), "rb").read() == open(os.path.join(MODEL, f), "rb").read(), "export: %s copied" % f)
        check(not [f for f in os.listdir(tmp) if ".tbert-export-" in f], "export: no temp folder left")
        with safe_open(os.path.join(exp, "model.safetensors"), "np") as f:
            emeta = f.metadata()
        check(emeta.get("format") == "pt", "export: metadata format pt (transformers needs it): %s" % emeta)
        ex = load_file(os.path.join(exp, "model.safetensors"))
        check(set(ex) == set(names), "export: tensor names %s" % sorted(set(ex) ^ set(names)))
        n_overlaid = n_base = 0
        for n, shape in names.items():
            if n not in ex:
                continue
            t = ex[n]
            check(t.dtype == np.float32 and t.shape == shape, "export: %s is %s %s, expected float32 %s" % (n, t.dtype, t.shape, shape))
            want = ft.get("finetune." + n, base[n].astype(np.float32))
            same = t.shape == want.shape and np.array_equal(t.view(np.uint32), want.view(np.uint32))
            check(same, "export: %s differs from the %s value" % (n, "fine-tuned" if "finetune." + n in ft else "base"))
            n_overlaid += same and ("finetune." + n in ft)
            n_base += same and ("finetune." + n not in ft)
        print("export: %d tensors, %d fine-tuned and %d base values bit for bit" % (len(ex), n_overlaid, n_base))
        check(n_overlaid == len(ft), "export: %d of %d fine-tuned tensors" % (n_overlaid, len(ft)))

        # 2. embed: exported == base + overlay, bit for bit; != base alone
        texts = "".join(line.split("\t", 1)[1] for line in open(DATA, encoding="utf-8")).encode()
        emb = ["embed", "--max-len", "32", "--threads", "1", "--format", "f32", "--quiet"]
        e_exp = run(emb + ["--model", exp], env, texts).stdout
        e_ft = run(emb + ["--model", MODEL, "--head", fthead], env, texts).stdout
        e_base = run(emb + ["--model", MODEL], env, texts).stdout
        e_frozen = run(emb + ["--model", MODEL, "--head", h0], env, texts).stdout
        check(len(e_exp) == 40 * 128 * 4, "embed: %d bytes" % len(e_exp))
        check(e_exp == e_ft, "embed: exported model != base + fine-tuned overlay")
        check(e_frozen == e_base, "embed --head of a frozen head changed the embeddings")
        d = np.abs(np.frombuffer(e_ft, np.float32) - np.frombuffer(e_base, np.float32)).max()
        print("embed: fine-tuned vs base max |diff| %.4g" % d)
        check(d > 1e-3, "embed: the overlay changed nothing (max |diff| %g)" % d)

        # 3. score / eval / filter
        sc = ["score", "--threads", "1", "--quiet", DATA]
        s_ft = run(sc + ["--model", MODEL, "--head", fthead], env).stdout.decode().splitlines()
        s_exp = run(sc + ["--model", exp, "--head", frozen], env).stdout.decode().splitlines()
        s_h0 = run(sc + ["--model", MODEL, "--head", h0], env).stdout.decode().splitlines()
        p = lambda lines: np.array([json.loads(x)["score"] for x in lines])
        check(len(s_ft) == 40 and s_ft == s_exp, "score: fine-tuned head != exported model + frozen copy of the head")
        ds = np.abs(p(s_ft) - p(s_h0)).max()
        print("score: fine-tuned vs frozen head max |diff| %.4g" % ds)
        check(ds > 1e-4, "score: fine-tuned head scores as the frozen one (max |diff| %g)" % ds)
        ev = ["eval", "--threads", "1", "--data", DATA, "--json"]
        cache_rows = lambda: sum(len(fs) for _, _, fs in os.walk(os.path.join(tmp, "cache", "store")))
        run(ev + ["--model", MODEL, "--head", h0], env)
        rows0 = cache_rows()
        j_ft = json.loads(run(ev + ["--model", MODEL, "--head", fthead], env).stdout)
        rows1 = cache_rows()
        # 4. the store: the fine-tuned head encoded its 40 texts under its own key
        check(rows0 == 40 and rows1 == 80, "store: %d rows after the frozen eval, %d after the fine-tuned one (40, 80)" % (rows0, rows1))
        j_exp = json.loads(run(ev + ["--model", exp, "--head", frozen], env).stdout)
        check(j_ft == j_exp, "eval: fine-tuned head %s != exported model + frozen copy %s" % (j_ft, j_exp))
        j_ft2 = json.loads(run(ev + ["--model", MODEL, "--head", fthead], env).stdout)
        # (the exported model's rows are its own too: 40 more)
        check(j_ft2 == j_ft and cache_rows() == 120, "eval: the fine-tuned head's own stored rows give the same metrics "
              "(%d rows)" % cache_rows())
        # tbert forget removes the fine-tuned head's row of a message (its key, not the frozen one)
        fenv = dict(env, TBERT_CACHE=os.path.join(tmp, "cache_forget"))
        fcopy = os.path.join(tmp, "ft_forget")
        shutil.copytree(fthead, fcopy)
        run(["eval", "--threads", "1", "--model", MODEL, "--head", fcopy, "--json", "--ham", MAIL, "--spam",
             os.path.join(TESTS, "data", "mail", "html_only.eml")], fenv)
        rows = lambda: sum(len(fs) for _, _, fs in os.walk(os.path.join(tmp, "cache_forget", "store")))
        r0 = rows()
        out = run(["forget", "--no-retrain", "--quiet", "--head", fcopy, MAIL], fenv).stdout.decode()
        check(r0 == 2 and rows() == 1 and "1 store entry removed" in out, "forget: %d -> %d rows: %s" % (r0, rows(), out.strip()))
        # tbert threshold rewrites best.safetensors: a fine-tuned head keeps its encoder tensors
        tcopy = os.path.join(tmp, "ft_threshold")
        shutil.copytree(fthead, tcopy)
        shutil.copyfile(os.path.join(h0, "oof.safetensors"), os.path.join(tcopy, "oof.safetensors"))
        run(["threshold", "--head", tcopy, "--threshold", "0.25"], env)
        t2, m2 = read_head(os.path.join(tcopy, "best.safetensors"))
        check(json.loads(m2["recipe"])["threshold"] == 0.25 and m2["threshold"] == "0.25" and
              json.loads(m2["recipe"])["finetune"] == ftkey, "threshold: recipe after the re-pick %s" % m2["recipe"])
        check(set(t2) == set(head) | set(ft) and all(np.array_equal(t2[k], v) for k, v in {**head, **ft}.items()),
              "threshold: the re-picked head lost or changed tensors")
        s_t = run(sc + ["--model", MODEL, "--head", tcopy], env).stdout.decode().splitlines()
        check(np.array_equal(p(s_t), p(s_ft)), "threshold: the re-picked fine-tuned head scores differently")
        pr = ["predict", "--threads", "1"]
        p_ft = run(pr + ["--model", MODEL, "--head", fthead], env, texts).stdout
        check(p_ft.count(b"\n") == 40 and p_ft == run(pr + ["--model", exp, "--head", frozen], env, texts).stdout,
              "predict: fine-tuned head != exported model + frozen copy")
        check(p_ft != run(pr + ["--model", MODEL, "--head", h0], env, texts).stdout, "predict: fine-tuned head = frozen head")
        fl = ["filter", "-p", "--threads", "1"]
        mail = open(MAIL, "rb").read()
        f_ft = run(fl + ["--model", MODEL, "--head", fthead], env, mail, ok=(0, 1)).stdout
        f_exp = run(fl + ["--model", exp, "--head", frozen], env, mail, ok=(0, 1)).stdout
        f_h0 = run(fl + ["--model", MODEL, "--head", h0], env, mail, ok=(0, 1)).stdout
        check(b"X-TBert-Spam" in f_ft and f_ft == f_exp, "filter: fine-tuned head != exported model + frozen copy")
        # the header prints p to a few decimals: the verdict lines must differ when score's p (full precision)
        # differs by more than the header's resolution, and each header must carry its own head's p
        sp = mail_scores(env, (fthead, h0))
        hp = {}
        for h, out in ((fthead, f_ft), (h0, f_h0)):
            m = re.search(rb"X-TBert-Spam: [^\n]*?p=([0-9.]+)", out) or re.search(rb"X-TBert-Spam: [^\n]*?([0-9]\.[0-9]+)", out)
            hp[h] = float(m.group(1)) if m else float("nan")
            dec = len(m.group(1).split(b".")[1]) if m else 0
            check(m is not None and abs(hp[h] - sp[h]) <= 0.5 * 10.0 ** -dec + 1e-9,
                  "filter: header p %r is not score's %r for %s" % (m and m.group(1), sp[h], h))
        if abs(sp[fthead] - sp[h0]) > 0.01:
            check(f_ft != f_h0, "filter: fine-tuned head gives the frozen head's verdict line")
        check_serve(env, tmp, fthead, h0, sp)

        # 5. refusals
        other = os.path.join(tmp, "other_base")
        shutil.copytree(MODEL, other)
        st = load_file(os.path.join(other, "model.safetensors"))
        k = sorted(st)[0]
        st[k] = st[k] + np.float32(1e-3)
        save_file(st, os.path.join(other, "model.safetensors"))
        for cmd in (["score", "--quiet", DATA], ["eval", "--data", DATA], ["embed", "--quiet"],
                    ["export", "--out", os.path.join(tmp, "x")]):
            expect_refusal("%s with another base" % cmd[0], cmd + ["--model", other, "--head", fthead], env,
                           "fine-tuned from base model %s, but %s has" % (base_sha, other))
        bad = [("wrong shape", lambda t: t.update({"finetune.pooler.dense.bias": np.zeros(7, np.float32)}), "shape"),
               ("layer outside", lambda t: t.update({"finetune.encoder.layer.0.output.dense.bias": base["encoder.layer.0.output.dense.bias"]}),
                "outside the fine-tuned layers"),
               ("missing layer tensor", lambda t: t.pop("finetune.encoder.layer.%d.output.LayerNorm.bias" % top), "encoder-layer tensors"),
               ("not a model weight", lambda t: t.update({"finetune.encoder.layer.1.bogus": np.zeros(3, np.float32)}), "not a weight"),
               ("NaN value", lambda t: t.update({"finetune.pooler.dense.bias": np.full(cfg["hidden_size"], np.nan, np.float32)}),
                "non-finite"),
               ("F16 tensor", lambda t: t.update({"finetune.pooler.dense.bias": base["pooler.dense.bias"].astype(np.float16)}), "dtype F16")]
        for what, edit, needle in bad:
            t = {**head, **ft}
            edit(t)
            d = os.path.join(tmp, "bad_" + what.replace(" ", "_"))
            write_head(d, t, meta, ftkey)
            expect_refusal(what, ["score", "--quiet", "--model", MODEL, "--head", d, DATA], env, needle)
        d = os.path.join(tmp, "bad_frozen_recipe")
        write_head(d, {**head, **ft}, meta)
        expect_refusal("finetune tensors under a frozen recipe", ["score", "--quiet", "--model", MODEL, "--head", d, DATA], env, "tensors")
        expect_refusal("export into a non-empty folder", ["export", "--model", MODEL, "--head", fthead, "--out", exp], env, "--force")
        expect_refusal("export into the head", ["export", "--model", MODEL, "--head", fthead, "--out", fthead, "--force"], env, "the head")
        expect_refusal("export into a missing parent folder", ["export", "--model", MODEL, "--head", fthead, "--out",
                                                                 os.path.join(tmp, "no", "such")], env, "temp folder")
        open(os.path.join(exp, "stale.txt"), "w").write("old")
        run(["export", "--model", MODEL, "--head", h0, "--out", exp, "--force", "--quiet"], env)
        check(not os.path.exists(os.path.join(exp, "stale.txt")), "export --force: the old folder's files are gone")
        check(not [f for f in os.listdir(tmp) if ".tbert-export-" in f], "export --force: no temp folder left")
        check(run(emb + ["--model", exp], env, texts).stdout == e_base, "export of a frozen head: the base's embeddings")

        # 6. against transformers (tests/golden/make_export_golden.py: BertModel on the exported folder of the
        # same fixture, float64): tbert's last hidden state of the base + overlay, atol 1e-4 + rtol 1e-4
        g = np.load(GOLDEN)
        gft = os.path.join(tmp, "golden_ft")
        write_head(gft, {**head, **finetune_tensors(MODEL, int(g["layers"]), int(g["seed"]))}, meta,
                   {"layers": int(g["layers"]), "embeddings": True, "base_model_sha256": base_sha})
        L, lens = int(g["max_len"]), g["lens"]
        gtexts = "".join(line.split("\t", 1)[1] for line in open(DATA, encoding="utf-8").readlines()[:len(lens)]).encode()
        ids = [[int(x) for x in line.split()] for line in
               run(["tokenize", "--model", MODEL, "--max-len", str(L)], env, gtexts).stdout.decode().splitlines()]
        check(ids == [list(g["ids"][i, :lens[i]]) for i in range(len(lens))], "golden: token ids differ")
        hid = np.frombuffer(run(["embed", "--pool", "flatten", "--max-len", str(L), "--threads", "1", "--format", "f32",
                                 "--quiet", "--model", MODEL, "--head", gft], env, gtexts).stdout, np.float32)
        hid = hid.reshape(g["hidden"].shape)
        ref = g["hidden"].astype(np.float64)
        diff = np.abs(hid - ref)
        bad = int((~(diff <= 1e-4 + 1e-4 * np.abs(ref))).sum())
        print("golden: max |tbert - transformers| %.3g, norm ratio %.3g (atol 1e-4, rtol 1e-4)"
              % (diff.max(), np.linalg.norm(hid - ref) / np.linalg.norm(ref)))
        check(bad == 0, "golden: %d hidden-state elements beyond atol 1e-4 + rtol 1e-4" % bad)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
