#!/usr/bin/env bash
# The GPU check: one table (k-WTA, PGD-20 against torchattacks, AMP training steps, sharded
# evaluation), under 8 minutes on one GPU. Arguments go to bench/gpu.py, e.g. --device cpu --quick.
# Uses .venv when there is one (make setup), else the python3 on PATH with robustact's source.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD/src:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" bench/gpu.py "$@"
