"""Command line of the relay stand-in: `cmdeploy run` and `cmdeploy init`.

Same interface as the relay's deployment tool where the appliance uses it:
`run --config INI --ssh-host @local` runs the stages named in
CMDEPLOY_STAGES on this machine. The stages configure Debian's own nginx,
Postfix and Dovecot, which is enough for the appliance's health check,
TLS checks and data-persistence checks to be real.
"""

import argparse
import datetime
import importlib.resources
import os
import pathlib
import pwd
import shutil
import subprocess
import sys

STAGES = ("install", "configure", "activate")
PACKAGES = ("nginx", "postfix", "dovecot-imapd", "dovecot-lmtpd", "openssl")
SERVICES = ("nginx", "postfix", "dovecot")
# Installed by the appliance image and run by the real relay: started too,
# when present, so the appliance's health check sees what it would see.
OPTIONAL_SERVICES = ("opendkim", "unbound", "fcgiwrap")
STATE_DIR = pathlib.Path("/var/lib/chatmail-standin")
ACME = pathlib.Path("/var/lib/acme")
WEB_ROOT = pathlib.Path("/var/www/chatmail")
SOURCE = pathlib.Path(__file__).resolve().parents[3]


def log(msg):
    print(f"[cmdeploy] {msg}", flush=True)


def run(*cmd, **kw):
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


def read_params(path):
    """[params] of an ini file with iniconfig's rules (continuation lines
    are indented and joined with newlines; # and ; start comments)."""
    params, section, last = {}, None, None
    for raw in pathlib.Path(path).read_text().splitlines():
        if not raw.strip() or raw.lstrip()[0] in "#;":
            continue
        if raw[0] in " \t":
            if last is not None:
                params[last] = (params[last] + "\n" if params[last] else "") + raw.strip()
            continue
        line = raw.strip()
        if line.startswith("["):
            section = line[1:].split("]", 1)[0]
            last = None
            continue
        key, sep, value = line.partition("=")
        if not sep:
            key, sep, value = line.partition(":")
        if section == "params" and sep:
            last = key.strip()
            params[last] = value.strip()
    return params


def is_true(value):
    return str(value).strip().lower() == "true"


def stage_install(params):
    missing = []
    for pkg in PACKAGES:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True
        )
        if out.returncode != 0 or "install ok installed" not in out.stdout:
            missing.append(pkg)
    if missing:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run("apt-get", "update", "-q", env=env)
        run("apt-get", "install", "-y", "-q", *missing, env=env)
        shutil.rmtree("/var/lib/apt/lists", ignore_errors=True)
    else:
        log("packages present: " + " ".join(PACKAGES))
    try:
        pwd.getpwnam("vmail")
    except KeyError:
        run("useradd", "--system", "--home-dir", "/home/vmail", "--no-create-home",
            "--shell", "/usr/sbin/nologin", "vmail")
    pathlib.Path("/etc/chatmail-standin-installed").write_text(
        datetime.datetime.now(datetime.timezone.utc).isoformat() + "\n"
    )


