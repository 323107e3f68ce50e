"""Tunnels Zeek decapsulates: the inner connection is a flow whose sample starts at the innermost
IP header (the same bytes as the untunnelled packets), a UDP tunnel's outer datagrams stay a
flow of their own, broken tunnel headers are counted skips, and the live path (frames with
their outer layers, as Zeek ships them) builds the same bytes as `semiflow extract`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from packets import (
    erspan2,
    erspan3,
    eth_raw,
    geneve,
    gre,
    raw_ip4,
    raw_ip6,
    raw_tcp,
    raw_udp,
    teredo,
    vxlan,
    write_pcap,
)

from semiflow.detector.sample import frame as fr
from semiflow.detector.sample.spec import FlowSampleSpec, build_flow_samples
from semiflow.plugin.flowstore import FlowStore
from semiflow.plugin.zeek_decode import decode_flow_requests
from semiflow.plugin.zeek_selection import ZeekSideConfig, capture_to_events
from semiflow.training.extract import extract

SPEC = FlowSampleSpec(k=8, l=256, selection="all", mask=())
A, B = "10.1.0.1", "10.2.0.2"            # inner endpoints
A6, B6 = "2001:db8::a", "2001:db8::b"
O1, O2 = "192.0.2.1", "198.51.100.2"     # tunnel endpoints
O61, O62 = "2001:db8:ffff::1", "2001:db8:ffff::2"


def conversation(v6: bool = False, sport: int = 40000) -> list[tuple[bool, bytes]]:
    """(from A?, inner IP packet) of a small TCP exchange A -> B:80."""
    a, b = (A6, B6) if v6 else (A, B)

    def ip(src, dst, seg):
        return raw_ip6(src, dst, 6, seg) if v6 else raw_ip4(src, dst, 6, seg)
    return [(True, ip(a, b, raw_tcp(sport, 80, flags=0x02))),
            (False, ip(b, a, raw_tcp(80, sport, flags=0x12))),
            (True, ip(a, b, raw_tcp(sport, 80, b"GET / HTTP/1.0\r\n\r\n"))),
            (False, ip(b, a, raw_tcp(80, sport, b"HTTP/1.0 200 OK\r\n\r\nhello")))]


def _outer4(proto):
    return lambda fwd, x: raw_ip4(O1, O2, proto, x) if fwd else raw_ip4(O2, O1, proto, x)


def _outer6(proto):
    return lambda fwd, x: raw_ip6(O61, O62, proto, x) if fwd else raw_ip6(O62, O61, proto, x)


def _udp(port):
    return lambda fwd, x: (raw_ip4(O1, O2, 17, raw_udp(5555, port, x)) if fwd
                           else raw_ip4(O2, O1, 17, raw_udp(port, 5555, x)))


# name -> (inner is IPv6, wrap(from A?, inner IP packet) -> outer IP packet, UDP tunnel port)
TUNNELS = {
    "ipip": (False, lambda f, p: _outer4(4)(f, p), None),
    "6in4": (True, lambda f, p: _outer4(41)(f, p), None),
    "4in6": (False, lambda f, p: _outer6(4)(f, p), None),
    "6in6": (True, lambda f, p: _outer6(41)(f, p), None),
    "gre-ip": (False, lambda f, p: _outer4(47)(f, gre(p, 0x0800, key=5)), None),
    "gre-ip6-in-ip6": (True, lambda f, p: _outer6(47)(f, gre(p, 0x86DD, seq=1)), None),
    "gre-teb": (False, lambda f, p: _outer4(47)(f, gre(eth_raw(p), 0x6558)), None),
    "erspan-1": (False, lambda f, p: _outer4(47)(f, gre(eth_raw(p), 0x88BE)), None),
    "erspan-2": (False, lambda f, p: _outer4(47)(f, erspan2(eth_raw(p))), None),
    "erspan-3": (False, lambda f, p: _outer4(47)(f, erspan3(eth_raw(p))), None),
    "erspan-3-subheader": (False, lambda f, p: _outer4(47)(f, erspan3(eth_raw(p), True)), None),
    "pptp": (False, lambda f, p: _outer4(47)(f, gre(b"\xff\x03\x00\x21" + p, 0x880B, key=9,
                                                    seq=1, version=1)), None),
    "gre-udp": (False, lambda f, p: _udp(4754)(f, gre(p, 0x0800)), 4754),
    "vxlan": (False, lambda f, p: _udp(4789)(f, vxlan(eth_raw(p))), 4789),
    "geneve": (False, lambda f, p: _udp(6081)(f, geneve(eth_raw(p), opt_words=2)), 6081),
    "geneve-ip": (False, lambda f, p: _udp(6081)(f, geneve(p, 0x0800)), 6081),
    "teredo": (True, lambda f, p: _udp(3544)(f, teredo(p, origin=True)), 3544),
    "vxlan-in-gre": (False, lambda f, p: _outer4(47)(f, gre(eth_raw(
        _udp(4789)(f, vxlan(eth_raw(p)))), 0x6558)), 4789),
}


def _pcap(path, packets, t0=1_700_000_000.0):
    write_pcap(path, [(t0 + i * 0.01, eth_raw(p)) for i, p in enumerate(packets)])
    return str(path)


def _extract(tmp_path, name, packets):
    out = tmp_path / f"{name}.flows"
    rep = extract([_pcap(tmp_path / f"{name}.pcap", packets)], out, SPEC)
    return FlowStore.open(out), rep


def _inner_flow(store, v6):
    f = store.flows
    hit = f[(f["orig_h"] == (A6 if v6 else A)) & (f["resp_h"] == (B6 if v6 else B))]
    assert len(hit) == 1, f[["orig_h", "orig_p", "resp_h", "resp_p", "proto"]]
    return int(hit.index[0]), hit.iloc[0]


@pytest.mark.parametrize("name", sorted(TUNNELS))
def test_inner_flow_has_the_untunnelled_bytes(tmp_path, name):
    v6, wrap, port = TUNNELS[name]
    conv = conversation(v6)
    ref, _ = _extract(tmp_path, "plain", [p for _, p in conv])
    got, rep = _extract(tmp_path, name, [wrap(fwd, p) for fwd, p in conv])
    i, row = _inner_flow(got, v6)
    j, _ = _inner_flow(ref, v6)
    assert (row["orig_p"], row["resp_p"], row["proto"]) == (40000, 80, "tcp")
    assert row["conn_state"] == "SF" or row["orig_pkts"] + row["resp_pkts"] == 4
    assert np.array_equal(got.samples[i], ref.samples[j])
    assert list(got.flows.loc[i, ["orig_pkts", "resp_pkts", "orig_bytes", "resp_bytes"]]) == \
        list(ref.flows.loc[j, ["orig_pkts", "resp_pkts", "orig_bytes", "resp_bytes"]])
    assert rep.skipped == {}
    assert rep.decoded["packets decapsulated into a tunnelled flow"] == 4
    outer_udp = got.flows[(got.flows["proto"] == "udp") & (got.flows["resp_p"] == (port or -1))]
    assert len(outer_udp) == (1 if port else 0)  # Zeek keeps a UDP tunnel's own connection
    assert len(got.flows) == (2 if port else 1)


def _skips(tmp_path, name, packets):
    _, rep = _extract(tmp_path, name, packets)
    return rep


def test_broken_tunnels_are_counted_skips(tmp_path):
    inner = conversation()[0][1]
    cases = {
        "truncated GRE": raw_ip4(O1, O2, 47, b"\x00\x00\x08"),
        "GRE routing bit": raw_ip4(O1, O2, 47, gre(inner, 0x0800)[:0] + b"\x40\x00\x08\x00"
                                   + inner),
        "GRE version 2": raw_ip4(O1, O2, 47, b"\x00\x02\x08\x00" + inner),
        "GRE unknown type": raw_ip4(O1, O2, 47, gre(inner, 0x1234)),
        "ERSPAN III cut": raw_ip4(O1, O2, 47, erspan3(eth_raw(inner))[:14]),
        "PPTP not IP": raw_ip4(O1, O2, 47, gre(b"\xff\x03\xc0\x21" + inner, 0x880B, key=1,
                                               version=1)),
        "IP-in-IP empty": raw_ip4(O1, O2, 4, b""),
    }
    rep = _skips(tmp_path, "broken", list(cases.values()))
    assert rep.packets == 0
    assert rep.skipped == {fr.SKIP_REASONS[fr.SKIP_TRUNCATED_TUNNEL]: 3,
                           fr.SKIP_REASONS[fr.SKIP_BAD_TUNNEL]: 4}


def test_nesting_stops_at_zeeks_max_depth(tmp_path):
    inner = conversation()[0][1]
    ok, deep = inner, inner
    for _ in range(4):
        ok = raw_ip4(O1, O2, 4, ok)
    deep = raw_ip4(O1, O2, 4, ok)  # five encapsulations
    store, rep = _extract(tmp_path, "deep", [ok, deep])
    assert len(store.flows) == 1 and store.flows["orig_pkts"].iloc[0] == 1
    assert rep.skipped == {fr.SKIP_REASONS[fr.SKIP_TUNNEL_DEPTH]: 1}


def test_bad_udp_tunnel_payload_keeps_the_outer_flow(tmp_path):
    inner = conversation()[0][1]
    pkts = [raw_ip4(O1, O2, 17, raw_udp(5555, 4789, vxlan(eth_raw(inner), i_flag=False))),
            raw_ip4(O1, O2, 17, raw_udp(5555, 4789, b"\x08\x00")),
            raw_ip4(O1, O2, 17, raw_udp(5555, 3544, inner))]      # not IPv6: not Teredo
    store, rep = _extract(tmp_path, "udpbad", pkts)
    assert sorted(store.flows["resp_p"]) == [3544, 4789]
    assert rep.skipped == {}
    assert rep.decoded == {
        "UDP tunnel packets whose inner packet was not usable (outer flow kept them)": 3}


def test_udp_tunnel_follows_the_responder_port(tmp_path):
    """Zeek decapsulates by the outer connection's responder port (UDP.cc ForwardPacket)."""
    inner = conversation()[0][1]
    # First packet 4789 -> 5555: the responder port is 5555, no VXLAN.
    pkts = [raw_ip4(O1, O2, 17, raw_udp(4789, 5555, vxlan(eth_raw(inner))))]
    store, rep = _extract(tmp_path, "respport", pkts)
    assert list(store.flows["resp_p"]) == [5555]
    assert not rep.decoded


