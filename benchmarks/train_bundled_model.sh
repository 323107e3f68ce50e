#!/usr/bin/env bash
# Train the bundled default model (semiflow/data/model): `semiflow train` with its defaults
# (flow-level SemiFlow, flow samples of selection "all") on the benign-only traffic-lab run
# that `make lab` writes (lab-out/train-benign). Captures are read in place, never committed.
#
#   benchmarks/train_bundled_model.sh [LAB_RUN_DIR] [WORK_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
run="${1:-$here/lab-out/train-benign}"
work="${2:-$(mktemp -d -t semiflow-bundled-XXXX)}"
semiflow="${SEMIFLOW:-$here/.venv/bin/semiflow}"

# An existing extraction in WORK_DIR is reused (delete it to re-extract).
if [ ! -f "$work/benign.flows/flows.parquet" ]; then
    echo "extracting $run/capture.pcap -> $work/benign.flows"
    # -l 256: the flow-level model reads the first 256 bytes of each packet; a smaller spec
    # keeps the extraction (and the sensor's per-frame cut) small.
    nice "$semiflow" extract "$run/capture.pcap" --conn-labels "$run/labels.conn.log" \
        -l 256 -o "$work/benign.flows" -q
fi
# Two threads: the whole 2-core machine (torch's default oversubscribes it).
# The same call as seed 0 of benchmarks/lab_detection.py (whose artifact is the one shipped).
nice "$semiflow" train "$work/benign.flows" -o "$work/model" --seed 0 --target-fpr 1e-3 \
    --device cpu --threads 2 -q

mkdir -p "$here/semiflow/data/model"
rm -f "$here/semiflow/data/model/"*
cp "$work/model/model.safetensors" "$work/model/semiflow-model.json" \
   "$work/model/provenance.json" "$here/semiflow/data/model/"
du -sh "$here/semiflow/data/model"
echo "bundled model updated from $work/model"
