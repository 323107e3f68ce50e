"""The lab's servers, each started from Debian's binaries with a configuration written into the
run directory (never /etc), inside its host's namespace, listening on that host's address only.
"""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

from .topology import Host, Topology

PY = "/usr/bin/python3"  # Debian's Python: flask and aiosmtpd come from Debian packages
HERE = Path(__file__).resolve().parent
LAB_USER, LAB_PASSWORD = "labuser", "password1"  # the weak password hydra is to find
ZONE = "lab.test"
TUNNEL_DOMAIN = "t.evil.test"

SERVERS = [Host("web", "10.77.0.10", "server"), Host("files", "10.77.0.11", "server"),
           Host("mail", "10.77.0.25", "server"), Host("iot", "10.77.0.30", "server"),
           Host("mon", "10.77.0.40", "server"), Host("dns", "10.77.0.53", "server"),
           Host("auth", "10.77.0.54", "server")]
ATTACKERS = [Host("attacker1", "10.77.66.1", "attacker"),
             Host("attacker2", "10.77.66.2", "attacker")]
ATTACKER_IPS = frozenset(h.ip for h in ATTACKERS)   # the label rule's attacker addresses
NAMES = [f"host-{i:03d}" for i in range(300)] + [
    "www", "files", "mail", "mqtt", "redis", "snmp", "ntp", "ns", "shop", "intranet", "wiki"]


def hosts(clients: int) -> list[Host]:
    cl = [Host(f"client{i}", f"10.77.1.{i}", "client") for i in range(1, clients + 1)]
    return [*SERVERS, *cl, Host("chatty", "10.77.1.100", "client"), *ATTACKERS]


