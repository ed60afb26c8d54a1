#!/usr/bin/env bash
# One command for a fresh clone: install everything, build the default index, run a sample query.
#   bash scripts/setup.sh            (SIMSEARCH_REBUILD=1 to rebuild an existing default index)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh
source .venv/bin/activate

INDEX_DIR="${SIMSEARCH_INDEX_DIR:-indexes/fashion-mnist}"
if [[ -f "$INDEX_DIR/manifest.json" && "${SIMSEARCH_REBUILD:-0}" != "1" ]]; then
    echo "== default index already at $INDEX_DIR (SIMSEARCH_REBUILD=1 rebuilds it)"
else
    echo "== building the default index at $INDEX_DIR (trains the default model; about 9 minutes on 2 cores)"
    simsearch build-index --index-dir "$INDEX_DIR" --force
fi

echo "== sample query: catalog item fashion-mnist/train/00000, exported as a PNG"
mkdir -p indexes/samples
simsearch export-item fashion-mnist/train/00000 indexes/samples/train-00000.png --index-dir "$INDEX_DIR"
simsearch query indexes/samples/train-00000.png --index-dir "$INDEX_DIR" -k 5
