#!/usr/bin/env python3
"""Builds a mail set of N messages for the memory benchmark by cycling the shared SpamAssassin corpus.

usage: make_mail_set.py CORPUS_DIR N OUT_DIR  ->  OUT_DIR/ham.mbox, OUT_DIR/spam.mbox

Copy k of a message (k = 0, 1, ... each time the corpus wraps around) gets " c<k>" appended to its Subject
(a Subject "c<k>" when it has none) and a first body line "copy <k>" when it is a single-part message, so
that every message's text, and therefore its feature row, differs. Ham comes from easy_ham, easy_ham_2 and
hard_ham, spam from spam and spam_2, in the corpus's proportion (4150 : 1896); message i of a class is file
(i * 7919) mod (files of the class) in byte-sorted order, so a small set samples the whole corpus.
Written as mboxrd (body lines matching ^>*From  get one more '>')."""
import os, re, sys

def files(corpus, subs):
    out = []
    for s in subs:
        d = os.path.join(corpus, s)
        out += [os.path.join(d, f) for f in sorted(os.listdir(d)) if not f.startswith('cmds')]
    return out

def perturb(raw, k):
    lines = raw.split(b'\n')
    if lines and lines[0].startswith(b'From '):
        lines = lines[1:]
    try:
        end = lines.index(b'')
    except ValueError:
        end = len(lines)
    head, body = lines[:end], lines[end:]
    tag = b' c%d' % k
    done, multipart = False, False
    for i, l in enumerate(head):
        if l[:8].lower() == b'subject:' and not done:
            j = i
            while j + 1 < len(head) and head[j + 1][:1] in (b' ', b'\t'):
                j += 1
            head[j] = head[j] + tag
            done = True
        if l[:13].lower() == b'content-type:' and b'multipart' in l.lower():
            multipart = True
    if not done:
        head.append(b'Subject: c%d' % k)
    if not multipart:
        body = [b'', b'copy %d' % k] + body[1:] if body else [b'', b'copy %d' % k]
    return head + body

def main():
    corpus, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ham = files(corpus, ['easy_ham', 'easy_ham_2', 'hard_ham'])
    spam = files(corpus, ['spam', 'spam_2'])
    n_spam = round(n * len(spam) / (len(ham) + len(spam)))
    os.makedirs(out, exist_ok=True)
    for name, src, count in (('ham', ham, n - n_spam), ('spam', spam, n_spam)):
        with open(os.path.join(out, name + '.mbox'), 'wb') as f:
            for i in range(count):
                k = i // len(src)
                p = (i * 7919) % len(src)  # 7919 is prime to both folder sizes: any N samples the whole corpus
                raw = open(src[p], 'rb').read()
                f.write(b'From bench@example.org Thu Jan  1 00:00:00 2002\n')
                for l in perturb(raw, k):
                    if re.match(rb'^>*From ', l):
                        l = b'>' + l
                    f.write(l + b'\n')
                f.write(b'\n')

if __name__ == '__main__':
    main()
