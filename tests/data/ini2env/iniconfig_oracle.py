"""Differential-test oracle: parse each file named on stdin (one path per
line) with Python's iniconfig, the way the chatmail relay reads its
chatmail.ini, and print one JSON result per file."""
import json
import sys

import iniconfig

for path in sys.stdin.read().splitlines():
    try:
        cfg = iniconfig.IniConfig(path)
        out = {"ok": [[name, list(cfg.sections[name].items())] for name in cfg.sections]}
    except iniconfig.ParseError as e:
        out = {"line": e.lineno + 1}
    except UnicodeDecodeError as e:
        out = {"offset": e.start}
    print(json.dumps(out))
