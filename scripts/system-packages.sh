#!/usr/bin/env bash
# The Debian packages recflow runs for real: redis-server (the cluster
# configuration's online store, in tests), prometheus (the canary figures; its
# promtool checks the alerting rules) and haproxy (the local traffic split).
# Installs what is missing when run as root; otherwise says how.
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v promtool >/dev/null || missing+=(prometheus)
command -v haproxy >/dev/null || missing+=(haproxy)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]}; install them with: sudo apt-get install ${missing[*]}" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
