#!/usr/bin/env python3
"""Independent checker for `migrate` tests: walks trees with os.lstat only.

  migrate_check.py compare SRC DST   exit 0 when DST is an exact copy of SRC
  migrate_check.py digest ROOT       print one SHA-256 over every entry's
                                     content and metadata incl. ctime (not atime)

Compared per entry: type, permission bits (incl. setuid/setgid/sticky),
numeric uid/gid, mtime in ns, size, symlink target, xattrs, content, and the
hard-link structure (paths sharing an inode share one on the other side).
"""
import hashlib
import os
import stat
import sys


def entries(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = p
    out["."] = root
    return out


def describe(path):
    st = os.lstat(path)
    d = {
        "type": stat.S_IFMT(st.st_mode),
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mtime_ns": st.st_mtime_ns,
    }
    if stat.S_ISLNK(st.st_mode):
        d["target"] = os.readlink(path)
        del d["mode"]  # symlink permission bits are meaningless on Linux
    else:
        try:
            names = sorted(os.listxattr(path, follow_symlinks=False))
            d["xattrs"] = [(n, os.getxattr(path, n, follow_symlinks=False)) for n in names]
        except OSError:
            d["xattrs"] = []
    if stat.S_ISREG(st.st_mode):
        d["size"] = st.st_size
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        d["sha256"] = h.hexdigest()
    return d, (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def compare(src, dst):
    s, d = entries(src), entries(dst)
    problems = []
    for rel in sorted(set(s) - set(d)):
        problems.append(f"{rel}: missing at the copy")
    for rel in sorted(set(d) - set(s)):
        problems.append(f"{rel}: extra at the copy")
    s_inode, d_inode = {}, {}
    for rel in sorted(set(s) & set(d)):
        a, ai = describe(s[rel])
        b, bi = describe(d[rel])
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                problems.append(f"{rel}: {k} {a.get(k)!r} != {b.get(k)!r}")
        if ai and bi:
            s_inode.setdefault(ai, set()).add(rel)
            d_inode.setdefault(bi, set()).add(rel)
    groups_s = sorted(sorted(g) for g in s_inode.values())
    groups_d = sorted(sorted(g) for g in d_inode.values())
    if groups_s != groups_d:
        problems.append("hard-link groups differ")
    for p in problems[:50]:
        print(p)
    links = sum(1 for g in groups_s if len(g) > 1)
    print(f"compared {len(s)} entries, {links} hard-link groups, {len(problems)} differences")
    return 1 if problems else 0


def digest(root):
    h = hashlib.sha256()
    inodes = {}
    for rel, p in sorted(entries(root).items()):
        d, ino = describe(p)
        # ctime moves on any change of content or metadata, never on reads:
        # an unchanged ctime proves the tree was only read.
        d["ctime_ns"] = os.lstat(p).st_ctime_ns
        if ino:
            inodes.setdefault(ino, []).append(rel)
        h.update(repr((rel, sorted(d.items()))).encode())
    h.update(repr(sorted(sorted(g) for g in inodes.values())).encode())
    print(h.hexdigest())
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    if len(sys.argv) == 3 and sys.argv[1] == "digest":
        sys.exit(digest(sys.argv[2]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
