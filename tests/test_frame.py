"""The flow-sample spec, byte for byte, on hand-built packets."""

from __future__ import annotations

import numpy as np
import pytest
from packets import ether, ip4, ip6, null, sll, sll2, tcp, udp

from semiflow.detector.sample import frame as fr
from semiflow.detector.sample.spec import FlowSampleSpec, build_flow_sample, parse_frame, sample_row

SPEC = FlowSampleSpec(k=4, l=256, selection="payload")


def test_ipv4_tcp_layout_and_address_mask():
    opts = b"\x02\x04\x05\xb4" + b"\x01\x01\x04\x02"  # MSS + NOP NOP SACK-permitted
    t = tcp(40000, 80, b"GET / HTTP/1.1\r\n", opts=opts)
    ip = ip4("10.0.0.1", "10.0.0.2", t, 6, ttl=61)
    raw_ip = bytes(ip)
    row = sample_row(ether(ip), 1, SPEC)
    assert row.dtype == np.uint8 and row.shape == (256,)
    # IP header at 0, addresses zeroed, rest of the 60-byte IP region zero
    expect_ip = bytearray(raw_ip[:20])
    expect_ip[12:20] = b"\0" * 8
    assert bytes(row[:20]) == bytes(expect_ip)
    assert row[8] == 61 and not row[20:60].any()
    # TCP header (28 bytes with options) at 60, padded to 120
    assert bytes(row[60:88]) == raw_ip[20:48]
    assert not row[88:120].any()
    assert bytes(row[120:136]) == b"GET / HTTP/1.1\r\n"
    assert not row[136:].any()


def test_ipv4_options_and_udp_padding():
    u = udp(5353, 53, b"\x12\x34query")
    ip = ip4("192.168.1.1", "8.8.8.8", u, 17, opts=b"\x94\x04\x00\x00")  # router alert
    row = sample_row(ether(ip), 1, SPEC)
    assert row[0] == 0x46  # IHL 6 kept
    assert bytes(row[20:24]) == b"\x94\x04\x00\x00"
    assert bytes(row[60:68]) == bytes(u)[:8]
    assert not row[68:120].any()  # 8-byte UDP header padded with 52 zeros
    assert bytes(row[120:127]) == b"\x12\x34query"


def test_ipv6_layout_masks_128bit_addresses():
    t = tcp(443, 50000, b"\x16\x03\x01hello")
    ip = ip6("2001:db8::1", "2001:db8::2", t, 6, hlim=33)
    row = sample_row(ether(ip), 1, SPEC)
    raw = bytes(ip)
    assert row[0] >> 4 == 6 and row[7] == 33
    assert not row[8:40].any()
    assert bytes(row[:8]) == raw[:8]
    assert bytes(row[60:80]) == raw[40:60]
    assert bytes(row[120:128]) == b"\x16\x03\x01hello"


@pytest.mark.parametrize("mask,zeroed", [
    (("ports",), [(60, 64)]), (("ttl",), [(8, 9)]), (("ip_id",), [(4, 6)]),
    (("checksums",), [(10, 12), (76, 78)]), ((), []),
])
def test_optional_masks(mask, zeroed):
    ip = ip4("1.2.3.4", "5.6.7.8", tcp(1234, 80, b"x"), 6)
    spec = FlowSampleSpec(k=1, l=200, mask=mask)
    row = sample_row(ether(ip), 1, spec)
    raw = bytes(ip)
    for a, b in zeroed:
        assert not row[a:b].any()
    if not mask:
        assert bytes(row[12:20]) == raw[12:20]  # addresses kept when not masked


@pytest.mark.parametrize("linktype,wrap", [
    (1, ether), (1, lambda ip: ether(ip, vlans=(10,))), (1, lambda ip: ether(ip, vlans=(7, 99))),
    (113, sll), (276, sll2), (101, bytes), (228, bytes), (0, null),
    (108, lambda ip: null(ip, True)),
])
@pytest.mark.parametrize("version", [4, 6])
def test_every_link_type_gives_the_same_row(linktype, wrap, version):
    t = udp(1000, 2000, b"same payload")
    ip = ip4("10.1.1.1", "10.2.2.2", t, 17) if version == 4 else ip6("fe80::1", "fe80::2", t, 17)
    if linktype == 228 and version == 6:
        linktype = 229
    expect = sample_row(bytes(ip), 101, SPEC)
    assert np.array_equal(sample_row(wrap(ip), linktype, SPEC), expect)


