#!/usr/bin/env bash
# Full benchmark sweep (NOT run by CI, which only smoke-runs the suites with --benchmark-disable):
# every suite in one pytest run, JSON + Markdown table + overhead plot under benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-$(.venv/bin/python -c 'import torch; print(torch.cuda.get_device_name(0).replace(" ", "-") if torch.cuda.is_available() else "cpu-%dcore" % torch.get_num_threads())')}
OUT=benchmarks/results/${DEVICE}-$(date +%F).json
.venv/bin/python -m pytest -q benchmarks "$@" --benchmark-json="$OUT" --benchmark-columns=median,rounds -p no:cacheprovider
.venv/bin/python benchmarks/render.py "$OUT"
