#!/usr/bin/env bash
# Train, evaluate and ship the zoo's Fashion-MNIST entries on the CPU, with the project's own commands, one
# stage per model. Rerunning continues where it stopped: training resumes from its last checkpoint.
#
#   bash scripts/zoo_fmnist.sh rocl      # RoCL encoder -> cnn4_rocl.fmnist (~1.2 h of training on 2 cores)
#   bash scripts/zoo_fmnist.sh simclr    # SimCLR encoder -> cnn4_rocl.fmnist_simclr (the non-robust baseline)
#   bash scripts/zoo_fmnist.sh at        # supervised PGD-AT -> cnn4_rocl.fmnist_at
#   bash scripts/zoo_fmnist.sh trades    # supervised TRADES -> cnn4_rocl.fmnist_trades
#   bash scripts/zoo_fmnist.sh rocl_at   # RoCL+AT: PGD-AT fine-tuning of the RoCL encoder, fmnist_at's budget
#                                        # -> cnn4_rocl.fmnist_rocl_at
#   bash scripts/zoo_fmnist.sh simclr_at # SimCLR+AT: the same fine-tuning of the SimCLR encoder
#                                        # -> cnn4_rocl.fmnist_simclr_at
#   bash scripts/zoo_fmnist.sh alf [NAME...]   # robust linear evaluation (ALF) of the RoCL and SimCLR encoders
#   bash scripts/zoo_fmnist.sh transfer  # black-box PGD-20: SimCLR -> RoCL, PGD-AT; RoCL <-> PGD-AT (N, then all)
#   bash scripts/zoo_fmnist.sh full [NAME...]  # the whole test split, l-inf 0.1 and 8/255, l2; then re-released
#   N_AA=500 bash scripts/zoo_fmnist.sh autoattack [NAME...]  # AutoAttack on more test images; then re-released
#   bash scripts/zoo_fmnist.sh readme    # README tables and claims from the results files
#
# Every model is attacked at l-inf eps 0.1 (Fashion-MNIST's conventional budget) on N=1000 fixed test images
# (N=0: all 10,000) with FGSM, PGD-20 and CW plus the gradient-masking checks; AutoAttack (standard) on N_AA=200
# of them, the same images for every model (its Square stage runs 5,000 queries on every robust point: hours on
# this CPU for 1,000 images); and PGD-20 in l2 at eps 1.5, a threat none of them trained for. Encoders are
# evaluated with the paper's linear protocol (SLF).
# `full` adds clean and PGD-20 accuracy on all 10,000 test images (N_FULL) at l-inf 0.1 and 8/255 (N_8) and in
# l2: about 10 minutes per robust model and budget on one core.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-2}
N=${N:-1000}
N_AA=${N_AA:-200}
N_AA_FT=${N_AA_FT:-100}  # rocl_zoo.finetune's own AutoAttack, on that many of its N images
N_FULL=${N_FULL:-10000}
N_8=${N_8:-10000}
EPS_L2=1.5
SHIPPED="cnn4_rocl.fmnist cnn4_rocl.fmnist_simclr cnn4_rocl.fmnist_at cnn4_rocl.fmnist_trades cnn4_rocl.fmnist_rocl_at
         cnn4_rocl.fmnist_simclr_at"

# finetuned_from NAME: the encoder a fine-tuned entry started from; nothing for the other entries
finetuned_from() {
  case $1 in
    cnn4_rocl.fmnist_rocl_at) echo cnn4_rocl.fmnist ;;
    cnn4_rocl.fmnist_simclr_at) echo cnn4_rocl.fmnist_simclr ;;
  esac
}

# finetune_results NAME: rocl_zoo.finetune's results file for a fine-tuned entry, kept under its encoder's results
finetune_results() {
  local encoder
  encoder=$(finetuned_from "$1")
  [ -z "$encoder" ] || echo results/$encoder/finetune-at-Linf-0.1.json
}

# ship NAME CLASSIFIER [more results files]: release with every results file NAME has, the whole test split's
# first (the registry's headline); re-releasing unchanged weights keeps their checksum
ship() {
  local name=$1 clf=$2 out=results/$1 files=() f
  shift 2
  for f in $out/Linf-0.1-n[0-9]*.json $out/Linf-0.1.json $out/Linf-0.1-autoattack-n*.json "$@" \
           $out/L2-$EPS_L2.json $out/L2-$EPS_L2-n[0-9]*.json $out/Linf-8_255-n[0-9]*.json; do
    [ -f "$f" ] && files+=("$f")
  done
  $PY -m training.release "$name" "$clf" --threads "$THREADS" --results "${files[@]}"
}

