#!/usr/bin/env bash
# The README's transfer example: a Fashion-MNIST RoCL encoder transferred to scikit-learn's digits in all four
# modes of `python -m rocl_zoo.finetune`, then the table of clean and robust accuracy it produced. Each results
# file is copied to results/<encoder>/finetune-<mode>.digits/Linf-0.1/finetune-n<test images>.json
# (rocl_zoo.results' layout). Any other encoder goes the same way: the claims compare cnn4_rocl.fmnist_at's.
#
#   bash scripts/finetune_digits_example.sh [ENCODER]      # default: cnn4_rocl.fmnist, else runs/fmnist_rocl/encoder
#
# Budget (2-core CPU): digits' 8x8 images are resized to the encoder's 28x28 (1,293 train / 144 val / 360 test);
# l-inf eps 0.1. linear uses the protocol's defaults (150 epochs on frozen features, seconds); the three
# adversarial modes train 5 epochs with PGD-5, step 2.5 eps / 5 = 0.05 in all three (LR /10 at epochs 3 and 4;
# robust-linear's own default, RoCL's step made for 10 steps, would be 0.0223), so the whole example costs
# minutes rather than the hours of the full AFF recipe (25 epochs, PGD-10). Evaluation: clean and
# PGD-20 (step eps/10, random start) on the 360 test images; AutoAttack (standard) on a fixed random AA_EXAMPLES
# of them (default 100: Square's queries make all 360 about a core-hour per robust mode), with PGD-20 on the same
# images beside it; AA_EXAMPLES=0 skips it. Re-running resumes or reuses finished runs (and adds AutoAttack to a
# finished run without training it again).
# MODES="at" runs only the modes named. ARGS="..." appends options to every run (a smoke test:
# ARGS="--epochs 1 --subset 100 --image-size 8").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-2}
ENCODER=${1:-}
if [ -z "$ENCODER" ]; then
  if $PY -c "import rocl_zoo, sys; sys.exit(0 if 'cnn4_rocl.fmnist' in rocl_zoo.list_models(pretrained=True) else 1)"; then
    ENCODER=cnn4_rocl.fmnist
  elif [ -f runs/fmnist_rocl/encoder/config.json ]; then
    ENCODER=runs/fmnist_rocl/encoder
  else
    echo "no Fashion-MNIST encoder yet: publish cnn4_rocl.fmnist or run python -m training.pretrain --recipe fmnist_rocl" >&2
    exit 2
  fi
fi
TAG=$(basename "$ENCODER")
OUT=${OUT:-runs/finetune-digits/$TAG}
RESULTS=${RESULTS:-results}
MODES=${MODES:-linear robust-linear at trades}
AA_EXAMPLES=${AA_EXAMPLES:-100}
for MODE in $MODES; do
  EXTRA=()
  [ "$MODE" != linear ] && EXTRA=(--epochs 5 --steps 5 --alpha 0.05)
  [ "$AA_EXAMPLES" != 0 ] && EXTRA+=(--autoattack --autoattack-examples "$AA_EXAMPLES")
  $PY -m rocl_zoo.finetune --model "$ENCODER" --dataset digits --mode "$MODE" --out "$OUT/$MODE" \
      --eps 0.1 --threads "$THREADS" --resume --quiet "${EXTRA[@]}" ${ARGS:-}
  $PY -c "import sys, rocl_zoo.results as R; R.file_result(*sys.argv[1:])" "$OUT/$MODE/results.json" "$RESULTS" finetune
done
$PY -m rocl_zoo.results "$RESULTS" >/dev/null
$PY - "$OUT" "$ENCODER" $MODES <<'PYEOF'
import sys
from pathlib import Path
from rocl_zoo.results import read
folder, encoder = Path(sys.argv[1]), sys.argv[2]
rows, hw = [], None
for mode in sys.argv[3:]:
    r = read(folder / mode / "results.json").data
    c = r["protocol_config"]
    hw = r["hardware"]
    attack = "–" if mode == "linear" else f"PGD-{c['train_attack']['steps']}" if mode != "trades" else \
        f"TRADES-KL-{c['train_attack']['steps']}, beta {c['beta']:g}"
    sub = r.get("autoattack_subset")
    aa = "–" if r.get("autoattack_acc") is None else f"{r['autoattack_acc']:.2f}" + (
        f" (n={sub['n_examples']}; PGD-20 on them {sub['pgd_acc']:.2f})" if sub else "")
    rows.append(f"| {mode} | {c['epochs']} | {attack} | {r['clean_acc']:.2f} | {r['pgd_acc']:.2f} | {aa} | "
                f"{r['finetune_train_time_s']:.0f} |")
print(f"Encoder `{encoder}` -> digits ({c['source_input_size']} resized to {c['input_size']}), l-inf eps {r['eps_str']}, "
      f"{r['n_examples']} test images.\n")
print("| Mode | Epochs | Training attack | Clean (%) | PGD-20 (%) | AutoAttack (%) | Train time (s) |")
print("|---|---:|---|---:|---:|---:|---:|")
print("\n".join(rows))
print(f"\nHardware: {hw}.")
PYEOF
