"""Detection in the traffic-lab setting (issue 11): fit on a benign lab run, test on another run.

    python benchmarks/lab_detection.py [--train lab-out/train-benign] [--test lab-out/test-mixed]
        [--seeds 0,1,2] [--select payload|all] [--k 8] [--bytes 256] [--epochs 2]
        [--cap-train 20000] [--json out.json] [--markdown out.md]

Both runs are extracted once (cached under --work, one store per run and flow-sample spec,
labels from the run's labels.conn.log). The benign run's normal flows are split exactly as
`semiflow train` splits one capture: by time, the earliest 70% fit, the next 15% validate
(early stopping), the latest 15% calibrate the threshold at --target-fpr. Nothing of the test
run is seen before scoring.

- semiflow / semiflow-nll run the PRODUCT path: training.train.train (what `semiflow train`
  runs, default settings apart from --epochs/--cap-train) writes an artifact, and the test
  flows are scored by FlowScorer.score_flows (what `semiflow score` runs) at the artifact's
  own threshold.
- the other registry detectors are fitted on the same train/val flows (fit_detector of
  training.evaluate_run), their threshold calibrated on the same calib flows.
- kitsune reads every packet: it is fitted on the benign capture's packets BEFORE the first
  validation flow starts (the train time range), its threshold on the calib flows' scores
  (the benign capture streamed through in full), and scores every packet of the test run.

--time-split-test TRAINS AND TESTS ON ONE RUN (test = every labelled flow but the benign
flows fitted on; it overlaps val/calib, Kitsune saw attack packets): a smoke test of the
script, never a result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_DETECTORS = "semiflow,semiflow-nll,iforest,ocsvm,pca,kde,ae,ganomaly1d,knn,kitsune"
PRODUCT = {"semiflow": "classifier", "semiflow-nll": "flow-nll"}
DEEP = ("ae", "ganomaly1d")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def flow_store(run: Path, work: Path, select: str, k: int, l: int,
               mask: tuple[str, ...] = ("addresses",)) -> Path:
    """The run's extraction for this spec, made once and reused."""
    from semiflow.detector.sample.spec import FlowSampleSpec
    from semiflow.plugin.flowstore import FlowStore
    from semiflow.training.extract import extract
    from semiflow.training.labels import ConnLogLabels

    spec = FlowSampleSpec(k=k, l=l, selection=select, mask=mask)
    tag = "" if spec.mask == ("addresses",) else "-mask_" + "_".join(spec.mask)
    out = work / f"{run.resolve().name}-{select}-k{k}-l{l}{tag}.flows"
    if (out / "flows.parquet").exists():
        if FlowStore.open(out).spec == spec:
            say(f"reusing {out}")
            return out
        raise ValueError(f"{out} exists with another spec: remove it")
    say(f"extracting {run / 'capture.pcap'} -> {out}")
    t0 = time.perf_counter()
    rep = extract([run / "capture.pcap"], out, spec,
                  conn_labels=ConnLogLabels([run / "labels.conn.log"]))
    say(f"  {rep.flows} flows, {rep.packets} packets in {time.perf_counter() - t0:.0f} s")
    return out


class ArtifactEmbedder:
    """A trained artifact's frozen encoder, so KDE borrows SemiFlow's features as in evaluate."""

    def __init__(self, scorer):
        self.scorer = scorer

    def encode(self, X: np.ndarray, batch: int = 4096) -> np.ndarray:
        import torch

        from semiflow.detector.models.semiflow_inference import as_float
        enc, dev = self.scorer.encoder, self.scorer.device
        with torch.inference_mode():
            return np.concatenate([
                enc(as_float(torch.from_numpy(np.ascontiguousarray(X[i:i + batch])).to(dev)))
                .flatten(1).float().cpu().numpy() for i in range(0, len(X), batch)])


