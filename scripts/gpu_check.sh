#!/usr/bin/env bash
# The GPU speed check: openai/weak-to-strong's train_model and this project's stage on the same
# random-weight GPT-2-medium, on rows of about 140 tokens (BoolQ's lengths; SciQ's 21 tokens
# measure only overhead), one after the other, then a markdown table: train and predict ex/s,
# tokens/s, MFU against the GPU's bf16 matmul peak measured on the spot, peak GPU memory and RSS.
# Sized to finish inside the 6 minutes a lent GPU allows; not yet timed on one.
#
#   bash scripts/gpu_check.sh --prepare CHECKOUT   # here, with PyPI: what the GPU machine lacks
#   bash scripts/gpu_check.sh [TABLE]              # there: the check; the table into TABLE too
#
# A lent GPU machine reaches no registry and lacks hydra-core, omegaconf, datasets and their
# small dependencies; --prepare downloads those wheels (for its Python, GPU_PYTHON, default
# 3.11), a byte-level BPE tokenizer and the reference's code into .cache/gpu_check (ignored by
# git, within the 64 MiB a device run carries: pass `.cache/gpu_check` as its carry). Without a
# CUDA GPU the check stops at once with exit 2.
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=.cache/gpu_check
PYTHON=${PYTHON:-python}
# What the project imports beyond torch, transformers and Lightning, without their own
# dependencies (pip --no-deps): the set a bare GPU image was seen to lack.
WHEELS="hydra-core omegaconf datasets pyarrow dill multiprocess xxhash torchmetrics"

if [[ "${1:-}" == "--prepare" ]]; then
  checkout=${2:?"usage: bash scripts/gpu_check.sh --prepare CHECKOUT (a checkout of openai/weak-to-strong)"}
  rm -rf "$HERE" && mkdir -p "$HERE/wheels"
  # shellcheck disable=SC2086
  $PYTHON -m pip download --quiet --no-deps --only-binary=:all: --dest "$HERE/wheels" \
    --python-version "${GPU_PYTHON:-3.11}" --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 $WHEELS
  # omegaconf's parser runtime comes as source only: built into a wheel here, pure Python.
  $PYTHON -m pip wheel --quiet --no-deps --wheel-dir "$HERE/wheels" antlr4-python3-runtime==4.9.3
  $PYTHON -c "
from transformers import AutoTokenizer
from w2s_lightning import zoo
AutoTokenizer.from_pretrained(zoo.resolve('zoo:smollm2_135m', '${W2S_CACHE_DIR:-.cache/w2s}/zoo')).save_pretrained('$HERE/tokenizer')"
  cp -r "$checkout/weak_to_strong" "$HERE/weak_to_strong"
  du -sh "$HERE"
  exit 0
fi

if ! $PYTHON -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA GPU visible to $PYTHON's torch; this check needs one (run it where a GPU is lent)" >&2
  exit 2
fi
table=${1:-$HERE/table.md}
if ! $PYTHON -c "import hydra, omegaconf, datasets, torchmetrics" 2>/dev/null; then
  $PYTHON -m pip install --quiet --no-index --no-deps --find-links "$HERE/wheels" "$HERE"/wheels/*.whl
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" W2S_CACHE_DIR="$HERE/cache" WANDB_MODE=disabled
# 6,144 rows of about 140 tokens of made-up words (benchmark.py trains on 2,048 and predicts
# 4,096); the labels alternate: throughput, not accuracy.
$PYTHON - "$HERE/rows.csv" <<'EOF'
import csv, random, sys
random.seed(0)
words = ["river", "court", "season", "engine", "market", "planet", "yellow", "quiet", "north", "garden"]
with open(sys.argv[1], "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["text", "label"])
    for i in range(2 * 2048 + 2048):
        out.writerow([" ".join(random.choices(words, k=random.randint(100, 180))), i % 2])
EOF
model=$HERE/gpt2_medium
$PYTHON scripts/benchmark.py gpt2 "$model" --size medium --tokenizer "$HERE/tokenizer"
$PYTHON scripts/benchmark.py suite "$model" --checkout "$HERE" --rows 2048 --task custom \
  task.path="$HERE/rows.csv" trainer=gpu weak.max_length=256 | tee "$table"
echo "gpu_check: table written to $table"
