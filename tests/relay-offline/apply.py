#!/usr/bin/python3
"""Make an unpacked chatmail relay deployable without internet (tests only).

Replaces exactly the relay's two download points and nothing else:

- `Deployer.download_executable()` in cmdeploy/src/cmdeploy/basedeploy.py
  (chatmail-turn, iroh-relay, mtail) installs a stand-in from
  `offline-standins/` in the relay tree instead of curl + sha256. filtermail
  has no stand-in: the real one reaches the relay through its own hook,
  CHATMAIL_FILTERMAIL_BINARY (built from source by tests/filtermail/build.sh,
  or by the image from relay/filtermail/); a download of it fails the
  deploy, naming the hook;
- `_download_dovecot_package()` in cmdeploy/src/cmdeploy/dovecot/deployer.py
  installs Debian's own dovecot packages (what the relay itself does on an
  architecture it has no packages for).

Usage: apply.py RELAY_DIR. Fails, naming the file, when the relay's code no
longer has the expected shape, so a new relay release cannot slip through
half-patched.
"""
import pathlib
import re
import shutil
import sys

HERE = pathlib.Path(__file__).resolve().parent

DOWNLOAD_EXECUTABLE = '''    def download_executable(self, url, dest, sha256sum, extract=None):
        # Offline test build: a local stand-in instead of the download.
        base = dest.rsplit("/", 1)[-1]
        name = {"chatmail-turn": "idle", "iroh-relay": "idle", "mtail": "idle"}.get(base)
        if name is None:
            raise RuntimeError(
                f"offline test build: {base} has no stand-in and cannot be downloaded"
                " (filtermail: set CHATMAIL_FILTERMAIL_BINARY, or put its source in relay/filtermail/)"
            )
        standin = os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "../../../offline-standins", name
        )
        server.shell(
            name=f"Install offline stand-in {dest}",
            commands=[f"install -m 755 {os.path.normpath(standin)} {dest}"],
        )
        self.need_restart = True
'''

DOVECOT = '''def _download_dovecot_package(package: str, arch: str) -> tuple[str | None, bool]:
    """Offline test build: Debian's own dovecot packages."""
    op = apt.packages(packages=[f"dovecot-{package}"])
    return None, bool(getattr(op, "changed", False))
'''


def replace_function(path, pattern, new):
    text = path.read_text(encoding="utf-8")
    # From the def line to the next line at the same or a lower indentation.
    m = re.search(pattern, text, re.M)
    if not m:
        sys.exit(f"{path}: no match for {pattern!r}; the relay changed, update {__file__}")
    indent = len(m.group(1))
    lines = text[m.end():].split("\n")
    end = m.end()
    for i, line in enumerate(lines[1:], 1):
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            end = m.end() + len("\n".join(lines[:i]))
            break
    else:
        end = len(text)
    path.write_text(text[: m.start()] + new + text[end:], encoding="utf-8")


def main(argv):
    if len(argv) != 2:
        sys.exit("usage: apply.py RELAY_DIR")
    relay = pathlib.Path(argv[1])
    src = relay / "cmdeploy/src/cmdeploy"
    replace_function(src / "basedeploy.py", r"^( *)def download_executable\(", DOWNLOAD_EXECUTABLE)
    replace_function(src / "dovecot/deployer.py", r"^( *)def _download_dovecot_package\(", DOVECOT)
    shutil.copytree(HERE / "standins", relay / "offline-standins", dirs_exist_ok=True)


if __name__ == "__main__":
    main(sys.argv)