def product_semiflow(name: str, a, store_dir: Path, test_store, test_rows: np.ndarray,
                     seed: int, work: Path):
    """`semiflow train` then `semiflow score`'s scoring of the test flows: (scores, thr,
    fit s, scorer, calib flows)."""
    from semiflow.detector.scoring import load_scorer
    from semiflow.training.evaluate_lab import score_store_rows
    from semiflow.training.train import train

    out = work / "models" / f"{store_dir.name}-{name}-e{a.epochs}-c{a.cap_train}-s{seed}"
    if (out / "provenance.json").exists() and not (out / "checkpoint.pt").exists():
        say(f"reusing the trained artifact {out}")
        summary = json.loads((out / "provenance.json").read_text())["metrics"]
    else:
        summary = train([store_dir], out, epochs=a.epochs, device=a.device, seed=seed,
                        max_flows=a.cap_train, score=PRODUCT[name], log=lambda m: None,
                        command=f"lab_detection {name} seed {seed}")
    scorer = load_scorer(out, device=a.device)
    scores = score_store_rows(scorer, test_store, test_rows)
    n_cal = summary["threshold"]["n_normal"]
    return scores, scorer.threshold, summary["fit_seconds"], scorer, n_cal


def kitsune_scores(a, train_run: Path, test_run: Path, train_flows: pd.DataFrame,
                   calib: pd.DataFrame, t_cut: float, test_flows: pd.DataFrame, seed: int):
    """(test flow scores, threshold from calib flows, fit s, info)."""
    from semiflow.detector.aggregate import aggregate_flow_scores
    from semiflow.detector.baselines.kitsune import Kitsune
    from semiflow.plugin.packet_meta import map_packets_to_flows, read_packet_meta
    from semiflow.training.evaluate import calibrate_threshold

    def per_flow(meta, s, flows):
        idx = map_packets_to_flows(meta, flows)
        hit = idx >= 0
        return aggregate_flow_scores(s[hit], idx[hit], len(flows), "max")

    cache = a.work / (f"kitsune-{train_run.resolve().name}-{test_run.resolve().name}-"
                      f"g{a.kitsune_fm_grace}-a{a.kitsune_max_ae}-t{t_cut:.6f}-"
                      f"f{a.target_fpr:g}-s{seed}.npz")
    if cache.exists():   # Kitsune reads packets, not flow samples: same for every --select
        z = np.load(cache)
        if len(z["scores"]) == len(test_flows):
            say(f"reusing {cache}")
            return z["scores"], float(z["thr"]), float(z["fit_s"]), json.loads(str(z["info"]))
    det = Kitsune(fm_grace=a.kitsune_fm_grace, max_ae=a.kitsune_max_ae, seed=seed)
    mb = read_packet_meta(train_run / "capture.pcap")
    keep = mb.ts < t_cut
    t0 = time.perf_counter()
    det.fit_packets([mb], [keep])
    fit_s = time.perf_counter() - t0
    s_cal = per_flow(mb, det.score_packets(mb), train_flows)[calib["row"].to_numpy()]
    thr = calibrate_threshold(s_cal, a.target_fpr)
    mt = read_packet_meta(test_run / "capture.pcap")
    s = per_flow(mt, det.score_packets(mt), test_flows)
    info = {"train_packets": int(keep.sum()), "calib_flows": int(np.isfinite(s_cal).sum())}
    np.savez(cache, scores=s, thr=thr, fit_s=fit_s, info=json.dumps(info))
    return s, thr, fit_s, info