def _live_samples(pcap: str, spec: FlowSampleSpec, with_ids: bool = True):
    """What serve builds from the requests the Zeek package publishes for this capture."""
    evs = capture_to_events([pcap], ZeekSideConfig(k=spec.k, snaplen=0,
                                                   max_wait=float("inf")))
    reqs = [e for e in evs if e.kind == "request"]
    batch = decode_flow_requests([json.dumps(e.message()) for e in reqs])
    assert not batch.errors
    s = build_flow_samples(batch.blob, batch.frame_off, batch.frame_len, batch.linktype,
                           batch.ts, batch.wire_len, batch.is_orig, batch.flow_start, spec,
                           batch.ids if with_ids else None)
    return {tuple(cid): i for i, cid in enumerate(batch.ids)}, s


def test_live_path_builds_the_same_bytes_for_tunnelled_flows(tmp_path):
    pkts = []
    for n, name in enumerate(sorted(TUNNELS)):
        v6, wrap, _ = TUNNELS[name]
        pkts += [wrap(fwd, p) for fwd, p in conversation(v6, sport=41000 + n)]
    pkts.append(raw_ip4(A, B, 17, raw_udp(53000, 53, b"plain dns")))
    pcap = _pcap(tmp_path / "all.pcap", pkts)
    extract([pcap], tmp_path / "all.flows", SPEC)
    store = FlowStore.open(tmp_path / "all.flows")
    live, s = _live_samples(pcap, SPEC)
    f = store.flows
    # + one outer flow per UDP tunnel port (vxlan-in-gre's UDP level is vxlan's 5-tuple:
    # the same connection, as in Zeek, whose key has no tunnel in it) + the plain one
    assert len(live) == len(f) == len(TUNNELS) + 4 + 1
    for i in range(len(f)):
        r = f.iloc[i]
        p = r["proto"]
        cid = (r["orig_h"], f"{r['orig_p']}/{p}", r["resp_h"], f"{r['resp_p']}/{p}")
        j = live[cid]
        assert s.n_selected[j] == r["n_selected"], cid
        assert np.array_equal(s.data[j], store.samples[i]), cid
        assert np.array_equal(s.direction[j], store.pkt_dir[i]), cid
    # Without the conn_ids (the outer level, as before tunnels were followed) they differ.
    _, outer = _live_samples(pcap, SPEC, with_ids=False)
    assert not np.array_equal(outer.data, s.data)