def ensure_certificate(domain):
    """The acmetool layout: live/<domain> -> ../certs/<id>, holding
    fullchain and privkey. Generated self-signed when absent."""
    live = ACME / "live" / domain
    if (live / "fullchain").exists() and (live / "privkey").exists():
        log(f"certificate present at {live}")
        return live
    cert_id = "standin-" + datetime.datetime.now().strftime("%Y%m%d%H%M%S")
    certdir = ACME / "certs" / cert_id
    certdir.mkdir(parents=True, exist_ok=True)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "90",
        "-subj", f"/CN={domain}", "-addext", f"subjectAltName=DNS:{domain}",
        "-keyout", str(certdir / "privkey"), "-out", str(certdir / "fullchain"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.chmod(certdir / "privkey", 0o600)
    live.parent.mkdir(parents=True, exist_ok=True)
    if live.is_symlink() or live.exists():
        live.unlink()
    live.symlink_to(f"../certs/{cert_id}")
    log(f"generated a self-signed certificate for {domain} at {live}")
    return live


def write(path, text):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def stage_configure(params):
    domain = params.get("mail_domain", "").strip()
    if not domain:
        sys.exit("cmdeploy: mail_domain is missing from [params]")
    ipv6 = not is_true(params.get("disable_ipv6", "false"))
    live = ensure_certificate(domain)
    cert, key = live / "fullchain", live / "privkey"
    if params.get("tls_external_cert_and_key", "").strip():
        cert, key = params["tls_external_cert_and_key"].split()[:2]

    # web root from www/src, like the relay's page build
    src = SOURCE / "www" / "src"
    if WEB_ROOT.exists():
        shutil.rmtree(WEB_ROOT)
    shutil.copytree(src, WEB_ROOT)
    for md in WEB_ROOT.rglob("*.md"):
        md.with_suffix(".html").write_text(
            "<!doctype html><html><body><pre>\n" + md.read_text() + "</pre></body></html>\n"
        )

    v6 = "    listen [::]:{port}{extra};\n" if ipv6 else ""
    write("/etc/nginx/sites-enabled/chatmail", f"""server {{
    listen 80;
{v6.format(port=80, extra="")}    server_name {domain};
    root {WEB_ROOT};
    index index.html;
}}
server {{
    listen 443 ssl;
{v6.format(port=443, extra=" ssl")}    server_name {domain};
    ssl_certificate {cert};
    ssl_certificate_key {key};
    root {WEB_ROOT};
    index index.html;
}}
""")
    default_site = pathlib.Path("/etc/nginx/sites-enabled/default")
    if default_site.exists() or default_site.is_symlink():
        default_site.unlink()

    write("/etc/postfix/main.cf", f"""compatibility_level = 3.6
myhostname = {domain}
mydomain = {domain}
myorigin = {domain}
mydestination = localhost
inet_interfaces = all
inet_protocols = {"all" if ipv6 else "ipv4"}
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = may
smtp_tls_security_level = may
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
virtual_mailbox_domains = {domain}
virtual_transport = lmtp:unix:private/dovecot-lmtp
""")
    master = pathlib.Path("/usr/share/postfix/master.cf.dist").read_text()
    write("/etc/postfix/master.cf", master + """
submission inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
smtps inet n - n - - smtpd
  -o syslog_name=postfix/smtps
  -o smtpd_tls_wrappermode=yes
""")
    write("/etc/dovecot/local.conf", f"""protocols = imap lmtp
listen = {"*, ::" if ipv6 else "*"}
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
mail_location = maildir:/home/vmail/mail/%d/%n
service lmtp {{
  unix_listener /var/spool/postfix/private/dovecot-lmtp {{
    user = postfix
    group = postfix
    mode = 0600
  }}
}}
""")


def stage_activate(params):
    services = list(SERVICES) + [
        s for s in OPTIONAL_SERVICES
        if subprocess.run(["systemctl", "cat", s], capture_output=True).returncode == 0
    ]
    # `systemctl enable` goes through sysv-install for Debian's init scripts
    # and is slow: only for units not enabled yet.
    disabled = [
        s for s in services
        if subprocess.run(["systemctl", "is-enabled", "--quiet", s]).returncode != 0
    ]
    if disabled:
        run("systemctl", "enable", "--quiet", *disabled)
    run("systemctl", "restart", *services)


def cmd_run(args):
    stages = [s.strip() for s in os.environ.get("CMDEPLOY_STAGES", ",".join(STAGES)).split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        sys.exit(f"cmdeploy: unknown stage(s) {','.join(bad)} in CMDEPLOY_STAGES; known: {','.join(STAGES)}")
    if args.ssh_host != "@local":
        sys.exit("cmdeploy (stand-in): only --ssh-host @local is supported")
    params = read_params(args.config)
    for stage in STAGES:
        if stage in stages:
            log(f"stage {stage}")
            {"install": stage_install, "configure": stage_configure, "activate": stage_activate}[stage](params)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with open(STATE_DIR / "stages.log", "a") as f:
        f.write(f"{stamp} {','.join(s for s in STAGES if s in stages)}\n")
    log("deploy finished")


def cmd_init(args):
    path = pathlib.Path(args.config)
    if path.exists() and not args.force:
        sys.exit(f"cmdeploy: {path} exists (use --force to overwrite)")
    template = importlib.resources.files("chatmaild").joinpath("ini/chatmail.ini.f").read_text()
    write(path, template.replace("{mail_domain}", args.domain))
    log(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="cmdeploy")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="deploy the relay")
    p_run.add_argument("--config", default=os.environ.get("CHATMAIL_INI", "chatmail.ini"))
    p_run.add_argument("--ssh-host", default="@local")
    p_run.add_argument("--skip-dns-check", action="store_true")
    p_run.set_defaults(func=cmd_run)
    p_init = sub.add_parser("init", help="write a fresh chatmail.ini")
    p_init.add_argument("--config", default="chatmail.ini")
    p_init.add_argument("--force", action="store_true")
    p_init.add_argument("domain")
    p_init.set_defaults(func=cmd_init)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
