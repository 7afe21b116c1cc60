"""The command line of inference: top-k labels per image file.

    python -m rocl_zoo.predict --model cnn4_rocl.fmnist shirt.png boot.jpg --topk 3

The library functions live in rocl_zoo/inference.py, so that `import rocl_zoo` does not import this module and
`python -m rocl_zoo.predict` runs it once, without runpy's "found in sys.modules" warning.
"""
from __future__ import annotations

import argparse
import json
import sys
import types
import warnings
from typing import Iterable

from .cli import add_runtime_args, run
from .errors import InputMismatchWarning
from .inference import predict


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rocl_zoo.predict", description="Classify images with a zoo "
                                     "model: prints the top-k labels and probabilities for each image.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--model", default="cnn4_rocl.fmnist",
                        help="zoo name, hf-hub:ORG/NAME[@REV] or model folder (default: %(default)s)")
    parser.add_argument("--topk", type=int, default=3, help="labels to show per image (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_runtime_args(parser, data=False)
    return run(_main, parser.parse_args(argv))


def _main(args) -> int:
    from .hub import load
    from .utils import resolve_device

    model = load(args.model, device=resolve_device(args.device))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputMismatchWarning)
        results = predict(model, args.images, topk=args.topk)
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)
    if args.json:
        print(json.dumps([{"image": str(p), "predictions": r} for p, r in zip(args.images, results)], indent=2))
        return 0
    width = max(len(str(p)) for p in args.images)
    print(f"{'image':<{width}}  rank  {'label':<16} prob")
    for path, preds in zip(args.images, results):
        for rank, p in enumerate(preds, 1):
            print(f"{str(path) if rank == 1 else '':<{width}}  {rank:>4}  {p['label']:<16} {p['prob']:.4f}")
    return 0


class _CallableModule(types.ModuleType):
    """Importing this module rebinds the package attribute `rocl_zoo.predict` to it (Python's import system does
    that for every submodule); calling it still predicts, so `rocl_zoo.predict(model, images)` keeps working."""

    def __call__(self, *args, **kwargs):
        return predict(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
