"""The analyst's report: Zeek logs of the detectors -> ONE self-contained HTML page.

Reads semiflow.log (from Zeek or `semiflow score`), notice.log, conn.log and the log
detector's semiflow_dyad.log, TSV or JSON, plain, rotated or gzip. Plots are matplotlib PNGs
embedded as base64, CSS and JS are inline (training/report_assets.py): opening the file
fetches nothing, as offline SOCs need.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from semiflow.plugin.zeeklog import ZeekLogReport, read_zeek_log

from .report_assets import CSS, JS

_KINDS = (("semiflow_dyad", "dyad"), ("semiflow_drift", "drift"),
          ("semiflow_shadow", "shadow"), ("semiflow", "semiflow"), ("notice", "notice"),
          ("conn", "conn"))
_LOGISH = re.compile(r"\.(log|json|gz|labeled)$|\.log\.")
# semiflow.log status -> coverage category
COVERAGE = {"ok": "scored", "scored": "scored", "no_payload": "unscored",
            "unparsed": "unscored", "error": "unscored", "shed": "shed", "timeout": "timeout",
            "unsampled": "unsampled", "allowlisted": "allowlisted"}
_COVER_COLORS = {"scored": "#2e6da4", "unscored": "#9aa5b1", "shed": "#e69f00",
                 "timeout": "#d55e00", "unsampled": "#cc79a7", "allowlisted": "#009e73"}


def find_logs(paths: Iterable[str | os.PathLike]) -> dict[str, list[Path]]:
    """Log files by kind (semiflow, notice, conn, dyad) from directories and/or files."""
    out: dict[str, list[Path]] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise ValueError(f"{p}: no such file or directory")
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            if p.is_dir() and not _LOGISH.search(f.name):
                continue
            for prefix, kind in _KINDS:
                if f.name.startswith(prefix):
                    out.setdefault(kind, []).append(f)
                    break
    return out


def load_log(files: Iterable[Path], report: ZeekLogReport | None = None) -> pd.DataFrame:
    parts = [read_zeek_log(f, report) for f in files]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


@dataclass
class ReportData:
    semiflow: pd.DataFrame
    notice: pd.DataFrame
    conn: pd.DataFrame
    dyad: pd.DataFrame
    files: dict[str, list[Path]]
    read: ZeekLogReport = field(default_factory=ZeekLogReport)  # what reading skipped
    drift: pd.DataFrame = field(default_factory=pd.DataFrame)  # semiflow serve's drift windows

    @property
    def malformed(self) -> int:
        return self.read.malformed

    @property
    def flagged(self) -> pd.DataFrame:
        s = self.semiflow
        if "verdict" not in s:
            return s.iloc[0:0]
        return s[s["verdict"] == "anomalous"].sort_values("score", ascending=False)

    @property
    def threshold(self) -> float:
        if "threshold" not in self.semiflow:
            return math.nan
        t = pd.to_numeric(self.semiflow["threshold"], errors="coerce")
        return float(t.median()) if t.notna().any() else math.nan


def load_report_data(paths: Iterable[str | os.PathLike]) -> ReportData:
    files = find_logs(paths)
    if not files:
        raise ValueError("no semiflow/notice/conn/semiflow_dyad log found in "
                         + ", ".join(map(str, paths)))
    rep = ZeekLogReport()
    frames = {k: load_log(files.get(k, []), rep) for k in ("semiflow", "notice", "conn", "dyad")}
    s = frames["semiflow"]
    if len(s):
        s["coverage"] = s.get("status", pd.Series("ok", index=s.index)).map(
            lambda v: COVERAGE.get(str(v), "unscored"))
        s["score"] = pd.to_numeric(s.get("score"), errors="coerce")
    return ReportData(frames["semiflow"], frames["notice"], frames["conn"], frames["dyad"],
                      files, rep, load_drift(files.get("drift", []), rep))


def load_drift(files: Iterable[Path], report: ZeekLogReport) -> pd.DataFrame:
    """semiflow_drift.log (JSON lines, one judged window each) -> one row per window with a
    psi:<signal> column per signal; unreadable lines are counted, not fatal."""
    rows = []
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                    row = {"end": float(r["end"]), "start": float(r["start"]),
                           "flows": int(r["flows"]), "model_version": str(r["model_version"]),
                           "threshold": float(r["threshold"]),
                           "drifted": ", ".join(map(str, r.get("drifted") or []))}
                    row |= {f"psi:{k}": (float(v) if v is not None else math.nan)
                            for k, v in (r.get("psi") or {}).items()}
                    rows.append(row)
                except (ValueError, KeyError, TypeError):
                    report.malformed += 1
    return pd.DataFrame(rows).sort_values("end", ignore_index=True) if rows else pd.DataFrame()


def fig_drift(d: ReportData) -> str | None:
    """PSI per signal per judged window against the drift threshold."""
    dr = d.drift
    if not len(dr):
        return None
    fig, ax = _plt().subplots(figsize=(7, 2.8))
    x = _dates(dr["end"].to_numpy(float))
    main = [c for c in dr.columns if c.startswith("psi:") and not c.startswith("psi:size:")]
    for c in main:
        ax.plot(x, dr[c].to_numpy(float), marker=".", label=c[4:])
    sizes = [c for c in dr.columns if c.startswith("psi:size:")]
    if sizes:
        ax.plot(x, dr[sizes].max(axis=1).to_numpy(float), marker=".", label="packet sizes (max)")
    ax.axhline(float(dr["threshold"].iloc[-1]), color="#b42318", ls="--", label="threshold")
    ax.set_ylabel("PSI vs training")
    ax.set_title("Model drift per window", fontsize=10)
    ax.legend(fontsize=7, ncol=3)
    fig.autofmt_xdate()
    return _png(fig)


# ---- figures ------------------------------------------------------------------------------
def _png(fig) -> str:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str, ident: str) -> str:
    return f'<img id="{ident}" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _time_bins(ts: pd.Series, n: int = 40) -> np.ndarray:
    lo, hi = float(ts.min()), float(ts.max())
    return np.linspace(lo, hi if hi > lo else lo + 1.0, n + 1)


def _dates(x):
    return pd.to_datetime(np.asarray(x), unit="s", utc=True).tz_localize(None)


def _time_figure(d: ReportData):
    """(semiflow rows, time bins, figure, axes) for a plot over time, or None without data."""
    s = d.semiflow
    if not len(s) or "ts" not in s:
        return None
    fig, ax = _plt().subplots(figsize=(7, 2.8))
    return s, _time_bins(s["ts"]), fig, ax


def fig_timeline(d: ReportData) -> str | None:
    t = _time_figure(d)
    if t is None:
        return None
    s, bins, fig, ax = t
    fl = d.flagged["ts"].to_numpy(float)
    h_all, _ = np.histogram(s["ts"].to_numpy(float), bins)
    h_fl, _ = np.histogram(fl, bins)
    centers, width = _dates((bins[:-1] + bins[1:]) / 2), (bins[1] - bins[0]) / 86400
    ax.bar(centers, h_all, width=width, color="#c9d6e3", label="flows")
    ax.bar(centers, h_fl, width=width, color="#b42318", label="flagged anomalous")
    if len(d.dyad) and "verdict" in d.dyad:
        dy = d.dyad[d.dyad["verdict"] == "anomalous"]["ts"].to_numpy(float)
        if len(dy):
            ax.plot(_dates(dy), np.zeros(len(dy)), "v", color="#6a3d9a",
                    label="anomalous dyad-hour")
    ax.set_ylabel("flows per bin")
    ax.set_title("Timeline of anomalies", fontsize=10)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    return _png(fig)


def fig_scores(d: ReportData) -> str | None:
    sc = d.semiflow["score"].dropna().to_numpy(float) if "score" in d.semiflow else []
    if not len(sc):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.hist(sc, bins=60, color="#2e6da4")
    thr = d.threshold
    if not math.isnan(thr):
        ax.axvline(thr, color="#b42318", lw=2, label=f"threshold {thr:.3g}")
        ax.legend(fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("flow score (log-odds of anomalous)")
    ax.set_ylabel("flows")
    ax.set_title(f"Score distribution ({len(sc)} scored flows; "
                 f"{int((sc > thr).sum()) if not math.isnan(thr) else 0} above)", fontsize=10)
    return _png(fig)


def fig_coverage(d: ReportData) -> str | None:
    t = _time_figure(d)
    if t is None:
        return None
    s, bins, fig, ax = t
    bottom = np.zeros(len(bins) - 1)
    centers, width = _dates((bins[:-1] + bins[1:]) / 2), (bins[1] - bins[0]) / 86400
    for cat, color in _COVER_COLORS.items():
        h, _ = np.histogram(s.loc[s["coverage"] == cat, "ts"].to_numpy(float), bins)
        if h.any():
            ax.bar(centers, h, width=width, bottom=bottom, color=color, label=cat)
            bottom += h
    ax.set_ylabel("flows per bin")
    ax.set_title("Coverage over time", fontsize=10)
    ax.legend(fontsize=8, ncol=3)
    fig.autofmt_xdate()
    return _png(fig)


def fig_top(counts: pd.Series, title: str) -> str | None:
    if not len(counts):
        return None
    plt = _plt()
    c = counts.head(10)[::-1]
    fig, ax = plt.subplots(figsize=(4.6, 0.3 * len(c) + 1.0))
    ax.barh([str(i) for i in c.index], c.to_numpy(), color="#b42318")
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=8)
    return _png(fig)


# ---- tables -------------------------------------------------------------------------------
def _esc(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return ""
    return html.escape(str(v))


def _iso(ts) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts)))
    except (TypeError, ValueError, OverflowError):
        return ""


def joined_flagged(d: ReportData) -> pd.DataFrame:
    """Flagged flows with conn.log's columns (service, duration, bytes, state) by uid."""
    f = d.flagged.copy()
    if len(d.conn) and "uid" in d.conn and len(f):
        cols = [c for c in ("uid", "service", "duration", "orig_bytes", "resp_bytes",
                            "conn_state", "history") if c in d.conn]
        f = f.merge(d.conn[cols].drop_duplicates("uid"), on="uid", how="left",
                    suffixes=("", "_conn"))
    return f


