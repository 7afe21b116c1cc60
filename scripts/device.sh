#!/usr/bin/env bash
# Run matrix items on a lent GPU machine (the `device` tool), which starts bare of this project's data and of the
# packages its image lacks, and reaches no network. The steps:
#
#   bash scripts/device.sh prepare                 # here: .device/ = Fashion-MNIST (gz), pyautoattack and timm
#   bash scripts/device.sh slim                    # here: keep the committed weights (the flagship's 45 MB, the
#                                                  # curves') off the copy sent, which may hold 64 MiB in all
#   device run: command "bash scripts/device.sh run [--budget S] ITEM...", carry [".device"], timeout_s 600
#                                                  # there: reproduce ITEM... on the GPU for at most S seconds, then
#                                                  # pack what changed in results/ and runs/ (scripts/devpack.py:
#                                                  # each tensor once, all that fits the way back) into
#                                                  # $OUT/device.tar.gz.part-*
#   bash scripts/device.sh unpack FILES_AT         # here: unpack what came back into results/ and runs/
#   bash scripts/device.sh unslim                  # here: track the weights again (before any commit)
#
# Items stop at the budget wherever they are: a training run keeps its checkpoint and an evaluation its .partial,
# so the next run (here or there) resumes them. Evaluations there attack 1,000 images a batch (EVAL_BATCH=N to
# change): a .partial made here in batches of 100 starts over there, so give the GPU evaluations not begun here.
# Budget the whole call: the device session has 15 minutes in all, machine start and transfers included. Measured
# on one H200: a start ~1 min; cnn4_rocl's 30 RoCL epochs with their probes 7 min, a linear head 1 min, APGD on
# 10,000 images 25 s, AutoAttack on 1,000 40 s; a machine kept warm between calls starts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=.device
PY=${PYTHON:-.venv/bin/python}
SLIM=$DEV/slimmed.txt

prepare() {
    [ -s "$SLIM" ] && { echo "error: slim now ($SLIM): 'bash scripts/device.sh unslim' first" >&2; exit 2; }
    rm -rf "$DEV" && mkdir -p "$DEV/site" "$DEV/fmnist"
    cp /usr/share/datasets/fashion-mnist/*.gz "$DEV/fmnist/"
    site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    # Python sources only (the image's python3 compiles them): the wheel's example checkpoints are 44 MB.
    (cd "$site" && find timm pyautoattack -name "*.py" -print0 | xargs -0 tar cf -) | tar xf - -C "$DEV/site"
    if [ -d .git/info ] && ! grep -qx "/$DEV/" .git/info/exclude 2>/dev/null; then echo "/$DEV/" >> .git/info/exclude; fi
    du -sh "$DEV"
}

# The device tool sends tracked and untracked-not-ignored files: slim untracks the committed safetensors and
# ignores them in .git/info/exclude (the files stay here), listed in $SLIM for unslim to undo. An item that reads
# one of them (a DeACL teacher, a zoo entry's fine-tuning) names it in the run's carry.
slim() {
    [ -d "$DEV" ] || { echo "error: run 'bash scripts/device.sh prepare' first" >&2; exit 2; }
    [ -s "$SLIM" ] && { echo "error: already slim ($SLIM): 'bash scripts/device.sh unslim' first" >&2; exit 2; }
    git ls-files -- 'rocl_zoo/weights/*.safetensors' 'results/curves/*.safetensors' 'runs/*.safetensors' > "$SLIM"
    git rm -q --cached --pathspec-from-file="$SLIM"
    sed 's|^|/|' "$SLIM" >> .git/info/exclude
    echo "untracked $(wc -l < "$SLIM") weight files; the copy sent holds $(git ls-files -z -co --exclude-standard \
        | du -ch --files0-from=- | tail -1 | cut -f1) beside the carried $(du -sh "$DEV" | cut -f1)"
}

unslim() {
    [ -s "$SLIM" ] || { echo "nothing to undo: no $SLIM"; return; }
    git reset -q --pathspec-from-file="$SLIM"
    grep -vxF -f <(sed 's|^|/|' "$SLIM") .git/info/exclude > "$SLIM.exclude" || true
    mv "$SLIM.exclude" .git/info/exclude && rm "$SLIM"
    git status --short | grep -v '^??' | head -5 || true
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
    local rc=0 excludes=()
    touch "$DEV/start"
    # batches of 1,000: a small CNN's attack batch of 100 leaves a GPU idle between kernel launches
    timeout --signal=INT --kill-after=30 "$budget" "${PY3:-python3}" -m training.reproduce --threads 8 \
        --eval-batch "${EVAL_BATCH:-1000}" "$@" || rc=$?
    echo "reproduce exited $rc after at most ${budget} s"
    # The way back holds 64 MB: a small CNN's resume checkpoint (3 MB) comes back, so a training the budget cut
    # resumes here; a ResNet-18's (90 MB) does not, nor, if need be, a last-epoch model/ (45 MB) beside best/.
    local pack=/tmp/device.tar.gz
    for skip in "" "*/checkpoint.pt" "results/curves/*/model/*"; do
        if [ -n "$skip" ]; then excludes+=(--exclude "$skip"); fi
        "${PY3:-python3}" scripts/devpack.py pack --newer "$DEV/start" "${excludes[@]}" results runs > $pack
        [ "$(stat -c %s $pack)" -le 62000000 ] && break
    done
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
    slim) slim ;;
    unslim) unslim ;;
    unpack) shift; unpack "$@" ;;
    *) echo "usage: bash scripts/device.sh prepare | slim | run [--budget S] ITEM... | unpack FILES_AT | unslim" >&2
       exit 2 ;;
esac
