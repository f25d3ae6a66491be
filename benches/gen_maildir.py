#!/usr/bin/env python3
"""Generate a bare-metal chatmail host tree for the migrate benchmark.

  gen_maildir.py create ROOT FILES MIB   maildirs with FILES messages, ~MIB MiB
                                         in total, 1% hard links, plus
                                         /etc/dkimkeys, /var/lib/acme and
                                         chatmail.ini under ROOT
  gen_maildir.py change ROOT PERCENT     rewrite PERCENT% of the messages and
                                         add/delete a few (what a relay does
                                         between pre-sync and stop)

Sizes follow a skewed distribution like real mail (mostly small, a few large
attachments), scaled so the total is close to MIB. Deterministic (seeded).
"""
import os
import random
import sys

DOMAIN = "example.org"
VMAIL = 998


def write(path, data, mode=0o600, uid=VMAIL, gid=VMAIL):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    os.lchown(path, uid, gid)


def create(root, files, mib):
    rnd = random.Random(42)
    os.makedirs(root, exist_ok=True)
    write(f"{root}/usr/local/lib/chatmaild/chatmail.ini",
          f"[params]\nmail_domain = {DOMAIN}\n".encode(), 0o644, 0, 0)
    write(f"{root}/etc/dkimkeys/opendkim.private", os.urandom(1704), 0o600, 105, 108)
    write(f"{root}/etc/dkimkeys/opendkim.txt", b"v=DKIM1; k=rsa; p=MII\n", 0o644, 105, 108)
    cert = "c" * 52
    for f in ("cert", "chain", "fullchain"):
        write(f"{root}/var/lib/acme/certs/{cert}/{f}", os.urandom(2000), 0o644, 0, 0)
    write(f"{root}/var/lib/acme/keys/k/privkey", os.urandom(1675), 0o600, 0, 0)
    os.makedirs(f"{root}/var/lib/acme/live", exist_ok=True)
    os.symlink(f"../certs/{cert}", f"{root}/var/lib/acme/live/{DOMAIN}")

    weights = [rnd.paretovariate(1.3) for _ in range(files)]
    scale = mib * 1024 * 1024 / sum(weights)
    users = max(1, files // 200)
    paths = []
    for i, w in enumerate(weights):
        user = f"{root}/home/vmail/mail/{DOMAIN}/user{i % users:04d}@{DOMAIN}"
        sub = "new" if i % 10 == 0 else "cur"
        size = max(300, int(w * scale))
        p = f"{user}/{sub}/{1700000000 + i}.M{i}P1.relay,S={size}:2,S"
        write(p, os.urandom(size))
        paths.append(p)
    for u in range(users):
        user = f"{root}/home/vmail/mail/{DOMAIN}/user{u:04d}@{DOMAIN}"
        os.makedirs(f"{user}/tmp", exist_ok=True)
        write(f"{user}/password", b"$6$salt$hash\n")
        write(f"{user}/dovecot.index", os.urandom(8192))
        write(f"{user}/dovecot-uidlist", b"3 V1 N1\n")
    for i in range(0, files, 100):  # 1% hard links: one message, two users
        other = paths[(i + 1) % len(paths)]
        link = os.path.join(os.path.dirname(other), f"1690000000.L{i}.relay:2,S")
        os.link(paths[i], link)
    for dirpath, dirnames, _ in os.walk(f"{root}/home/vmail"):
        os.lchown(dirpath, VMAIL, VMAIL)
        os.chmod(dirpath, 0o700)


def change(root, percent):
    rnd = random.Random(7)
    msgs = []
    for dirpath, _, filenames in os.walk(f"{root}/home/vmail/mail"):
        if dirpath.endswith(("/cur", "/new")):
            msgs.extend(os.path.join(dirpath, f) for f in filenames)
    msgs.sort()
    n = max(1, len(msgs) * percent // 100)
    picked = rnd.sample(msgs, n)
    third = n // 3
    for p in picked[:third]:  # flags changed: renamed new -> cur / :2,S -> :2,RS
        os.rename(p, p + "R")
    for p in picked[third:2 * third]:  # expunged
        os.unlink(p)
    for i, p in enumerate(picked[2 * third:]):  # new deliveries
        d = os.path.dirname(p)
        write(os.path.join(d, f"1800000000.N{i}.relay:2,"), os.urandom(rnd.randint(2000, 60000)))
    print(f"changed {n} of {len(msgs)} messages")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "create":
        create(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif len(sys.argv) == 4 and sys.argv[1] == "change":
        change(sys.argv[2], int(sys.argv[3]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
