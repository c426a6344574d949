#!/usr/bin/env bash
# Install spectral-diffusion and its dev tools into ./.venv, plus the embedded Fashion-MNIST data.
#
# - Fashion-MNIST comes from Debian's dataset-fashion-mnist package where apt-get exists (it installs
#   /usr/share/datasets/fashion-mnist); elsewhere the quickstart downloads it through torchvision.
# - torch and torchvision are resolved together by pip from the package index, so the pair always
#   matches (a torchvision built for another torch fails with "operator torchvision::nms does not exist").
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
  if ! { $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
         || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; }; then
    echo "install.sh: could not apt-get install dataset-fashion-mnist; training will try to download Fashion-MNIST." >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev,text,slurm,sweeps,export,streaming]"
.venv/bin/python -c "import torch, torchvision, lightning, hydra, pywt, diffusers, torchmetrics, wandb; \
print(f'installed: torch {torch.__version__}, torchvision {torchvision.__version__}, lightning {lightning.__version__}')"
