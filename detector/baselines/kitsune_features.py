"""AfterImage: Kitsune's per-packet damped incremental statistics (Mirsky et al., NDSS 2018).

Every packet updates, for each decay rate lambda in LAMBDAS, damped statistics of five streams
(a statistic of age dt weighs 2^(-lambda * dt)):
    src MAC-IP      1D stats of packet size                              w, mean, std
    src IP          1D stats of packet size                              w, mean, std
    jitter          1D stats of inter-arrival time on the channel        w, mean, std
    channel         src IP -> dst IP: 1D stats of size, and 2D stats     w, mean, std,
                    against the reverse direction dst IP -> src IP       magnitude, radius,
    socket          src IP:port -> dst IP:port (proto too), as channel   covariance, correlation
so 5 x (3 + 3 + 3 + 7 + 7) = 115 features per packet, laid out [lambda][stream][stat].
magnitude = sqrt(mean_i^2 + mean_j^2), radius = sqrt(var_i^2 + var_j^2) (the paper's
definitions), covariance = decayed sum of residual products / its decayed weight, correlation
= covariance / (std_i std_j). The paper's code decays only the updating direction's last
residual; here both are decayed (each is a decayed quantity of its own stream).

Streams are integer ids computed once with numpy (stream_ids), so the per-packet loop is one
numba kernel over plain arrays (~1e5 packets/s on one core, ids included).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

LAMBDAS = (5.0, 3.0, 1.0, 0.1, 0.01)
STREAMS = ("mac_ip", "src_ip", "jitter", "channel", "socket")
STATS_1D = ("w", "mean", "std")
STATS_2D = ("w", "mean", "std", "magnitude", "radius", "cov", "pcc")
PER_LAMBDA = 3 * len(STATS_1D) + 2 * len(STATS_2D)   # 23
# Fields a packet-metadata object must carry (plugin.packet_meta.PacketMeta does).
FIELDS = ("ts", "size", "src_mac", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport",
          "proto")


def feature_names(lambdas: tuple[float, ...] = LAMBDAS) -> list[str]:
    """Column names in the order afterimage_features returns them."""
    out = []
    for lam in lambdas:
        for s in STREAMS:
            stats = STATS_2D if s in ("channel", "socket") else STATS_1D
            out += [f"{s}_{st}_l{lam:g}" for st in stats]
    return out


def _codes(*cols: np.ndarray) -> np.ndarray:
    """A dense integer id for every distinct row of the given columns."""
    if len(cols[0]) == 0:
        return np.zeros(0, np.int64)
    return np.unique(np.stack([np.asarray(c, np.int64) for c in cols], 1), axis=0,
                     return_inverse=True)[1].reshape(-1).astype(np.int64)


def stream_ids(meta) -> dict[str, np.ndarray]:
    """Integer stream ids per packet: 1D streams share one id space, 2D pairs another."""
    src = _codes(np.r_[meta.src_hi, meta.dst_hi], np.r_[meta.src_lo, meta.dst_lo])
    n = len(meta.ts)
    s_ip, d_ip = src[:n], src[n:]
    mac_ip = _codes(meta.src_mac, s_ip)
    host = _codes(s_ip)
    ch = _codes(np.r_[s_ip, d_ip], np.r_[d_ip, s_ip])
    ch_f, ch_r = ch[:n], ch[n:]
    sp, dp, pr = (np.asarray(a, np.int64) for a in (meta.sport, meta.dport, meta.proto))
    sk = _codes(np.r_[s_ip, d_ip], np.r_[sp, dp], np.r_[d_ip, s_ip], np.r_[dp, sp], np.r_[pr, pr])
    sk_f, sk_r = sk[:n], sk[n:]
    off = np.cumsum([0, mac_ip.max(initial=-1) + 1, host.max(initial=-1) + 1,
                     ch.max(initial=-1) + 1, ch.max(initial=-1) + 1, sk.max(initial=-1) + 1])
    ch_pair = _codes(np.minimum(ch_f, ch_r), np.maximum(ch_f, ch_r))
    sk_pair = _codes(np.minimum(sk_f, sk_r), np.maximum(sk_f, sk_r)) + ch_pair.max(initial=-1) + 1
    return {
        "mac_ip": mac_ip + off[0], "src_ip": host + off[1], "jitter": ch_f + off[2],
        "ch_f": ch_f + off[3], "ch_r": ch_r + off[3], "sk_f": sk_f + off[4],
        "sk_r": sk_r + off[4], "ch_pair": ch_pair, "ch_dir": (ch_f > ch_r).astype(np.int64),
        "sk_pair": sk_pair, "sk_dir": (sk_f > sk_r).astype(np.int64),
        "n_streams": np.int64(off[5]), "n_pairs": np.int64(sk_pair.max(initial=-1) + 1),
    }


@njit(cache=True, inline="always")
def _decay(S, s, j, t, lam):
    """Decay stream s's (w, sum, sum of squares) at rate lam up to time t."""
    dt = t - S[s, j, 3]
    if dt > 0:
        f = 2.0 ** (-lam * dt)
        S[s, j, 0] *= f
        S[s, j, 1] *= f
        S[s, j, 2] *= f
        S[s, j, 3] = t


