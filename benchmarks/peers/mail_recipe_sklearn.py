#!/usr/bin/env python3
"""Mail feature-recipe research for issue 7 (peer/reference code, not product code).

Measures feature recipes (hashed or vocab-id WordPiece counts, header evidence tokens; MiniLM window vectors
were not measured: too slow on the shared CPU), heads (logistic regression, tbert-like AdamW linear / MLP
heads) and threshold rules (f1, fpr=X, fpr=X+recall=R, VALUE) chosen on a stratified validation part of the TRAINING data only, on the two SpamAssassin splits of
../shared/notes/mail-baselines.md (half: even/odd positions; time: easy_ham+spam -> easy_ham_2+spam_2).

Usage: nice -n 10 /opt/golden/bin/python benchmarks/peers/mail_recipe_sklearn.py [--corpus DIR] [--cache DIR]
       [--only NAME[,NAME...]] [--seed S] [--val-fraction X] [--rules f1,fpr=0,fpr=0+recall=0.9,0.99]
Prints one markdown table row per (split, option). Parsed mail and token ids are cached in
--cache (default /tmp/recipe).
"""
import argparse
import email
import email.header
import email.utils
import html
import html.parser
import os
import pickle
import re
import sys
import time

import numpy as np
import scipy.sparse as sp

HAM = ["easy_ham", "easy_ham_2", "hard_ham"]
SPAM = ["spam", "spam_2"]
VOCAB = "/root/.cache/tbert/models/minilm/vocab.txt"


