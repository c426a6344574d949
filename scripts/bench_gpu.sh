#!/usr/bin/env bash
# The whole GPU check and benchmark of issue 15 in one command, sized for < 8 minutes on one
# H100/H200 (it has not been run yet: no GPU was lent to the session that wrote it).
#
#   bash scripts/bench_gpu.sh [OUTPUT_DIR]        (default: docs/gpu)
#
# 1. the GPU tests: bf16 and compiled paths against eager, fused wavelet gating against the
#    reference, counter-based noise bitwise equal in its integer stage to the CPU's;
# 2. scripts/bench_speed.py for the CelebA-HQ pair (ldm_celebahq and sd_celebahq_8x, plus the
#    two-head variant), bf16-mixed, the student regionally compiled, the teacher compiled whole:
#    training, distillation, DDIM/DPM-Solver++ sampling at batch 1 and 256 with and without
#    guidance, compile warm-up, noise share and the op breakdown.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/gpu}"
mkdir -p "$out"
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python
"$python" -m pytest -q -p no:cacheprovider -m "gpu or not gpu" \
  tests/test_gpu.py tests/test_noise.py tests/test_fused_gating.py tests/test_compilation.py 2>&1 | tail -5
timeout 420 "$python" scripts/bench_speed.py --device cuda --pairs celebahq --students 8x \
  --variants "sd_celebahq_8x:head_channels=40" \
  --precision bf16-mixed --compile regional --teacher-compile whole --batch-size 128 \
  --sample-batches 1 256 --sample-steps 50 --samplers ddim dpmpp_2m --guidance-pairs celebahq \
  --repeats 3 --warmup 2 --json "$out/bench_speed_gpu.json" --markdown "$out/bench_speed_gpu.md"