def test_only_flows_that_may_tunnel_are_keyed(tmp_path, monkeypatch):
    """The live path keys (conn_keys, a Python loop) only the flows flows_may_tunnel marks;
    keying every flow builds the same samples."""
    from semiflow.detector.sample import tunnel
    pkts = []
    for n, name in enumerate(sorted(TUNNELS)):
        v6, wrap, _ = TUNNELS[name]
        pkts += [wrap(fwd, p) for fwd, p in conversation(v6, sport=42000 + n)]
    pkts += [raw_ip4(A, B, 17, raw_udp(53000, 53, b"plain dns")),
             raw_ip4(A, B, 6, raw_tcp(40000, 80, b"GET / HTTP/1.1", flags=0x02))]
    pcap = _pcap(tmp_path / "mix.pcap", pkts)
    live, some = _live_samples(pcap, SPEC)
    evs = capture_to_events([pcap], ZeekSideConfig(k=SPEC.k, snaplen=0, max_wait=float("inf")))
    b = decode_flow_requests([json.dumps(e.message()) for e in evs if e.kind == "request"])
    marked = tunnel.flows_may_tunnel(b.blob, b.frame_off, b.frame_len, b.linktype,
                                     b.flow_start)
    plain = [live[(A, "53000/udp", B, "53/udp")], live[(A, "40000/tcp", B, "80/tcp")]]
    assert not marked[plain].any() and marked.sum() >= len(TUNNELS)
    monkeypatch.setattr(tunnel, "flows_may_tunnel", lambda *a: np.ones(len(b.ids), bool))
    _, every = _live_samples(pcap, SPEC)
    for name in ("data", "direction", "n_selected", "status", "skipped"):
        assert np.array_equal(getattr(some, name), getattr(every, name)), name


def test_unreadable_conn_ids_fall_back_to_the_outer_level():
    from semiflow.detector.sample.tunnel import conn_keys
    k = conn_keys([None, ("1.2.3.4", "99999999999999999999999/tcp", "5.6.7.8", "80/tcp"),
                   ("x", "1/tcp", "5.6.7.8", "80/tcp"), ("1.2.3.4", "70000/udp", B, "1/udp"),
                   (A6, "1/icmp", B6, "0/icmp")])
    assert k[:4].tolist() == [[0] * 8] * 4
    assert k[4, 6:].tolist() == [fr.PROTO_ICMP, 1]


def test_packet_meta_maps_tunnelled_packets_to_the_inner_flow(tmp_path):
    from semiflow.plugin.packet_meta import map_packets_to_flows, read_packet_meta
    v6, wrap, _ = TUNNELS["vxlan-in-gre"]
    store, _ = _extract(tmp_path, "meta", [wrap(fwd, p) for fwd, p in conversation(v6)])
    meta = read_packet_meta(tmp_path / "meta.pcap")
    i, _ = _inner_flow(store, v6)
    assert map_packets_to_flows(meta, store.flows).tolist() == [i] * 4
