"""IP fragments: reassembled as Zeek does (in order, out of order, overlapping: first bytes win),
counted in their flow but never sampled (the live path cannot have their bytes), and every
bad or incomplete piece a counted skip."""

from __future__ import annotations

import json
import struct

import numpy as np
from packets import (
    eth_raw,
    frag4,
    frag6,
    gre,
    raw_ip4,
    raw_ip6,
    raw_tcp,
    raw_udp,
    write_pcap,
)

from semiflow.detector.sample import frame as fr
from semiflow.detector.sample.spec import FlowSampleSpec, build_flow_samples
from semiflow.plugin import ipfrag as ipf
from semiflow.plugin.flowstore import FlowStore
from semiflow.plugin.zeek_decode import decode_flow_requests
from semiflow.plugin.zeek_selection import ZeekSideConfig, capture_to_events
from semiflow.training.extract import extract

SPEC = FlowSampleSpec(k=8, l=512, selection="all", mask=())
A, B = "10.1.0.1", "10.2.0.2"
A6, B6 = "2001:db8::a", "2001:db8::b"
DATA = raw_udp(5000, 53, bytes(range(256)) * 4)   # a 1032-byte UDP datagram


def _reassemble(pieces: list[bytes]):
    """Feed Ethernet-less IP pieces to the reassembler; the datagram bytes once complete."""
    from numba import types
    from numba.typed import Dict
    t = ipf.FragTable(slots=4)
    ints, data = t.state()
    keys = Dict.empty(types.UniTuple(types.int64, 6), types.int64)
    skips = np.zeros(len(fr.SKIP_REASONS), np.int64)
    info = np.zeros(fr.NFIELDS, np.int64)
    out = []
    for p in pieces:
        buf = np.frombuffer(p, np.uint8)
        fr.parse_frame(buf, 0, len(buf), fr.LINKTYPE_RAW, info)
        assert info[fr.F_FRAG] == 1
        outcome, s = ipf.add(buf, info, 1.0, 1, ints, data, keys, skips)
        out.append(outcome)
        if outcome == ipf.COMPLETE:
            a, b = ipf.datagram(ints, s)
            got = bytes(data[s, a:b])
            ipf.release(s, ints, data, keys)
            return out, got, skips
    return out, None, skips


def _whole4(data: bytes, ident: int = 0x777) -> bytes:
    """The reassembled datagram as Zeek builds it: the first piece's header (MF set) with
    the total length of the whole."""
    return raw_ip4(A, B, 17, data, ident=ident, frag=0x2000)


def test_in_order_and_out_of_order_give_the_datagram():
    pieces = frag4(A, B, 17, DATA, [256, 512, 768])
    for order in ([0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0]):
        outs, got, _ = _reassemble([pieces[i] for i in order])
        assert outs == [ipf.PENDING] * 3 + [ipf.COMPLETE]
        assert got == _whole4(DATA)


def test_overlap_keeps_the_bytes_that_came_first():
    first = frag4(A, B, 17, DATA, [512])
    other = bytearray(DATA)
    other[256:768] = b"\xee" * 512
    late = frag4(A, B, 17, bytes(other), [256, 768])  # overlaps both, different bytes
    _, got, _ = _reassemble([first[0], late[1], first[1]])
    assert got == _whole4(DATA[:512] + bytes(other[512:768]) + DATA[768:])
    _, got, _ = _reassemble([first[0], first[1], late[1]])
    assert got == _whole4(DATA)   # complete before the overlap arrived


def test_ipv6_fragment_header_is_removed():
    pieces = frag6(A6, B6, 17, DATA, [504])
    _, got, _ = _reassemble(pieces[::-1])
    assert got == raw_ip6(A6, B6, 17, DATA)


def _pcap(tmp_path, name, ip_packets, snaplen=65535):
    p = tmp_path / f"{name}.pcap"
    frames = [eth_raw(x) for x in ip_packets]
    write_pcap(p, [(1_700_000_000 + i * 0.01, f[:snaplen]) for i, f in enumerate(frames)])
    return str(p)


def _extract(tmp_path, name, ip_packets, snaplen=65535):
    pcap = _pcap(tmp_path, name, ip_packets, snaplen)
    rep = extract([pcap], tmp_path / f"{name}.flows", SPEC)
    return FlowStore.open(tmp_path / f"{name}.flows"), rep, pcap


def test_fragmented_datagram_counts_in_its_flow_but_takes_no_sample_row(tmp_path):
    query = raw_ip4(B, A, 17, raw_udp(53, 5000, b"q" * 20))
    pieces = frag4(A, B, 17, DATA, [256, 512, 768])
    store, rep, _ = _extract(tmp_path, "dns", [query, pieces[2], pieces[0], pieces[3],
                                               pieces[1]])
    assert len(store.flows) == 1
    f = store.flows.iloc[0]
    assert (f["orig_pkts"], f["resp_pkts"]) == (1, 1)        # one datagram, as Zeek counts
    assert f["resp_bytes"] == len(DATA) - 8
    assert f["n_selected"] == 1                               # only the unfragmented query
    assert rep.skipped == {}
    assert rep.packets == 5
    assert rep.decoded == {"IP datagrams reassembled": 1,
                           "IP fragments in reassembled datagrams": 4,
                           "fragments merged into one flow packet (their datagram's)": 3}


