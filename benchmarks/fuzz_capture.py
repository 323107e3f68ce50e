"""Fuzz targets over captures: `semiflow extract`'s reader and the Suricata connector's
pcap-log follower, both on the numba flow kernels (benchmarks/fuzz.py)."""

from __future__ import annotations

import csv
import gzip
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

from fuzz_base import ROOT, Target, Uncounted
from fuzz_mutate import extreme, mutate_bytes, set_uint

LAB_SAMPLE = ROOT / "semiflow" / "data" / "lab-sample" / "capture.pcap.gz"
SEED_MAX_BYTES = 96 << 10   # corpus captures up to this size become seeds
SEED_FILES = 48
# Tunnels and fragments, so that mutations reach decapsulation and reassembly.
TUNNEL_SEEDS = ("pcaps/arkime/gre-erspan-vxlan.pcap", "pcaps/arkime/gre-sample.pcap",
                "pcaps/arkime/socks5-http-302-frag.pcap", "pcaps/arkime/tcpdump-geneve.pcap",
                "pcaps/ndpi/6in4tunnel.pcap", "pcaps/ndpi/dns_fragmented.pcap",
                "pcaps/ndpi/ip_fragmented_garbage.pcap", "pcaps/ndpi/teredo.pcap",
                "pcaps/ndpi/vxlan.pcap")


