#!/usr/bin/env python3
"""Writes the hand-made test messages of tests/test_mail.c (run from this folder). Bytes are spelled out
here so that every charset and line ending is exactly what the test expects; the expected decoded texts
live in tests/test_mail.c."""
import base64, os

def w(name, data):
    os.makedirs(os.path.dirname(name) or ".", exist_ok=True)
    with open(name, "wb") as f:
        f.write(data)

H = b"From: Alice <alice@example.org>\nTo: bob@example.net\nDate: Mon, 2 Sep 2002 10:00:00 +0000\n"

# 1. ISO-8859-1, quoted-printable with a soft line break
w("qp_latin1.eml", H + b"Subject: latin1\nMessage-ID: <qp1@example.org>\nMIME-Version: 1.0\n"
  b"Content-Type: text/plain; charset=\"iso-8859-1\"\nContent-Transfer-Encoding: quoted-printable\n\n"
  b"Caf=E9 cr=E8me br=FBl=E9e, soft=\nbreak here.\nEquals =3D sign=20\n")

# 2. Windows-1252, 8bit: curly quotes, euro, en dash
w("cp1252_8bit.eml", H + b"Subject: cp1252\nMIME-Version: 1.0\nContent-Type: text/plain; charset=windows-1252\n"
  b"Content-Transfer-Encoding: 8bit\n\n\x93Smart quotes\x94 cost \x80 5 \x96 today\n")

# 3. UTF-8 in base64
w("utf8_base64.eml", H + b"Subject: utf8\nMIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n"
  b"Content-Transfer-Encoding: base64\n\n" +
  base64.encodebytes("Grüße aus München — ✓ 日本\nSecond line\n".encode("utf-8")))

# 4. Shift_JIS, 8bit body; ISO-2022-JP encoded-word subject
w("shift_jis.eml", H + b"Subject: =?ISO-2022-JP?B?" + base64.b64encode("件名".encode("iso2022_jp")) + b"?=\n"
  b"MIME-Version: 1.0\nContent-Type: text/plain; charset=Shift_JIS\nContent-Transfer-Encoding: 8bit\n\n" +
  "こんにちは世界\n".encode("shift_jis"))

# 5. RFC 2047 headers: two adjacent encoded words (the space between them vanishes), Q and B
w("rfc2047.eml", b"From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <jm@Mail.Example.DE>\nTo: x@example.net\n"
  b"Subject: =?UTF-8?B?" + base64.b64encode("Grüße ".encode()) + b"?= =?ISO-8859-1?Q?und_Caf=E9?= !\n"
  b"X-Mailer: Microsoft Outlook Express 6.00.2600.0000\nMIME-Version: 1.0\nContent-Type: text/plain\n\nhello\n")

# 6. multipart/alternative: the text/plain part wins
w("alternative.eml", H + b"Subject: alt\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=\"b1\"\n\n"
  b"This is a multi-part message in MIME format.\n--b1\nContent-Type: text/plain; charset=us-ascii\n\n"
  b"Plain version.\n--b1\nContent-Type: text/html; charset=us-ascii\n\n<p>HTML <b>version</b>.</p>\n--b1--\n")

# 7. nested multipart: mixed[ alternative[ plain (QP), related[ html, image ] ], pdf attachment, text attachment ]
w("nested.eml", H + b"Subject: nested\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"outer\"\n\n"
  b"--outer\nContent-Type: multipart/alternative; boundary=\"inner\"\n\n"
  b"--inner\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
  b"Nested plain =E2=82=AC100.\n"
  b"--inner\nContent-Type: multipart/related; boundary=\"rel\"\n\n"
  b"--rel\nContent-Type: text/html\n\n<html><body>Nested HTML</body></html>\n"
  b"--rel\nContent-Type: image/gif\nContent-Transfer-Encoding: base64\n\nR0lGODlhAQABAAAAACw=\n--rel--\n"
  b"--inner--\n"
  b"--outer\nContent-Type: application/pdf; name=\"a.pdf\"\nContent-Disposition: attachment; filename=\"a.pdf\"\n"
  b"Content-Transfer-Encoding: base64\n\nJVBERi0xLjQK\n"
  b"--outer\nContent-Type: text/plain; name=\"notes.txt\"\nContent-Disposition: attachment; filename=\"notes.txt\"\n\n"
  b"attached notes must not appear\n--outer--\n")

