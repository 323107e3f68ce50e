"""Community ID v1 (the flow hash Suricata and Zeek both log) for semiflow's flow tables.

Computed with the PyPI `communityid` package, the reference implementation; the value equals
Suricata's `community_id` with `community-id-seed: 0` (tests/test_suricata.py checks it
against a real eve.json).
"""

from __future__ import annotations

from collections.abc import Iterable

import communityid
import pandas as pd

_PROTO_NUM = {"tcp": 6, "udp": 17, "icmp": 1, "icmp6": 58, "ipv6-icmp": 58, "sctp": 132}


def _tuple(proto: int, ip_version: int, src: str, dst: str, sport: int, dport: int):
    ft = communityid.FlowTuple
    if proto == 6:
        return ft.make_tcp(src, dst, sport, dport)
    if proto == 17:
        return ft.make_udp(src, dst, sport, dport)
    if proto == 132:
        return ft.make_sctp(src, dst, sport, dport)
    if proto in (1, 58):
        # semiflow's flow tables keep ICMP type/code in the port columns, as Zeek does
        make = ft.make_icmp6 if (proto == 58 or ip_version == 6) else ft.make_icmp
        return make(src, dst, sport, dport)
    return ft.make_ip(src, dst, proto)


class CommunityIds:
    """Community ID v1 calculator with a seed (Suricata's `community-id-seed`, default 0)."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._cid = communityid.CommunityID(seed=seed)

    def one(self, proto: int | str, src: str, dst: str, sport: int, dport: int,
            ip_version: int = 4) -> str:
        p = _PROTO_NUM.get(proto.lower(), -1) if isinstance(proto, str) else int(proto)
        if p < 0:
            raise ValueError(f"community id: unknown protocol {proto!r}")
        return self._cid.calc(_tuple(p, ip_version, src, dst, int(sport), int(dport)))

    def suricata_same_host(self, proto: int | str, src: str, dst: str, sport: int,
                           dport: int, ip_version: int = 4) -> str | None:
        """The id Suricata before 7.0.12 / 8.0.1 logs for a TCP/UDP flow with src == dst.

        Those versions order the two ports of a same-address flow by their network-byte-order
        value read as a host integer (OISF ticket 5689), so their community_id differs from
        the specification's whenever the byte-swapped order differs. None when src != dst or
        the two ids agree; the connector uses it only to find Suricata's flow_id.
        """
        p = _PROTO_NUM.get(proto.lower(), -1) if isinstance(proto, str) else int(proto)
        if src != dst or p not in (6, 17, 132) or sport == dport:
            return None
        swapped = int(sport).to_bytes(2, "big")[::-1] > int(dport).to_bytes(2, "big")[::-1]
        if swapped:
            sport, dport = dport, sport
        tpl = _tuple(p, ip_version, src, dst, int(sport), int(dport)).in_nbo()
        legacy = self._cid.render(self._cid.hash(tpl))
        return None if legacy == self.one(p, src, dst, sport, dport, ip_version) else legacy

    def many(self, protos: Iterable, srcs: Iterable[str], dsts: Iterable[str],
             sports: Iterable[int], dports: Iterable[int],
             ip_versions: Iterable[int] | None = None) -> list[str]:
        protos, srcs, dsts = list(protos), list(srcs), list(dsts)
        sports, dports = list(sports), list(dports)
        vers = list(ip_versions) if ip_versions is not None else [4] * len(protos)
        return [self.one(p, s, d, sp, dp, v)
                for p, s, d, sp, dp, v in zip(protos, srcs, dsts, sports, dports, vers)]

    def for_flows(self, flows: pd.DataFrame) -> list[str]:
        """One id per row of a flow table (plugin.flowstore columns: orig_h, resp_p, proto...)."""
        vers = flows["ip_version"] if "ip_version" in flows else None
        return self.many(flows["proto"], flows["orig_h"], flows["resp_h"], flows["orig_p"],
                         flows["resp_p"], vers)


def community_id(proto: int | str, src: str, dst: str, sport: int, dport: int,
                 seed: int = 0, ip_version: int = 4) -> str:
    """Community ID v1 of one flow (either direction gives the same value)."""
    return CommunityIds(seed).one(proto, src, dst, sport, dport, ip_version)
