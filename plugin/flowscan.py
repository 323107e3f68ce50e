"""The compiled capture loop: pcap/pcapng records -> Zeek-like bidirectional flows -> samples.

Written with numba because a Python per-packet loop tops out far below the 1M packets/s
target (benchmarks/extract_speed.py measures both). The per-packet bytes come from the same
kernels the live path uses (detector.sample.frame.parse_frame / write_sample_row).

State lives in numpy arrays owned by plugin.capture.FlowTable; the kernels stop and return a
code when an array is full, the Python side grows or flushes it and calls again.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from semiflow.detector.sample import frame as fr
from semiflow.detector.sample import tunnel as tn

from . import ipfrag as ipf

# Per-flow integer fields (rows of FlowTable.ints and of the output buffer).
K_AHI, K_ALO, K_BHI, K_BLO, K_PORTS, K_PROTO = 0, 1, 2, 3, 4, 5
I_ORIG_HI, I_ORIG_LO, I_RESP_HI, I_RESP_LO = 6, 7, 8, 9
I_ORIG_P, I_RESP_P, I_PROTO, I_IPVER = 10, 11, 12, 13
I_ORIG_PKTS, I_RESP_PKTS, I_ORIG_IP_BYTES, I_RESP_IP_BYTES = 14, 15, 16, 17
I_ORIG_BYTES, I_RESP_BYTES, I_NSEL, I_FLAGS, I_ALIVE, I_SEQ = 18, 19, 20, 21, 22, 23
NI = 24

# TCP flag history bits (I_FLAGS); the conn_state is derived from them as Zeek does.
O_SYN, O_SYNACK, O_FIN, O_RST = 1, 2, 4, 8
R_SYN, R_SYNACK, R_FIN, R_RST = 16, 32, 64, 128
O_DATA, R_DATA = 256, 512

# Scalar state (FlowTable.st).
S_POS, S_NOUT, S_SLOT_TOP, S_POOL_TOP, S_SEQ, S_PACKETS, S_NIF = 0, 1, 2, 3, 4, 5, 6
S_LINKTYPE, S_SWAP, S_NSEC = 7, 8, 9
# Packets older than the capture clock by more than LATE_S, and the largest such lag (us):
# input out of timestamp order (e.g. Suricata's pcap-log written by several worker threads)
# ends flows early, since the clock that times them out ran ahead.
S_LATE, S_MAX_LAG_US = 10, 11
LATE_S = 1.0
S_NOTE0 = 12  # st[S_NOTE0 + N_...]: the NOTES counters below
# Float scalar state (FlowTable.fst).
FS_LAST_SWEEP, FS_NOW, FS_LAST_TS = 0, 1, 2
# Config (FlowTable.cfg): K, selection code, mask bits, max caplen.
C_K, C_SELECT, C_MASK, C_MAXCAP = 0, 1, 2, 3
# Timeouts (FlowTable.tmo), seconds: Zeek's defaults.
T_TCP, T_UDP, T_ICMP, T_CLOSE, T_SWEEP = 0, 1, 2, 3, 4

# Informational counters (in FlowTable.st from S_NOTE0): what tunnels and reassembly added.
# N_MULTI and N_MERGED square the books: packets in flows = packets used + N_MULTI - N_MERGED.
N_DECAP, N_FRAG_DGRAMS, N_FRAG_PIECES, N_INNER_SKIPPED, N_MULTI, N_MERGED = 0, 1, 2, 3, 4, 5
NOTES = ("packets decapsulated into a tunnelled flow", "IP datagrams reassembled",
         "IP fragments in reassembled datagrams",
         "UDP tunnel packets whose inner packet was not usable (outer flow kept them)",
         "packets counted in a second flow (a UDP tunnel's and the one inside it)",
         "fragments merged into one flow packet (their datagram's)")
NS = S_NOTE0 + len(NOTES)

# Return codes of the scan kernels.
R_NEED_DATA = 0      # consumed every complete record; give more bytes (or finish)
R_OUT_FULL = 1       # output buffer full: flush it
R_NEED_SLOTS = 2     # no free flow slot: grow
R_NEED_POOL = 3      # no free sample row: grow
R_BAD_RECORD = 4     # record framing is corrupt: cannot resynchronise
R_NEED_IFACES = 5    # pcapng with more interfaces than the table holds


@njit(cache=True)
def _timeout(ints, s, tmo):
    proto = ints[s, I_PROTO]
    if proto == fr.PROTO_TCP:
        f = ints[s, I_FLAGS]
        if ((f & O_FIN) and (f & R_FIN)) or (f & O_RST) or (f & R_RST):
            return tmo[T_CLOSE]
        return tmo[T_TCP]
    if proto == fr.PROTO_UDP:
        return tmo[T_UDP]
    return tmo[T_ICMP]


@njit(cache=True)
def _emit(s, ints, tss, sel, sdir, spts, splen, sext, pool, pool_free, slot_free, keys,
          oints, otss, odata, odir, opts, oplen, oext, st):
    m = st[S_NOUT]
    for j in range(NI):
        oints[m, j] = ints[s, j]
    otss[m, 0] = tss[s, 0]
    otss[m, 1] = tss[s, 1]
    n = ints[s, I_NSEL]
    kk = sel.shape[1]
    for k in range(kk):
        if k < n:
            # Only the row's extent is ever read back (pack_rows); the rest is padding.
            p = sel[s, k]
            e = sext[s, k]
            odata[m, k, :e] = pool[p, :e]
            odir[m, k] = sdir[s, k]
            opts[m, k] = spts[s, k]
            oplen[m, k] = splen[s, k]
            oext[m, k] = sext[s, k]
            pool_free[st[S_POOL_TOP]] = p
            st[S_POOL_TOP] += 1
        else:
            odir[m, k] = -1
            opts[m, k] = 0.0
            oplen[m, k] = 0
            oext[m, k] = 0
    key = (ints[s, K_AHI], ints[s, K_ALO], ints[s, K_BHI], ints[s, K_BLO],
           ints[s, K_PORTS], ints[s, K_PROTO])
    keys.pop(key)
    ints[s, I_ALIVE] = 0
    slot_free[st[S_SLOT_TOP]] = s
    st[S_SLOT_TOP] += 1
    st[S_NOUT] = m + 1


@njit(cache=True)
def _sweep(now, final, ints, tss, sel, sdir, spts, splen, sext, pool, pool_free, slot_free, keys,
           oints, otss, odata, odir, opts, oplen, oext, st, tmo):
    """Emit expired flows (all live flows when final). Returns False if the output filled up."""
    for s in range(ints.shape[0]):
        if ints[s, I_ALIVE] == 0:
            continue
        if final or now - tss[s, 1] > _timeout(ints, s, tmo):
            if st[S_NOUT] >= oints.shape[0]:
                return False
            _emit(s, ints, tss, sel, sdir, spts, splen, sext, pool, pool_free, slot_free, keys,
                  oints, otss, odata, odir, opts, oplen, oext, st)
    return True


@njit(cache=True, inline="always")
def _flow(buf, info, ts, wlen, sample, ints, tss, sel, sdir, spts, splen, sext, pool, pool_free,
          slot_free, keys, oints, otss, odata, odir, opts, oplen, oext, st, cfg, tmo):
    """One parsed IP level: find or open its flow, count it, keep its bytes if selected (and
    `sample`). Returns the flow's slot."""
    proto = info[fr.F_PROTO]
    shi, slo, dhi, dlo = info[fr.F_SRC_HI], info[fr.F_SRC_LO], info[fr.F_DST_HI], info[fr.F_DST_LO]
    sp, dp = info[fr.F_SPORT], info[fr.F_DPORT]
    if proto == fr.PROTO_ICMP or proto == fr.PROTO_ICMP6:
        kp_a, kp_b = 0, 0  # one ICMP "connection" per address pair, as Zeek keys echo pairs
    else:
        kp_a, kp_b = sp, dp
    if (shi, slo, kp_a) <= (dhi, dlo, kp_b):
        key = (shi, slo, dhi, dlo, (kp_a << 16) | kp_b, proto)
    else:
        key = (dhi, dlo, shi, slo, (kp_b << 16) | kp_a, proto)
    tflags = info[fr.F_TCPFLAGS]
    syn_only = proto == fr.PROTO_TCP and (tflags & 0x02) != 0 and (tflags & 0x10) == 0

    s = keys[key] if key in keys else np.int64(-1)
    if s >= 0:
        f = ints[s, I_FLAGS]
        closed = ((f & O_FIN) and (f & R_FIN)) or (f & O_RST) or (f & R_RST)
        if ts - tss[s, 1] > _timeout(ints, s, tmo) or (closed and syn_only):
            _emit(s, ints, tss, sel, sdir, spts, splen, sext, pool, pool_free, slot_free, keys,
                  oints, otss, odata, odir, opts, oplen, oext, st)
            s = -1
    if s < 0:
        st[S_SLOT_TOP] -= 1
        s = slot_free[st[S_SLOT_TOP]]
        for j in range(NI):
            ints[s, j] = 0
        ints[s, K_AHI], ints[s, K_ALO], ints[s, K_BHI] = key[0], key[1], key[2]
        ints[s, K_BLO], ints[s, K_PORTS], ints[s, K_PROTO] = key[3], key[4], key[5]
        # Zeek makes the sender of the first packet the originator, except that a SYN-ACK
        # seen first belongs to the responder (the handshake's SYN was missed).
        flip = proto == fr.PROTO_TCP and (tflags & 0x12) == 0x12
        if flip:
            ints[s, I_ORIG_HI], ints[s, I_ORIG_LO], ints[s, I_ORIG_P] = dhi, dlo, dp
            ints[s, I_RESP_HI], ints[s, I_RESP_LO], ints[s, I_RESP_P] = shi, slo, sp
        else:
            ints[s, I_ORIG_HI], ints[s, I_ORIG_LO], ints[s, I_ORIG_P] = shi, slo, sp
            ints[s, I_RESP_HI], ints[s, I_RESP_LO], ints[s, I_RESP_P] = dhi, dlo, dp
        ints[s, I_PROTO] = proto
        ints[s, I_IPVER] = info[fr.F_IPVER]
        ints[s, I_ALIVE] = 1
        ints[s, I_SEQ] = st[S_SEQ]
        st[S_SEQ] += 1
        tss[s, 0] = ts
        tss[s, 1] = ts
        keys[key] = s

    is_orig = shi == ints[s, I_ORIG_HI] and slo == ints[s, I_ORIG_LO] and \
        (sp == ints[s, I_ORIG_P] or proto == fr.PROTO_ICMP or proto == fr.PROTO_ICMP6)
    if proto == fr.PROTO_ICMP or proto == fr.PROTO_ICMP6:
        # Both directions share the address pair; the sender decides the direction.
        is_orig = shi == ints[s, I_ORIG_HI] and slo == ints[s, I_ORIG_LO]
    pay = info[fr.F_PAYLEN]
    iplen = info[fr.F_IPLEN]
    if is_orig:
        ints[s, I_ORIG_PKTS] += 1
        ints[s, I_ORIG_IP_BYTES] += iplen
        ints[s, I_ORIG_BYTES] += pay
    else:
        ints[s, I_RESP_PKTS] += 1
        ints[s, I_RESP_IP_BYTES] += iplen
        ints[s, I_RESP_BYTES] += pay
    f = ints[s, I_FLAGS]
    if proto == fr.PROTO_TCP:
        syn = (tflags & 0x02) != 0
        ack = (tflags & 0x10) != 0
        if is_orig:
            if syn:
                f |= O_SYNACK if ack else O_SYN
            if tflags & 0x01:
                f |= O_FIN
            if tflags & 0x04:
                f |= O_RST
        else:
            if syn:
                f |= R_SYNACK if ack else R_SYN
            if tflags & 0x01:
                f |= R_FIN
            if tflags & 0x04:
                f |= R_RST
    if pay > 0:
        f |= O_DATA if is_orig else R_DATA
    ints[s, I_FLAGS] = f
    if ts > tss[s, 1]:
        tss[s, 1] = ts

    n = ints[s, I_NSEL]
    if sample and n < cfg[C_K] and (cfg[C_SELECT] == 1 or pay > 0):
        st[S_POOL_TOP] -= 1
        p = pool_free[st[S_POOL_TOP]]
        sext[s, n] = fr.write_sample_row(buf, info, pool[p], cfg[C_MASK], False)
        sel[s, n] = p
        sdir[s, n] = 0 if is_orig else 1
        spts[s, n] = ts
        splen[s, n] = wlen
        ints[s, I_NSEL] = n + 1
    return s


