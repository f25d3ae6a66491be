#!/usr/bin/python3
"""What a user checks on a fresh relay, as a mail client would (tests only).

Talks to the relay on this host's ports with Python's own clients and prints
one JSON object: the web page's <title>, two accounts made with POST /new,
the messages A -> B over 587 (STARTTLS + login; Postfix's queue id
for it, to find its DKIM signing in the log) and 465 (TLS + login), one
from an outside sender on 25 with STARTTLS, whether 25 without STARTTLS is
refused, and the Message-IDs found in B's INBOX over IMAP 993.

The messages are what Delta Chat sends, as the relay's filtermail demands:
OpenPGP-encrypted (PGP/MIME, RFC 3156: multipart/encrypted with a
"Version: 1" part and the armored message) to B's and A's keys, with an
Autocrypt header carrying A's key. GnuPG (`gpg`) makes the keys and
encrypts; B's copy read back over IMAP is decrypted with B's key. The
outside sender on 25 has an address at an IP literal (an IPv4-only relay's
user): its mail needs no DKIM key in DNS, which these tests cannot publish.
What filtermail must refuse is tried too and reported under "refused":
plain text from A to B (523 Encryption Needed), encrypted mail whose From
is not A's address (500 Invalid FROM), and on 25 encrypted mail from a
domain that did not sign it (554 No DKIM signature found). (Plain text
from outside is B's choice: refused only when B asked for that.)

With --flow, it is the mail flow of the fault tests: two new accounts,
then until the file --stop names exists, every --every seconds one
message from the outside sender on 25 (STARTTLS) and one from A on 587,
both to B, and a look at IMAP's greeting on 993. Every attempt is written
down with its time (Unix seconds) and outcome; a message counts as
accepted only when DATA answered 250. At the end the record is written
(atomically) to the file --flow names, with B's login to read the INBOX.
A refused or failed attempt is part of the record, never an error: the
relay is expected to be away for a while during a fault.

Usage: mailcheck.py HOST
       mailcheck.py HOST --read ADDR:PASSWORD [--wait-ids ID1,ID2,...] [--wait-timeout SECS]
       mailcheck.py HOST --page
       mailcheck.py HOST --flow OUT --stop FILE [--every SECS]
The relay's certificate is self-signed in these tests: not verified.
"""
import argparse
import atexit
import base64
import email
import imaplib
import json
import os
import re
import shutil
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from email.utils import formatdate

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


def page_title(host):
    with urllib.request.urlopen(f"https://{host}/", context=CTX, timeout=30) as r:
        body = r.read().decode("utf-8", "replace")
    m = re.search(r"<title>(.*?)</title>", body, re.S | re.I)
    return m.group(1).strip() if m else None


def new_account(host):
    req = urllib.request.Request(f"https://{host}/new", method="POST", data=b"")
    with urllib.request.urlopen(req, context=CTX, timeout=30) as r:
        return json.loads(r.read())


SECRET = "hello from an end-to-end test"
# The outside sender: a user of an IPv4-only relay (no DKIM lookup).
OUTSIDE = "someone@[192.0.2.1]"


class Keys:
    """A throwaway GnuPG home with a key for each address used."""

    def __init__(self):
        self.home = tempfile.mkdtemp(prefix="mailcheck-gnupg.")
        self.made = set()

    def gpg(self, *args, data=None):
        r = subprocess.run(["gpg", "--homedir", self.home, "--batch", "--quiet",
                            "--no-tty", "--pinentry-mode", "loopback", "--passphrase", "",
                            *args], input=data, capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"gpg {args[0]}: {r.stderr.decode(errors='replace')}")
        return r.stdout

    def key(self, addr):
        if addr not in self.made:
            # ed25519 signing key with a cv25519 encryption subkey, as
            # Delta Chat makes them.
            self.gpg("--quick-gen-key", f"<{addr}>", "future-default", "default", "never")
            self.made.add(addr)
        return addr

    def public(self, addr):
        return self.gpg("--export", f"<{self.key(addr)}>")

    def encrypt(self, data, recipients):
        args = ["--armor", "--encrypt", "--trust-model", "always"]
        for r in recipients:
            args += ["--recipient", f"<{self.key(r)}>"]
        return self.gpg(*args, data=data)

    def decrypt(self, armored):
        return self.gpg("--decrypt", data=armored)


    def close(self):
        subprocess.run(["gpgconf", "--homedir", self.home, "--kill", "all"], capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)


KEYS = None


def keys():
    global KEYS
    if KEYS is None:
        KEYS = Keys()
        atexit.register(KEYS.close)
    return KEYS


def crlf(text):
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


ENCRYPTED = {}


def encrypted_part(sender, to):
    """The armored text and the sender's key of a message from sender to
    to: made once per pair (only the Message-ID tells messages apart)."""
    if (sender, to) not in ENCRYPTED:
        k = keys()
        inner = crlf(f"Content-Type: text/plain; charset=utf-8; protected-headers=\"v1\"\n"
                     f"From: {sender}\nTo: {to}\nSubject: test\n\n{SECRET}\n")
        armored = k.encrypt(inner.encode(), [to, sender]).decode()
        keydata = base64.b64encode(k.public(sender)).decode()
        ENCRYPTED[(sender, to)] = (armored, keydata)
    return ENCRYPTED[(sender, to)]


