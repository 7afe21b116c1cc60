#!/usr/bin/env bash
# Run matrix items on a lent GPU machine (the `device` tool), which starts bare of this project's data and of the
# packages its image lacks, and reaches no network. Three steps:
#
#   bash scripts/device.sh prepare                 # here: .device/ = Fashion-MNIST (gz), pyautoattack and timm
#   device run: command "bash scripts/device.sh run [--budget S] ITEM...", carry [".device"], timeout_s 600
#                                                  # there: reproduce ITEM... on the GPU for at most S seconds, then
#                                                  # pack what changed in results/ and runs/ (scripts/devpack.py:
#                                                  # no checkpoint.pt, each tensor once) into $OUT/device.tar.gz.part-*
#   bash scripts/device.sh unpack FILES_AT         # here: unpack what came back into results/ and runs/
#
# Items stop at the budget wherever they are: a training run keeps its checkpoint and an evaluation its .partial,
# so the next run (here or there) resumes them. Evaluations there attack 1,000 images a batch (EVAL_BATCH=N to
# change): a .partial made here in batches of 100 starts over there, so give the GPU evaluations not begun here.
# Budget the whole call: the device session has 15 minutes in all, machine start and transfers included.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=.device
PY=${PYTHON:-.venv/bin/python}

prepare() {
    rm -rf "$DEV" && mkdir -p "$DEV/site" "$DEV/fmnist"
    cp /usr/share/datasets/fashion-mnist/*.gz "$DEV/fmnist/"
    site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    # Python sources only (the image's python3 compiles them): the wheel's example checkpoints are 44 MB.
    (cd "$site" && find timm pyautoattack -name "*.py" -print0 | xargs -0 tar cf -) | tar xf - -C "$DEV/site"
    if [ -d .git/info ] && ! grep -qx "/$DEV/" .git/info/exclude 2>/dev/null; then echo "/$DEV/" >> .git/info/exclude; fi
    du -sh "$DEV"
}

run() {
    local budget=420
    if [ "${1:-}" = "--budget" ]; then budget=$2; shift 2; fi
    [ -d "$DEV/site" ] || { echo "error: no $DEV/ here: run 'bash scripts/device.sh prepare' and carry .device" >&2; exit 2; }
    export PYTHONPATH="$PWD:$PWD/$DEV/site" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 ROCL_ZOO_DATA="$PWD/$DEV/data"
    mkdir -p "$ROCL_ZOO_DATA/FashionMNIST/raw"
    for f in "$DEV"/fmnist/*.gz; do gunzip -c "$f" > "$ROCL_ZOO_DATA/FashionMNIST/raw/$(basename "$f" .gz)"; done
    nvidia-smi -L || true
    "${PY3:-python3}" -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'timm', timm.__version__)"
    local rc=0
    touch "$DEV/start"
    # batches of 1,000: a small CNN's attack batch of 100 leaves a GPU idle between kernel launches
    timeout --signal=INT --kill-after=30 "$budget" "${PY3:-python3}" -m training.reproduce --threads 8 \
        --eval-batch "${EVAL_BATCH:-1000}" "$@" || rc=$?
    echo "reproduce exited $rc after at most ${budget} s"
    # The way back holds 64 MB: a ResNet-18 is 45 MB, so a last-epoch model/ beside best/ is left out if need be.
    local pack=/tmp/device.tar.gz
    "${PY3:-python3}" scripts/devpack.py pack --newer "$DEV/start" --exclude "*/checkpoint.pt" results runs > $pack
    if [ "$(stat -c %s $pack)" -gt 62000000 ]; then
        "${PY3:-python3}" scripts/devpack.py pack --newer "$DEV/start" --exclude "*/checkpoint.pt" \
            --exclude "results/curves/*/model/*" results runs > $pack
    fi
    split -b 15m $pack "${OUT:-/tmp}/device.tar.gz.part-"
    ls -la "${OUT:-/tmp}"
}

unpack() {
    local from=${1:?give the folder the device tool put the files in (files_at)}
    cat "$from"/device.tar.gz.part-* | "$PY" scripts/devpack.py unpack
    git status --short results | head -20
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    unpack) shift; unpack "$@" ;;
    *) echo "usage: bash scripts/device.sh prepare | run [--budget S] ITEM... | unpack FILES_AT" >&2; exit 2 ;;
esac
