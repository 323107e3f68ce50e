"""The analyst's allow-list: flows and host/service patterns marked benign.

One plain file serves three readers:
- Zeek (zeek_scripts/allowlist.zeek) reads it with the Input framework (Input::add_table,
  Input::REREAD), so edits take effect at the sensor without a restart. The format is what
  Zeek's ASCII input reader accepts: a `#fields` line (tab-separated names), then one
  tab-separated line per rule; `-` = unset (&optional), other `#` lines are comments; values
  use Zeek's ASCII syntax (addr, subnet `10.0.0.0/8`, port `443/tcp`, time = epoch seconds).
- the detector side (`allowlisted()` below; `semiflow score --allowlist`, `semiflow report`).
- `semiflow feedback export`, which turns the rules' flows into normal training data.

A rule matches a flow when it is not expired and either its `uid` equals the flow's uid, or
(for pattern rules, uid unset) the flow has an endpoint in `host` (when set) and its
responder port/protocol equals `service` (when set). `orig_h`...`ts` record the marked flow's
5-tuple and start so it can be found again in captures where uids differ (live Zeek vs
offline extraction).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from semiflow.detector.permissions import refuse_world_writable

# Column name -> Zeek type, in file order (zeek_scripts/allowlist.zeek's Rule record).
ZEEK_TYPES = {
    "rule": "string", "uid": "string", "host": "subnet", "service": "port",
    "orig_h": "addr", "orig_p": "port", "resp_h": "addr", "resp_p": "port", "proto": "string",
    "ts": "time", "reason": "string", "analyst": "string", "added": "time", "expires": "time",
}
UNSET = "-"
EMPTY = "(empty)"
PROTOS = ("tcp", "udp", "icmp")


@dataclass
class AllowRule:
    reason: str = ""
    analyst: str = ""
    uid: str | None = None
    host: str | None = None          # subnet text; a single host is written as a /32 or /128
    service: str | None = None       # "443/tcp"
    orig_h: str | None = None
    orig_p: int | None = None
    resp_h: str | None = None
    resp_p: int | None = None
    proto: str | None = None
    ts: float | None = None
    added: float | None = None
    expires: float | None = None
    rule: str = ""

    def __post_init__(self) -> None:
        if not (self.uid or self.host or self.service):
            raise ValueError("an allow-list rule needs a uid, a host or a service")
        if self.host:
            self.host = str(ipaddress.ip_network(self.host, strict=False))
        if self.service:
            self.service = normalize_service(self.service)
        if self.proto:
            self.proto = self.proto.lower()
        if self.added is None:
            self.added = time.time()
        if not self.rule:
            key = "|".join(str(v) for v in (self.uid, self.host, self.service))
            self.rule = "r" + hashlib.sha1(key.encode()).hexdigest()[:12]

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and (time.time() if now is None else now) >= \
            self.expires


def normalize_service(s: str | int) -> str:
    """'443', '443/TCP', 443 -> '443/tcp' (Zeek's port syntax; tcp when no protocol given)."""
    text = str(s).strip().lower()
    num, _, proto = text.partition("/")
    proto = proto or "tcp"
    if not num.isdigit() or not 0 <= int(num) <= 65535 or proto not in PROTOS:
        raise ValueError(f"bad service {s!r}: expected PORT[/tcp|udp|icmp]")
    return f"{int(num)}/{proto}"


# ---- the file format ----------------------------------------------------------------------
def _escape(v: str) -> str:
    out = "".join(f"\\x{ord(c):02x}" if c in "\t\n\r\\" or ord(c) < 0x20 else c for c in v)
    if out in (UNSET, EMPTY):
        out = f"\\x{ord(out[0]):02x}{out[1:]}"
    return out if out else EMPTY


def _unescape(v: str) -> str:
    if v == EMPTY:
        return ""
    return v.encode("latin1", "backslashreplace").decode("unicode_escape") if "\\x" in v else v


def _format(name: str, value, proto: str | None) -> str:
    if value is None or value == "":   # Zeek reads "(empty)" in a string column literally
        return UNSET
    ztype = ZEEK_TYPES[name]
    if ztype == "time":
        return f"{float(value):.6f}"
    if name in ("orig_p", "resp_p"):   # Zeek port syntax: the number and its protocol
        return f"{int(value)}/{proto if proto in PROTOS else 'unknown'}"
    return _escape(str(value)) if ztype == "string" else str(value)


def _row(r: AllowRule) -> list[str]:
    d = asdict(r)
    return [_format(name, d[name], r.proto) for name in ZEEK_TYPES]


def write_allowlist(path: str | os.PathLike, rules: Iterable[AllowRule]) -> Path:
    """Write the whole file atomically (a rename: Zeek's REREAD sees a new inode, and never
    a half-written file)."""
    path = Path(path)
    names = list(ZEEK_TYPES)
    lines = ["#separator \\x09", "#path semiflow_allowlist",
             "#fields\t" + "\t".join(names), "#types\t" + "\t".join(ZEEK_TYPES.values())]
    lines += ["\t".join(_row(r)) for r in rules]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


@dataclass
class AllowlistReport:
    rules: int = 0
    invalid: int = 0
    examples: list[str] | None = None


def read_allowlist(path: str | os.PathLike, report: AllowlistReport | None = None
                   ) -> list[AllowRule]:
    """Parse the file as Zeek's ASCII input reader does: the first `#fields` line (or first
    non-comment line) is the header, other `#` lines are skipped, an invalid line is counted
    and skipped (Zeek warns and ignores it too)."""
    report = report if report is not None else AllowlistReport()
    report.examples = report.examples or []
    path = Path(path)
    if not path.exists():
        return []
    refuse_world_writable(path, "allow-list")
    header: list[str] | None = None
    rules = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8",
                                                errors="backslashreplace").splitlines(), 1):
        line = raw.rstrip("\r")
        if not line:
            continue
        if line.startswith("#"):
            if header is None and line.startswith("#fields\t"):
                header = line[len("#fields\t"):].split("\t")
            continue
        if header is None:
            header = line.split("\t")
            continue
        try:
            rules.append(_parse(header, line.split("\t")))
        except (ValueError, KeyError) as e:
            report.invalid += 1
            if len(report.examples) < 5:
                report.examples.append(f"line {lineno}: {e}")
    missing = {"rule", "uid", "host", "service"} - set(header or [])
    if header is not None and missing:
        raise ValueError(f"{path}: not an allow-list (no {', '.join(sorted(missing))} column)")
    report.rules = len(rules)
    return rules


