"""An independent, slow, pure-Python flow table built on dpkt (Zeek-like flow rules).

Two users: the traffic lab labels the flows of its captures with it (it never imports the
detector), and the tests hold plugin/flowscan.py against it: it shares no code with the
compiled loop, so agreement on the whole corpus is evidence that both implement the
documented rules (docs/flow-sample-spec.md).
"""

from __future__ import annotations

import gzip

import dpkt

TIMEOUT = {6: 300.0, 17: 60.0, 1: 60.0, 58: 60.0}
CLOSE_DELAY = 5.0


def _reader(path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    fh = gzip.open(path, "rb") if gz else open(path, "rb")
    magic = fh.read(4)
    fh.seek(0)
    if magic == b"\x0a\x0d\x0d\x0a":
        return fh, dpkt.pcapng.Reader(fh)
    return fh, dpkt.pcap.Reader(fh)


def _ip_of(buf: bytes, linktype: int):
    if linktype == 1:
        eth = dpkt.ethernet.Ethernet(buf)
        ip = eth.data
    elif linktype == 113:
        ip = dpkt.sll.SLL(buf).data
    elif linktype == 276:
        ip = dpkt.sll2.SLL2(buf).data
    elif linktype in (101, 12, 14, 228, 229):
        ip = dpkt.ip6.IP6(buf) if buf[0] >> 4 == 6 else dpkt.ip.IP(buf)
    elif linktype in (0, 108):
        ip = dpkt.ip6.IP6(buf[4:]) if buf[4] >> 4 == 6 else dpkt.ip.IP(buf[4:])
    else:
        return None
    while isinstance(ip, (dpkt.pppoe.PPPoE, dpkt.ppp.PPP)):
        ip = ip.data
    return ip if isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) else None


def reference_flows(path) -> list[tuple]:
    """(orig, resp, proto, packets) of every flow, in no particular order."""
    return [(f["orig"], f["resp"], f["proto"], f["n"]) for f in flow_records(path)]


def flow_records(path) -> list[dict]:
    """Every flow as a dict: orig/resp (address bytes, port), proto, n (packets), first/last
    (timestamps), orig_ip_bytes/resp_ip_bytes (IP lengths by direction), orig_bytes/resp_bytes
    (TCP/UDP payload by direction); in no particular order."""
    fh, rd = _reader(path)
    live: dict = {}
    done: list = []
    try:
        linktype = rd.datalink()
        now = last_sweep = 0.0
        for ts, buf in rd:
            ts = float(ts)
            # Expire flows against the newest time seen, once per second of capture time.
            if now - last_sweep >= 1.0:
                for k in [k for k, s in live.items()
                          if now - s["last"] > (CLOSE_DELAY if s["closed"] else TIMEOUT[k[2]])]:
                    s = live.pop(k)
                    done.append(_record(s, k[2]))
                last_sweep = now
            now = max(now, ts)
            try:
                ip = _ip_of(buf, linktype)
            except (dpkt.UnpackError, IndexError, ValueError):
                continue
            if ip is None:
                continue
            if (isinstance(ip, dpkt.ip.IP) and ip.v != 4) or \
                    (isinstance(ip, dpkt.ip6.IP6) and ip.v != 6):
                continue  # the version nibble decides, as in Zeek (dpkt trusts the ethertype)
            if isinstance(ip, dpkt.ip.IP):
                if ip.offset:
                    continue
                src, dst, p = ip.src, ip.dst, ip.p
            else:
                src, dst, p = ip.src, ip.dst, ip.nxt
                # dpkt walks extension headers into ip.data; its p is the upper protocol
                p = getattr(ip, "p", p)
                frag = ip.extension_hdrs.get(44) if hasattr(ip, "extension_hdrs") else None
                if frag is not None and frag.frag_off != 0:
                    continue
            l4 = ip.data
            if p in (6, 17):
                if not isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)):
                    continue
                if p == 6 and (l4.off < 5 or l4.off * 4 != 20 + len(l4.opts)):
                    continue  # header length field points past the captured / IP payload
                sp, dp = l4.sport, l4.dport
                flags = l4.flags if p == 6 else 0
            elif p in (1, 58):
                if not isinstance(l4, (dpkt.icmp.ICMP, dpkt.icmp6.ICMP6)):
                    continue
                sp = dp = 0
                flags = 0
            else:
                continue
            a, b = (src, sp), (dst, dp)
            key = (min(a, b), max(a, b), p)
            st = live.get(key)
            if st is not None:
                closed = st["closed"]
                tmo = CLOSE_DELAY if closed else TIMEOUT[p]
                syn_only = p == 6 and flags & 0x02 and not flags & 0x10
                if ts - st["last"] > tmo or (closed and syn_only):
                    done.append(_record(st, p))
                    st = None
            if st is None:
                orig, resp = (b, a) if (p == 6 and flags & 0x12 == 0x12) else (a, b)
                st = {"orig": orig, "resp": resp, "first": ts, "last": ts, "n": 0,
                      "fin": set(), "closed": False, "bytes": [0, 0], "payload": [0, 0],
                      # Zeek (and semiflow's flow table) report an ICMP flow's first type
                      # and code where TCP/UDP have ports.
                      "icmp": (l4.type, l4.code) if p in (1, 58) else None}
                live[key] = st
            st["n"] += 1
            st["last"] = max(st["last"], ts)
            side = int((src, sp) != st["orig"])
            st["bytes"][side] += len(ip)
            st["payload"][side] += len(l4.data) if p in (6, 17) else 0
            if p == 6:
                side = (src, sp) == st["orig"]
                if flags & 0x01:
                    st["fin"].add(side)
                if flags & 0x04 or len(st["fin"]) == 2:
                    st["closed"] = True
    except (dpkt.NeedData, dpkt.UnpackError, ValueError, EOFError, OSError):
        pass
    finally:
        fh.close()
    done.extend(_record(st, k[2]) for k, st in live.items())
    return done


def _record(st: dict, proto: int) -> dict:
    return {"orig": st["orig"], "resp": st["resp"], "proto": proto, "n": st["n"],
            "first": st["first"], "last": st["last"], "orig_ip_bytes": st["bytes"][0],
            "resp_ip_bytes": st["bytes"][1], "orig_bytes": st["payload"][0],
            "resp_bytes": st["payload"][1], "icmp": st["icmp"]}
