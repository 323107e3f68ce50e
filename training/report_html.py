"""A self-contained HTML page of evaluation results: tables, ROC curves, score histograms.

Figures are matplotlib PNGs embedded as base64; the page fetches nothing from the network.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from .evaluate_run import SUMMARY_METRICS

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;
padding:3px 8px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{
text-align:left}img{max-width:100%}.note{color:#555;font-size:90%}"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return ('<img alt="figure" src="data:image/png;base64,'
            + base64.b64encode(buf.getvalue()).decode() + '">')


def roc_figure(runs: list[dict], title: str) -> str:
    """One ROC curve per detector (log-scaled FPR axis shows the low-FPR regime)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in runs:
        y, s = r["_scores"]["y"], r["_scores"]["score"]
        if 0 < y.sum() < len(y):
            f, t, _ = roc_curve(y, s)
            lab = f"{r['detector']} ({r['metrics']['auroc']:.3f})"
            axes[0].plot(f, t, label=lab)
            axes[1].plot(np.maximum(f, 1e-4), t, label=lab)
    for ax, scale in zip(axes, ("linear", "log")):
        ax.plot([1e-4, 1], [1e-4, 1], ":", color="grey")
        ax.set_xscale(scale)
        ax.set_xlabel("false-positive rate" + (" (log)" if scale == "log" else ""))
        ax.set_ylabel("true-positive rate")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    return _png(fig)


def histogram_figure(runs: list[dict], title: str) -> str:
    """Normal vs anomalous flow-score histograms, one panel per detector, with threshold."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(runs)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax, r in zip(axes.flat, runs):
        y, s = r["_scores"]["y"], r["_scores"]["score"]
        bins = np.histogram_bin_edges(s, bins=40) if len(s) else 10
        ax.hist(s[y == 0], bins=bins, alpha=0.6, density=True, label="normal")
        ax.hist(s[y == 1], bins=bins, alpha=0.6, density=True, label="anomalous")
        thr = r["metrics"].get("threshold")
        if thr is not None:
            ax.axvline(thr, color="k", ls="--", lw=1, label="threshold")
        ax.set_title(r["detector"], fontsize=10)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="–",
                      border=0, escape=True)


def summary_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """mean ± std strings, one column per metric."""
    out = summary[["benchmark", "fold", "detector", "seeds"]].copy()
    for m in SUMMARY_METRICS + ("fit_seconds",):
        out[m] = [f"{a:.3f} ± {0.0 if np.isnan(b) else b:.3f}"
                  for a, b in zip(summary[f"{m}_mean"], summary[f"{m}_std"])]
    return out


def family_frame(runs: list[dict]) -> pd.DataFrame:
    """Recall (anomalous families) or FPR (normal families) at the threshold, per detector."""
    rows: dict[str, dict] = defaultdict(dict)
    for r in runs:
        for fam, g in r["per_family"].items():
            v = g.get("recall", g.get("fpr", np.nan))
            kind = "recall" if "recall" in g else "FPR"
            rows[(fam, kind, g["flows"])][r["detector"]] = v
    recs = [{"family": f, "measure": k, "flows": n, **d} for (f, k, n), d in rows.items()]
    return pd.DataFrame(recs).sort_values(["measure", "family"]) if recs else pd.DataFrame()


def write_report(path: str, records: list[dict], summary: pd.DataFrame,
                 title: str = "semiflow evaluate", context: list[str] | None = None) -> None:
    """Write the page: summary table, then per benchmark/fold figures for the first seed."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>"]
    for line in context or []:
        parts.append(f"<p class='note'>{esc(line)}</p>")
    parts.append("<p class='note'>Flow-level metrics (packet scores aggregated per flow). "
                 "Mean ± std over seeds; LOSO rows average the leave-one-source-out folds "
                 "within a seed first. Flows with no sample are counted as unscored, not "
                 "scored as normal. Threshold: calibrated on held-out normal validation "
                 "files unless the model carries one.</p>")
    if not summary.empty:
        parts.append("<h2>Summary</h2>" + _table(summary_frame(summary)))
    groups: dict[tuple, list[dict]] = defaultdict(list)
    first_seed = min((r["seed"] for r in records), default=0)
    for r in records:
        if r["seed"] == first_seed:
            groups[(r["benchmark"], r["fold"])].append(r)
    for (bench, fold), runs in groups.items():
        ref = runs[0]
        parts.append(f"<h2>{esc(bench)} — {esc(fold)} (seed {first_seed})</h2>")
        unsc = ref["unscored"]
        parts.append(f"<p class='note'>train {ref['train_flows']} flows / "
                     f"{ref['train_packets']} packets; test {ref['test_flows']} flows "
                     f"({ref['metrics']['n_normal']} normal, "
                     f"{ref['metrics']['n_anomalous']} anomalous scored; unscored: "
                     f"{unsc['normal']} normal, {unsc['anomalous']} anomalous). "
                     + esc(" ".join(ref.get("notes", []))) + "</p>")
        parts.append(roc_figure(runs, f"{bench} / {fold}: ROC"))
        parts.append(histogram_figure(runs, f"{bench} / {fold}: flow scores"))
        fams = family_frame(runs)
        if not fams.empty:
            parts.append("<h3>Per family at the threshold</h3>" + _table(fams))
        src = pd.DataFrame([{"detector": r["detector"], "source": s, **g}
                            for r in runs for s, g in r["per_source"].items()])
        if not src.empty:
            parts.append("<h3>Per source</h3>" + _table(src))
    parts.append("</body></html>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
