"""Flow samples for the speed benchmarks: an extraction directory or a packed .npz of one.

`python benchmarks/speed_data.py EXTRACT_DIR -o lab.npz` packs an extraction (its flows in
start-time order, first `--length` bytes of each packet row, labels, n_selected) into a few
MB, so a GPU machine that cannot see ../shared or lab-out/ gets the same data (the device tool
carries the repository, not its neighbours).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Flows:
    X: np.ndarray           # uint8[n, K, length], flows in start-time order
    anomalous: np.ndarray   # bool[n]
    n_selected: np.ndarray  # int64[n]

    def normal_split(self, fractions=(0.7, 0.15, 0.15)) -> tuple[np.ndarray, ...]:
        """train / val / calib normal flows by time, as `semiflow train` splits one capture."""
        X = self.X[(~self.anomalous) & (self.n_selected > 0)]
        a = int(round(fractions[0] * len(X)))
        b = a + int(round(fractions[1] * len(X)))
        return X[:a], X[a:b], X[b:]


def load(path: str | Path, length: int = 256) -> Flows:
    path = Path(path)
    if path.suffix == ".npz":
        z = np.load(path)
        return Flows(z["X"][..., :length], z["anomalous"], z["n_selected"])
    from semiflow.plugin.flowstore import FlowStore

    st = FlowStore.open(path)
    order = np.argsort(st.flows["ts"].to_numpy(), kind="stable")
    X = st.samples.rows(order, width=length)
    return Flows(X, (st.flows["label"].to_numpy() == "anomalous")[order],
                 st.flows["n_selected"].to_numpy().astype(np.int64)[order])


def tiled(X: np.ndarray, n: int) -> np.ndarray:
    """X's flows repeated to n flows (a larger data set of the same traffic)."""
    return np.concatenate([X] * -(-n // len(X)))[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("extract_dir")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--length", type=int, default=256)
    a = ap.parse_args()
    f = load(a.extract_dir, a.length)
    np.savez_compressed(a.out, X=f.X, anomalous=f.anomalous, n_selected=f.n_selected)
    print(f"{a.out}: {len(f.X)} flows ({int(f.anomalous.sum())} anomalous), "
          f"{Path(a.out).stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
