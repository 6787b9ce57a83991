#!/usr/bin/env python3
"""Golden token ids from Hugging Face `tokenizers` (what AutoTokenizer gives) for tests/test_tokenizer.c.

Writes into tests/data/tokenizer/:
  sms_ids.txt        "LINE<TAB>ids" for every line of ../shared/data/sms/SMSSpamCollection (line numbers from 1;
                     the ids of the text column, i.e. what follows the first TAB, with [CLS]/[SEP], untruncated).
                     The texts themselves stay in ../shared.
  edge_cases.jsonl   hand-written edge cases for the uncased MiniLM vocabulary: {"name", "b64" (raw bytes),
                     "ids", and, for texts without special literals, "norm" (normalizer output) and "words"
                     (pre-tokenizer output on it)}.
  cased_vocab.txt    a small cased vocabulary made here (a few hundred entries)
  cased_cases.jsonl  edge cases under that vocabulary, each with its "opts" (lowercase, strip_accents).

usage: /opt/golden/bin/python tests/golden/make_tokenizer_golden.py [--model-dir DIR] [--sms PATH]
"""
import argparse
import base64
import json
import os
import random
import sys

import tokenizers
from tokenizers import Tokenizer, normalizers
from tokenizers.implementations import BertWordPieceTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "tokenizer")


def hf_from_dir(model_dir):
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def check_against_autotokenizer(tok, model_dir, texts):
    """The tokenizer.json tokenizer, BertWordPieceTokenizer(vocab.txt) and AutoTokenizer must agree."""
    wp = BertWordPieceTokenizer(os.path.join(model_dir, "vocab.txt"), lowercase=True)
    try:
        from transformers import AutoTokenizer
        auto = AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:  # transformers is only a cross-check
        print("warning: AutoTokenizer unavailable (%s)" % e, file=sys.stderr)
        auto = None
    for t in texts:
        a = tok.encode(t).ids
        b = wp.encode(t).ids
        if a != b:
            sys.exit("tokenizer.json and BertWordPieceTokenizer disagree on %r: %s vs %s" % (t, a, b))
        if auto is not None:
            c = auto(t, truncation=False)["input_ids"]
            if a != c:
                sys.exit("tokenizer.json and AutoTokenizer disagree on %r: %s vs %s" % (t, a, c))
    print("cross-check: tokenizer.json == BertWordPieceTokenizer%s on %d texts" %
          (" == AutoTokenizer" if auto else "", len(texts)), file=sys.stderr)