def ip_of(name: str) -> str:
    return next(h.ip for h in [*SERVERS, *ATTACKERS] if h.name == name)


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def make_content(run: Path, seed: int) -> None:
    """Static site, download files of varied sizes, FTP files, attachments."""
    rng = random.Random(seed)
    www = run / "www"
    (www / "files").mkdir(parents=True, exist_ok=True)
    words = ("network sensor traffic report quarterly budget design meeting release notes "
             "backup policy printer office coffee holiday project roadmap invoice").split()
    pages = [f"page{i}.html" for i in range(80)]
    for i, p in enumerate(pages):
        links = " ".join(f'<a href="/{rng.choice(pages)}">more</a>'
                         for _ in range(rng.randint(2, 8)))
        text = " ".join(rng.choice(words) for _ in range(rng.randint(50, 3000)))
        _write(www / p, f"<html><head><title>Page {i}</title></head><body><p>{text}</p>"
                        f"{links}</body></html>")
    _write(www / "index.html", "<html><body>" + " ".join(
        f'<a href="/{p}">{p}</a>' for p in pages) + "</body></html>")
    sizes = [1 << 10, 8 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20]
    for s in sizes:
        (www / "files" / f"file-{s}.bin").write_bytes(rng.randbytes(s))
        (www / "files" / f"doc-{s}.txt").write_text(
            " ".join(rng.choice(words) for _ in range(s // 7)))
    ftp = run / "ftp_anon"
    (ftp / "pub").mkdir(parents=True, exist_ok=True)
    for s in sizes[:5]:
        (ftp / "pub" / f"data-{s}.bin").write_bytes(rng.randbytes(s))
    (run / "vsftpd_empty").mkdir(exist_ok=True)
    (run / "vsftpd_empty").chmod(0o755)
    for s in (2 << 10, 40 << 10, 300 << 10):
        (run / "attach").mkdir(exist_ok=True)
        (run / "attach" / f"attach-{s}.pdf").write_bytes(rng.randbytes(s))
    (run / "secret.tar").write_bytes(rng.randbytes(1 << 20))   # exfiltrated over HTTP
    (run / "tunnel-file.bin").write_bytes(rng.randbytes(160 << 10))  # moved over DNS
    for p in [run, www, www / "files", ftp, ftp / "pub"]:
        p.chmod(0o755)


def ensure_user() -> bool:
    """The SSH/FTP account with a weak password; True when this run created it."""
    if subprocess.run(["id", LAB_USER], capture_output=True).returncode == 0:
        created = False
    else:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", LAB_USER], check=True)
        created = True
    subprocess.run(["chpasswd"], input=f"{LAB_USER}:{LAB_PASSWORD}\n", text=True, check=True)
    home = Path(f"/home/{LAB_USER}")
    home.mkdir(exist_ok=True)
    for i in range(5):
        (home / f"notes-{i}.txt").write_text("lab file\n" * (50 * (i + 1)))
    subprocess.run(["chown", "-R", f"{LAB_USER}:", str(home)], check=True)
    return created


def remove_user() -> None:
    subprocess.run(["userdel", "-r", LAB_USER], capture_output=True)


def zone_text() -> str:
    lines = [f"$ORIGIN {ZONE}.", "$TTL 20",
             f"@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 20",
             f"@ IN NS ns.{ZONE}.", f"@ IN MX 10 mail.{ZONE}.",
             '@ IN TXT "v=spf1 ip4:10.77.0.0/16 -all"']
    fixed = {"www": "10.77.0.10", "shop": "10.77.0.10", "intranet": "10.77.0.10",
             "wiki": "10.77.0.10", "files": "10.77.0.11", "mail": "10.77.0.25",
             "mqtt": "10.77.0.30", "redis": "10.77.0.30", "snmp": "10.77.0.40",
             "ntp": "10.77.0.40", "ns": "10.77.0.54"}
    lines += [f"{n} IN A {a}" for n, a in fixed.items()]
    lines += [f"host-{i:03d} IN A 10.77.{2 + i // 250}.{1 + i % 250}" for i in range(300)]
    return "\n".join(lines) + "\n"


def _wait_port(topo: Topology, host: str, port: int, udp: bool = False,
               timeout: float = 15.0) -> bool:
    flag = "-Hlun" if udp else "-Hltn"
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = topo.run(host, ["ss", flag, f"sport = :{port}"]).stdout
        if out.strip():
            return True
        time.sleep(0.2)
    return False


class Services:
    """Starts every server; start() returns {service: up?} so a failure is reported, not hidden."""

    def __init__(self, topo: Topology, run: Path, seed: int):
        self.topo, self.run, self.seed = topo, run, seed
        self.logs = run / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def _spawn(self, host: str, name: str, argv: list[str]) -> None:
        self.topo.spawn(host, argv, log=str(self.logs / f"{name}.log"))

    def start(self) -> dict[str, bool]:
        r = self.run
        make_content(r, self.seed)
        status: dict[str, bool] = {}
        # web: nginx in front of our Flask app
        subprocess.run([PY, str(HERE / "webapp.py"), "--db", str(r / "app.sqlite"), "--create"],
                       check=True)
        self._spawn("web", "webapp", [PY, str(HERE / "webapp.py"), "--db", str(r / "app.sqlite"),
                                      "--host", "127.0.0.1", "--port", "8000"])
        tmp = r / "nginx-tmp"
        tmp.mkdir(exist_ok=True)
        tmp.chmod(0o777)
        _write(r / "nginx.conf", f"""
worker_processes 1;
pid {r}/nginx.pid;
error_log {self.logs}/nginx-error.log;
events {{ worker_connections 2048; }}
http {{
  include /etc/nginx/mime.types;
  access_log {self.logs}/nginx-access.log;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  client_max_body_size 64m;
  server {{
    listen {ip_of("web")}:80;
    root {r}/www;
    location /app/ {{ proxy_pass http://127.0.0.1:8000/; proxy_set_header Host $host; }}
  }}
}}
""")
        self._spawn("web", "nginx", ["nginx", "-c", str(r / "nginx.conf"), "-g", "daemon off;"])
        status["http (nginx + app)"] = _wait_port(self.topo, "web", 80) and \
            _wait_port(self.topo, "web", 8000)
        # files: sshd and vsftpd
        Path("/run/sshd").mkdir(exist_ok=True)
        key = r / "ssh_host_ed25519_key"
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                           check=True)
        _write(r / "sshd_config", f"""ListenAddress {ip_of("files")}
HostKey {key}
PidFile {r}/sshd.pid
PasswordAuthentication yes
KbdInteractiveAuthentication no
UsePAM yes
PermitRootLogin no
MaxStartups 200:30:400
MaxAuthTries 6
Subsystem sftp internal-sftp
""")
        self._spawn("files", "sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", str(r / "sshd_config")])
        status["ssh"] = _wait_port(self.topo, "files", 22)
        _write(r / "vsftpd.conf", f"""listen=YES
listen_ipv6=NO
listen_address={ip_of("files")}
background=NO
anonymous_enable=YES
anon_root={r}/ftp_anon
no_anon_password=YES
local_enable=YES
write_enable=YES
local_umask=022
pasv_enable=YES
pasv_min_port=40000
pasv_max_port=40500
pasv_address={ip_of("files")}
secure_chroot_dir={r}/vsftpd_empty
pam_service_name=vsftpd
seccomp_sandbox=NO
max_per_ip=100
max_clients=400
xferlog_enable=NO
""")
        self._spawn("files", "vsftpd", ["vsftpd", str(r / "vsftpd.conf")])
        status["ftp"] = _wait_port(self.topo, "files", 21)
        # dns: authoritative NSD on auth, Unbound resolver on dns (stub zones to NSD and to
        # the attacker's tunnel server)
        nsd = r / "nsd"
        _write(nsd / f"{ZONE}.zone", zone_text())
        _write(nsd / "nsd.conf", f"""server:
  ip-address: {ip_of("auth")}
  port: 53
  username: ""
  chroot: ""
  zonesdir: "{nsd}"
  database: ""
  pidfile: "{nsd}/nsd.pid"
  xfrdfile: "{nsd}/xfrd.state"
  zonelistfile: "{nsd}/zone.list"
  server-count: 1
  hide-version: yes
remote-control:
  control-enable: no
zone:
  name: {ZONE}
  zonefile: {ZONE}.zone
""")
        self._spawn("auth", "nsd", ["nsd", "-d", "-c", str(nsd / "nsd.conf")])
        status["dns authoritative (nsd)"] = _wait_port(self.topo, "auth", 53, udp=True)
        ub = r / "unbound"
        _write(ub / "unbound.conf", f"""server:
  interface: {ip_of("dns")}
  port: 53
  access-control: 10.77.0.0/16 allow
  username: ""
  chroot: ""
  directory: "{ub}"
  pidfile: "{ub}/unbound.pid"
  use-syslog: no
  do-ip6: no
  do-not-query-localhost: no
  module-config: "iterator"
  qname-minimisation: no
  cache-max-ttl: 20
  cache-max-negative-ttl: 5
  num-threads: 1
  domain-insecure: "{ZONE}"
  domain-insecure: "evil.test"
  # "test." is a special-use name (RFC 6761) that Unbound answers itself by default.
  local-zone: "test." nodefault
remote-control:
  control-enable: no
stub-zone:
  name: "{ZONE}."
  stub-addr: {ip_of("auth")}
stub-zone:
  name: "{TUNNEL_DOMAIN}."
  stub-addr: {ip_of("attacker2")}
""")
        self._spawn("dns", "unbound", ["unbound", "-d", "-c", str(ub / "unbound.conf")])
        up = _wait_port(self.topo, "dns", 53, udp=True)
        if up:  # a resolver that answers NXDOMAIN itself is not up: ask it for a lab name
            ans = self.topo.run("dns", ["dig", "+short", "+tries=2", "+time=2",
                                        f"@{ip_of('dns')}", f"www.{ZONE}"], timeout=15)
            up = ans.stdout.strip() == ip_of("web")
        status["dns resolver (unbound)"] = up
        # mail: an SMTP sink
        self._spawn("mail", "smtp", [PY, "-m", "aiosmtpd", "-n", "-l",
                                     f"{ip_of('mail')}:25", "-c", "aiosmtpd.handlers.Sink"])
        status["smtp (aiosmtpd sink)"] = _wait_port(self.topo, "mail", 25)
        # iot: MQTT broker and redis
        _write(r / "mosquitto.conf", f"""listener 1883 {ip_of("iot")}
allow_anonymous true
persistence false
user root
log_dest stdout
""")
        self._spawn("iot", "mosquitto", ["mosquitto", "-c", str(r / "mosquitto.conf")])
        status["mqtt (mosquitto)"] = _wait_port(self.topo, "iot", 1883)
        (r / "redis").mkdir(exist_ok=True)
        self._spawn("iot", "redis", ["redis-server", "--bind", ip_of("iot"), "--port", "6379",
                                     "--protected-mode", "no", "--save", "", "--appendonly",
                                     "no", "--dir", str(r / "redis"), "--daemonize", "no"])
        status["redis"] = _wait_port(self.topo, "iot", 6379)
        # mon: SNMP agent and NTP server
        _write(r / "snmpd.conf", f"""agentAddress udp:{ip_of("mon")}:161
rocommunity public 10.77.0.0/16
sysLocation lab rack 3
sysContact ops@{ZONE}
""")
        self._spawn("mon", "snmpd", ["snmpd", "-f", "-Lo", "-C", "-c", str(r / "snmpd.conf"),
                                     "-p", str(r / "snmpd.pid")])
        status["snmp (snmpd)"] = _wait_port(self.topo, "mon", 161, udp=True)
        _write(r / "chrony.conf", f"""local stratum 8
allow 10.77.0.0/16
bindaddress {ip_of("mon")}
port 123
cmdport 0
pidfile {r}/chronyd.pid
driftfile {r}/chrony.drift
""")
        self._spawn("mon", "chronyd", ["chronyd", "-d", "-x", "-u", "root", "-f",
                                       str(r / "chrony.conf")])
        status["ntp (chrony)"] = _wait_port(self.topo, "mon", 123, udp=True)
        return status


def tool_versions() -> dict[str, str]:
    """Debian package versions of every lab program (the run's provenance)."""
    out = subprocess.run(["sh", str(HERE / "install.sh"), "--list"], capture_output=True,
                         text=True).stdout.split()
    res = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\n", *out],
                         capture_output=True, text=True).stdout
    return dict(line.split("\t", 1) for line in res.splitlines() if "\t" in line)