def test_missing_piece_is_a_counted_skip(tmp_path):
    pieces = frag4(A, B, 17, DATA, [256, 512, 768])
    store, rep, _ = _extract(tmp_path, "missing", [pieces[0], pieces[1], pieces[3]])
    assert len(store.flows) == 0 and rep.packets == 0
    assert rep.skipped == {fr.SKIP_REASONS[fr.SKIP_FRAG_INCOMPLETE]: 3}


def test_fragment_bombs_are_bounded_and_counted(tmp_path):
    many = [frag4(A, B, 17, DATA, [256], ident=i)[0] for i in range(ipf.SLOTS + 50)]
    huge = raw_ip4(A, B, 17, b"x" * 64, frag=0x2000 | 8190)       # past 64 KiB
    tiny = [raw_ip4(A, B, 17, b"y" * 8, ident=9, frag=0x2000 | (i % 5)) for i in range(3000)]
    _, rep, _ = _extract(tmp_path, "bomb", many + [huge] + tiny)
    assert rep.packets == 0
    assert rep.skipped == {fr.SKIP_REASONS[fr.SKIP_FRAG_INCOMPLETE]: ipf.SLOTS + 50 + 3000,
                           fr.SKIP_REASONS[fr.SKIP_FRAG_BAD]: 1}


def test_partly_captured_pieces_as_zeek(tmp_path):
    """Zeek: a non-first piece captured in part is dropped, a first one analysed as is."""
    pieces = frag4(A, B, 17, DATA, [512])
    store, rep, _ = _extract(tmp_path, "snap", pieces, snaplen=14 + 20 + 100)
    assert len(store.flows) == 1 and rep.packets == 1
    assert rep.skipped == {fr.SKIP_REASONS[fr.SKIP_FRAGMENT]: 1}


def test_fragmented_tunnel_packet_reaches_the_inner_flow(tmp_path):
    inner = raw_ip4("172.16.0.1", "172.16.0.2", 6, raw_tcp(1234, 80, b"z" * 600))
    outer = gre(inner, 0x0800)
    pieces = frag4(A, B, 47, outer, [320])
    store, rep, _ = _extract(tmp_path, "gre-frag", pieces[::-1])
    assert list(store.flows["orig_h"]) == ["172.16.0.1"]
    assert store.flows["n_selected"].iloc[0] == 0   # reassembled: counted, not sampled
    assert rep.decoded["packets decapsulated into a tunnelled flow"] == 1


def test_live_and_offline_agree_on_flows_with_fragments(tmp_path):
    """collect.zeek skips the frame of a reassembled datagram (Zeek hands scripts only its
    last piece); the offline sample leaves the datagram out too, so the bytes agree."""
    pkts = [raw_ip4(A, B, 17, raw_udp(5000, 53, b"query")),
            *frag4(B, A, 17, raw_udp(53, 5000, bytes(600)), [304]),
            raw_ip4(A, B, 17, raw_udp(5000, 53, b"again")),
            raw_ip6(A6, B6, 6, raw_tcp(999, 80, b"hello", flags=0x02)),
            *frag6(A6, B6, 6, raw_tcp(999, 80, b"w" * 900), [448])]
    store, _, pcap = _extract(tmp_path, "mix", pkts)
    evs = [e for e in capture_to_events([pcap], ZeekSideConfig(k=SPEC.k, snaplen=0,
                                                               max_wait=float("inf")))
           if e.kind == "request"]
    batch = decode_flow_requests([json.dumps(e.message()) for e in evs])
    s = build_flow_samples(batch.blob, batch.frame_off, batch.frame_len, batch.linktype,
                           batch.ts, batch.wire_len, batch.is_orig, batch.flow_start, SPEC,
                           batch.ids)
    live = {(cid[0], cid[2]): i for i, cid in enumerate(batch.ids)}
    assert len(live) == len(store.flows) == 2
    for i, r in store.flows.iterrows():
        j = live[(r["orig_h"], r["resp_h"])]
        assert s.n_selected[j] == r["n_selected"] == 2 - (r["proto"] == "tcp")
        assert np.array_equal(s.data[j], store.samples[i])


def test_non_first_piece_in_the_live_path_is_a_counted_skip():
    piece = frag4(A, B, 17, DATA, [512])[1]
    frame = eth_raw(piece)
    blob = np.frombuffer(frame, np.uint8)
    z = np.zeros(1, np.int64)
    s = build_flow_samples(blob, z, z + len(frame), z + 1, np.zeros(1), z + len(frame),
                           np.ones(1, np.bool_), np.array([0, 1], np.int64), SPEC,
                           [(A, "5000/udp", B, "53/udp")])
    assert s.status[0] == 2 and s.skipped[0, fr.SKIP_FRAGMENT] == 1
    assert struct.unpack(">H", piece[6:8])[0] & 0x1FFF == 64