def test_snaplen_and_ethernet_padding():
    ip = ip4("1.1.1.1", "2.2.2.2", tcp(1, 2, b"abc"), 6)
    frame = ether(ip) + b"\0" * 20  # Ethernet trailer padding must not become payload
    row = sample_row(frame, 1, SPEC)
    assert bytes(row[120:123]) == b"abc" and not row[123:].any()
    _, info = parse_frame(frame, 1)
    assert info[fr.F_PAYLEN] == 3
    # Cut by snaplen inside the payload: payload length still comes from the IP header
    _, info = parse_frame(ether(ip)[:-2], 1)
    assert info[fr.F_REASON] == 0 and info[fr.F_PAYLEN] == 3


@pytest.mark.parametrize("frame,linktype,reason", [
    (b"\x00" * 10, 1, fr.SKIP_TRUNCATED_LINK),
    (b"\x02" * 12 + b"\x08\x06" + b"\x00" * 28, 1, fr.SKIP_NON_IP),       # ARP
    (b"\x02" * 12 + b"\x08\x00" + b"\x45\x00", 1, fr.SKIP_TRUNCATED_IPV4),
    (b"\x02" * 12 + b"\x08\x00" + b"\x43" + b"\x00" * 30, 1, fr.SKIP_BAD_IPV4),
    (b"\x60" + b"\x00" * 20, 101, fr.SKIP_TRUNCATED_IPV6),
    (b"\x00" * 40, 147, fr.SKIP_UNKNOWN_LINKTYPE),
])
def test_malformed_frames_name_their_reason(frame, linktype, reason):
    _, info = parse_frame(frame, linktype)
    assert info[fr.F_REASON] == reason
    with pytest.raises(ValueError, match=fr.SKIP_REASONS[reason]):
        sample_row(frame, linktype, SPEC)


def test_truncated_tcp_and_fragments():
    ip = ip4("1.1.1.1", "2.2.2.2", tcp(1, 2, b"payload"), 6)
    raw = bytes(ip)
    _, info = parse_frame(raw[:30], 101)
    assert info[fr.F_REASON] == fr.SKIP_TRUNCATED_TCP
    frag = bytearray(raw)
    frag[6:8] = b"\x00\x10"  # fragment offset 16
    _, info = parse_frame(bytes(frag), 101)
    assert info[fr.F_REASON] == fr.SKIP_FRAGMENT


def test_build_flow_sample_selects_payload_packets_in_order():
    syn = ether(ip4("10.0.0.1", "10.0.0.2", tcp(1111, 80, flags=0x02), 6))
    synack = ether(ip4("10.0.0.2", "10.0.0.1", tcp(80, 1111, flags=0x12), 6))
    req = ether(ip4("10.0.0.1", "10.0.0.2", tcp(1111, 80, b"GET /"), 6))
    resp = ether(ip4("10.0.0.2", "10.0.0.1", tcp(80, 1111, b"HTTP/1.1 200"), 6))
    frames = [(syn, 1, 1.0, len(syn), True), (synack, 1, 1.1, len(synack), False),
              (b"\x00" * 5, 1, 1.15, 5, True),
              (req, 1, 1.2, len(req), True), (resp, 1, 1.3, len(resp), False)]
    s = build_flow_sample(frames, SPEC)
    assert s.n_selected == 2 and s.status == "ok"
    assert list(s.direction) == [0, 1, -1, -1]
    assert list(s.ts[:2]) == [1.2, 1.3]
    assert bytes(s.data[0, 120:125]) == b"GET /" and not s.data[2:].any()
    assert s.skipped == {"truncated link-layer header": 1}
    all_spec = FlowSampleSpec(k=4, l=256, selection="all")
    s = build_flow_sample(frames, all_spec)
    assert s.n_selected == 4 and list(s.direction) == [0, 1, 0, 1]
    s = build_flow_sample(frames[:2], SPEC)
    assert s.n_selected == 0 and s.status == "no_payload"
    s = build_flow_sample([(b"junk", 1, 0.0, 4, True)], SPEC)
    assert s.status == "unparsed"


def test_spec_validation_and_round_trip():
    with pytest.raises(ValueError, match="mask"):
        FlowSampleSpec(mask=("addresses", "bogus"))
    with pytest.raises(ValueError, match="selection"):
        FlowSampleSpec(selection="some")
    s = FlowSampleSpec(k=3, l=100, mask=("ttl", "addresses"))
    assert FlowSampleSpec.from_dict(s.to_dict()) == s