def flagged_table(f: pd.DataFrame, explained: set[str]) -> str:
    cols = [("ts", "time (UTC)"), ("uid", "uid"), ("id.orig_h", "source"),
            ("id.orig_p", "sport"), ("id.resp_h", "destination"), ("id.resp_p", "dport"),
            ("proto", "proto"), ("score", "score"), ("service", "service"),
            ("duration", "duration"), ("orig_bytes", "orig bytes"),
            ("resp_bytes", "resp bytes"), ("conn_state", "state")]
    cols = [(c, h) for c, h in cols if c in f or c in ("service", "duration")]
    head = "".join(f"<th>{h}</th>" for _, h in cols) + '<th class="nosort">mark benign</th>'
    rows = []
    for r in f.to_dict("records"):
        tds = []
        for c, _ in cols:
            v = r.get(c)
            if c == "ts":
                tds.append(f'<td data-v="{float(v):.6f}">{_iso(v)}</td>')
            elif c == "uid":
                link = f' <a href="#x-{_esc(v)}">why?</a>' if v in explained else ""
                tds.append(f'<td class="mono">{_esc(v)}{link}</td>')
            elif isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and \
                    not (isinstance(v, float) and math.isnan(v)):
                txt = f"{v:.4f}" if c == "score" else f"{v:.3f}" if isinstance(v, float) \
                    and not float(v).is_integer() else f"{int(v)}"
                tds.append(f'<td class="num" data-v="{float(v)}">{txt}</td>')
            else:
                tds.append(f"<td>{_esc(v)}</td>")
        data = {"uid": r.get("uid"), "orig-h": r.get("id.orig_h"),
                "orig-p": r.get("id.orig_p"), "resp-h": r.get("id.resp_h"),
                "resp-p": r.get("id.resp_p"), "proto": r.get("proto"),
                "ts": f"{float(r.get('ts', 0)):.6f}"}
        attrs = " ".join(f'data-{k}="{_esc(v)}"' for k, v in data.items())
        sel = ('<select class="mark"><option value="">-</option>'
               '<option value="flow">this flow</option>'
               '<option value="service">this server + service</option>'
               '<option value="client">this client host</option></select>')
        rows.append(f"<tr {attrs}>{''.join(tds)}<td>{sel}</td></tr>")
    return (f'<div class="tablewrap"><table id="flagged"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def simple_table(df: pd.DataFrame, ident: str, limit: int = 50) -> str:
    if not len(df):
        return '<p class="note">none</p>'
    df = df.assign(ts=df["ts"].map(_iso)) if "ts" in df else df
    head = "".join(f"<th>{_esc(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>"
                   for row in df.head(limit).itertuples(index=False))
    return f'<table id="{ident}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def top_counts(f: pd.DataFrame) -> dict[str, pd.Series]:
    out = {}
    if not len(f):
        return out
    out["sources"] = f["id.orig_h"].value_counts()
    out["destinations"] = f["id.resp_h"].value_counts()
    svc = f["id.resp_p"].astype("Int64").astype(str) + "/" + f.get(
        "proto", pd.Series("?", index=f.index)).astype(str)
    if "service" in f:
        named = f["service"].fillna("").astype(str)
        svc = svc + np.where(named != "", " (" + named + ")", "")
    out["services"] = pd.Series(svc).value_counts()
    return out


# ---- explanations -------------------------------------------------------------------------
def explain_section(uids: list[str], model_dir, extract_dirs: list, captures: list,
                    steps: int = 32) -> tuple[str, set[str]]:
    """Heat maps + top fields for the given flagged uids, from their samples (an extraction
    or the captures, re-cut with the model's spec: uids are deterministic, as in
    `semiflow score`). Returns (html, uids explained)."""
    import tempfile

    from semiflow.detector.explain.packet_level import explain_flow, plot_explanation
    from semiflow.detector.scoring import load_scorer
    from semiflow.plugin.flowstore import FlowStore

    scorer = load_scorer(model_dir, device="cpu")
    parts, done = [], set()
    with tempfile.TemporaryDirectory(prefix="semiflow-report-") as tmp:
        dirs = list(extract_dirs)
        if captures:
            from .extract import extract
            extract(list(captures), Path(tmp) / "flows", scorer.spec)
            dirs.append(Path(tmp) / "flows")
        for d in dirs:
            st = FlowStore.open(d)
            if st.spec != scorer.spec:
                parts.append(f'<p class="note">{_esc(d)}: extracted with another spec than '
                             "the model's; skipped</p>")
                continue
            pos = {u: i for i, u in enumerate(st.flows["uid"])}
            for uid in uids:
                if uid in done or uid not in pos:
                    continue
                i = pos[uid]
                n_sel = int(st.flows["n_selected"].iloc[i])
                if n_sel == 0:
                    continue
                e = explain_flow(scorer, st.samples[i], n_sel, uid, steps=steps,
                                 directions=st.pkt_dir[i])
                png = _png(plot_explanation(e))
                tops = pd.DataFrame(e.field_totals()[:8])[["field", "attribution"]]
                tops["attribution"] = tops["attribution"].map(lambda v: f"{v:+.3g}")
                parts.append(f'<div class="expl" id="x-{_esc(uid)}"><h3 class="mono">{_esc(uid)}'
                             f'</h3><p class="note">{_esc(e.summary())}</p>'
                             f'{_img(png, "attribution heat map " + uid, "heat-" + uid)}'
                             f"{simple_table(tops, 'fields-' + uid)}</div>")
                done.add(uid)
    if not done:
        parts.append('<p class="note">none of the top flagged flows was found in the given '
                     "samples</p>")
    return "".join(parts), done


# ---- the page -----------------------------------------------------------------------------
def _card(value, label: str, alert: bool = False) -> str:
    return (f'<div class="card{" alert" if alert else ""}"><div class="v">{_esc(value)}</div>'
            f'<div class="k">{_esc(label)}</div></div>')


def build_report(paths: Iterable[str | os.PathLike], out: str | os.PathLike,
                 model_dir=None, extract_dirs: Iterable = (), captures: Iterable = (),
                 top_explain: int = 5, title: str = "SemiFlow log review") -> dict:
    """Write the HTML report; returns counts (flows, flagged, explained, ...)."""
    paths = list(paths)
    d = load_report_data(paths)
    s, flagged = d.semiflow, joined_flagged(d)
    cov = s["coverage"].value_counts() if len(s) else pd.Series(dtype=int)
    explained: set[str] = set()
    expl_html = ('<p class="note">Run with <span class="mono">--model DIR</span> and '
                 '<span class="mono">--extract DIR</span> (or <span class="mono">--captures'
                 "</span>) to explain the top flagged flows.</p>")
    if model_dir is not None and (list(extract_dirs) or list(captures)) and len(flagged):
        expl_html, explained = explain_section(list(flagged["uid"].head(top_explain)),
                                               model_dir, list(extract_dirs), list(captures))
    figs = {k: f(d) for k, f in (("timeline", fig_timeline), ("scores", fig_scores),
                                 ("coverage", fig_coverage))}
    drift_fig = fig_drift(d)
    drifted = d.drift[d.drift["drifted"] != ""] if len(d.drift) else d.drift
    drift_html = (_img(drift_fig, "drift", "fig-drift") + simple_table(
        drifted.assign(start=drifted["start"].map(_iso), end=drifted["end"].map(_iso))
        [["start", "end", "flows", "model_version", "drifted"]], "drift")
        if drift_fig else '<p class="note">no semiflow_drift.log (semiflow serve writes one '
        'per judged window; see docs/lifecycle.md)</p>')
    tops = top_counts(flagged)
    top_imgs = "".join(_img(b, f"top {k}", f"top-{k}") for k, b in
                       ((k, fig_top(v, f"Top {k} of flagged flows")) for k, v in tops.items())
                       if b)
    span = (f"{_iso(s['ts'].min())} – {_iso(s['ts'].max())} UTC" if len(s) and "ts" in s
            else "no semiflow.log")
    models = ", ".join(sorted({str(m) for m in s.get("model_version", pd.Series()).dropna()}))
    n_dyads = int((d.dyad.get("verdict", pd.Series()) == "anomalous").sum())
    cards = "".join([
        _card(len(s), "flows in semiflow.log"), _card(int(cov.get("scored", 0)), "scored"),
        _card(len(flagged), "flagged anomalous", alert=len(flagged) > 0),
        _card(len(d.notice), "notices"),
        _card(int(len(s) - cov.get("scored", 0)), "not scored (any reason)"),
        _card(n_dyads, "anomalous dyad-hours"),
        _card(f"{d.threshold:.4g}" if not math.isnan(d.threshold) else "-", "threshold")])
    cov_tbl = simple_table(cov.rename_axis("status").reset_index(name="flows"), "coverage")
    dy = d.dyad
    dy_tbl = simple_table(dy[dy["verdict"] == "anomalous"].sort_values("score", ascending=False)
                          if len(dy) and "verdict" in dy else dy, "dyad")
    quiet = not len(flagged) and not n_dyads
    notes = "".join(f'<p class="note">{_esc(n)}</p>' for n in
                    (["no anomalies in this period"] if quiet else []) + d.read.notes())
    srcs = "; ".join(f"{k}: {len(v)} file(s)" for k, v in sorted(d.files.items()))
    body = f"""
<header><h1>{_esc(title)}</h1><div class="meta">{_esc(span)} · {_esc(srcs)}
{(" · model " + _esc(models)) if models else ""}</div></header><main>
<section id="summary"><h2>Summary</h2><div class="cards">{cards}</div>{notes}</section>
<section id="plots"><h2>Anomalies over time, scores against the threshold</h2>
<div class="grid">{''.join(_img(b, k, 'fig-' + k) for k, b in figs.items() if b)}</div></section>
<section id="top"><h2>Top hosts and services (flagged flows)</h2><div class="grid">{top_imgs or
'<p class="note">nothing flagged</p>'}</div></section>
<section id="flows"><h2>Flagged flows <span class="pill">{len(flagged)}</span></h2>
<div class="toolbar"><input type="text" id="flow-filter" placeholder="filter: address, uid,
service, ..." size="40"><span id="flow-count" class="note"></span></div>
<p class="note">Click a column to sort. conn.log columns are joined by uid.</p>
{flagged_table(flagged, explained)}</section>
<section id="feedback"><h2>Feedback: mark benign</h2>
<p class="note">Choose "mark benign" in the table, then download the allow-list lines. Append
them to the sensor's allow-list (zeek_scripts/allowlist.zeek reads it without a restart) or
merge with <span class="mono">semiflow feedback</span>; <span class="mono">semiflow feedback
export</span> turns marked flows into training data.</p>
<div class="toolbar"><input type="text" id="fb-reason" placeholder="reason" size="30">
<input type="text" id="fb-analyst" placeholder="analyst" size="14">
<input type="text" id="fb-expires" placeholder="expires in days (empty: never)" size="24">
<button id="fb-build" type="button">Download allow-list</button>
<a id="fb-link" download="semiflow-allowlist.tsv" href="#">semiflow-allowlist.tsv</a>
<span id="fb-count" class="note"></span></div><textarea id="fb-text" readonly></textarea>
</section>
<section id="explanations"><h2>Why these flows? (top flagged)</h2>{expl_html}</section>
<section id="coverage-sec"><h2>Coverage</h2>{cov_tbl}</section>
<section id="dyads"><h2>Log detector: anomalous dyad-hours</h2>{dy_tbl}</section>
<section id="drift"><h2>Model drift <span class="pill">{len(drifted)} window(s) drifted of
{len(d.drift)}</span></h2>{drift_html}</section>
</main>"""
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}'
            "</title><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none';"
            " img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
            f"<style>{CSS}</style></head><body>{body}<script>{JS}</script></body></html>")
    Path(out).write_text(page, encoding="utf-8")
    return {"flows": len(s), "flagged": len(flagged), "notices": len(d.notice),
            "anomalous_dyads": n_dyads, "explained": sorted(explained),
            "drift_windows": len(d.drift), "drifted_windows": len(drifted),
            "notes": d.read.notes(), "out": str(out)}