@njit(cache=True)
def _packet(buf, a, b, linktype, ts, wlen, info, ints, tss, sel, sdir, spts, splen, sext, pool,
            pool_free, slot_free, keys, oints, otss, odata, odir, opts, oplen, oext, st, fst, cfg,
            tmo, skips):
    """One frame, the common case: parse it and hand it to its flow. Returns False when the
    frame needs _levels (a fragment, or a tunnel Zeek decapsulates); the caller then calls
    it with the parse left in `info`. The split keeps this function's arguments as they were:
    with the fragment state added here the loop ran 35% slower (1.8M -> 1.1M packets/s,
    kernel-only timing), as LLVM stops inlining it into the scan loop."""
    if ts > fst[FS_NOW]:  # capture time advances with every record, as Zeek's network time
        fst[FS_NOW] = ts
    elif fst[FS_NOW] - ts > LATE_S:
        st[S_LATE] += 1
        lag = np.int64((fst[FS_NOW] - ts) * 1e6)
        if lag > st[S_MAX_LAG_US]:
            st[S_MAX_LAG_US] = lag
    reason = fr.parse_frame(buf, a, b, linktype, info)
    if info[fr.F_FRAG] != 0:
        return False
    if reason == fr.OK:
        if info[fr.F_PROTO] == fr.PROTO_UDP and tn.may_tunnel_udp(info):
            return False
        st[S_PACKETS] += 1
        _flow(buf, info, ts, wlen, True, ints, tss, sel, sdir, spts, splen, sext, pool,
              pool_free, slot_free, keys, oints, otss, odata, odir, opts, oplen, oext, st, cfg,
              tmo)
        return True
    if reason == fr.SKIP_UNTRACKED_PROTO and tn.may_tunnel_ip(info):
        return False
    skips[reason] += 1
    return True