def message(sender, to, msgid, from_header=None):
    """An encrypted message as Delta Chat sends it. The relay replaces the
    subject of submitted mail ("[...]"): messages are told apart by their
    Message-ID."""
    armored, keydata = encrypted_part(sender, to)
    folded = "\n ".join(keydata[i:i + 76] for i in range(0, len(keydata), 76))
    boundary = uuid.uuid4().hex
    text = (f"From: {from_header or sender}\nTo: {to}\nSubject: [...]\n"
            f"Date: {formatdate()}\nMessage-ID: <{msgid}>\n"
            "Chat-Version: 1.0\n"
            f"Autocrypt: addr={sender}; prefer-encrypt=mutual; keydata=\n {folded}\n"
            "MIME-Version: 1.0\n"
            f"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\n boundary=\"{boundary}\"\n"
            f"\n--{boundary}\n"
            "Content-Type: application/pgp-encrypted\n"
            "Content-Description: PGP/MIME version identification\n\nVersion: 1\n\n"
            f"--{boundary}\n"
            "Content-Type: application/octet-stream; name=\"encrypted.asc\"\n"
            "Content-Description: OpenPGP encrypted message\n"
            "Content-Disposition: inline; filename=\"encrypted.asc\";\n\n"
            f"{armored.strip()}\n\n--{boundary}--\n")
    return crlf(text).encode()


def plain_message(sender, to, msgid, from_header=None):
    return crlf(f"From: {from_header or sender}\nTo: {to}\nSubject: plain\n"
                f"Date: {formatdate()}\nMessage-ID: <{msgid}>\n"
                "Content-Type: text/plain\n\nnot encrypted\n").encode()


def refused(send):
    """The reply of a send the relay must refuse: "CODE text", or None when
    it was accepted."""
    try:
        send()
    except smtplib.SMTPResponseException as e:
        return f"{e.smtp_code} {e.smtp_error.decode(errors='replace')}"
    except smtplib.SMTPRecipientsRefused as e:
        code, text = next(iter(e.recipients.values()))
        return f"{code} {text.decode(errors='replace')}"
    return None


def submit(host, a, to, data):
    with smtplib.SMTP(host, 587, timeout=30) as s:
        s.starttls(context=CTX)
        s.login(a["email"], a["password"])
        s.sendmail(a["email"], [to], data)


def refusals(host, a, b, tag):
    out = {}
    out["plain_587"] = refused(lambda: submit(
        host, a, b["email"], plain_message(a["email"], b["email"], f"{tag}-plain@test")))
    out["forged_from_587"] = refused(lambda: submit(
        host, a, b["email"],
        message(a["email"], b["email"], f"{tag}-forged@test", from_header="someone@example.org")))

    def unsigned_25():
        sender = "someone@outside.example"
        with smtplib.SMTP(host, 25, timeout=30) as s:
            s.ehlo("outside.example")
            s.starttls(context=CTX)
            s.ehlo("outside.example")
            s.sendmail(sender, [b["email"]],
                       message(sender, b["email"], f"{tag}-unsigned25@test"))
    out["unsigned_25"] = refused(unsigned_25)
    return out


def send_587(host, a, b, msgid, timeout=30):
    """Returns Postfix's queue id, to find the message in the relay's log."""
    with smtplib.SMTP(host, 587, timeout=timeout) as s:
        s.starttls(context=CTX)
        s.login(a["email"], a["password"])
        s.mail(a["email"])
        s.rcpt(b["email"])
        code, reply = s.data(message(a["email"], b["email"], msgid))
        if code != 250:
            raise RuntimeError(f"587: DATA answered {code} {reply!r}")
        m = re.search(rb"queued as ([0-9A-Za-z]+)", reply)
        return m.group(1).decode() if m else None


def send_465(host, a, b, msgid):
    with smtplib.SMTP_SSL(host, 465, context=CTX, timeout=30) as s:
        s.login(a["email"], a["password"])
        s.sendmail(a["email"], [b["email"]], message(a["email"], b["email"], msgid))


def send_25(host, b, msgid, timeout=30):
    sender = OUTSIDE
    with smtplib.SMTP(host, 25, timeout=timeout) as s:
        s.ehlo("outside.example")
        s.starttls(context=CTX)
        s.ehlo("outside.example")
        s.sendmail(sender, [b["email"]], message(sender, b["email"], msgid))


def plain_25_refused(host, b):
    """The relay requires STARTTLS on 25: MAIL or RCPT is refused without."""
    with smtplib.SMTP(host, 25, timeout=30) as s:
        s.ehlo("outside.example")
        code, _ = s.mail("someone@outside.example")
        if code >= 400:
            return f"MAIL {code}"
        code, _ = s.rcpt(b["email"])
        if code >= 400:
            return f"RCPT {code}"
        return None


