"""Capture reading and flow cutting: formats, link types, Zeek flow rules, bad input."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
from packets import ether, ip4, ip6, null, sll, sll2, tcp, udp, write_pcap, write_pcapng

from semiflow.detector.sample.spec import FlowSampleSpec, build_flow_sample
from semiflow.plugin.capture import FlowTable, ScanReport, scan_capture
from semiflow.plugin.flowstore import FlowStore
from semiflow.training.extract import StrictError, extract

SPEC = FlowSampleSpec(k=3, l=200, selection="payload")


def _session(t0: float, sport: int, n_data: int = 2, close: bool = True, src="10.0.0.1",
             dst="10.0.0.2", v6=False):
    mk = (lambda s, d, l4: ip6(s, d, l4, 6)) if v6 else (lambda s, d, l4: ip4(s, d, l4, 6))
    if v6:
        src, dst = "2001:db8::1", "2001:db8::2"
    out = [(t0, mk(src, dst, tcp(sport, 80, flags=0x02))),
           (t0 + 0.01, mk(dst, src, tcp(80, sport, flags=0x12))),
           (t0 + 0.02, mk(src, dst, tcp(sport, 80)))]
    for i in range(n_data):
        out.append((t0 + 0.1 + i * 0.1, mk(src, dst, tcp(sport, 80, b"req%d" % i, flags=0x18))))
        out.append((t0 + 0.15 + i * 0.1, mk(dst, src, tcp(80, sport, b"resp%d" % i, flags=0x18))))
    if close:
        out.append((t0 + 1.0, mk(src, dst, tcp(sport, 80, flags=0x11))))
        out.append((t0 + 1.01, mk(dst, src, tcp(80, sport, flags=0x11))))
        out.append((t0 + 1.02, mk(src, dst, tcp(sport, 80))))
    return out


def _scan(path, spec=SPEC):
    report = ScanReport()
    table = FlowTable(spec, slots=4, out=4)  # tiny buffers: exercise growth and flushing
    batches = list(scan_capture(path, table, report))
    return batches, report


def _flows(tmp_path, packets, name="c.pcap", **kw):
    p = tmp_path / name
    write_pcap(p, [(t, ether(ip)) for t, ip in packets], **kw)
    out = tmp_path / (name + ".flows")
    report = extract([str(p)], out, SPEC)
    return FlowStore.open(out), report


def test_session_flow_table_and_samples(tmp_path):
    store, report = _flows(tmp_path, _session(100.0, 5555))
    f = store.flows
    assert len(f) == 1 and report.packets == 10 and report.clean
    row = f.iloc[0]
    assert (row.orig_h, row.orig_p, row.resp_h, row.resp_p, row.proto) == \
        ("10.0.0.1", 5555, "10.0.0.2", 80, "tcp")
    assert (row.orig_pkts, row.resp_pkts, row.conn_state, row.n_selected) == (6, 4, "SF", 3)
    assert row.orig_bytes == 8 and row.resp_bytes == 10
    assert row.uid.startswith("C") and row.status == "ok"
    assert store.samples.shape == (1, 3, 200)
    assert list(store.pkt_dir[0]) == [0, 1, 0]
    assert bytes(store.samples[0, 0, 120:124]) == b"req0"
    assert np.allclose(store.pkt_ts[0], [100.1, 100.15, 100.2])


def test_flows_with_fewer_than_k_and_no_payload(tmp_path):
    pk = _session(0.0, 1000, n_data=0, close=False)  # handshake only
    pk += [(5.0, ip4("10.0.0.9", "10.0.0.2", udp(53, 53, b"q"), 17))]
    store, _ = _flows(tmp_path, pk)
    f = store.flows.set_index("proto")
    assert f.loc["tcp", "status"] == "no_payload" and f.loc["tcp", "n_selected"] == 0
    assert f.loc["udp", "status"] == "ok" and f.loc["udp", "n_selected"] == 1
    tcp_row = int(f.loc["tcp", "row"])
    assert not store.samples[tcp_row].any() and (store.pkt_dir[tcp_row] == -1).all()


def test_reused_tuple_after_close_is_a_new_flow(tmp_path):
    pk = _session(0.0, 4242) + _session(2.0, 4242)  # same 5-tuple, within the close delay
    store, _ = _flows(tmp_path, pk)
    assert len(store.flows) == 2
    assert store.flows.uid.nunique() == 2


def test_inactivity_timeouts_follow_zeek_defaults(tmp_path):
    u = lambda t: (t, ip4("10.0.0.1", "10.0.0.2", udp(999, 53, b"x"), 17))  # noqa: E731
    store, _ = _flows(tmp_path, [u(0.0), u(59.0), u(118.5), u(300.0)])
    assert len(store.flows) == 2  # 59 s gaps keep the flow, a 181.5 s gap ends it
    t = _session(0.0, 7000, close=False)
    late = [(250.0, ip4("10.0.0.1", "10.0.0.2", tcp(7000, 80, b"late"), 6))]
    store, _ = _flows(tmp_path, t + late, name="t.pcap")
    assert len(store.flows) == 1  # TCP keeps 300 s
    later = [(700.0, ip4("10.0.0.1", "10.0.0.2", tcp(7000, 80, b"later"), 6))]
    store, _ = _flows(tmp_path, t + later, name="t2.pcap")
    assert len(store.flows) == 2


def test_many_flows_through_tiny_buffers_match_the_live_function(tmp_path):
    pk = []
    for i in range(40):
        pk += _session(i * 0.5, 10000 + i, n_data=3, v6=(i % 2 == 1))
    pk.sort(key=lambda x: x[0])
    p = tmp_path / "many.pcap"
    frames = [(t, ether(ip)) for t, ip in pk]
    write_pcap(p, frames)
    batches, report = _scan(p)
    assert sum(len(b) for b in batches) == 40 and report.clean
    # The live path (build_flow_sample over a flow's frames) yields identical bytes.
    by_port = {}
    for t, ip in pk:
        sport, dport = ip.data.sport, ip.data.dport
        port = sport if sport != 80 else dport
        by_port.setdefault(port, []).append((ether(ip), 1, t, len(ether(ip)), sport != 80))
    for b in batches:
        for i in range(len(b)):
            from semiflow.plugin import flowscan as fs
            port = int(b.ints[i, fs.I_ORIG_P])
            live = build_flow_sample(by_port[port], SPEC)
            assert np.array_equal(live.data, b.data[i])
            assert np.array_equal(live.direction, b.direction[i])


@pytest.mark.parametrize("kind", ["pcap-nano", "pcapng", "gzip", "sll", "sll2", "null", "raw"])
def test_formats_and_link_types(tmp_path, kind):
    pk = _session(1.0, 2020)
    p = tmp_path / "x.cap"
    if kind == "pcap-nano":
        write_pcap(p, [(t, ether(ip)) for t, ip in pk], nano=True)
    elif kind == "pcapng":
        write_pcapng(p, [(t, ether(ip)) for t, ip in pk])
    elif kind == "gzip":
        write_pcap(tmp_path / "plain", [(t, ether(ip)) for t, ip in pk])
        with open(tmp_path / "plain", "rb") as a, gzip.open(p, "wb") as b:
            shutil.copyfileobj(a, b)
    else:
        wrap, lt = {"sll": (sll, 113), "sll2": (sll2, 276), "null": (null, 0),
                    "raw": (bytes, 101)}[kind]
        write_pcap(p, [(t, wrap(ip)) for t, ip in pk], linktype=lt)
    batches, report = _scan(p)
    assert report.clean and report.packets == len(pk)
    assert sum(len(b) for b in batches) == 1
    b = batches[0]
    assert bytes(b.data[0, 0, 120:124]) == b"req0"
    assert abs(b.times[0, 0] - 1.0) < 1e-6


def test_truncated_capture_keeps_flows_and_counts_the_cut_record(tmp_path):
    p = tmp_path / "t.pcap"
    write_pcap(p, [(t, ether(ip)) for t, ip in _session(0.0, 3030)])
    data = p.read_bytes()
    (tmp_path / "cut.pcap").write_bytes(data[:-7])
    batches, report = _scan(tmp_path / "cut.pcap")
    assert sum(len(b) for b in batches) == 1
    assert report.skipped == {"truncated capture record": 1}
    assert report.packets == 9


def test_bad_input_is_reported_not_fatal(tmp_path):
    good = tmp_path / "good.pcap"
    write_pcap(good, [(t, ether(ip)) for t, ip in _session(0.0, 1)] +
               [(2.0, b"\x01" * 12 + b"\x08\x06" + b"\x00" * 28),   # ARP
                (2.1, b"\x01" * 12 + b"\x08\x00" + b"\x45\x00\x00")])  # truncated IPv4
    (tmp_path / "bad.pcap").write_bytes(b"this is not a capture file")
    (tmp_path / "empty.pcap").write_bytes(b"")
    gz = tmp_path / "broken.pcap.gz"
    gz.write_bytes(gzip.compress(good.read_bytes())[:-30])
    snap = tmp_path / "snap.pcap"
    write_pcap(snap, [(0.0, ether(ip4("1.1.1.1", "2.2.2.2", tcp(1, 2, b"x" * 50), 6))[:40])])
    unk = tmp_path / "unk.pcap"
    write_pcap(unk, [(0.0, b"\x00" * 60)], linktype=147)
    files = [str(x) for x in (good, tmp_path / "bad.pcap", tmp_path / "empty.pcap", gz, snap, unk)]
    report = extract(files, tmp_path / "out", SPEC)
    s = report.skipped
    assert s["not IPv4/IPv6"] >= 1 and s["truncated IPv4 header"] >= 1
    assert s["truncated TCP header"] == 1 and s["unknown link type"] == 1
    bad = dict(report.bad_files)
    assert "not a pcap or pcapng" in bad[str(tmp_path / "bad.pcap")]
    assert "empty" in bad[str(tmp_path / "empty.pcap")]
    assert str(gz) in bad
    assert any("skipped" in line for line in report.summary_lines())
    assert len(FlowStore.open(tmp_path / "out").flows) >= 2  # good + readable part of broken.gz
    with pytest.raises(StrictError):
        extract(files, tmp_path / "strict", SPEC, strict=True)


def test_garbage_records_stop_the_file_cleanly(tmp_path):
    p = tmp_path / "g.pcap"
    write_pcap(p, [(t, ether(ip)) for t, ip in _session(0.0, 5)])
    data = bytearray(p.read_bytes())
    data[24 + 8:24 + 12] = (0x7FFFFFFF).to_bytes(4, "little")  # absurd caplen in record 1
    p.write_bytes(bytes(data))
    batches, report = _scan(p)
    assert sum(len(b) for b in batches) == 0
    assert "corrupt record" in report.bad_files[0][1]