@njit(cache=True, inline="always")
def _insert(S, s, j, t, lam, v):
    _decay(S, s, j, t, lam)
    S[s, j, 0] += 1.0
    S[s, j, 1] += v
    S[s, j, 2] += v * v


@njit(cache=True, inline="always")
def _mean_var(S, s, j):
    w = S[s, j, 0]
    if w <= 0:
        return 0.0, 0.0
    m = S[s, j, 1] / w
    return m, abs(S[s, j, 2] / w - m * m)


@njit(cache=True, inline="always")
def _write_1d(S, s, j, out, i, c):
    m, v = _mean_var(S, s, j)
    out[i, c] = S[s, j, 0]
    out[i, c + 1] = m
    out[i, c + 2] = math.sqrt(v)


@njit(cache=True, inline="always")
def _update_2d(S, C, a, b, p, d, j, t, lam, v, out, i, c):
    """Stream a (direction d of pair p) takes value v; its reverse is b. Writes 7 stats."""
    _insert(S, a, j, t, lam, v)
    _decay(S, b, j, t, lam)
    dt = t - C[p, j, 2]
    if dt > 0:
        f = 2.0 ** (-lam * dt)
        C[p, j, 0] *= f
        C[p, j, 1] *= f
        C[p, j, 3] *= f
        C[p, j, 4] *= f
        C[p, j, 2] = t
    ma, va = _mean_var(S, a, j)
    mb, vb = _mean_var(S, b, j)
    res = v - ma
    C[p, j, 0] += res * C[p, j, 4 - d]   # times the other direction's last residual
    C[p, j, 1] += 1.0
    C[p, j, 3 + d] = res
    cov = C[p, j, 0] / C[p, j, 1]
    ss = math.sqrt(va) * math.sqrt(vb)
    out[i, c] = S[a, j, 0]
    out[i, c + 1] = ma
    out[i, c + 2] = math.sqrt(va)
    out[i, c + 3] = math.sqrt(ma * ma + mb * mb)
    out[i, c + 4] = math.sqrt(va * va + vb * vb)
    out[i, c + 5] = cov
    out[i, c + 6] = cov / ss if ss > 0 else 0.0


@njit(cache=True)
def _afterimage(ts, size, mac_ip, src_ip, jit, ch_f, ch_r, sk_f, sk_r, ch_pair, ch_dir,
                sk_pair, sk_dir, n_streams, n_pairs, lambdas, out):
    nl = lambdas.shape[0]
    S = np.zeros((n_streams, nl, 4))          # w, sum, sum of squares, last time
    C = np.zeros((n_pairs, nl, 5))            # sum of residual products, w, last time, res0/1
    last_arrival = np.full(n_streams, np.nan)
    for s in range(n_streams):
        for j in range(nl):
            S[s, j, 3] = -np.inf
    for p in range(n_pairs):
        for j in range(nl):
            C[p, j, 2] = -np.inf
    for i in range(ts.shape[0]):
        t, v = ts[i], size[i]
        g = jit[i]
        gap = 0.0 if np.isnan(last_arrival[g]) else max(t - last_arrival[g], 0.0)
        last_arrival[g] = t
        for j in range(nl):
            lam = lambdas[j]
            c = j * 23
            _insert(S, mac_ip[i], j, t, lam, v)
            _write_1d(S, mac_ip[i], j, out, i, c)
            _insert(S, src_ip[i], j, t, lam, v)
            _write_1d(S, src_ip[i], j, out, i, c + 3)
            _insert(S, g, j, t, lam, gap)
            _write_1d(S, g, j, out, i, c + 6)
            _update_2d(S, C, ch_f[i], ch_r[i], ch_pair[i], ch_dir[i], j, t, lam, v, out, i, c + 9)
            _update_2d(S, C, sk_f[i], sk_r[i], sk_pair[i], sk_dir[i], j, t, lam, v, out, i,
                       c + 16)


def afterimage_features(meta, lambdas: tuple[float, ...] = LAMBDAS) -> np.ndarray:
    """float64[n_packets, 23 * len(lambdas)] for packets in capture order (fresh state).

    meta: any object with the FIELDS arrays (plugin.packet_meta.PacketMeta); size is the wire
    length, addresses are (hi, lo) 64-bit halves, src_mac 0 where the link has none."""
    ids = stream_ids(meta)
    n = len(meta.ts)
    out = np.zeros((n, PER_LAMBDA * len(lambdas)))
    if n:
        _afterimage(np.asarray(meta.ts, np.float64), np.asarray(meta.size, np.float64),
                    ids["mac_ip"], ids["src_ip"], ids["jitter"], ids["ch_f"], ids["ch_r"],
                    ids["sk_f"], ids["sk_r"], ids["ch_pair"], ids["ch_dir"], ids["sk_pair"],
                    ids["sk_dir"], int(ids["n_streams"]), int(ids["n_pairs"]),
                    np.asarray(lambdas, np.float64), out)
    return out
