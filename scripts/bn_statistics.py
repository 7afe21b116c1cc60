"""Is a classifier's robustness hiding in its BatchNorm statistics? Evaluate it as trained, then with every BN
layer's running statistics recomputed on clean and on adversarial training images (PGD-10 made on the model as
trained). A model that normalised clean and adversarial batches separately in training (TRADES's two passes) can
score far apart: its running statistics average two distributions that no batch at training mixed.

    python scripts/bn_statistics.py results/curves/fmnist_trades_two_pass_bn/model
    python scripts/bn_statistics.py cnn4_rocl.fmnist_at --attacks clean,pgd20 --n-examples 1000
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def recalibrated(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """A copy of the model whose BN running statistics are the plain average over these images' batches."""
    model = copy.deepcopy(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            model(images[i:i + batch_size])
    return model.eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="zoo name or Hub-layout folder of a classifier")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--eps", type=float, default=0.1, help="l-inf budget of the attacks (default 0.1)")
    p.add_argument("--attacks", default="clean,pgd20,apgd-ce", help="rocl_zoo.evaluate's attacks (default "
                   "clean,pgd20,apgd-ce)")
    p.add_argument("--n-examples", type=int, default=500, help="test images (default 500)")
    p.add_argument("--calibration", type=int, default=4096, help="training images the statistics come from")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    import rocl_zoo
    from rocl_zoo.attacks import pgd
    from rocl_zoo.data import load_dataset
    from rocl_zoo.evaluate import evaluate
    from rocl_zoo.linear import as_tensors
    from rocl_zoo.utils import hardware_name

    model = rocl_zoo.load(a.source).eval()
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise SystemExit(f"{a.source} has no BatchNorm layer: nothing to recompute.")
    x, y = as_tensors(load_dataset(a.dataset, "test"), a.n_examples, 0)
    xc, yc = as_tensors(load_dataset(a.dataset, "train"), a.calibration, 1)
    adv = torch.cat([pgd(model, xc[i:i + 256], yc[i:i + 256], a.eps, alpha=a.eps / 4, steps=10,
                         generator=torch.Generator().manual_seed(i)) for i in range(0, len(xc), 256)])
    print(f"# {a.source}: accuracy % on {len(y)} {a.dataset} test images at l-inf {a.eps}; BN statistics from "
          f"{len(xc)} training images; {hardware_name()}")
    for label, m in (("as trained", model), ("recomputed on clean images", recalibrated(model, xc)),
                     ("recomputed on PGD-10 images", recalibrated(model, adv))):
        r = evaluate(m, x, y, attacks=a.attacks, eps=a.eps, progress=False)
        print(f"{label:<30}", "  ".join(f"{k} {v['acc']:.1f}" for k, v in r["attacks"].items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