def edge_cases():
    """(name, bytes) pairs: every category of issue 3 plus the corners found while writing the tokenizer."""
    u = lambda s: s.encode("utf-8")
    c = []
    add = lambda name, b: c.append((name, b if isinstance(b, bytes) else u(b)))
    # empty, whitespace, punctuation only
    add("empty", "")
    for i, s in enumerate([" ", "   ", "\t", "\n", "\r", "\r\n", " \t\r\n ", "\u00a0", "\u3000", "\u2028\u2029",
                           "\u2000\u2001\u2002\u200a", "\u1680x\u1680", "\u202f\u205f"]):
        add("whitespace_%d" % i, s)
    for i, s in enumerate(["!", "!!!", "...", "?!?!", "()[]{}", "\"'`", "@#$%^&*", "-_=+", "/\\|", "<>,.;:",
                           "~", "¡¿", "«»", "“”‘’", "—–‐", "…", "•·", "§¶", "〔〕【】", "、。", "！？", "‼⁉",
                           "†‡", "※", "‰‱", "′″"]):
        add("punct_%d" % i, s)
    # plain text, case
    for i, s in enumerate(["hello world", "Hello World", "HELLO WORLD", "hElLo WoRlD", "don't stop", "it's 5 o'clock",
                           "e.g. i.e. etc.", "U.S.A.", "state-of-the-art", "snake_case_name", "CamelCaseName",
                           "x", "a b c d e f g", "The quick brown fox jumps over the lazy dog.",
                           "unaffable", "unbelievably", "tokenization", "supercalifragilisticexpialidocious",
                           "antidisestablishmentarianism", "pneumonoultramicroscopicsilicovolcanoconiosis"]):
        add("text_%d" % i, s)
    # accents and combining marks
    for i, s in enumerate(["café", "cafe\u0301", "naïve", "Ångström", "Å", "\u212b", "résumé", "crème brûlée",
                           "São Paulo", "Zürich", "ñandú", "Łódź", "Dvořák", "Ærøskøbing", "straße", "ﬁnance ﬂow",
                           "e\u0301\u0301\u0301", "\u0301start", "a\u0323\u0302", "a\u0302\u0323", "\u1ea5",
                           "x\u20dd", "o\u0308\u0332", "İstanbul", "ıi", "ΑΒΓ αβγ", "ΟΔΥΣΣΕΥΣ", "ὀδυσσεύς",
                           "Ünïcödé", "\u0041\u030a\u0323", "ǅ ǈ ǋ", "Ⅻ", "ｆｕｌｌｗｉｄｔｈ", "ＡＢＣ", "ﾊﾟ",
                           "\u1fef", "\u037e", "\u0387", "\u1ffd", "\u2126", "K", "\u00b5", "\u00aa\u00ba",
                           "\U0001d165\U0001d16d\U0001d165", "\U0001d16d\U0001d165", "a\U0001d16d\u0301\U0001d165",
                           "\u0e01\u0e34\u0e48", "हिन्दी", "नमस्ते", "العربية", "עִבְרִית", "Tiếng Việt",
                           "Ελληνικά", "русский язык", "ЁЖИК", "ქართული", "հայերեն", "ᏣᎳᎩ"]):
        add("accent_%d" % i, s)
    # CJK, Hangul, Japanese
    for i, s in enumerate(["東京", "中文字符", "我爱你", "日本語のテキスト", "ひらがな", "カタカナ", "한국어", "안녕하세요",
                           "漢字kanji混合", "\uf900\uf901", "\U00020000\U0002a6df", "\U0002b820", "\U0002ceaf",
                           "\U00030000", "\u3400\u4dbf", "\u9fff", "\u2f00\u2e80", "ㄱㄴㄷ", "ｶﾀｶﾅ", "１２３",
                           "中,文", "中 文", "a中b"]):
        add("cjk_%d" % i, s)
    # emoji
    for i, s in enumerate(["😀", "hi 😀!", "👍🏽", "👨\u200d👩\u200d👧", "🇩🇪", "❤️", "☺", "🥲", "🫠", "🪿",
                           "1️⃣", "🏳️\u200d🌈", "emoji😀inside", "😀😀😀", "♠♣♥♦", "©®™"]):
        add("emoji_%d" % i, s)
    # zero-width, bidi, format controls
    for i, s in enumerate(["zero\u200bwidth", "zero\u200cnon\u200djoiner", "\ufeffbom", "a\u2060b", "\u200e\u200fltr",
                           "\u202aembed\u202c", "\u202eoverride", "\u2066isolate\u2069", "soft\u00adhyphen",
                           "\u061carabic mark", "\u180e", "a\u034fb", "\ufe0fvs", "tag\U000e0041\U000e007f",
                           "\U000f0000private", "\ue000\uf8ff", "\U00100000"]):
        add("format_%d" % i, s)
    # tabs, CR, LF inside
    for i, s in enumerate(["a\tb", "a\rb", "a\nb", "a\r\nb", "line1\nline2\nline3", "\ttab start", "end tab\t",
                           "cr\rcr\r", "mixed \t\r\n ws"]):
        add("ws_inside_%d" % i, s)
    # U+FFFD and control characters
    for i, s in enumerate(["\ufffd", "a\ufffdb", "\ufffd\ufffd", "x\x00y", "\x00", "\x01\x02\x03", "bell\x07",
                           "\x0bvt\x0cff", "\x1b[31mred\x1b[0m", "\x7fdel", "\x85nel", "\x80\x9f c1",
                           "\x1c\x1d\x1e\x1f", "a\x08b", "esc\x1b"]):
        add("control_%d" % i, s)
    # long words around max_input_chars_per_word = 100 (counted in characters)
    for n in (99, 100, 101, 150, 500):
        add("long_a_%d" % n, "a" * n)
        add("long_e_acute_%d" % n, "é" * n)
    add("long_decomposed_100", "e\u0301" * 100)  # 200 code points before stripping, 100 after
    add("long_decomposed_51", "e\u0301" * 51)
    add("long_cjk_200", "中" * 200)
    add("long_mixed", "x" * 120 + " short " + "y" * 101 + ".")
    add("long_punct_split", ("a" * 60 + "-") * 3)
    add("long_emoji_word", "😀" * 101)
    add("long_ascii_then_accent", "a" * 99 + "é")
    add("long_istanbul", "İ" * 60)
    # digits and currency
    for i, s in enumerate(["12345", "3.14159", "1,000,000", "-42", "+1 (555) 123-4567", "$100", "€50", "£20.00", "¥1000",
                           "₹500", "₿0.5", "100%", "1st 2nd 3rd", "0x1F", "1e10", "١٢٣", "۴۵۶", "४२", "½ ¾ ⅓",
                           "²³¹", "①②③", "2024-01-31T12:00:00Z", "12:30pm", "£1.50/min", "£££"]):
        add("digits_%d" % i, s)
    # URLs and e-mail addresses
    for i, s in enumerate(["https://www.example.com/path?q=1&r=2#frag", "http://t.co/abc123", "www.google.com",
                           "ftp://files.example.org/pub/", "user@example.com", "first.last+tag@sub.domain.co.uk",
                           "<mailto:someone@x.org>", "http://例え.jp/パス", "https://user:pass@host:8080/",
                           "call 09061701461 or txt WIN to 87121", "visit http://www.sms.ac/u/bellatw"]):
        add("url_%d" % i, s)
    # "##" and special literals
    for i, s in enumerate(["##", "##ing", "a##b", "# # #", "###", "####word", "##s"]):
        add("hashes_%d" % i, s)
    for i, s in enumerate(["[CLS]", "hello [CLS] world", "[SEP]", "[PAD][PAD]", "[MASK]", "[UNK]", "[cls]", "[CLS",
                           "CLS]", "[ CLS ]", "a[CLS]b", "[CLS][SEP][MASK]", "[[CLS]]", "x [MASK] y [SEP] z",
                           "[CLS]\u0301", "\u00e9[SEP]\u0301", "[UNKNOWN]", "[MASKED]", "[Cls]", "\ufeff[CLS]"]):
        add("special_%d" % i, s)
    # invalid UTF-8
    bad = [b"caf\xe9 au", b"\xff", b"\xfe\xff", b"\x80", b"\xbf\x80", b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\xaf",
           b"\xe0\x9f\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf0\x80\x80\x80", b"\xf0\x8f\xbf\xbf",
           b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82", b"\xe2\x82x", b"\xe2x\x82",
           b"\xf0\x9f\x98", b"\xf0\x9f\x98x", b"abc\xf0\x9f", b"\xc3", b"a\xc3", b"\xc3\xc3\xa9", b"\xe9t\xe9",
           b"ok \xe2\x80\x99 ok", b"\x00\xff\x00", b"word\xa0word", b"\xa3100", b"hello\x92s", b"\xf4\x8f\xbf\xbf",
           b"\xef\xbf\xbd", b"\xef\xbb\xbfbom", b"[CLS\xff]", b"[CLS]\xff", b"\xc2\x85next", b"\xc2\xa0nbsp"]
    for i, b in enumerate(bad):
        add("invalid_utf8_%d" % i, b)
    # code points where utf8proc (Unicode 15) and HF's tables differ (see src/unicode_exceptions.h)
    for i, s in enumerate(["a\u2e5db", "x\u061dy", "\u0890\u0891", "a\u08ca", "\u166dx", "\u1734", "\u1ac0",
                           "\u2e4e\u2e4f", "\ua7cb", "\u1c89", "\U00010d50", "\U0001f972 smile", "\u31ef",
                           "\U00011f00", "\U0001e030", "x\u0c3cy", "\ua7c0\ua7c1", "\u2c2f\u2c5f", "\U00010780"]):
        add("unicode_version_%d" % i, s)
    return c