# autoattack NAME CLASSIFIER: AutoAttack on the first N_AA of the fixed test images, the same for every entry
autoattack() {
  $PY -m rocl_zoo.evaluate "$2" --attacks clean,pgd20,autoattack --eps 0.1 --n-examples "$N_AA" --name "$1" \
      --threads "$THREADS" --quiet --out results/$1/Linf-0.1-autoattack-n$N_AA.json
}

# evaluate_and_ship NAME CLASSIFIER [evaluate options for the first results file]
# (with PARALLEL=1, AutoAttack, by far the slowest, runs in a second process beside the other evaluations)
evaluate_and_ship() {
  local name=$1 clf=$2 out=results/$1 aa
  shift 2
  if [ "${PARALLEL:-0}" = 1 ] && [ -f "$clf/config.json" ]; then
    autoattack "$name" "$clf" &
    aa=$!
  fi
  $PY -m rocl_zoo.evaluate "$@" --attacks clean,fgsm,pgd20,cw --eps 0.1 --n-examples "$N" --sanity \
      --name "$name" --threads "$THREADS" --quiet --out $out/Linf-0.1.json
  $PY -m rocl_zoo.evaluate "$clf" --norm l2 --eps $EPS_L2 --attacks clean,pgd20-l2 --n-examples "$N" \
      --name "$name" --threads "$THREADS" --quiet --out $out/L2-$EPS_L2.json
  if [ -n "${aa:-}" ]; then wait "$aa"; else autoattack "$name" "$clf"; fi
  ship "$name" "$clf"
}

# encoder RECIPE NAME: contrastive pretraining, then a linear head on the frozen encoder (SLF, 150 epochs)
encoder() {
  local run=runs/$1
  $PY -m training.pretrain --recipe "$1" --out $run --threads "$THREADS" --resume --quiet
  evaluate_and_ship "$2" $run/classifier $run/encoder --dataset fashion_mnist --protocol linear --epochs 150 \
      --save-classifier $run/classifier
}

# supervised RECIPE NAME: adversarial training; the classifier is evaluated as it is
supervised() {
  local run=runs/$1
  $PY -m training.supervised --recipe "$1" --out $run --threads "$THREADS" --resume --quiet
  evaluate_and_ship "$2" $run/model $run/model
}

