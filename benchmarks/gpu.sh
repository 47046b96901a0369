#!/usr/bin/env bash
# The GPU checks, in one go (about 8 minutes on one recent GPU): the CUDA tests, then the
# GPU benchmarks, each result file written to benchmarks/results/ (or to $1), and the
# Markdown blocks into benchmarks/README.md.
#
#   pip install -e ".[test]" && bash benchmarks/gpu.sh
#
# Needs a CUDA build of torch and a visible device; the peers (benchmarks/requirements-peers.txt)
# are optional: a peer that does not import is skipped with a line saying why. PYTHON names
# the interpreter (default: python).
set -u
cd "$(dirname "$0")/.."
results=${1:-benchmarks/results}
mkdir -p "$results"
py=${PYTHON:-python}
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || exit 1
export PYTHONUNBUFFERED=1
status=0
step() { echo "== $*"; "$@" || { echo "!! failed ($?): $*"; status=1; }; }
# 1. The tests that need CUDA: the attack contract on CUDA tensors, reduced precision and
#    CPU/GPU agreement (tests/test_cuda.py); no host sync inside step loops, fixed sync counts
#    per call, the CUDA-graph path (tests/test_throughput.py).
step timeout 150 "$py" -m pytest -q -p no:cacheprovider --maxfail=20 tests/test_cuda.py tests/test_throughput.py
# 2. AutoAttack: images/s of each version and of the reference on a WRN-28-10-size model
#    where every sample stays robust, batch 500, advkit in bf16 (and standard in fp32).
#    A tenth of the standard budget for every library (cost grows linearly with it).
step timeout 180 "$py" benchmarks/autoattack.py --throughput --device cuda --batch 500 \
  --steps 10 --queries 500 --versions standard,fast --peers autoattack --results-dir "$results"
# 3. PGD-10 throughput, advkit against the bare loop and the peers: ResNet-18 (batch 256) and
#    WRN-28-10 (batch 128), fp32 and bf16, channels_last.
step timeout 130 "$py" benchmarks/run.py --device cuda --models resnet18,wrn28_10 \
  --dtype fp32,bf16 --memory-format channels_last --attacks pgd,apgd --variants plain,early_stop \
  --repeats 6 --min-repeats 3 --budget-s 15 --results-dir "$results"
# 4. The compiled and CUDA-graph variants (compilation is most of this step's time).
step timeout 90 "$py" benchmarks/run.py --device cuda --models resnet18 --dtype bf16 \
  --memory-format channels_last --attacks pgd --variants compile,reduce-overhead --peers none \
  --repeats 6 --min-repeats 3 --budget-s 15 --tag compile --no-readme --results-dir "$results"
exit $status