def random_cases(n, seed):
    """Seeded random mixtures of the pieces above (bytes), to catch interactions."""
    rnd = random.Random(seed)
    pieces = ["a", "Z", "é", "e\u0301", " ", "\t", "\r", "\n", ".", ",", "!", "-", "[CLS]", "[SEP]", "##", "中", "한",
              "😀", "\u200b", "\ufffd", "\x00", "\x07", "İ", "ß", "ﬁ", "1", "£", "http://x.y", "@", "Ö", "\u0301",
              "\U0001d16d", "\U0001d165", "\u2e5d", "\uf900"]
    raw = [b"\xff", b"\xe2\x82", b"\xc3", b"\x80", b"\xf0\x9f"]
    out = []
    for k in range(n):
        parts = []
        for _ in range(rnd.randint(1, 25)):
            if rnd.random() < 0.1:
                parts.append(rnd.choice(raw))
            else:
                parts.append(rnd.choice(pieces).encode("utf-8"))
        out.append(("random_%d" % k, b"".join(parts)))
    return out


def record(tok, norm, name, b, opts=None):
    text = b.decode("utf-8", errors="replace")
    r = {"name": name, "b64": base64.b64encode(b).decode("ascii"), "ids": tok.encode(text).ids}
    if opts is not None:
        r["opts"] = opts
    if not any(s in text for s in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]")):
        n = norm.normalize_str(text)
        words = [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(n)]
        r["norm"] = n
        if all(len(w) <= 100 for w in words):
            r["words"] = words
    return r


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=True) + "\n")
    print("wrote %s (%d cases)" % (os.path.relpath(path, ROOT), len(rows)), file=sys.stderr)


