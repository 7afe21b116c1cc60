#!/usr/bin/env bash
# Train, evaluate and ship the zoo's Fashion-MNIST RoCL entry (cnn4_rocl.fmnist) on the CPU, with the project's
# own commands. Rerunning continues where it stopped: pretraining resumes from its last checkpoint.
#
#   bash scripts/zoo_fmnist.sh            # N=1000 test images attacked (N=0: all 10,000); AutoAttack on N_AA=200
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-2}
N=${N:-1000}
N_AA=${N_AA:-200}
RUN=runs/fmnist_rocl
OUT=results/cnn4_rocl.fmnist

# 1. RoCL pretraining (recipe fmnist_rocl: cnn4_rocl, 3 epochs, batch 256, eps 0.1; ~1.2 h on 2 cores)
$PY -m training.pretrain --recipe fmnist_rocl --out $RUN --threads "$THREADS" --resume --quiet
# 2. Linear evaluation (SLF, the paper's protocol): a linear head on the frozen encoder, then the attack suite
#    at l-inf eps 0.1 (Fashion-MNIST's conventional budget) with the gradient-masking checks
$PY -m rocl_zoo.evaluate $RUN/encoder --dataset fashion_mnist --protocol linear --epochs 150 \
    --attacks clean,fgsm,pgd20,cw --eps 0.1 --n-examples "$N" --sanity --quiet \
    --out $OUT/Linf-0.1.json --save-classifier $RUN/classifier
#    AutoAttack (standard) on fewer examples: its Square attack runs 5,000 queries on every robust point, hours
#    on this CPU for 1,000 images
$PY -m rocl_zoo.evaluate $RUN/classifier --attacks clean,pgd20,autoattack --eps 0.1 --n-examples "$N_AA" --quiet \
    --out $OUT/Linf-0.1-autoattack-n$N_AA.json
# 3. Ship it: embedded verified folder, registry entry (sha256, metrics, 500-image check), README tables
$PY -m training.release cnn4_rocl.fmnist $RUN/classifier --results $OUT/Linf-0.1.json $OUT/Linf-0.1-autoattack-n$N_AA.json
