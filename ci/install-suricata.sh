#!/bin/sh
# Install Suricata 7 from Debian bookworm-backports (idempotent).
# Skips when a `suricata` 7.x binary is already on PATH; uses sudo only when not root.
set -eu

if command -v suricata >/dev/null 2>&1; then
    ver=$(suricata -V 2>/dev/null | sed -n 's/.*version \([0-9][0-9.]*\).*/\1/p' | head -n1)
    case "$ver" in
        7.*) echo "suricata $ver already installed"; exit 0 ;;
    esac
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

list=/etc/apt/sources.list.d/bookworm-backports.list
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo 'deb http://deb.debian.org/debian bookworm-backports main' | $SUDO tee "$list" >/dev/null
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports \
    suricata iproute2 >/dev/null
# the Debian package enables a service; semiflow runs its own instances
if command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now suricata >/dev/null 2>&1 || true
fi
suricata -V