# ---------------------------------------------------------------- reading mail
class _Strip(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.skip = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.skip += 1
        elif tag in ("br", "p", "div", "tr", "li"):
            self.out.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self.skip:
            self.skip -= 1

    def handle_data(self, d):
        if not self.skip:
            self.out.append(d)


def strip_html(s):
    p = _Strip()
    try:
        p.feed(s)
        p.close()
    except Exception:
        return re.sub(r"<[^>]*>", " ", s)
    return "".join(p.out)


def decode_header(v):
    if v is None:
        return ""
    try:
        parts = email.header.decode_header(str(v))
        out = []
        for b, cs in parts:
            if isinstance(b, bytes):
                try:
                    out.append(b.decode(cs or "latin-1", errors="replace"))
                except LookupError:
                    out.append(b.decode("latin-1", errors="replace"))
            else:
                out.append(b)
        return " ".join(x.strip() for x in out).strip()
    except Exception:
        return str(v)


def part_text(part):
    payload = part.get_payload(decode=True)
    if payload is None:
        return ""
    cs = part.get_content_charset() or "latin-1"
    try:
        return payload.decode(cs, errors="replace")
    except LookupError:
        return payload.decode("latin-1", errors="replace")


def hops_bucket(n):
    return ["0", "1", "2", "3", "4", "5-6", "5-6", "7-9", "7-9", "7-9"][n] if n < 10 else "10+"


def ev_tok(key, value):
    """mail.c's evidence(): key:value, value lowercased, [a-z0-9.-] kept, runs of others -> one '_', max 48."""
    out, under = [], False
    for ch in (value or "").lower():
        if len(out) >= 48:
            break
        if ch.isascii() and (ch.isalnum() or ch in ".-"):
            out.append(ch)
            under = False
        elif not under and out:
            out.append("_")
            under = True
    s = "".join(out).rstrip("_")
    return f"{key}:{s or 'none'}"


def mailer_name(v):
    out = []
    toks = re.split(r"[ \t]+", v.strip())
    for t in toks:
        if not t or t[0].isdigit() or t[0] in "([<" or (t[0] == "v" and len(t) > 1 and t[1].isdigit()):
            break
        m = re.match(r"[^/;,]*", t).group(0)
        if m:
            out.append(m)
        if len(m) < len(t):
            break
    return "_".join(out)


URL_RE = re.compile(r"(https?://|www\.)", re.I)
PRESENT = [("Message-ID", "message_id"), ("Date", "date"), ("In-Reply-To", "in_reply_to"), ("References", "references"),
           ("List-Id", "list_id"), ("List-Unsubscribe", "list_unsubscribe"), ("Precedence", "precedence"),
           ("Reply-To", "reply_to"), ("X-Priority", "x_priority"), ("X-MSMail-Priority", "x_msmail_priority"),
           ("Organization", "organization"), ("MIME-Version", "mime_version"), ("Cc", "cc")]


def bucket(n, edges):
    for lo, hi, name in edges:
        if lo <= n <= hi:
            return name
    return edges[-1][2]


def parse_message(path):
    with open(path, "rb") as fh:
        raw = fh.read()
    msg = email.message_from_bytes(raw)
    subject = decode_header(msg.get("Subject"))
    plain, htmls, attach, charset = [], [], 0, ""
    for part in msg.walk():
        if part.is_multipart():
            continue
        ct = part.get_content_type()
        disp = (part.get("Content-Disposition") or "").lower()
        if "attachment" in disp or ct not in ("text/plain", "text/html"):
            attach += 1
            continue
        t = part_text(part)
        if not charset and part.get_content_charset():
            charset = part.get_content_charset()
        (plain if ct == "text/plain" else htmls).append(t)
    if plain:
        body, kind = "\n".join(plain), "plain"
    elif htmls:
        body, kind = strip_html("\n".join(htmls)), "html"
    else:
        body, kind = "", "none"
    text = subject + "\n" + body
    # --- E1: what src/mail.c emits today
    ev = []
    _, faddr = email.utils.parseaddr(decode_header(msg.get("From")))
    dom = faddr.rsplit("@", 1)[1] if "@" in faddr and faddr.rsplit("@", 1)[1] else None
    ev.append(ev_tok("from_domain", dom or "none"))
    ev.append(ev_tok("from_tld", dom.rsplit(".", 1)[1] if dom and "." in dom and dom.rsplit(".", 1)[1] else "none"))
    mailer = msg.get("X-Mailer") or msg.get("User-Agent")
    mn = mailer_name(str(mailer)) if mailer else ""
    ev.append(ev_tok("mailer", (mn or "other") if mailer else "none"))
    ev.append(ev_tok("rcvd_hops", hops_bucket(len(msg.get_all("Received") or []))))
    ev.append(ev_tok("ctype", msg.get_content_type()))
    ev.append(ev_tok("body", kind))
    ev.append(ev_tok("attach", "0" if attach == 0 else "1" if attach == 1 else "2plus"))
    ev.append(ev_tok("charset", charset or "none"))
    for h, name in PRESENT:
        ev.append(("has:" if msg.get(h) is not None else "no:") + name)
    # --- E2: extra candidates
    ex = []
    mid = str(msg.get("Message-ID") or "")
    m = re.search(r"@([^>\s]+)", mid)
    ex.append(ev_tok("msgid_domain", m.group(1) if m else "none"))
    _, raddr = email.utils.parseaddr(decode_header(msg.get("Reply-To")))
    ex.append("reply_to_differs:" + ("yes" if raddr and raddr.lower() != faddr.lower() else "no"))
    letters = [c for c in subject if c.isalpha()]
    ex.append("subject_caps:" + ("yes" if len(letters) >= 4 and all(c.isupper() for c in letters) else "no"))
    nurl = len(URL_RE.findall(body if kind == "plain" else "\n".join(htmls)))
    ex.append("urls:" + bucket(nurl, [(0, 0, "0"), (1, 1, "1"), (2, 3, "2-3"), (4, 9, "4-9"), (10, 10 ** 9, "10+")]))
    ex.append("subject_empty:" + ("yes" if not subject.strip() else "no"))
    return text, " ".join(ev), " ".join(ex)


def folder_files(root, name):
    d = os.path.join(root, name)
    return [os.path.join(d, f) for f in sorted(os.listdir(d)) if os.path.isfile(os.path.join(d, f))]


def load_corpus(root, cache):
    p = os.path.join(cache, "parsed.pkl")
    if os.path.exists(p):
        with open(p, "rb") as fh:
            return pickle.load(fh)
    recs = []
    for folder in HAM + SPAM:
        for f in folder_files(root, folder):
            text, ev, ex = parse_message(f)
            recs.append(dict(path=f, folder=folder, y=int(folder in SPAM), text=text, ev=ev, ex=ex))
    from tokenizers import BertWordPieceTokenizer
    tok = BertWordPieceTokenizer(VOCAB, lowercase=True)
    encs = tok.encode_batch([r["text"] for r in recs], add_special_tokens=False)
    for r, e in zip(recs, encs):
        r["ids"] = np.asarray(e.ids, dtype=np.int32)
    with open(p, "wb") as fh:
        pickle.dump(recs, fh)
    return recs


def splits(recs):
    idx = {f: [i for i, r in enumerate(recs) if r["folder"] == f] for f in HAM + SPAM}
    allf = [i for f in HAM + SPAM for i in idx[f]]
    yield "half", allf[0::2], allf[1::2]
    yield "time", idx["easy_ham"] + idx["spam"], idx["easy_ham_2"] + idx["spam_2"]


# ---------------------------------------------------------------- features
def fmix64(k):
    k = np.asarray(k, dtype=np.uint64)
    with np.errstate(over="ignore"):
        k ^= k >> np.uint64(33)
        k *= np.uint64(0xff51afd7ed558ccd)
        k ^= k >> np.uint64(33)
        k *= np.uint64(0xc4ceb9fe1a85ec53)
        k ^= k >> np.uint64(33)
    return k


def fnv1a64(s):
    h = 0xcbf29ce484222325
    for b in s.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def log1p_l2(m):
    m = m.tocsr().astype(np.float64)
    m.data = np.log1p(m.data)
    n = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    n[n == 0] = 1
    return sp.diags(1 / n) @ m


def counts_matrix(rows_cols, n, dim):
    r = np.concatenate([np.full(len(c), i) for i, c in enumerate(rows_cols)]) if n else np.zeros(0)
    c = np.concatenate(rows_cols) if n else np.zeros(0)
    return sp.csr_matrix((np.ones(len(c)), (r, c)), shape=(n, dim))


def ev_cols(tokens_str, dim):
    return np.array([int(fmix64(np.uint64(fnv1a64(t))) % np.uint64(dim)) for t in tokens_str.split()], dtype=np.int64)


def build(recs, lex_dim=4096, lex_mode="hash", ev="none", ev_mode="lexical", ev_dim=1024, ev_weight=1.0, dense=None,
          dense_weight=1.0):
    """lex_mode hash: fmix64(id+1) % lex_dim (src/features.c); vocab: column = id (lex_dim = 30522).
    ev: none | e1 (mail.c today) | e12 (e1 + extras). ev_mode lexical: hashed into the lexical counts before
    log1p+L2; block: own block of ev_dim, log1p+L2, scaled by ev_weight."""
    n = len(recs)
    lex_cols = []
    for r in recs:
        ids = r["ids"].astype(np.uint64)
        c = ids.astype(np.int64) if lex_mode == "vocab" else (fmix64(ids + np.uint64(1)) % np.uint64(lex_dim)).astype(np.int64)
        lex_cols.append(c)
    evs = [""] * n
    if ev != "none":
        evs = [r["ev"] + (" " + r["ex"] if ev == "e12" else "") for r in recs]
    blocks = []
    if ev != "none" and ev_mode == "lexical":
        lex_cols = [np.concatenate([c, ev_cols(e, lex_dim)]) for c, e in zip(lex_cols, evs)]
    blocks.append(log1p_l2(counts_matrix(lex_cols, n, lex_dim)))
    if ev != "none" and ev_mode == "block":
        blocks.append(ev_weight * log1p_l2(counts_matrix([ev_cols(e, ev_dim) for e in evs], n, ev_dim)))
    if dense is not None:
        blocks.append(sp.csr_matrix(dense_weight * dense))
    return sp.hstack(blocks).tocsr()


# ---------------------------------------------------------------- threshold + metrics
def cut_below(s_sorted, j):
    hi = s_sorted[j - 1]
    if j >= len(s_sorted):
        return hi
    lo = s_sorted[j]
    mid = 0.5 * (hi + lo)
    return mid if mid > lo else hi


def choose_threshold(scores, y, rule):
    """src/metrics.c tbert_threshold_choose: f1 | fpr=X (largest recall with val FPR <= X) | VALUE (a probability;
    scores are logits) | fpr=X,recall=R: the fpr=X cut raised to the (1-R) quantile of the validation spam scores
    (numpy's default linear interpolation) when that is higher: the proposed safety margin."""
    if "," in rule:
        a, b = rule.split(",")
        t0 = choose_threshold(scores, y, a)
        return max(t0, float(np.quantile(scores[y == 1], 1 - float(b.split("=")[1]))))
    if rule != "f1" and not rule.startswith("fpr="):
        p = float(rule)
        return np.log(p / (1 - p))
    o = np.argsort(-scores, kind="stable")
    s, yy = scores[o], y[o]
    P, N = yy.sum(), len(yy) - yy.sum()
    tp = fp = 0
    best, best_t, found = -1, 0.5, False
    max_fpr = None if rule == "f1" else float(rule[4:])
    i, n = 0, len(s)
    while i < n:
        j = i
        while j < n and s[j] == s[i]:
            tp += yy[j]
            fp += 1 - yy[j]
            j += 1
        if max_fpr is None:
            f = 2 * tp / (2 * tp + fp + (P - tp))
            if f > best:
                best, best_t, found = f, cut_below(s, j), True
        elif fp / N <= max_fpr:
            best_t, found = cut_below(s, j), True
        else:
            break
        i = j
    if not found:
        best_t = np.nextafter(s[0], np.inf)
    return best_t


def f1_fpr(y, pred):
    tp = int(((y == 1) & pred).sum())
    fp = int(((y == 0) & pred).sum())
    fn = int(((y == 1) & ~pred).sum())
    neg = int((y == 0).sum())
    prec = tp / (tp + fp) if tp + fp else 0
    rec = tp / (tp + fn) if tp + fn else 0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0
    return f1, fp / neg, fp, neg


def strat_val(y, frac, seed):
    rng = np.random.RandomState(seed)
    val = []
    for c in (0, 1):
        idx = np.where(y == c)[0]
        rng.shuffle(idx)
        val.extend(idx[: int(round(frac * len(idx)))])
    m = np.zeros(len(y), bool)
    m[val] = True
    return m


# ---------------------------------------------------------------- heads
def fit_lr(Xtr, ytr, C=10.0, cw=None):
    from sklearn.linear_model import LogisticRegression
    clf = LogisticRegression(C=C, max_iter=3000, class_weight=cw, solver="liblinear")
    clf.fit(Xtr, ytr)
    return lambda X: clf.decision_function(X)


def fit_torch(Xtr, ytr, Xva, yva, hidden=0, epochs=30, lr=1e-3, wd=1e-4, batch=32, dropout=0.1, cw=False, seed=42):
    """tbert-like head: shuffled mini-batches, AdamW (decoupled wd), BCE on logits, best epoch by val loss."""
    import torch
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    Xt = torch.tensor(Xtr.toarray(), dtype=torch.float32)
    yt = torch.tensor(ytr, dtype=torch.float32)
    Xv = torch.tensor(Xva.toarray(), dtype=torch.float32)
    yv = torch.tensor(yva, dtype=torch.float32)
    d = Xt.shape[1]
    if hidden:
        net = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.GELU(), torch.nn.Dropout(dropout), torch.nn.Linear(hidden, 1))
    else:
        net = torch.nn.Sequential(torch.nn.Linear(d, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)
    n1 = float(ytr.sum())
    n0 = len(ytr) - n1
    w = (len(ytr) / (2 * n0), len(ytr) / (2 * n1)) if cw else (1.0, 1.0)
    best, best_state = float("inf"), None
    g = torch.Generator().manual_seed(seed)
    for e in range(epochs):
        net.train()
        perm = torch.randperm(len(yt), generator=g)
        for i in range(0, len(perm), batch):
            b = perm[i:i + batch]
            z = net(Xt[b]).squeeze(1)
            ww = torch.where(yt[b] > 0.5, torch.tensor(w[1]), torch.tensor(w[0]))
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(z, yt[b], reduction="none") * ww).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            vl = torch.nn.functional.binary_cross_entropy_with_logits(net(Xv).squeeze(1), yv).item()
        if vl < best:
            best = vl
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    net.eval()

    def score(X):
        with torch.no_grad():
            return net(torch.tensor(X.toarray(), dtype=torch.float32)).squeeze(1).numpy().astype(np.float64)
    return score