def run_seed(a, seed: int, data, parts: dict, stores: dict, test_rows: np.ndarray,
             test_pos: np.ndarray, names: list[str]) -> list[dict]:
    from semiflow.training.evaluate import calibrate_threshold
    from semiflow.training.evaluate_lab import lab_metrics
    from semiflow.training.evaluate_run import fit_detector, flow_scores, order_for_embedding

    tr, va, ca = (parts[k]["row"].to_numpy() for k in ("train", "val", "calib"))
    test_flows = stores["test"].flows.iloc[test_rows].reset_index(drop=True)
    done: dict = {}
    out = []
    for name in order_for_embedding(names) + (["kitsune"] if a.kitsune else []):
        t0 = time.perf_counter()
        info: dict = {}
        if name in PRODUCT:
            s, thr, fit_s, scorer, n_cal = product_semiflow(
                name, a, stores["train_dir"], stores["test"], test_rows, seed, a.work)
            info["calib_flows"] = n_cal
            if name == "semiflow":
                done[name] = ArtifactEmbedder(scorer)
        elif name == "kitsune":
            s, thr, fit_s, info = kitsune_scores(
                a, a.train, a.test, stores["train"].flows, parts["calib"],
                float(parts["val"]["ts"].min()), stores["test"].flows, seed)
            s = s[test_rows]
        else:
            p: dict = {}
            if name in DEEP:
                p = {"epochs": a.epochs, **({"device": a.device} if a.device else {})}
            det, fit_s, _, p = fit_detector(name, data, tr, va, p, seed, None, done)
            done[name] = det
            s_cal, _ = flow_scores(det, data, ca)
            thr = calibrate_threshold(s_cal, a.target_fpr)
            s, _ = flow_scores(det, data, test_pos)
            info["calib_flows"] = int(np.isfinite(s_cal).sum())
            if name == "kde":
                info["features"] = p["features"]
        rec = {"detector": name, "seed": seed, "fit_seconds": round(fit_s, 2),
               "total_seconds": round(time.perf_counter() - t0, 2), **info,
               **lab_metrics(test_flows, s, thr)}
        say(f"seed {seed} {name:12s} AUROC all {rec['auroc_all']:.3f} payload "
            f"{rec['auroc_payload']:.3f} scored {rec['n_scored']}/{rec['n_flows']} "
            f"TPR@thr {rec['tpr_at_thr']:.3f} FPR {rec['fpr_at_thr']:.4f} "
            f"fit {fit_s:.1f}s ({rec['total_seconds']:.0f}s)")
        out.append(rec)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--train", type=Path, default=Path("lab-out/train-benign"),
                   help="benign lab run directory (capture.pcap, labels.conn.log)")
    p.add_argument("--test", type=Path, default=Path("lab-out/test-mixed"),
                   help="mixed lab run directory to score")
    p.add_argument("--work", type=Path, default=Path("lab-out/detection-work"),
                   help="cache of flow stores and trained models")
    p.add_argument("--detectors", default=DEFAULT_DETECTORS,
                   help=f"registry names and/or kitsune, comma-separated "
                        f"(default {DEFAULT_DETECTORS})")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated (default 0,1,2)")
    p.add_argument("--select", choices=["payload", "all"], default="all",
                   help="packets in a flow sample (flow-sample spec; default all, as the product)")
    p.add_argument("--k", type=int, default=8, help="packets per flow sample (default 8)")
    p.add_argument("--mask", default="addresses",
                   help="header fields zeroed in every sample (default addresses; e.g. "
                        "addresses,ttl,ip_id,checksums to show no detector leans on them)")
    p.add_argument("--l", "--bytes", dest="l", type=int, default=1600,
                   help="bytes per packet row (the spec's l: every detector, SemiFlow "
                        "included, sees these rows; 256 is much faster; default 1600)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per stage for semiflow*, ae, ganomaly1d (default theirs)")
    p.add_argument("--cap-train", type=int, default=50_000,
                   help="at most this many benign normal flows for train+val+calib "
                        "(semiflow train's --max-flows; default 50000)")
    p.add_argument("--cap-test-normal", type=int, default=0,
                   help="score at most this many benign test flows, evenly spaced in time "
                        "(every attack flow is scored; keep >= 10000; default 0 = all)")
    p.add_argument("--target-fpr", type=float, default=1e-3)
    p.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--kitsune-fm-grace", type=int, default=5000)
    p.add_argument("--kitsune-max-ae", type=int, default=10)
    p.add_argument("--time-split-test", action="store_true",
                   help="SMOKE TEST ONLY: --test is the --train run; test = its labelled "
                        "flows but the fitted ones (overlaps val/calib: not a result)")
    p.add_argument("--json", type=Path, help="write every record and the summary here")
    p.add_argument("--markdown", type=Path, help="write the tables here")
    a = p.parse_args(argv)
    return run(a)


