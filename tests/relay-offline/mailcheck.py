#!/usr/bin/python3
"""What a user checks on a fresh relay, as a mail client would (tests only).

Talks to the relay on this host's ports with Python's own clients and prints
one JSON object: the web page's <title>, two accounts made with POST /new,
the messages A -> B over 587 (STARTTLS + login; Postfix's queue id
for it, to find its DKIM signing in the log) and 465 (TLS + login), one
from an outside sender on 25 with STARTTLS, whether 25 without STARTTLS is
refused, and the Message-IDs found in B's INBOX over IMAP 993.

Usage: mailcheck.py HOST
       mailcheck.py HOST --read ADDR:PASSWORD [--wait-ids ID1,ID2,...]
       mailcheck.py HOST --page
The relay's certificate is self-signed in these tests: not verified.
"""
import argparse
import imaplib
import json
import re
import smtplib
import ssl
import sys
import time
import urllib.request
import uuid

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


def message(sender, to, msgid):
    # The relay replaces the subject of submitted mail ("[...]"): messages
    # are told apart by their Message-ID.
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: test\r\n"
            f"Message-ID: <{msgid}>\r\n"
            "Content-Type: text/plain\r\n\r\nhello\r\n").encode()


def send_587(host, a, b, msgid):
    """Returns Postfix's queue id, to find the message in the relay's log."""
    with smtplib.SMTP(host, 587, timeout=30) as s:
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


def send_25(host, b, msgid):
    sender = "someone@outside.example"
    with smtplib.SMTP(host, 25, timeout=30) as s:
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


def wait_ids(host, acct, wanted, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        got = inbox_ids(host, acct)
        if all(w in got for w in wanted) or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("--read", metavar="ADDR:PASSWORD", help="only list the Message-IDs in this account's INBOX")
    p.add_argument("--wait-ids", default="", help="with --read: wait until these Message-IDs arrive")
    p.add_argument("--page", action="store_true", help="only fetch the relay's web page")
    args = p.parse_args()
    if args.page:
        with urllib.request.urlopen(f"https://{args.host}/", context=CTX, timeout=30) as r:
            print(json.dumps({"body": r.read().decode("utf-8", "replace")}))
        return 0
    if args.read:
        email, _, password = args.read.partition(":")
        acct = {"email": email, "password": password}
        wanted = [i for i in args.wait_ids.split(",") if i]
        print(json.dumps({"inbox": wait_ids(args.host, acct, wanted)}))
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
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