def inbox_ids(host, acct):
    with imaplib.IMAP4_SSL(host, 993, ssl_context=CTX, timeout=30) as m:
        m.login(acct["email"], acct["password"])
        m.select("INBOX")
        _, data = m.search(None, "ALL")
        ids = []
        for num in data[0].split():
            _, parts = m.fetch(num, "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            raw = parts[0][1].decode("utf-8", "replace")
            found = re.search(r"<([^>]*)>", raw)
            ids.append(found.group(1) if found else raw.strip())
        return ids


def decrypted(host, acct, msgid):
    """B's copy of a message, decrypted with B's key: its text."""
    with imaplib.IMAP4_SSL(host, 993, ssl_context=CTX, timeout=30) as m:
        m.login(acct["email"], acct["password"])
        m.select("INBOX")
        _, data = m.search(None, "HEADER", "Message-ID", f"<{msgid}>")
        nums = data[0].split()
        if not nums:
            return None
        _, parts = m.fetch(nums[0], "(BODY.PEEK[])")
        msg = email.message_from_bytes(parts[0][1])
        for part in msg.walk():
            if part.get_content_type() == "application/octet-stream":
                inner = keys().decrypt(part.get_payload(decode=True))
                return email.message_from_bytes(inner).get_payload(decode=True).decode().strip()
        return None


def wait_ids(host, acct, wanted, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        got = inbox_ids(host, acct)
        if all(w in got for w in wanted) or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def attempt(log, port, msgid, send):
    """One try of `send`, written down: accepted only when it returned."""
    t = time.time()
    try:
        send()
        log.append({"t": t, "port": port, "id": msgid, "ok": True})
    except (OSError, RuntimeError, smtplib.SMTPException, imaplib.IMAP4.error, ssl.SSLError) as e:
        log.append({"t": t, "port": port, "id": msgid, "ok": False,
                    "error": f"{type(e).__name__}: {e}"[:300]})


def imap_greets(host):
    with imaplib.IMAP4_SSL(host, 993, ssl_context=CTX, timeout=5):
        pass


def flow(host, out, stop, every):
    a, b = new_account(host), new_account(host)
    for acct in (a, b):
        inbox_ids(host, acct)
    # Made now: encrypting takes longer than a send.
    encrypted_part(a["email"], b["email"])
    encrypted_part(OUTSIDE, b["email"])
    tag = uuid.uuid4().hex[:8]
    log = []
    n = 0
    started = time.time()
    while not os.path.exists(stop):
        n += 1
        attempt(log, 25, f"{tag}-{n}-via-25@test", lambda: send_25(host, b, f"{tag}-{n}-via-25@test", timeout=5))
        attempt(log, 587, f"{tag}-{n}-via-587@test", lambda: send_587(host, a, b, f"{tag}-{n}-via-587@test", timeout=5))
        attempt(log, 993, None, lambda: imap_greets(host))
        time.sleep(every)
    record = {"a": a, "b": b, "started": started, "stopped": time.time(), "attempts": log}
    tmp = f"{out}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("--read", metavar="ADDR:PASSWORD", help="only list the Message-IDs in this account's INBOX")
    p.add_argument("--wait-ids", default="", help="with --read: wait until these Message-IDs arrive")
    p.add_argument("--wait-timeout", type=float, default=60, help="with --wait-ids: how long to wait (seconds)")
    p.add_argument("--page", action="store_true", help="only fetch the relay's web page")
    p.add_argument("--flow", metavar="OUT", help="send mail on 25 and 587 until --stop exists; the record to OUT")
    p.add_argument("--stop", metavar="FILE", help="with --flow: stop once this file exists")
    p.add_argument("--every", type=float, default=0.3, help="with --flow: seconds between rounds")
    args = p.parse_args()
    if args.flow:
        if not args.stop:
            p.error("--flow needs --stop FILE")
        flow(args.host, args.flow, args.stop, args.every)
        return 0
    if args.page:
        with urllib.request.urlopen(f"https://{args.host}/", context=CTX, timeout=30) as r:
            print(json.dumps({"body": r.read().decode("utf-8", "replace")}))
        return 0
    if args.read:
        email, _, password = args.read.partition(":")
        acct = {"email": email, "password": password}
        wanted = [i for i in args.wait_ids.split(",") if i]
        print(json.dumps({"inbox": wait_ids(args.host, acct, wanted, args.wait_timeout)}))
        return 0
    out = {"title": page_title(args.host)}
    a, b = new_account(args.host), new_account(args.host)
    out["a"], out["b"] = a, b
    # The relay creates an account at its first login.
    for acct in (a, b):
        inbox_ids(args.host, acct)
    tag = uuid.uuid4().hex[:8]
    ids = {port: f"{tag}-via-{port}@test" for port in ("587", "465", "25")}
    out["queue_id_587"] = send_587(args.host, a, b, ids["587"])
    send_465(args.host, a, b, ids["465"])
    send_25(args.host, b, ids["25"])
    out["sent"] = ids
    out["plain_25_refused"] = plain_25_refused(args.host, b)
    out["inbox"] = wait_ids(args.host, b, list(ids.values()))
    out["decrypted_587"] = decrypted(args.host, b, ids["587"])
    out["refused"] = refusals(args.host, a, b, tag)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
