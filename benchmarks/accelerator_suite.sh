#!/usr/bin/env bash
# The BENCHMARKS.md "full sizes" figures (1.5B, bf16, random weights) in one JSON:
# T2I s/image and decode tok/s at batch 1 and 8, stage-2 train step time and MFU.
# Meant for one H100/H200 (under 8 minutes); any flag of accelerator_suite.py passes
# through, e.g. a CPU check:
#   bash benchmarks/accelerator_suite.sh --out /tmp/s.json --config tiny --train-config tiny_train \
#     --t2i-points 3 --new-tokens 4 --train-steps 1 --batches 1,2 --train-batch 2
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec python "$ROOT/benchmarks/accelerator_suite.py" "$@"