def make_cased_vocab(path, texts):
    """Specials, every character of the cased cases (alone and as ##piece) and a few cased words/pieces."""
    words = ["Hello", "hello", "HELLO", "World", "world", "The", "the", "Paris", "paris", "Zürich", "Zurich", "café",
             "cafe", "CAFÉ", "Straße", "He", "##llo", "##LLO", "##s", "##ing", "New", "York", "new", "USA", "İ",
             "Ångström", "Angstrom", "résumé", "resume", "東", "京", "##é", "##e", "naïve", "naive", "Ünïcödé",
             "Unicode", "##nicode", "U"]
    chars = set()
    for t in texts:
        for ch in t:
            chars.add(ch)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    seen = set(vocab)
    for w in words + sorted(chars) + ["##" + ch for ch in sorted(chars)]:
        if w.strip() and w not in seen and "\n" not in w and "\r" not in w and w == w.strip():
            seen.add(w)
            vocab.append(w)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default=os.path.expanduser(os.path.join(
        os.environ.get("TBERT_CACHE", "~/.cache/tbert"), "models", "minilm")))
    ap.add_argument("--sms", default=os.path.join(ROOT, "..", "shared", "data", "sms", "SMSSpamCollection"))
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    tok = hf_from_dir(args.model_dir)
    cases = edge_cases()
    cases += random_cases(120, seed=20261125)
    samples = [b.decode("utf-8", errors="replace") for _, b in cases]
    check_against_autotokenizer(tok, args.model_dir, samples)
    norm = tok.normalizer
    write_jsonl(os.path.join(OUT, "edge_cases.jsonl"), [record(tok, norm, n, b) for n, b in cases])

    # SMS corpus by line number
    with open(args.sms, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    texts = [ln.split(b"\t", 1)[1] if b"\t" in ln else ln for ln in lines]
    decoded = [t.decode("utf-8", errors="replace") for t in texts]
    encs = tok.encode_batch(decoded)
    with open(os.path.join(OUT, "sms_ids.txt"), "w") as f:
        f.write("# tokenizers %s, %s, ids of the text column of SMSSpamCollection by line number\n" %
                (tokenizers.__version__, os.path.basename(os.path.normpath(args.model_dir))))
        for i, e in enumerate(encs):
            f.write("%d\t%s\n" % (i + 1, " ".join(map(str, e.ids))))
    print("wrote tests/data/tokenizer/sms_ids.txt (%d lines)" % len(encs), file=sys.stderr)

    # cased vocabulary: lowercase=False (strip_accents follows it: off), plus strip_accents=True alone
    cased = [(n, b) for n, b in cases if not n.startswith("random_")][::2] + \
        [("cased_%d" % i, s.encode()) for i, s in enumerate(
            ["Hello World", "HELLO world", "Hello, World!", "New York USA", "Zürich café", "CAFÉ Straße", "İstanbul",
             "Ångström Å", "résumé naïve", "Ünïcödé", "東京 Paris", "HeLLo", "Hellos", "The the THE", "unknownword",
             "[CLS] Hello [SEP]", "caf\xe9".encode("latin1").decode("latin1")])]
    vocab_path = make_cased_vocab(os.path.join(OUT, "cased_vocab.txt"),
                                  [b.decode("utf-8", errors="replace") for _, b in cased])
    rows = []
    for opts in ({"lowercase": False, "strip_accents": False}, {"lowercase": False, "strip_accents": True},
                 {"lowercase": True, "strip_accents": False}):
        t = BertWordPieceTokenizer(vocab_path, lowercase=opts["lowercase"], strip_accents=opts["strip_accents"])
        n = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=opts["lowercase"],
                                       strip_accents=opts["strip_accents"])
        for name, b in cased:
            r = record(t, n, name, b, opts)
            rows.append(r)
    write_jsonl(os.path.join(OUT, "cased_cases.jsonl"), rows)


if __name__ == "__main__":
    main()