@njit(cache=True)
def _levels(buf, a, b, ts, wlen, info, ints, tss, sel, sdir, spts, splen, sext, pool,
            pool_free, slot_free, keys, oints, otss, odata, odir, opts, oplen, oext, st, cfg,
            tmo, skips, fints, fdata):
    """The slow path of _packet: fragments and tunnels, level by level (info: the outer
    level as _packet parsed it)."""
    reason = info[fr.F_REASON]
    cur = buf
    held = np.full(tn.MAX_DEPTH + 1, -1, np.int64)  # reassembly slots to release at the end
    nheld = 0
    used = False        # some level's flow has the frame
    pieces = 1          # frames this packet stands for (a reassembled datagram: its pieces)
    sample = True
    decap = False       # a flow inside a tunnel has the frame
    depth = 0
    while True:
        if info[fr.F_FRAG] != 0:
            if not ipf.whole(cur, info):
                # Partly captured: Zeek drops a non-first piece, analyses a first one as is.
                if info[fr.F_FRAG_OFF] != 0:
                    if not used:
                        skips[fr.SKIP_FRAGMENT] += 1
                    break
            else:
                outcome, fs_ = ipf.add(cur, info, ts, 0 if used else pieces, fints, fdata, keys,
                                       skips)
                if outcome != ipf.COMPLETE:
                    break  # held for later, or counted as bad
                held[nheld] = fs_
                nheld += 1
                if not used:
                    pieces = fints[fs_, ipf.FI_UNCOUNTED]
                st[S_NOTE0 + N_FRAG_DGRAMS] += 1
                st[S_NOTE0 + N_FRAG_PIECES] += fints[fs_, ipf.FI_PIECES]
                da, db = ipf.datagram(fints, fs_)
                if depth == 0:  # as Zeek: the link header plus the datagram (IP.cc)
                    wlen = info[fr.F_L3OFF] - a + db - da
                cur = fdata[fs_]
                reason = fr.parse_ip(cur, da, db, info)
                info[fr.F_FRAG] = 0
                sample = False
        if reason == fr.OK:
            s = _flow(cur, info, ts, wlen, sample, ints, tss, sel, sdir, spts, splen, sext,
                      pool, pool_free, slot_free, keys, oints, otss, odata, odir, opts, oplen,
                      oext, st, cfg, tmo)
            if not used:
                st[S_PACKETS] += pieces
                st[S_NOTE0 + N_MERGED] += pieces - 1
                used = True
            else:
                st[S_NOTE0 + N_MULTI] += 1
            if depth > 0:
                decap = True
            if info[fr.F_PROTO] != fr.PROTO_UDP:
                break
            start, lt, r = tn.tunnel_inner(cur, info, ints[s, I_RESP_P])
            if start < 0:
                if r != fr.OK:
                    st[S_NOTE0 + N_INNER_SKIPPED] += 1
                break
            if depth >= tn.MAX_DEPTH:
                st[S_NOTE0 + N_INNER_SKIPPED] += 1
                break
        elif reason == fr.SKIP_UNTRACKED_PROTO:
            start, lt, r = tn.tunnel_inner(cur, info, tn.ANY_PORT)
            if start >= 0 and depth >= tn.MAX_DEPTH:
                r = fr.SKIP_TUNNEL_DEPTH
                start = -1
            if start < 0:
                if r == fr.OK:
                    r = reason  # not a tunnel: an IP protocol Zeek makes no connection of
                if used:
                    st[S_NOTE0 + N_INNER_SKIPPED] += 1
                else:
                    skips[r] += pieces
                break
        else:
            if used:
                st[S_NOTE0 + N_INNER_SKIPPED] += 1
            else:
                skips[reason] += pieces
            break
        end = info[fr.F_IPEND]
        reason = tn.parse_inner(cur, start, lt, end, info)
        depth += 1
    if decap:
        st[S_NOTE0 + N_DECAP] += 1
    for i in range(nheld):
        ipf.release(held[i], fints, fdata, keys)


