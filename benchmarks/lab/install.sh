#!/bin/sh
# Installs the traffic lab's Debian packages (servers, benign clients, attack tools).
# Idempotent; run as root. Services are NOT started system-wide: the lab starts its own
# copies inside its network namespaces with its own configuration.
set -eu
PKGS="iproute2 procps psmisc tcpdump openssl ca-certificates
nginx-light python3 python3-flask python3-aiosmtpd
openssh-server openssh-client sshpass vsftpd lftp
nsd unbound dnsutils mosquitto mosquitto-clients snmpd snmp chrony ntpsec-ntpdate
redis-server redis-tools curl wget lynx swaks
nmap hping3 hydra sqlmap gobuster dirb slowhttptest iodine ptunnel-ng"
if [ "${1:-}" = "--list" ]; then echo $PKGS; exit 0; fi
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then echo "lab packages: all installed"; exit 0; fi
echo "lab packages: installing$missing"
# Keep package scripts from starting the daemons on the host; the lab runs its own.
made_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
fi
trap '[ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "lab packages: done"
