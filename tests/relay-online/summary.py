#!/usr/bin/python3
"""Each test of a pytest JUnit XML report with its outcome, as JSON (tests only).

Usage: summary.py REPORT.xml
Prints {"tests": [{"name": "test_x[param]", "file": "...", "outcome":
"passed|failed|skipped|error", "message": "..."}]}.
"""
import json
import sys
import xml.etree.ElementTree as ET


def main(path):
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or "").strip()
                break
        tests.append({
            "name": case.get("name"),
            "file": (case.get("classname") or "").replace(".", "/"),
            "outcome": outcome,
            "message": message[:500],
        })
    print(json.dumps({"tests": tests}))


if __name__ == "__main__":
    main(sys.argv[1])