# ---------------------------------------------------------------- driver
# bogofilter 1.2.5 on the same splits (mail-baselines.md): (F1, #FP on the test ham)
BOGO = {"half": {"own": (0.880, 0), "half": (0.989, 8)}, "time": {"own": (0.574, 0), "half": (0.974, 4)}}


def dominates(split, f1, nfp):
    out = []
    for name, (bf1, bfp) in BOGO[split].items():
        if round(f1, 3) >= bf1 and nfp <= bfp:
            out.append("own verdict" if name == "own" else "spamicity>=0.5")
    return ", ".join(out) or "-"


OPTIONS = {
    # name: (feature kwargs, head kwargs)
    # evidence as its own block (log1p + L2, scaled by ev_weight) next to vocab-id WordPiece counts
    "lr_vocab_e1blk": (dict(lex_mode="vocab", lex_dim=30522, ev="e1", ev_mode="block", ev_weight=0.5), dict(head="lr", C=1000)),
    "lr_vocab_e12blk": (dict(lex_mode="vocab", lex_dim=30522, ev="e12", ev_mode="block", ev_weight=0.5), dict(head="lr", C=1000)),
    "lin_vocab_e12blk": (dict(lex_mode="vocab", lex_dim=30522, ev="e12", ev_mode="block", ev_weight=0.5),
                         dict(head="torch", hidden=0, lr=1e-2, wd=0.0, epochs=30)),
    "lin_vocab_e1blk": (dict(lex_mode="vocab", lex_dim=30522, ev="e1", ev_mode="block", ev_weight=0.5),
                        dict(head="torch", hidden=0, lr=1e-2, wd=0.0, epochs=30)),
    "lin_h16384_e12blk": (dict(lex_dim=16384, ev="e12", ev_mode="block", ev_weight=0.5),
                          dict(head="torch", hidden=0, lr=1e-2, wd=0.0, epochs=30)),
    "mlp_vocab_e12blk": (dict(lex_mode="vocab", lex_dim=30522, ev="e12", ev_mode="block", ev_weight=0.5),
                         dict(head="torch", hidden=256, lr=1e-3, wd=1e-4, epochs=30)),
    # the minimal change to src/features.c: hashing kept (fmix64(id+1) % 30522), evidence block at weight 1
    "lin_h30522_e1blk1": (dict(lex_dim=30522, ev="e1", ev_mode="block", ev_weight=1.0),
                          dict(head="torch", hidden=0, lr=1e-2, wd=0.0, epochs=30)),
    "lin_h30522_e12blk1": (dict(lex_dim=30522, ev="e12", ev_mode="block", ev_weight=1.0),
                           dict(head="torch", hidden=0, lr=1e-2, wd=0.0, epochs=30)),
    "lin_h30522_e1blk": (dict(lex_dim=30522, ev="e1", ev_mode="block", ev_weight=0.5),
                         dict(head="torch", hidden=0, lr=1e-2, wd=0.0, epochs=30)),
    "lin_vocab_e1blk1": (dict(lex_mode="vocab", lex_dim=30522, ev="e1", ev_mode="block", ev_weight=1.0),
                         dict(head="torch", hidden=0, lr=1e-2, wd=0.0, epochs=30)),
    "lr_h4096": (dict(lex_dim=4096), dict(head="lr")),
    "lr_vocab": (dict(lex_mode="vocab", lex_dim=30522), dict(head="lr")),
    "lr_h16384": (dict(lex_dim=16384), dict(head="lr")),
    "lr_h4096_e1lex": (dict(lex_dim=4096, ev="e1"), dict(head="lr")),
    "lr_vocab_e1lex": (dict(lex_mode="vocab", lex_dim=30522, ev="e1"), dict(head="lr")),
    "lr_h4096_e1blk": (dict(lex_dim=4096, ev="e1", ev_mode="block", ev_weight=0.5), dict(head="lr")),
    "lr_h4096_e12lex": (dict(lex_dim=4096, ev="e12"), dict(head="lr")),
    "lr_vocab_e12lex": (dict(lex_mode="vocab", lex_dim=30522, ev="e12"), dict(head="lr")),
    "lin_h4096_e1lex": (dict(lex_dim=4096, ev="e1"), dict(head="torch", hidden=0, lr=1e-2, wd=1e-4, epochs=30)),
    "mlp_h4096_e1lex": (dict(lex_dim=4096, ev="e1"), dict(head="torch", hidden=512, lr=1e-3, wd=1e-4, epochs=30)),
    "lin_h4096_e12lex": (dict(lex_dim=4096, ev="e12"), dict(head="torch", hidden=0, lr=1e-2, wd=1e-4, epochs=30)),
    "mlp_h4096_e12lex": (dict(lex_dim=4096, ev="e12"), dict(head="torch", hidden=512, lr=1e-3, wd=1e-4, epochs=30)),
    "mlp_h16384_e12lex": (dict(lex_dim=16384, ev="e12"), dict(head="torch", hidden=256, lr=1e-3, wd=1e-4, epochs=30)),
}
RULES = ["f1", "fpr=0", "fpr=0.005", "fpr=0,recall=0.9", "0.99"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                                     "shared", "data", "mail", "spamassassin"))
    ap.add_argument("--cache", default="/tmp/recipe")
    ap.add_argument("--only", default="")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--rules", default=",".join(RULES).replace(",recall", "+recall"))
    args = ap.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    t0 = time.time()
    recs = load_corpus(os.path.abspath(args.corpus), args.cache)
    print(f"# {len(recs)} messages parsed+tokenised in {time.time() - t0:.1f}s", file=sys.stderr)
    y = np.array([r["y"] for r in recs])
    names = args.only.split(",") if args.only else list(OPTIONS)
    print("| split | option | val | rule | thr | F1 | FPR | #FP | dominates bogofilter at |")
    print("|---|---|---|---|---|---|---|---|---|")
    feats = {}
    for name in names:
        fk, hk = OPTIONS[name]
        key = repr(sorted(fk.items()))
        if key not in feats:
            feats[key] = build(recs, **fk)
        X = feats[key]
        for split, tr, te in splits(recs):
            tr, te = np.array(tr), np.array(te)
            vm = strat_val(y[tr], args.val_fraction, args.seed)
            itr, iva = tr[~vm], tr[vm]
            hk2 = dict(hk)
            head = hk2.pop("head")
            t1 = time.time()
            if head == "lr":
                score = fit_lr(X[itr], y[itr], **hk2)
            else:
                score = fit_torch(X[itr], y[itr], X[iva], y[iva], seed=args.seed, **hk2)
            sv, st = score(X[iva]), score(X[te])
            for rule in [r.replace("+", ",") for r in args.rules.split(",")]:
                thr = choose_threshold(sv, y[iva], rule)
                f1, fpr, nfp, neg = f1_fpr(y[te], st >= thr)
                print(f"| {split} | {name} | {args.val_fraction:g} s{args.seed} | {rule} | {thr:.3f} | {f1:.3f} | {100 * fpr:.2f}% | {nfp}/{neg} | "
                      f"{dominates(split, f1, nfp)} |", flush=True)
            print(f"#   {split} {name} fit+score {time.time() - t1:.1f}s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
