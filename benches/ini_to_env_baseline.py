"""Baseline for benches/ini2env.rs: the shape of the install guide's Python
converter (configparser -> KEY=value lines), run as a process.

usage: python3 ini_to_env_baseline.py CHATMAIL_INI ENV_OUT
"""
import configparser
import sys

ini_path, env_path = sys.argv[1], sys.argv[2]
config = configparser.ConfigParser()
config.read(ini_path)
with open(env_path, "w") as out:
    for key, value in config["params"].items():
        out.write(f"{key.upper()}={value}\n")