# finetune_at NAME: PGD-AT fine-tuning of a shipped encoder with fmnist_at's budget (3 epochs of PGD-10, step
# 0.025, LR 0.1 /10 after 2) -> zoo entry NAME
finetune_at() {
  local encoder run=runs/${1#cnn4_rocl.} res
  encoder=$(finetuned_from "$1")
  res=$(finetune_results "$1")
  $PY -m rocl_zoo.finetune --model "$encoder" --dataset fashion_mnist --mode at --epochs 3 --milestones 2 \
      --batch-size 128 --weight-decay 5e-4 --eps 0.1 --alpha 0.025 --steps 10 --attacks clean,fgsm,pgd20,cw \
      --eval-examples "$N" --autoattack --autoattack-examples "$N_AA_FT" --checkpoint-every 100 --out $run \
      --threads "$THREADS" --resume --quiet
  cp $run/results.json $res
  autoattack "$1" $run/classifier  # also on the images every other entry's AutoAttack saw
  ship "$1" $run/classifier $res
}

# evaluate_once OUT ARGS...: rocl_zoo.evaluate ARGS into OUT, unless OUT is already there (these are the slow
# whole-split and AutoAttack runs: rerunning a stage keeps what it measured)
evaluate_once() {
  local out=$1
  shift
  [ -f "$out" ] || $PY -m rocl_zoo.evaluate "$@" --threads "$THREADS" --quiet --out "$out"
}

# alf_attack OUT ARGS...: the saved ALF classifier $clf of $name attacked again (evaluate ARGS), unless OUT exists
alf_attack() {
  local out=$1
  shift
  evaluate_once "$out" "$clf" --protocol-label robust-linear --name "$name" "$@"
}

case "${1:-}" in
  rocl) encoder fmnist_rocl cnn4_rocl.fmnist ;;
  simclr) encoder fmnist_simclr cnn4_rocl.fmnist_simclr ;;
  at) supervised fmnist_at cnn4_rocl.fmnist_at ;;
  trades) supervised fmnist_trades cnn4_rocl.fmnist_trades ;;
  rocl_at) finetune_at cnn4_rocl.fmnist_rocl_at ;;
  simclr_at) finetune_at cnn4_rocl.fmnist_simclr_at ;;
  alf)  # robust linear evaluation (ALF): a linear head on PGD-10 examples (step 0.0223) through the frozen encoder;
        # the attack makes every step ~25x a standard one, so 5 epochs on a fixed 10,000 of the training images.
        # Then attacked like the others: FGSM, PGD-20, CW on N, AutoAttack on N_AA, clean + PGD-20 on all N_FULL
        # (l-inf 0.1 and 8/255) and PGD-20 in l2 on all N_FULL
    shift
    for name in ${@:-cnn4_rocl.fmnist cnn4_rocl.fmnist_simclr}; do
      clf=runs/alf/$name out=results/$name/robust-linear-Linf-0.1
      [ -f $clf/model.safetensors ] || $PY -m rocl_zoo.evaluate "$name" --protocol robust-linear --epochs 5 \
          --train-examples 10000 --attacks clean,fgsm,pgd20,cw --eps 0.1 --n-examples "$N" --sanity --name "$name" \
          --threads "$THREADS" --quiet --out $out.json --save-classifier $clf
      alf_attack $out-autoattack-n$N_AA.json --attacks clean,pgd20,autoattack --eps 0.1 --n-examples "$N_AA"
      alf_attack $out-n$N_FULL.json --attacks clean,pgd20 --eps 0.1 --n-examples "$N_FULL"
      alf_attack results/$name/robust-linear-Linf-8_255-n$N_8.json --attacks clean,pgd20 --eps 8/255 \
          --n-examples "$N_8"
      alf_attack results/$name/robust-linear-L2-$EPS_L2-n$N_FULL.json --norm l2 --eps $EPS_L2 \
          --attacks clean,pgd20-l2 --n-examples "$N_FULL"
    done ;;
  transfer)  # TARGET:SOURCE pairs, on N and on all N_FULL test images (files already there are kept):
             # results/TARGET/Linf-0.1-transfer-from-<source's tag>.json and ...-n$N_FULL.json
    for pair in cnn4_rocl.fmnist:cnn4_rocl.fmnist_simclr cnn4_rocl.fmnist_at:cnn4_rocl.fmnist_simclr \
                cnn4_rocl.fmnist:cnn4_rocl.fmnist_at cnn4_rocl.fmnist_at:cnn4_rocl.fmnist; do
      target=${pair%%:*} source=${pair##*:}
      tag=${source#cnn4_rocl.fmnist}; tag=${tag#_}
      for n in "$N:" "$N_FULL:-n$N_FULL"; do
        evaluate_once results/$target/Linf-0.1-transfer-from-${tag:-rocl}${n#*:}.json "$target" \
            --attacks clean,pgd20 --transfer-from "$source" --eps 0.1 --n-examples "${n%%:*}"
      done
    done ;;
  full)  # clean + PGD-20 on the whole test split at l-inf 0.1 and 8/255 and in l2, then each model is shipped again
    shift
    for name in ${@:-$SHIPPED}; do
      [ -f rocl_zoo/weights/$name/model.safetensors ] || { echo "skip $name: not shipped yet"; continue; }
      for eps in 0.1:$N_FULL 8/255:$N_8; do
        n=${eps##*:} eps=${eps%%:*}
        evaluate_once "results/$name/Linf-${eps/\//_}-n$n.json" "$name" --attacks clean,pgd20 --eps "$eps" \
            --n-examples "$n" --name "$name"
      done
      evaluate_once results/$name/L2-$EPS_L2-n$N_FULL.json "$name" --norm l2 --eps $EPS_L2 \
          --attacks clean,pgd20-l2 --n-examples "$N_FULL" --name "$name"
      ship "$name" "$name" $(finetune_results "$name")
    done ;;
  autoattack)  # AutoAttack alone on N_AA test images for shipped entries (e.g. N_AA=500), then each is re-released;
               # an interrupted run resumes from its results file's .partial
    shift
    for name in ${@:-$SHIPPED}; do
      [ -f results/$name/Linf-0.1-autoattack-n$N_AA.json ] || autoattack "$name" "$name"
      ship "$name" "$name" $(finetune_results "$name")
    done ;;
  readme) ;;
  *) sed -n '2,/^set /{/^set /!p}' "$0"; exit 2 ;;  # the header above, whatever its length
esac
$PY scripts/update_readme.py