def run(a: argparse.Namespace) -> int:
    from semiflow.detector.registry import parse_names
    from semiflow.training.evaluate import load_flow_data
    from semiflow.training.evaluate_lab import family_recall, markdown_lab, summarize_lab
    from semiflow.training.train import normal_parts

    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    names = [n.strip() for n in a.detectors.split(",") if n.strip()]
    a.kitsune = "kitsune" in names
    names = [n for n in names if n != "kitsune"]
    names = parse_names(",".join(names)) if names else []
    seeds = [int(v) for v in a.seeds.split(",") if v.strip()]
    if a.time_split_test:
        a.test = a.train
        say("*** SMOKE TEST (--time-split-test): train and test come from ONE run; the test "
            "part overlaps val/calib. Not a result. ***")
    a.work.mkdir(parents=True, exist_ok=True)
    mask = tuple(m for m in a.mask.split(",") if m)
    tr_dir = flow_store(a.train, a.work, a.select, a.k, a.l, mask)
    te_dir = tr_dir if a.time_split_test else flow_store(a.test, a.work, a.select, a.k, a.l,
                                                         mask)
    parts, st = normal_parts([tr_dir], max_flows=a.cap_train, log=say)
    for k in ("train", "val", "calib"):
        say(f"benign {k}: {len(parts[k])} flows, start times {parts[k]['ts'].min():.1f} .. "
            f"{parts[k]['ts'].max():.1f}")
    data = load_flow_data([tr_dir] if a.time_split_test else [tr_dir, te_dir])
    stores = {"train": data.stores[0], "test": data.stores[-1], "train_dir": tr_dir}
    tf = stores["test"].flows
    use = tf["label"].astype(str).isin(["normal", "anomalous"]).to_numpy().copy()
    if a.time_split_test:   # smoke: every labelled flow but the benign ones fitted on
        use[parts["train"]["row"].to_numpy()] = False
    if a.cap_test_normal:   # evenly spaced in time; every anomalous flow stays
        from semiflow.training.dataset import budget_flows
        normal = np.flatnonzero(use & (tf["label"].astype(str) == "normal").to_numpy())
        use[normal[~budget_flows(tf.iloc[normal], a.cap_test_normal)]] = False
    test_rows = np.flatnonzero(use)
    test_pos = test_rows + (0 if a.time_split_test else len(data.stores[0].flows))
    sizes = tf.iloc[test_rows].assign(family=lambda f: np.where(
        f["label"] == "anomalous", f["family"].astype(str), "(benign)"))["family"]
    sizes = sizes.value_counts().to_dict()
    say(f"test: {len(test_rows)} labelled flows: {sizes}")
    if sizes.get("(benign)", 0) < 10_000:
        say(f"warning: only {sizes.get('(benign)', 0)} benign test flows: an FPR of 1e-3 "
            "rests on fewer than 10 false positives")
    t0 = time.perf_counter()
    records = []
    for seed in seeds:
        records += run_seed(a, seed, data, parts, stores, test_rows, test_pos, names)
    summary, fams = summarize_lab(records), family_recall(records)
    smoke = " (SMOKE TEST: one run, time split, not a result)" if a.time_split_test else ""
    setting = (f"train {a.train} -> test {a.test}{smoke}; "
               f"spec select={a.select} k={a.k} l={a.l}; epochs {a.epochs}; cap-train "
               f"{a.cap_train}; test benign cap {a.cap_test_normal or 'none'}; seeds {seeds}; "
               f"target FPR {a.target_fpr:g}; benign "
               f"train/val/calib {len(parts['train'])}/{len(parts['val'])}/"
               f"{len(parts['calib'])} flows; test {sizes.get('(benign)', 0)} benign + "
               f"{len(test_rows) - sizes.get('(benign)', 0)} attack flows; "
               f"{time.perf_counter() - t0:.0f} s")
    text = setting + "\n\n" + markdown_lab(summary, fams, sizes)
    print(text)
    if a.markdown:
        a.markdown.write_text(text + "\n")
    if a.json:
        blob = {"setting": setting, "args": {k: str(v) for k, v in vars(a).items()},
                "test_families": sizes, "summary": summary.to_dict(orient="records"),
                "family_recall": fams.reset_index().to_dict(orient="records"),
                "records": records}
        a.json.write_text(json.dumps(blob, indent=1, default=_json))
    return 0


def _json(o):
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
