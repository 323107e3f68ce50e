#!/usr/bin/env bash
# Train the bundled default model (semiflow/data/model) on the NORMAL captures of the
# development corpus. The corpus is read in place (never copied into the repository).
#
#   benchmarks/train_bundled_model.sh [CORPUS_DIR] [WORK_DIR]
#
# CORPUS_DIR defaults to ../shared/corpus (or $SEMIFLOW_CORPUS); WORK_DIR to a temp dir.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
corpus="${1:-${SEMIFLOW_CORPUS:-$here/../shared/corpus}}"
work="${2:-$(mktemp -d -t semiflow-bundled-XXXX)}"
semiflow="${SEMIFLOW:-$here/.venv/bin/semiflow}"
epochs="${EPOCHS:-6}"

files() {  # the manifest's files with label $1 (column 5), as paths under the corpus
    awk -F, -v want="$1" -v root="$corpus" 'NR > 1 && $5 == want { print root "/" $1 }' \
        "$corpus/manifest.csv" | while read -r f; do [ -f "$f" ] && echo "$f"; done
}
mapfile -t normal < <(files normal)
mapfile -t anomalous < <(files anomalous)
# An existing extraction in WORK_DIR is reused (delete it to re-extract).
if [ ! -f "$work/normal.flows/flows.parquet" ]; then
    echo "extracting ${#normal[@]} normal capture files -> $work/normal.flows"
    nice "$semiflow" extract "${normal[@]}" --manifest "$corpus/manifest.csv" \
        -o "$work/normal.flows" -q
fi
# Anomalous files: scored for the training report only (train never fits them).
if [ ! -f "$work/anomalous.flows/flows.parquet" ]; then
    echo "extracting ${#anomalous[@]} anomalous capture files -> $work/anomalous.flows (report only)"
    nice "$semiflow" extract "${anomalous[@]}" --manifest "$corpus/manifest.csv" \
        -o "$work/anomalous.flows" -q
fi

# One thread: on a shared 2-core machine torch's default threading is several times slower.
nice "$semiflow" train "$work/normal.flows" "$work/anomalous.flows" -o "$work/model" \
    --config small --epochs "$epochs" --seed 42 --target-fpr 1e-3 --max-flows-per-file 100 \
    --device cpu --threads 1 -q

mkdir -p "$here/semiflow/data/model"
cp "$work/model/model.safetensors" "$work/model/semiflow-model.json" \
   "$work/model/provenance.json" "$here/semiflow/data/model/"
du -sh "$here/semiflow/data/model"
echo "bundled model updated from $work/model"