@njit(cache=True, inline="always")
def _rd32(buf, i, swap):
    if swap:
        return (np.int64(buf[i]) << 24) | (np.int64(buf[i + 1]) << 16) | \
            (np.int64(buf[i + 2]) << 8) | np.int64(buf[i + 3])
    return (np.int64(buf[i + 3]) << 24) | (np.int64(buf[i + 2]) << 16) | \
        (np.int64(buf[i + 1]) << 8) | np.int64(buf[i])


@njit(cache=True, inline="always")
def _rd16(buf, i, swap):
    if swap:
        return (np.int64(buf[i]) << 8) | np.int64(buf[i + 1])
    return (np.int64(buf[i + 1]) << 8) | np.int64(buf[i])


@njit(cache=True)
def _room(ints, pool, oints, st):
    if st[S_SLOT_TOP] < 1:
        return R_NEED_SLOTS
    if st[S_POOL_TOP] < 1:
        return R_NEED_POOL
    if st[S_NOUT] + 1 >= oints.shape[0]:
        return R_OUT_FULL
    return -1


@njit(cache=True)
def scan_pcap(buf, n, final, info, ints, tss, sel, sdir, spts, splen, sext, pool, pool_free,
              slot_free, keys, oints, otss, odata, odir, opts, oplen, oext, st, fst, cfg, tmo,
              skips, fints, fdata):
    """Walk classic-pcap records in buf[st[S_POS]:n] (the 24-byte file header already read)."""
    swap = st[S_SWAP]
    scale = 1e-9 if st[S_NSEC] else 1e-6
    linktype = st[S_LINKTYPE]
    pos = st[S_POS]
    while True:
        # Kept inline in both kernels on purpose: as a shared helper (even inline="always")
        # the kernel ran 27% slower (1.79M -> 1.32M packets/s, /tmp kernel-only timing).
        if fst[FS_NOW] - fst[FS_LAST_SWEEP] >= tmo[T_SWEEP]:
            if not _sweep(fst[FS_NOW], False, ints, tss, sel, sdir, spts, splen, sext, pool,
                          pool_free, slot_free, keys, oints, otss, odata, odir, opts, oplen, oext,
                          st, tmo):
                st[S_POS] = pos
                return R_OUT_FULL
            fst[FS_LAST_SWEEP] = fst[FS_NOW]
        if pos + 16 > n:
            break
        code = _room(ints, pool, oints, st)
        if code >= 0:
            st[S_POS] = pos
            return code
        caplen = _rd32(buf, pos + 8, swap)
        if caplen > cfg[C_MAXCAP]:
            st[S_POS] = pos
            return R_BAD_RECORD
        if pos + 16 + caplen > n:
            break
        ts = _rd32(buf, pos, swap) + _rd32(buf, pos + 4, swap) * scale
        wlen = _rd32(buf, pos + 12, swap)
        if not _packet(buf, pos + 16, pos + 16 + caplen, linktype, ts, wlen, info, ints, tss,
                       sel, sdir, spts, splen, sext, pool, pool_free, slot_free, keys, oints,
                       otss, odata, odir, opts, oplen, oext, st, fst, cfg, tmo, skips):
            _levels(buf, pos + 16, pos + 16 + caplen, ts, wlen, info, ints, tss, sel, sdir,
                    spts, splen, sext, pool, pool_free, slot_free, keys, oints, otss, odata,
                    odir, opts, oplen, oext, st, cfg, tmo, skips, fints, fdata)
        pos += 16 + caplen
    if final and pos < n:
        skips[fr.SKIP_TRUNCATED_RECORD] += 1
        pos = n
    st[S_POS] = pos
    return R_NEED_DATA