# 8. HTML only: scripts, styles, comments dropped; entities decoded; blocks give line breaks
w("html_only.eml", H + b"Subject: html\nMIME-Version: 1.0\nContent-Type: text/html; charset=iso-8859-1\n"
  b"Content-Transfer-Encoding: quoted-printable\n\n"
  b"<html><head><title>T</title><style>p {color: red}</style></head>\n<body><script>var x = 1;</script>\n"
  b"<p>First&nbsp;paragraph &amp; more</p><!-- hidden comment --><div>Second   line<br>Third =\nline caf=E9</div>\n"
  b"<img src=\"x.gif\" alt=\"Buy now\"><table><tr><td>cell one</td><td>cell two</td></tr></table>\n</body></html>\n")

# 9. attachment only
w("attachment_only.eml", H + b"Subject: att\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"zz\"\n\n"
  b"--zz\nContent-Type: application/octet-stream; name=\"x.bin\"\nContent-Disposition: attachment; filename=\"x.bin\"\n"
  b"Content-Transfer-Encoding: base64\n\nAAECAwQF\n--zz--\n")

# 10. broken boundaries: (a) the closing boundary is missing (truncated), (b) the declared boundary never occurs
w("broken_truncated.eml", H + b"Subject: broken a\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"cut\"\n\n"
  b"--cut\nContent-Type: text/plain\n\nSurvives truncation.\n--cut\nContent-Type: text/html\n\n<p>never clo")
w("broken_boundary.eml", H + b"Subject: broken b\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"declared\"\n\n"
  b"--other\nContent-Type: text/plain\n\nText under the wrong boundary.\n--other--\n")

# 11. CRLF line ends throughout, QP soft breaks with CRLF
w("crlf.eml", (H + b"Subject: crlf\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
  b"Content-Transfer-Encoding: quoted-printable\n\nLine one=\nstill one.\nLine two.\n").replace(b"\n", b"\r\n"))

# 12. invalid base64, NUL bytes, unknown charset
w("bad_bytes.eml", H + b"Subject: bad\nMIME-Version: 1.0\nContent-Type: text/plain; charset=x-no-such-charset\n"
  b"Content-Transfer-Encoding: base64\n\n" + base64.b64encode(b"ok \xc3\xa9 nul\x00here bad\xff") + b"\n!!!!\n")

# 13. mboxrd with three messages: >From unescaping, a body "From " line that is not a separator
w("three.mbox",
  b"From alice@example.org Mon Sep  2 10:00:00 2002\n" + H + b"Subject: one\nMessage-ID: <m1@x>\n\nFirst body.\n\n"
  b"From bob@example.org Tue Sep  3 11:00:00 2002\nFrom: bob@example.org\nSubject: two\nMessage-ID: <m2@x>\n\n"
  b">From the desk of Bob.\n>>From quoted twice.\nFrom here on, not a separator (no blank line, no weekday).\n\n"
  b"From carol@example.org Wed Sep  4 12:00:00 2002\nFrom: carol@example.org\nSubject: three\n\nThird body.\n")

# 14. Maildir: cur/ and new/ are read, tmp/ (deliveries in progress) is not
w("maildir/cur/1000.a:2,S", b"From: a@example.org\nSubject: cur one\n\nin cur\n")
w("maildir/new/1001.b", b"From: b@example.org\nSubject: new one\n\nin new\n")
w("maildir/tmp/1002.c", b"From: c@example.org\nSubject: tmp\n\nin tmp, must be skipped\n")