# ---- seeds --------------------------------------------------------------------------------
def _corpus_seeds(corpus: Path | None) -> list[Path]:
    """Small corpus captures, spread over sources and formats (deterministic)."""
    if corpus is None or not (corpus / "manifest.csv").exists():
        return []
    rows = sorted(csv.DictReader(open(corpus / "manifest.csv")), key=lambda r: r["file"])
    small = [corpus / r["file"] for r in rows if (corpus / r["file"]).exists()
             and 200 < (corpus / r["file"]).stat().st_size <= SEED_MAX_BYTES]
    step = max(1, len(small) // SEED_FILES)
    extra = [corpus / f for f in TUNNEL_SEEDS if (corpus / f).exists()]
    return small[::step][:SEED_FILES] + [p for p in extra if p not in small[::step]]


def _lab_slice(n_records: int = 300) -> bytes:
    """The first records of the bundled lab capture (always there: no corpus needed)."""
    raw = gzip.decompress(LAB_SAMPLE.read_bytes())
    big = raw[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")
    pos = 24
    for _ in range(n_records):
        if pos + 16 > len(raw):
            break
        pos += 16 + int.from_bytes(raw[pos + 8:pos + 12], "big" if big else "little")
    return raw[:pos]


def capture_seeds(corpus: Path | None) -> list[bytes]:
    seeds = [_lab_slice()]
    for p in _corpus_seeds(corpus):
        b = p.read_bytes()
        seeds.append(gzip.decompress(b) if b[:2] == b"\x1f\x8b" else b)
    return seeds


# ---- capture structure: where the length fields are ----------------------------------------
def pcap_records(data: bytes, limit: int = 4000) -> tuple[bool, list[tuple[int, int]]]:
    """(big-endian, [(record offset, caplen)]) of a classic pcap, as far as it walks."""
    big = data[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")
    out, pos = [], 24
    while pos + 16 <= len(data) and len(out) < limit:
        caplen = int.from_bytes(data[pos + 8:pos + 12], "big" if big else "little")
        out.append((pos, caplen))
        pos += 16 + caplen
    return big, out


def pcapng_blocks(data: bytes, limit: int = 4000) -> list[tuple[int, int, int, bool]]:
    """[(offset, type, length, big-endian)] of a pcapng file, as far as it walks."""
    out, pos, big = [], 0, False
    while pos + 12 <= len(data) and len(out) < limit:
        if data[pos:pos + 4] == b"\x0a\x0d\x0d\x0a":
            big = data[pos + 8:pos + 12] == b"\x1a\x2b\x3c\x4d"
        order = "big" if big else "little"
        btype = int.from_bytes(data[pos:pos + 4], order)
        blen = int.from_bytes(data[pos + 4:pos + 8], order)
        out.append((pos, btype, blen, big))
        if blen < 12:
            break
        pos += blen
    return out


def mutate_frame_fields(rng: random.Random, b: bytearray, start: int, end: int,
                        linktype: int) -> None:
    """Set one IP/transport length-like field of the frame b[start:end] to an extreme."""
    from semiflow.detector.sample import frame as fr
    from semiflow.detector.sample.spec import parse_frame

    _, info = parse_frame(bytes(b[start:end]), linktype)
    l3, l4 = start + int(info[fr.F_L3OFF]), start + int(info[fr.F_L4OFF])
    if info[fr.F_L3OFF] == 0 and info[fr.F_REASON] != fr.OK:
        l3 = start + rng.choice((0, 4, 14, 16, 18, 20))
    if info[fr.F_L4OFF] == 0:
        l4 = l3 + rng.choice((20, 40))
    ver = b[l3] >> 4 if l3 < len(b) else 4
    fields = [(l3, 1, "ihl"), (l3 + 2, 2, "ip4 total length"), (l3 + 6, 2, "fragment"),
              (l3 + 9, 1, "ip4 protocol")] if ver == 4 else \
        [(l3 + 4, 2, "ip6 payload length"), (l3 + 6, 1, "next header"),
         (l3 + 41, 1, "extension length")]
    fields += [(l4 + 12, 1, "tcp data offset"), (l4 + 4, 2, "udp length")]
    off, size, what = rng.choice(fields)
    if what == "ihl" and off < len(b):
        b[off] = (b[off] & 0xF0) | rng.randrange(16)
    elif what == "next header":
        set_uint(b, off, 1, rng.choice((0, 43, 44, 51, 60, 6, 17, 58, 59, 255)))
    elif what == "tcp data offset" and off < len(b):
        b[off] = (rng.randrange(16) << 4) | (b[off] & 0x0F)
    else:
        set_uint(b, off, size, extreme(rng, size))


def mutate_capture(rng: random.Random, seed: bytes) -> bytes:
    """Bit flips, cuts and length fields at their extremes (file, record and packet level)."""
    from semiflow.plugin.capture import PCAP_MAGICS

    data = bytearray(seed)
    pcapng = data[:4] == b"\x0a\x0d\x0d\x0a"
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.random()
        if op < 0.3:  # a capture-level length field
            if pcapng:
                blocks = pcapng_blocks(bytes(data))
                pos, btype, blen, big = rng.choice(blocks)
                off, size = rng.choice(((4, 4), (4, 4), (blen - 4, 4), (8, 4), (8, 2),
                                        (20, 4), (24, 4), (16, 8), (0, 4)))
                if off == 0:
                    set_uint(data, pos, 4, rng.choice((1, 2, 3, 6, 0x0A0D0D0A, 0xFFFFFFFF)),
                             big)
                elif off == 16 and btype == 0x0A0D0D0A:
                    set_uint(data, pos + 16, 8, rng.choice((0, 2**63, 2**64 - 1)), big)
                else:
                    set_uint(data, pos + off, size, extreme(rng, size), big)
            else:
                big, recs = pcap_records(bytes(data))
                if recs and rng.random() < 0.8:
                    pos, _ = rng.choice(recs)
                    off = rng.choice((0, 4, 8, 8, 12))
                    val = extreme(rng, 4) if off != 4 else rng.choice((999_999, 1_000_000,
                                                                       0xFFFFFFFF))
                    set_uint(data, pos + off, 4, val, big)
                else:
                    which = rng.choice(("magic", "snaplen", "linktype", "version"))
                    if which == "magic":
                        data[0:4] = rng.choice(list(PCAP_MAGICS))
                    elif which == "linktype":
                        set_uint(data, 20, 4, rng.choice((0, 1, 12, 14, 101, 108, 113, 228,
                                                          229, 276, 0x0FFFFFFF, 0xFFFFFFFF)),
                                 big)
                    else:
                        set_uint(data, 16 if which == "snaplen" else 4, 4, extreme(rng, 4), big)
        elif op < 0.6:  # a packet's own IP/transport length fields
            if pcapng:
                epbs = [(p, bl, big) for p, t, bl, big in pcapng_blocks(bytes(data)) if t == 6]
                if epbs:
                    pos, blen, big = rng.choice(epbs)
                    mutate_frame_fields(rng, data, pos + 28, min(len(data), pos + blen - 4),
                                        1)
            else:
                big, recs = pcap_records(bytes(data))
                if recs:
                    pos, caplen = rng.choice(recs)
                    lt = int.from_bytes(data[20:24], "big" if big else "little") & 0x0FFFFFFF
                    mutate_frame_fields(rng, data, pos + 16, min(len(data), pos + 16 + caplen),
                                        lt)
        else:
            data = bytearray(mutate_bytes(rng, bytes(data), start=rng.choice((0, 24, 24))))
    out = bytes(data)
    if rng.random() < 0.1:  # compressed, and sometimes the compressed stream broken
        out = gzip.compress(out, compresslevel=1)
        if rng.random() < 0.7:
            out = mutate_bytes(rng, out, start=10)
    return out


# ---- capture reader + flow kernels ---------------------------------------------------------
def setup_capture(work: Path, corpus: Path | None):
    from semiflow.detector.sample.spec import FlowSampleSpec
    from semiflow.plugin.capture import FlowTable

    st = SimpleNamespace(seeds=capture_seeds(corpus), spec=FlowSampleSpec(k=4, l=256),
                         path=work / "case.pcap")
    st.table = FlowTable(st.spec)
    run_capture(st, st.seeds[0])  # compiles/loads the kernels before the first timed case
    return st


def run_capture(st, data: bytes) -> str:
    """scan_capture as `semiflow extract` drives it (one FlowTable for every file; a
    CaptureError or OSError is the file's counted bad_files entry)."""
    from semiflow.plugin import flowscan as fs
    from semiflow.plugin.capture import CaptureError, ScanReport, scan_capture
    from semiflow.plugin.flowstore import batch_to_frame

    st.path.write_bytes(data)
    report = ScanReport()
    in_flows = 0
    try:
        for batch in scan_capture(st.path, st.table, report):
            batch_to_frame(batch, str(st.path))
            data_ = batch.data
            n = batch.ints[:, fs.I_NSEL]
            if (n < 0).any() or (n > st.spec.k).any() or data_.shape[1:] != (st.spec.k,
                                                                            st.spec.l):
                raise Uncounted("flow sample out of shape")
            in_flows += int(batch.ints[:, fs.I_ORIG_PKTS].sum() +
                            batch.ints[:, fs.I_RESP_PKTS].sum())
    except (CaptureError, OSError):
        return "skip"
    # A UDP tunnel's frame counts in two flows; a reassembled datagram's pieces in one.
    d = report.decoded
    expect = report.packets + d.get(fs.NOTES[fs.N_MULTI], 0) - d.get(fs.NOTES[fs.N_MERGED], 0)
    if in_flows != expect:
        raise Uncounted(f"{report.packets} packets counted ({expect} flow packets expected), "
                        f"{in_flows} in flows")
    return "skip" if report.skipped or report.bad_files else "ok"


CAPTURE = Target(
    "capture", "pcap/pcapng/gzip captures -> plugin/capture.scan_capture + flowscan kernels",
    setup_capture, lambda st, rng: mutate_capture(rng, rng.choice(st.seeds)), run_capture,
    save=lambda x, p: p.with_suffix(".pcap").write_bytes(x))


# ---- Suricata pcap-log files (the connector's reader of the same kernels) -------------------
def setup_pcap_log(work: Path, corpus: Path | None):
    from semiflow.detector.sample.spec import FlowSampleSpec
    from semiflow.plugin.capture import PCAP_MAGICS

    seeds = [b for b in capture_seeds(corpus) if b[:4] in PCAP_MAGICS]
    st = SimpleNamespace(seeds=seeds, spec=FlowSampleSpec(k=4, l=256), dir=work / "pcap-log")
    run_pcap_log(st, [seeds[0]])
    return st


def make_pcap_log(st, rng: random.Random) -> list[bytes]:
    """One or two pcap-log files (a rotation can cut a record, or not)."""
    data = mutate_capture(rng, rng.choice(st.seeds))  # gzip'd ones: "not a classic pcap"
    if rng.random() < 0.3 and len(data) > 24:
        cut = rng.randrange(24, len(data) + 1)
        return [data[:cut], data[:24] + data[cut:]]
    return [data]


def run_pcap_log(st, files: list[bytes]) -> str:
    """PcapLogFollower.poll(final) + finish, as SuricataConnector.step drives it."""
    from semiflow.plugin import flowscan as fs
    from semiflow.plugin.capture import FlowTable
    from semiflow.plugin.pcap_follow import PcapLogFollower

    if st.dir.exists():
        shutil.rmtree(st.dir)
    st.dir.mkdir()
    for i, data in enumerate(files):
        (st.dir / f"log.pcap.{1000 + i}").write_bytes(data)
    table = FlowTable(st.spec)
    fol = PcapLogFollower(st.dir, table)
    in_flows = 0
    for b in [*fol.poll(final=True), *fol.finish()]:
        in_flows += int(b.ints[:, fs.I_ORIG_PKTS].sum() + b.ints[:, fs.I_RESP_PKTS].sum())
    # A UDP tunnel's frame counts in two flows; a reassembled datagram's pieces in one.
    used = int(table.st[fs.S_PACKETS])
    expect = used + int(table.st[fs.S_NOTE0 + fs.N_MULTI] - table.st[fs.S_NOTE0 + fs.N_MERGED])
    if in_flows != expect:
        raise Uncounted(f"{used} packets counted ({expect} flow packets expected), "
                        f"{in_flows} in flows")
    if fol.counters.files_done != len(files):
        raise Uncounted(f"{len(files)} files, {fol.counters.files_done} done")
    c = fol.counters
    return "skip" if c.bad_files or c.truncated_tails or table.skips[1:].sum() else "ok"


PCAP_LOG = Target(
    "pcap-log", "Suricata pcap-log files -> plugin/pcap_follow.PcapLogFollower (same kernels)",
    setup_pcap_log, make_pcap_log, run_pcap_log,
    save=lambda x, p: [p.with_suffix(f".{i}.pcap").write_bytes(b) for i, b in enumerate(x)])
