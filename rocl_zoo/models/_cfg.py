"""The zoo's static catalogue, where timm keeps it: each model file lists its tags and builds timm's cfgs from them.

A `Tag` says what a pretrained entry `arch.tag` is: its data, the recipe that trains it and a description (the
torchvision-style record; its measured metrics and checksum are the release's, in `weights/registry.json`, read by
`rocl_zoo.zoo` on first use). timm sees a tag as pretrained exactly when its weights ship in the package
(`WEIGHTS_DIR/<arch.tag>/model.safetensors`), so it never tries to download weights that do not exist.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..data import DATASETS

HF_ORG = "rocl-zoo"
# $ROCL_ZOO_WEIGHTS moves the embedded weights and their registry elsewhere (a private zoo, a trial release)
PACKAGE_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
WEIGHTS_DIR = Path(os.environ.get("ROCL_ZOO_WEIGHTS") or PACKAGE_WEIGHTS_DIR)
WEIGHTS_FILE = "model.safetensors"
PAPER = dict(license="mit", paper_ids="arXiv:2006.07589", paper_name="Adversarial Self-Supervised Contrastive Learning",
             origin_url="https://github.com/Kim-Minseon/RoCL")


def hf_hub_id(name: str) -> str:
    """The Hub repo an entry's weights are published to."""
    return f"{HF_ORG}/{name}"


@dataclass(frozen=True)
class Tag:
    dataset: str                   # a key of rocl_zoo.data.DATASETS
    recipe: str | None             # `python -m training.pretrain --recipe <recipe>` (or training.supervised); None:
                                   # made by several steps of training/matrix.py (`python -m training.reproduce NAME`)
    description: str
    default: bool = False          # the tag `create_model(arch, pretrained=True)` picks (see default_tags)


def shipped(name: str, weights_dir: Path | None = None) -> bool:
    """Whether the weights of `arch.tag` ship in the package (or in $ROCL_ZOO_WEIGHTS)."""
    return (Path(weights_dir or WEIGHTS_DIR) / name / WEIGHTS_FILE).is_file()


def default_tags(tags: dict[str, Tag], weights_dir: Path | None = None) -> set[str]:
    """The tag each architecture's bare name picks: the one marked `default` while its weights ship or none
    ship; otherwise the first tag with weights (a model file lists its best entries first). So `resnet18_rocl`
    means its trained Fashion-MNIST weights until the paper's CIFAR-10 ones exist."""
    by_arch: dict[str, list[str]] = {}
    for name in tags:
        by_arch.setdefault(name.split(".")[0], []).append(name)
    picked = set()
    for names in by_arch.values():
        marked = next((n for n in names if tags[n].default), names[0])
        trained = [n for n in names if shipped(n, weights_dir)]
        picked.add(marked if marked in trained or not trained else trained[0])
    return picked


def pretrained_cfgs(tags: dict[str, Tag], *, first_conv: str, pool_size: Callable[[int], int]) -> dict:
    """timm `default_cfgs` for `tags` ({"arch.tag": Tag}), the default tag of each architecture first (timm's rule).

    `first_conv` names the input convolution; `pool_size` maps an input side to the side of the unpooled feature
    map. The model normalises inside, so the timm-visible mean/std are identity: timm's transforms give [0, 1] input.
    """
    cfgs, defaults = {}, default_tags(tags)
    for name, tag in sorted(tags.items(), key=lambda kv: kv[0] not in defaults):
        info = DATASETS[tag.dataset]
        c, h, w = info.input_size
        cfg = dict(num_classes=len(info.classes), input_size=info.input_size, pool_size=(pool_size(h), pool_size(w)),
                   mean=(0.0,) * c, std=(1.0,) * c, interpolation="bilinear", crop_pct=1.0, crop_mode="center",
                   fixed_input_size=False, first_conv=first_conv, classifier="fc", label_names=info.classes, **PAPER)
        if shipped(name):
            cfg.update(hf_hub_id=hf_hub_id(name), file=str(WEIGHTS_DIR / name / WEIGHTS_FILE))
        cfgs[name] = cfg
    return cfgs
