#!/bin/sh
# certbot deploy hook for a chatmail relay run by chatmail-docker.
#
# certbot runs deploy hooks after each successful renewal, with
# RENEWED_LINEAGE set to the live directory (/etc/letsencrypt/live/<domain>).
# This reloads nginx, Dovecot and Postfix in the container when the
# certificate really changed, and checks that the new one is served.
#
# Install:
#   install -m 0755 certbot-deploy-hook.sh /etc/letsencrypt/renewal-hooks/deploy/chatmail-docker
# with tls_external_cert_and_key in chatmail.ini naming the certificate and
# key under /etc/letsencrypt/live/<domain>/ (the appliance mounts them).
# Adjust the two paths below.
#
# With the cert-watch service running (ENABLE_CERTS_MONITORING=true) the
# reload already happens on its own; this hook is then a harmless no-op,
# because both record the applied certificate in data/.cert-watch-state.json.
set -eu

CHATMAIL_DOCKER=${CHATMAIL_DOCKER:-/usr/local/bin/chatmail-docker}
CHATMAIL_DIR=${CHATMAIL_DIR:-/opt/chatmail-docker}

if [ -z "${RENEWED_LINEAGE:-}" ]; then
    echo "RENEWED_LINEAGE is not set: run this from certbot (--deploy-hook)" >&2
    exit 2
fi

exec "$CHATMAIL_DOCKER" --dir "$CHATMAIL_DIR" cert-watch --once --path "$RENEWED_LINEAGE"