@njit(cache=True)
def scan_pcapng(buf, n, final, info, if_link, if_res, ints, tss, sel, sdir, spts, splen, sext,
                pool, pool_free, slot_free, keys, oints, otss, odata, odir, opts, oplen, oext, st,
                fst, cfg, tmo, skips, fints, fdata):
    """Walk pcapng blocks in buf[st[S_POS]:n]: SHB, IDB, EPB, SPB and the obsolete PB."""
    pos = st[S_POS]
    while True:
        # Kept inline in both kernels on purpose: as a shared helper (even inline="always")
        # the kernel ran 27% slower (1.79M -> 1.32M packets/s, /tmp kernel-only timing).
        if fst[FS_NOW] - fst[FS_LAST_SWEEP] >= tmo[T_SWEEP]:
            if not _sweep(fst[FS_NOW], False, ints, tss, sel, sdir, spts, splen, sext, pool,
                          pool_free, slot_free, keys, oints, otss, odata, odir, opts, oplen, oext,
                          st, tmo):
                st[S_POS] = pos
                return R_OUT_FULL
            fst[FS_LAST_SWEEP] = fst[FS_NOW]
        if pos + 12 > n:
            break
        code = _room(ints, pool, oints, st)
        if code >= 0:
            st[S_POS] = pos
            return code
        btype = _rd32(buf, pos, st[S_SWAP])
        if btype == 0x0A0D0D0A:
            bom = _rd32(buf, pos + 8, 0)
            if bom == 0x1A2B3C4D:
                st[S_SWAP] = 0
            elif bom == 0x4D3C2B1A:
                st[S_SWAP] = 1
            else:
                st[S_POS] = pos
                return R_BAD_RECORD
            st[S_NIF] = 0
        swap = st[S_SWAP]
        blen = _rd32(buf, pos + 4, swap)
        if blen < 12 or (blen & 3) != 0 or blen > cfg[C_MAXCAP] + 64:
            st[S_POS] = pos
            return R_BAD_RECORD
        if pos + blen > n:
            break
        if btype == 1:  # Interface Description Block
            nif = st[S_NIF]
            if nif >= if_link.shape[0]:
                st[S_POS] = pos
                return R_NEED_IFACES
            if_link[nif] = _rd16(buf, pos + 8, swap)
            res = 1e-6
            o = pos + 16
            while o + 4 <= pos + blen - 4:
                code_ = _rd16(buf, o, swap)
                olen = _rd16(buf, o + 2, swap)
                if code_ == 0:
                    break
                if code_ == 9 and olen >= 1:
                    v = np.int64(buf[o + 4])
                    res = 2.0 ** (-(v & 0x7F)) if v & 0x80 else 10.0 ** (-v)
                o += 4 + ((olen + 3) & ~3)
            if_res[nif] = res
            st[S_NIF] = nif + 1
        elif btype == 6 or btype == 2:  # Enhanced Packet Block / obsolete Packet Block
            if btype == 6:
                ifid = _rd32(buf, pos + 8, swap)
            else:
                ifid = _rd16(buf, pos + 8, swap)
            caplen = _rd32(buf, pos + 20, swap)
            wlen = _rd32(buf, pos + 24, swap)
            if ifid >= st[S_NIF] or 28 + caplen > blen:
                skips[fr.SKIP_BAD_RECORD] += 1
            else:
                raw = (_rd32(buf, pos + 12, swap) << 32) | _rd32(buf, pos + 16, swap)
                ts = raw * if_res[ifid]
                a_ = pos + 28
                if not _packet(buf, a_, a_ + caplen, if_link[ifid], ts, wlen, info, ints, tss,
                               sel, sdir, spts, splen, sext, pool, pool_free, slot_free, keys,
                               oints, otss, odata, odir, opts, oplen, oext, st, fst, cfg, tmo,
                               skips):
                    _levels(buf, a_, a_ + caplen, ts, wlen, info, ints, tss, sel, sdir, spts,
                            splen, sext, pool, pool_free, slot_free, keys, oints, otss, odata,
                            odir, opts, oplen, oext, st, cfg, tmo, skips, fints, fdata)
        elif btype == 3:  # Simple Packet Block: interface 0, no timestamp
            wlen = _rd32(buf, pos + 8, swap)
            caplen = min(wlen, blen - 16)
            if st[S_NIF] < 1:
                skips[fr.SKIP_BAD_RECORD] += 1
            else:
                a_ = pos + 12
                if not _packet(buf, a_, a_ + caplen, if_link[0], fst[FS_NOW], wlen, info,
                               ints, tss, sel, sdir, spts, splen, sext, pool, pool_free,
                               slot_free, keys, oints, otss, odata, odir, opts, oplen, oext, st,
                               fst, cfg, tmo, skips):
                    _levels(buf, a_, a_ + caplen, fst[FS_NOW], wlen, info, ints, tss, sel,
                            sdir, spts, splen, sext, pool, pool_free, slot_free, keys, oints,
                            otss, odata, odir, opts, oplen, oext, st, cfg, tmo, skips, fints,
                            fdata)
        pos += blen
    if final and pos < n:
        skips[fr.SKIP_TRUNCATED_RECORD] += 1
        pos = n
    st[S_POS] = pos
    return R_NEED_DATA


