#!/usr/bin/env bash
# Does bf16 autocast training cost accuracy? Same recipe and seed, fp32 against bf16, on Fashion-MNIST:
# fmnist_at and fmnist_rocl for 1 epoch each, fp32 with seeds 0 and 1 (the seed-to-seed spread) and bf16 with
# seed 0; then clean and PGD-20 accuracy (l-inf 0.1, evaluated in fp32) on all 10,000 test images, RoCL's
# encoders read out with the standard linear evaluation (SLF, 150 epochs). Needs a CPU with native bf16 (or a
# GPU). Rerunning continues where it stopped; `python scripts/precision_ab.py` prints the table.
#
#   bash scripts/precision_ab.sh            # about 1.5 h of training and 40 min of evaluation on 2 cores
#   ORDER="rocl:off:0 rocl:off:1" bash scripts/precision_ab.sh   # only these runs
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-2}
RUNS=${RUNS:-runs/precision-ab}
RES=results/precision-ab
ORDER=${ORDER:-"at:bf16:0 at:off:0 at:off:1 rocl:bf16:0 rocl:off:0 rocl:off:1"}
mkdir -p "$RES"

# train KIND AMP SEED: one epoch of fmnist_KIND, resumed if it was interrupted; nothing once its results exist
train() {
  local kind=$1 amp=$2 seed=$3 run=$RUNS/$1-$2-seed$3 entry=training.supervised folder=model
  [ "$kind" = rocl ] && entry=training.pretrain folder=encoder
  [ -f "$RES/$1-$2-seed$3.json" ] && return 0
  [ -f "$run/$folder/model.safetensors" ] && return 0
  $PY -m $entry --recipe fmnist_$kind --epochs 1 --amp "$amp" --seed "$seed" --threads "$THREADS" --quiet \
      --out "$run" --resume
}

# evaluate KIND AMP SEED: clean and PGD-20 on the whole test split (fp32), unless its results file exists
evaluate() {
  local kind=$1 amp=$2 seed=$3 run=$RUNS/$1-$2-seed$3 out=$RES/$1-$2-seed$3.json
  [ -f "$out" ] && return 0
  if [ "$kind" = rocl ]; then
    $PY -m rocl_zoo.evaluate "$run/encoder" --dataset fashion_mnist --protocol linear --epochs 150 \
        --attacks clean,pgd20 --eps 0.1 --n-examples 0 --name "fmnist_rocl 1 epoch, amp $amp, seed $seed" \
        --threads "$THREADS" --quiet --out "$out"
  else
    $PY -m rocl_zoo.evaluate "$run/model" --attacks clean,pgd20 --eps 0.1 --n-examples 0 \
        --name "fmnist_at 1 epoch, amp $amp, seed $seed" --threads "$THREADS" --quiet --out "$out"
  fi
}

for item in $ORDER; do
  IFS=: read -r kind amp seed <<< "$item"
  train "$kind" "$amp" "$seed"
  [ "$kind" = at ] && evaluate "$kind" "$amp" "$seed"
done
for item in $ORDER; do
  IFS=: read -r kind amp seed <<< "$item"
  evaluate "$kind" "$amp" "$seed"
done