def _parse(header: list[str], cols: list[str]) -> AllowRule:
    if len(cols) < len(header):
        raise ValueError(f"{len(cols)} fields, header has {len(header)}")
    raw = {h: c for h, c in zip(header, cols) if h in ZEEK_TYPES}
    kw: dict = {}
    for name, text in raw.items():
        if text == UNSET:
            continue
        ztype = ZEEK_TYPES[name]
        if ztype == "time":
            kw[name] = float(text)
        elif name in ("orig_p", "resp_p"):
            kw[name] = int(text.split("/")[0])
            kw.setdefault("proto", text.partition("/")[2] or None)
        elif ztype in ("addr",):
            kw[name] = str(ipaddress.ip_address(text))
        else:
            kw[name] = _unescape(text)
    names = {f.name for f in fields(AllowRule)}
    return AllowRule(**{k: v for k, v in kw.items() if k in names})


def add_rules(path: str | os.PathLike, new: Iterable[AllowRule]) -> list[AllowRule]:
    """Merge new rules into the file (same rule id = replaced), rewrite it; return all."""
    rules = {r.rule: r for r in read_allowlist(path)}
    for r in new:
        rules[r.rule] = r
    out = list(rules.values())
    write_allowlist(path, out)
    return out


# ---- matching -----------------------------------------------------------------------------
def _col(flows: pd.DataFrame, *names: str) -> pd.Series:
    for n in names:
        if n in flows.columns:
            return flows[n]
    return pd.Series([None] * len(flows), index=flows.index, dtype=object)