@njit(cache=True)
def finish(ints, tss, sel, sdir, spts, splen, sext, pool, pool_free, slot_free, keys, oints, otss,
           odata, odir, opts, oplen, oext, st, tmo):
    """Emit every live flow (end of file). Returns R_OUT_FULL until all are out."""
    if _sweep(0.0, True, ints, tss, sel, sdir, spts, splen, sext, pool, pool_free, slot_free, keys,
              oints, otss, odata, odir, opts, oplen, oext, st, tmo):
        return R_NEED_DATA
    return R_OUT_FULL


@njit(cache=True)
def pack_rows(data, ext, base, offs):
    """Concatenate the stored part of every selected row; offs gets each row's offset."""
    m, kk = ext.shape
    total = 0
    for i in range(m):
        for k in range(kk):
            total += ext[i, k]
    out = np.empty(total, np.uint8)
    o = 0
    for i in range(m):
        for k in range(kk):
            e = ext[i, k]
            if e > 0:
                out[o:o + e] = data[i, k, :e]
                offs[i, k] = base + o
                o += e
            else:
                offs[i, k] = -1
    return out


@njit(cache=True)
def unpack_rows(blob, offs, exts, rows, out):
    """Dense rows back from packed storage (out is zeroed by the caller); out may hold
    fewer packets or bytes than stored (its first K' packets, first L' bytes of each)."""
    for i in range(rows.shape[0]):
        r = rows[i]
        for k in range(min(offs.shape[1], out.shape[1])):
            o = offs[r, k]
            if o >= 0:
                e = min(exts[r, k], out.shape[2])
                out[i, k, :e] = blob[o:o + e]


@njit(cache=True)
def unpack_packets(blob, offs, exts, rows, out, pos):
    """The selected packets of the given flows as rows, and each one's flow position."""
    n = 0
    for i in range(rows.shape[0]):
        r = rows[i]
        for k in range(offs.shape[1]):
            o = offs[r, k]
            if o >= 0:
                e = exts[r, k]
                out[n, :e] = blob[o:o + e]
                pos[n] = i
                n += 1
    return n
