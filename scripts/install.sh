#!/usr/bin/env bash
# Install simsearch into .venv and, where the machine allows it (root or sudo with apt), the
# Debian packages: Fashion-MNIST and, for the web-page tests, Chromium and its driver.
#   SIMSEARCH_EXTRAS=train,serve (default) | train-gpu,serve (NVIDIA GPU) | test
#   SIMSEARCH_WITH_BROWSER=1     also Chromium;  PYTHON=python3.12  the interpreter for .venv
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(dataset-fashion-mnist)
if [[ "${SIMSEARCH_WITH_BROWSER:-0}" == "1" ]]; then
    APT_PACKAGES+=(chromium chromium-driver)
fi

missing=()
for package in "${APT_PACKAGES[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if (( ${#missing[@]} )); then
    if command -v apt-get >/dev/null 2>&1 && { [[ $EUID -eq 0 ]] || sudo -n true 2>/dev/null; }; then
        SUDO=""; [[ $EUID -eq 0 ]] || SUDO="sudo -n"
        echo "== apt-get install ${missing[*]}"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "== cannot apt-get install ${missing[*]} here; simsearch will look for Fashion-MNIST in"
        echo "   --data-dir/SIMSEARCH_DATA_DIR, ~/.keras/datasets/fashion-mnist/, or download it"
    fi
fi

PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    for candidate in python3.11 python3.12 python3; do
        if command -v "$candidate" >/dev/null 2>&1; then PYTHON="$candidate"; break; fi
    done
fi
if [[ ! -x .venv/bin/python ]]; then
    echo "== creating .venv with $PYTHON"
    "$PYTHON" -m venv .venv
fi
echo "== pip install -e .[${SIMSEARCH_EXTRAS:-train,serve}]"
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[${SIMSEARCH_EXTRAS:-train,serve}]" 2>&1 \
    | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import simsearch, faiss, onnxruntime" # fail loudly if the install did not work
