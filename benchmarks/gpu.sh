#!/usr/bin/env bash
# The GPU checks, in one go (about 10 minutes on one recent GPU): the CUDA tests, then the
# GPU benchmarks, each result file written to benchmarks/results/ (or to $1).
#
#   pip install -e ".[test]" && bash benchmarks/gpu.sh
#
# Needs a CUDA build of torch and a visible device; the peers (benchmarks/requirements-peers.txt)
# are optional: a peer that does not import is skipped with a line saying why.
set -u
cd "$(dirname "$0")/.."
results=${1:-benchmarks/results}
mkdir -p "$results"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || exit 1
status=0
step() { echo "== $*"; "$@" || { echo "!! failed: $*"; status=1; }; }
# 1. The tests that need CUDA (no host sync inside step loops, fixed sync counts per call),
#    then the contract suite on CUDA tensors where it has a device parameter.
step timeout 180 python -m pytest -q -p no:cacheprovider tests/test_throughput.py
# 2. Throughput of every attack, advkit against the peers (bf16, compile, CUDA graphs).
step timeout 180 python benchmarks/run.py --device cuda --quick --results-dir "$results"
# 3. AutoAttack: images/s of each version and of the reference on a WRN-28-10-size model,
#    batch 500, advkit in bf16.
step timeout 300 python benchmarks/autoattack.py --throughput --device cuda --batch 500 \
  --versions standard,fast --peers autoattack --results-dir "$results"
exit $status