def allowlisted(flows: pd.DataFrame, rules: Iterable[AllowRule], now: float | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(mask bool[n], rule id per flow or '') for flows with columns named as in an
    extraction (uid, orig_h, resp_h, resp_p, proto) or a Zeek log (id.orig_h, ...)."""
    n = len(flows)
    hit = np.zeros(n, bool)
    which = np.full(n, "", dtype=object)
    rules = [r for r in rules if not r.expired(now)]
    if not n or not rules:
        return hit, which
    uid = _col(flows, "uid").astype(object).to_numpy()
    orig = [_ip(v) for v in _col(flows, "orig_h", "id.orig_h")]
    resp = [_ip(v) for v in _col(flows, "resp_h", "id.resp_h")]
    rport = pd.to_numeric(_col(flows, "resp_p", "id.resp_p"), errors="coerce").to_numpy()
    proto = _col(flows, "proto").astype(str).str.lower().to_numpy()
    for r in rules:
        if r.uid:
            m = uid == r.uid
        else:
            m = np.ones(n, bool)
            if r.host:
                net = ipaddress.ip_network(r.host)
                m &= np.array([(a is not None and a.version == net.version and a in net) or
                               (b is not None and b.version == net.version and b in net)
                               for a, b in zip(orig, resp)], bool)
            if r.service:
                num, proto_s = r.service.split("/")
                m &= (rport == int(num)) & (proto == proto_s)
        new = m & ~hit
        which[new] = r.rule
        hit |= m
    return hit, which


def _ip(v):
    try:
        return ipaddress.ip_address(str(v)) if v is not None and not pd.isna(v) else None
    except ValueError:
        return None


# ---- marked flows -> normal training data -------------------------------------------------
def marked_flows(flows: pd.DataFrame, rules: Iterable[AllowRule], patterns: bool = True,
                 ts_slack: float = 1.0) -> np.ndarray:
    """bool[n]: flows an analyst marked benign. uid rules match by uid, or by 5-tuple and a
    start within ts_slack seconds (uids differ between live Zeek and offline extraction);
    pattern rules (host/service) too when `patterns`. Expiry does not apply: a flow judged
    benign stays benign training data."""
    rules = list(rules)
    keep = np.zeros(len(flows), bool)
    if not len(flows):
        return keep
    uid = flows["uid"].astype(str).to_numpy()
    ts = flows["ts"].to_numpy(np.float64)
    proto = flows["proto"].astype(str).str.lower().to_numpy()
    for r in (r for r in rules if r.uid):
        keep |= uid == r.uid
        if r.orig_h and r.resp_h and r.ts is not None:
            keep |= ((flows["orig_h"].astype(str).to_numpy() == r.orig_h)
                     & (flows["resp_h"].astype(str).to_numpy() == r.resp_h)
                     & (flows["orig_p"].to_numpy() == (r.orig_p or 0))
                     & (flows["resp_p"].to_numpy() == (r.resp_p or 0))
                     & (proto == (r.proto or proto)) & (np.abs(ts - r.ts) <= ts_slack))
    if patterns:
        pats = [r for r in rules if not r.uid]
        keep |= allowlisted(flows, pats, now=-np.inf)[0] if pats else False
    return keep


def export_marked(rules: Iterable[AllowRule], extract_dirs: Iterable[str | os.PathLike],
                  out_dir: str | os.PathLike, patterns: bool = True) -> int:
    """Write the marked flows of the extraction dirs as a new extraction labelled normal
    (family 'feedback'), which `semiflow train` takes like any other. Returns the count."""
    from .capture import FlowBatch
    from .flowstore import FlowStore, FlowStoreWriter

    rules = list(rules)
    stores = [FlowStore.open(d) for d in extract_dirs]
    if not stores:
        raise ValueError("no extraction directory given")
    spec = stores[0].spec
    writer = FlowStoreWriter(out_dir, spec)
    total, inputs = 0, []
    for d, st in zip(extract_dirs, stores):
        if st.spec != spec:
            raise ValueError(f"{d}: extracted with another flow-sample spec than "
                             f"{list(extract_dirs)[0]}")
        idx = np.flatnonzero(marked_flows(st.flows, rules, patterns))
        inputs.append({"extract": str(d), "flows": int(len(idx))})
        if not len(idx):
            continue
        offs = np.asarray(st.samples.offs[idx])
        exts = np.asarray(st.samples.exts[idx])
        pieces, new_offs, pos = [], np.full(offs.shape, -1, np.int64), 0
        for i, j in zip(*np.nonzero(offs >= 0)):
            piece = np.asarray(st.samples.blob[offs[i, j]:offs[i, j] + exts[i, j]])
            pieces.append(piece)
            new_offs[i, j] = pos
            pos += len(piece)
        packed = np.concatenate(pieces) if pieces else np.zeros(0, np.uint8)
        batch = FlowBatch(np.zeros((len(idx), 1), np.int64), np.zeros((len(idx), 2)), packed,
                          new_offs, exts.astype(np.int32), np.asarray(st.pkt_dir[idx]),
                          np.asarray(st.pkt_ts[idx]), np.asarray(st.pkt_len[idx]), spec.l)
        table = st.flows.iloc[idx].drop(columns=["row"]).assign(
            label="normal", family="feedback", source="feedback")
        writer.write(batch, table.reset_index(drop=True))
        total += len(idx)
    writer.close({"command": "semiflow feedback export", "inputs": inputs,
                  "rules": len(rules), "patterns": patterns})
    return total
