"""The corrupted test set (cached, checksum-verified) and accuracy on it: RobustBench's `corruptions` threat model.

    python -m rocl_zoo.evaluate cnn4_rocl.fmnist_at --threat-model corruptions --n-examples 0 \
        --out results/cnn4_rocl.fmnist_at/none/corruptions/corruptions-n10000.json

Each type's (severities, images, H, W) uint8 array (made by `rocl_zoo.corruptions`) is cached under the data root
with its sha256 and regenerated when missing or when it fails the check; REFERENCE_SHA256 holds the digests of the
canonical Fashion-MNIST test set, and a generation that differs from them says so. A results file (schema
rocl_zoo.eval/2) holds clean accuracy, each type at each severity, and their mean, `corruptions_acc`.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .attack_suite import DEFAULT_ATTACKS, correct_under
from .cli import model_and_dataset
from .corruptions import CORRUPTIONS, SEED, SET_NAME, SEVERITIES, SIZE, VERSION, corrupt
from .data import ImageTensorDataset, default_root, load_dataset
from .errors import ConfigError, DataError
from .eval_progress import EvalProgress, evaluation_fingerprint, weights_meta
from .precision import describe
from .results import SCHEMA
from .threat import CORRUPTIONS as THREAT
from .utils import atomic_write, hardware_name, resolve_device, write_json

# sha256 of each type's (5, 10000, 28, 28) uint8 array made from Fashion-MNIST's test split at SEED, VERSION
REFERENCE_SHA256: dict[str, str] = {
    "shot_noise": "ccf9d85cca8075273cfa3ce37919d342be75336edcaf84ae0ae77c5b1358a191",
    "impulse_noise": "50a3eee02d0f06fe0617439cefd44a0aa9031a7be43734bfd549964634e3c767",
    "glass_blur": "e5fa13157e0a15580a255f98d57b703c9a0c4375edacd9b8cc4afabb0f053641",
    "motion_blur": "4efb9dc9bf5305501841b9640af6f304198fd88940b48a3c91df9c45ab55bcdc",
    "shear": "7190e62d212252e0efe678a9aa480e9bfc06cd4f929b25752067fd9e9b00dd02",
    "scale": "306c8d365a8f48af00c259868e4c6cf53b484db9453d8d0edc40417d9d8b1f7b",
    "rotate": "8431186c6e85f90c11d5053882c1f9c9abc8006a7a88f6120429b903a09130a8",
    "brightness": "ae3f59aaf82ddbfbe891698a95a2991b1fcc292cb488cc6bfd3376dea821e159",
    "contrast": "9697d3f4abbfa211ba6d1697a6a9dc566505dafede21cdbf7b007bc13fe16cf0",
    "translate": "8208fd9792724acde31c7c86997197ebd77e3d47ce5b15408068827372a8afad",
    "stripe": "f8908fa5e410e2d307d9099b546327aef975681e881278984a939ed13c553159",
    "fog": "34ace416b64e9a95b93feb3edbf8251633fb596911e4f38eb5e36d8029083aec",
    "spatter": "4f8eb75f6a96b56e5cf4613f3f7513469a2ae2be1487702e975b4f3a266e7b93",
    "dotted_line": "0dd63ad1ed96ca630e1789455ebd566eccdf81879c5bc6d8f51a87ff3b61160f",
    "zigzag": "8b373015020379ee2ef886455f8f2b6794edb7d749f7a91cfb783f99c47f9509",
}


def digest(array: np.ndarray) -> str:
    """sha256 of an array's shape and C-order bytes (not of a file format, which numpy versions may change)."""
    h = hashlib.sha256(json.dumps(list(array.shape)).encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def subset_indices(total: int, n: int | None, seed: int = 0) -> np.ndarray:
    """The first n of the fixed test permutation, sorted: the images `rocl_zoo.evaluate --n-examples n --seed seed`
    attacks (rocl_zoo.linear.as_tensors's rule); all of them when n is None, 0 or >= total."""
    if not n or n >= total:
        return np.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values.numpy()


class CorruptedSet:
    """The corrupted copies of an image set (uint8 images (N, 1, H, W), labels) for each type and severity.

    folder: where each type's (5, N, H, W) array of the whole set is cached, as <type>.npy with <type>.json (its
    sha256 and what it was made from); None: no cache. select: the images wanted (indices into the set; default
    all): read from a valid cache when there is one, else generated alone, which gives the same bytes.
    """

    def __init__(self, images, labels, *, folder=None, select=None, seed: int = SEED, progress: bool = False):
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 1:
            raise DataError(f"the corruptions are made for grey images: expected uint8 (N, 1, H, W), got "
                            f"{images.dtype} {tuple(images.shape)}.")
        self.base, self.labels_all = images.numpy(), torch.as_tensor(labels).long()
        self.folder = Path(folder) if folder else None
        self.select = np.arange(len(images)) if select is None else np.asarray(select)
        self.seed, self.progress = seed, progress
        self.source = digest(self.base)
        self.generation_time_s = 0.0
        self.generated: list[str] = []  # types generated here (not read from the cache)

    @property
    def whole(self) -> bool:
        return len(self.select) == len(self.base)

    @property
    def clean(self) -> torch.Tensor:
        return torch.from_numpy(self.base[self.select])

    @property
    def labels(self) -> torch.Tensor:
        return self.labels_all[torch.from_numpy(self.select)]

    def _paths(self, name: str) -> tuple[Path, Path]:
        return self.folder / f"{name}.npy", self.folder / f"{name}.json"

    def _cached(self, name: str) -> np.ndarray | None:
        """The whole set's array of one type from the cache, or None when it is missing, stale or corrupt."""
        if self.folder is None:
            return None
        data, meta = self._paths(name)
        if not data.is_file() and not meta.is_file():
            return None
        try:
            record = json.loads(meta.read_text())
            array = np.load(data, allow_pickle=False)
        except (OSError, ValueError) as e:
            warnings.warn(f"corruption cache {data} is unreadable ({e}): regenerating it", stacklevel=3)
            return None
        expected = {"version": VERSION, "seed": self.seed, "source_sha256": self.source, "corruption": name}
        if any(record.get(k) != v for k, v in expected.items()):
            return None  # made from other images or by another version: not an error, just not ours
        if array.dtype != np.uint8 or digest(array) != record.get("sha256"):
            warnings.warn(f"corruption cache {data} fails its sha256 check: regenerating it", stacklevel=3)
            return None
        return array

    def _generate(self, name: str, indices: np.ndarray) -> np.ndarray:
        t0 = time.time()
        if self.progress and len(indices) > 1000:  # the whole split takes minutes, once: say why it waits
            tqdm.write(f"generating {name} x {len(SEVERITIES)} severities for {len(indices):,} images"
                       + (f" (cached in {self.folder})" if self.folder else ""))
        images = self.base[indices, 0]
        out = np.stack([corrupt(images, name, s, indices, self.seed) for s in SEVERITIES])
        self.generation_time_s += time.time() - t0
        self.generated.append(name)
        return out

    def _store(self, name: str, array: np.ndarray) -> None:
        data, meta = self._paths(name)
        with atomic_write(data) as f:
            np.save(f, array, allow_pickle=False)
        sha = digest(array)
        write_json(meta, {"corruption": name, "version": VERSION, "seed": self.seed, "shape": list(array.shape),
                          "sha256": sha, "source_sha256": self.source})
        reference = REFERENCE_SHA256.get(name)
        if reference and self.seed == SEED and len(array[0]) == 10000 and sha != reference:
            warnings.warn(f"{name}: the generated images differ from the reference ones (sha256 {sha[:12]} != "
                          f"{reference[:12]}): this numpy/scipy corrupts differently, so accuracies are not "
                          f"comparable with the zoo's", stacklevel=3)

    def images(self, name: str) -> np.ndarray:
        """uint8 (severities, selected images, 1, H, W) of one corruption type."""
        array = self._cached(name)
        if array is None and (self.whole or self.folder is None):
            array = self._generate(name, np.arange(len(self.base)) if self.whole else self.select)
            if self.whole and self.folder is not None:
                self._store(name, array)
            return array[:, :, None]
        if array is None:  # a subset and no valid cache: generate the subset alone (the same bytes)
            return self._generate(name, self.select)[:, :, None]
        return array[:, self.select, None] if not self.whole else array[:, :, None]

    def dataset(self, name: str, severity: int):
        """One type at one severity as a `rocl_zoo.data.ImageTensorDataset` (items: [0, 1] image, label)."""
        if severity not in SEVERITIES:
            raise ConfigError(f"severity must be one of {SEVERITIES}, got {severity!r}.")
        images = torch.from_numpy(np.ascontiguousarray(self.images(name)[severity - 1]))
        return ImageTensorDataset(images, self.labels, [str(i) for i in range(int(self.labels_all.max()) + 1)],
                                  f"{name}-{severity}")


def cache_folder(dataset: str, split: str, root=None) -> Path:
    """<data root>/corruptions/<dataset>-<split>/v<VERSION>: the cache of a split's corrupted copies."""
    base = Path(root).expanduser() if root else default_root()
    return base / "corruptions" / f"{dataset}-{split}" / f"v{VERSION}"


def load_corrupted(dataset: str = "fashion_mnist", split: str = "test", *, n: int | None = None, seed: int = 0,
                   root=None, download: bool = False, cache: bool = True, progress: bool = False) -> CorruptedSet:
    """The corrupted copies of a dataset split (read with `rocl_zoo.data.load_dataset`: Debian's Fashion-MNIST where
    installed), cached under the data root. n: the first n of the fixed test permutation (`seed`), as
    `rocl_zoo.evaluate --n-examples` picks them (None or 0: all)."""
    base = load_dataset(dataset, split, root=root, download=download)
    if tuple(base.input_size) != (1, *SIZE):
        raise DataError(f"the corruptions threat model is made for 1x{SIZE[0]}x{SIZE[1]} grey images (MNIST-C's "
                        f"types); {dataset} has {'x'.join(map(str, base.input_size))} images.")
    return CorruptedSet(base.images, base.labels, folder=cache_folder(dataset, split, root) if cache else None,
                        select=subset_indices(len(base), n, seed), progress=progress)


# ------------------------------------------------------------------------------------------------ evaluation


def parse_names(spec) -> list[str]:
    """'all', None or a comma-separated list (or a list) of types -> the types, in CORRUPTIONS order."""
    if spec is None or spec == "all":
        return list(CORRUPTIONS)
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [s for s in names if s not in CORRUPTIONS]
    if unknown or not names:
        raise ConfigError(f"unknown corruption(s) {', '.join(unknown) or '(none given)'}; known: "
                          f"{', '.join(CORRUPTIONS)} (or all).")
    return [c for c in CORRUPTIONS if c in names]


def entry_name(name: str, severity: int) -> str:
    """A type at a severity as the results file's `attacks` block names it: shot_noise-3."""
    return f"{name}-{severity}"


def evaluate_corruptions(model, cset: CorruptedSet, *, corruptions=None, batch_size: int = 256,
                         progress: bool = False, meta: dict | None = None, resume=None) -> dict:
    """Accuracy on the clean images and on every type at every severity, and their mean (the mean corruption
    accuracy, RobustBench's `corruptions_acc`), as a results dict (schema rocl_zoo.eval/2, percent).

    resume: a file that keeps every finished (type, severity) until the whole evaluation is done (see
    `rocl_zoo.eval_progress.EvalProgress`): the same call after an interruption picks up there.
    """
    names = parse_names(corruptions)
    device = next(model.parameters()).device
    x, y = cset.clean.float().div(255), cset.labels
    settings = {"suite": THREAT, "version": VERSION, "seed": cset.seed, "corruptions": names,
                "indices": digest(cset.select), "device": device.type}
    log = EvalProgress(resume, evaluation_fingerprint(model, x, y, settings), progress=progress) if resume else None
    resumed = len(log.batches) if log else 0
    t_start, attacks, sha = time.time(), {}, {}

    def measure(key: str, images: torch.Tensor, cfg: dict) -> None:
        t0, correct = time.time(), log.get(key) if log else None
        if correct is None:
            correct = correct_under(model, images, y, {"name": key, "attack": "clean"}, batch_size=batch_size,
                                    device=device)
            if log:
                log.put(key, correct)
        attacks[key] = {"config": cfg, "acc": 100 * correct.float().mean().item(),
                        "wall_time_s": round(time.time() - t0, 3)}

    measure("clean", x, {"name": "clean", "attack": "clean"})
    bar = tqdm(total=len(names) * len(SEVERITIES), desc="corruptions", disable=not progress or None)
    for name in names:
        bar.set_postfix_str(name)
        images = cset.images(name)  # (severities, n, 1, H, W) uint8: cached, or generated once
        sha[name] = digest(images[:, :, 0])  # the cached array's shape: comparable with REFERENCE_SHA256
        for s in SEVERITIES:
            key = entry_name(name, s)
            measure(key, torch.from_numpy(images[s - 1]).float().div(255),
                    {"name": key, "attack": "corruption", "corruption": name, "severity": s, "threat_model": THREAT})
            bar.update()
    bar.close()
    out = _results(model, cset, attacks, names, sha, meta, resumed=resumed, wall=time.time() - t_start)
    if log:
        log.remove()
    return out


def _results(model, cset, attacks: dict, names: list, sha: dict, meta: dict | None, resumed: int, wall: float) -> dict:
    """The results dict: RobustBench's keys (clean_acc, corruptions_acc), every entry, the means by type and
    severity, and what the images were (set version, seed, sha256 of each type's images)."""
    def mean(keys):
        return sum(attacks[k]["acc"] for k in keys) / len(keys)

    every = [entry_name(c, s) for c in names for s in SEVERITIES]
    mca = mean(every)
    attacks[THREAT] = {"config": {"name": THREAT, "attack": THREAT, "threat_model": THREAT, "corruptions": names,
                                  "severities": list(SEVERITIES), "over": f"mean of {len(every)} accuracies"},
                       "acc": mca}
    if not resumed:  # the suite's wall time, for cost estimates (`training.reproduce`); a resumed one has none
        attacks[THREAT]["wall_time_s"] = round(sum(attacks[k]["wall_time_s"] for k in every), 3)
    meta = dict(meta or {})
    device = next(model.parameters()).device
    whole = cset.whole and cset.seed == SEED and len(cset.base) == 10000 and meta.get("dataset") == "fashion_mnist"
    out = {
        "schema": SCHEMA, "model": meta.pop("model", None),
        "architecture": (getattr(model, "pretrained_cfg", None) or {}).get("architecture"),
        "dataset": meta.pop("dataset", None), "threat_model": THREAT, "eps": None, "eps_str": None,
        "clean_acc": round(attacks["clean"]["acc"], 2), "corruptions_acc": round(mca, 2),
        "autoattack_acc": None, "pgd_acc": None, "robust_acc": None,
        "attacks": attacks, "n_examples": len(cset.select), "seed": meta.pop("seed", 0),
        "corruptions": {
            "set": SET_NAME, "version": VERSION, "seed": cset.seed, "types": names, "severities": list(SEVERITIES),
            "by_type": {c: round(mean([entry_name(c, s) for s in SEVERITIES]), 2) for c in names},
            "by_severity": {str(s): round(mean([entry_name(c, s) for c in names]), 2) for s in SEVERITIES},
            "images_sha256": sha, "generation_time_s": round(cset.generation_time_s, 3),
            **({"matches_reference": all(REFERENCE_SHA256.get(c) == sha[c] for c in names)} if whole else {})},
        **meta, "rocl_zoo_version": __version__, "hardware": hardware_name(device), **describe("fp32", device),
        "torch": torch.__version__, "wall_time_s": round(wall, 3),
    }
    if resumed:
        out["resumed_batches"] = resumed
    return out


# ------------------------------------------------------------------------------------------------ command line


def _refuse_lp_options(args) -> None:
    """`rocl_zoo.evaluate --threat-model corruptions` takes no attack, budget or head options: say which were given."""
    given = [flag for flag, on in (("--attacks", args.attacks != DEFAULT_ATTACKS), ("--eps", args.eps is not None),
                                   ("--norm", args.norm != "linf"), ("--transfer-from", bool(args.transfer_from)),
                                   ("--sanity", args.sanity), ("--autoattack-examples", args.autoattack_examples),
                                   ("--table", bool(args.table)))
             if on]
    if given:
        raise ConfigError(f"{', '.join(given)} belong(s) to the Linf / L2 threat models; --threat-model corruptions "
                          f"measures accuracy on corrupted images (choose types with --corruptions).")
    if args.protocol != "none":
        raise ConfigError("--threat-model corruptions evaluates a classifier as it is: train its head with "
                          f"--protocol {args.protocol} --save-classifier DIR first, then evaluate DIR.")
    if args.n_examples < 0 or args.batch_size < 1:
        raise ConfigError("--n-examples must be >= 0 and --batch-size >= 1.")
    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise ConfigError("--threat-model corruptions runs in one process (it is cheap); run it without torchrun.")


def run_cli(args) -> dict:
    """`python -m rocl_zoo.evaluate MODEL --threat-model corruptions`: measure, then write --out (or print)."""
    if not args.source:
        raise ConfigError("give a model SOURCE (zoo name, hf-hub:ORG/REPO or folder).")
    _refuse_lp_options(args)
    names = parse_names(getattr(args, "corruptions", None))
    progress = not args.quiet
    model, dataset = model_and_dataset(args.source, args.dataset, resolve_device(args.device))
    if getattr(model, "num_classes", 1) == 0:
        raise ConfigError(f"{args.source} is an encoder without a classifier head; evaluate a classifier (e.g. one "
                          f"saved by --protocol linear --save-classifier DIR).")
    cset = load_corrupted(dataset, args.split, n=args.n_examples or None, seed=args.seed, root=args.data_root,
                          download=args.download, progress=progress)
    size = tuple((getattr(model, "pretrained_cfg", None) or {}).get("input_size") or ())
    if size and size != (1, *SIZE):
        raise DataError(f"{args.source} takes {'x'.join(map(str, size))} images; the corrupted set is 1x28x28.")
    protocol = args.protocol_label or "none"
    meta = {"model": args.name or args.source, "source": args.source, **weights_meta(model),
            "dataset": dataset, "split": args.split, "protocol": protocol, "seed": args.seed,
            "protocol_config": {"protocol": protocol, **({"head_trained_before": True} if args.protocol_label else {})}}
    result = evaluate_corruptions(model, cset, corruptions=names, batch_size=args.batch_size, progress=progress,
                                  meta=meta, resume=args.out and f"{args.out}.partial")
    if args.out:
        write_json(args.out, result)
        if progress:
            print(f"mean corruption accuracy {result['corruptions_acc']:.2f} % (clean {result['clean_acc']:.2f} %) "
                  f"on {result['n_examples']} images; wrote {args.out}", file=sys.stderr)
    else:
        print(json.dumps(result, indent=2))
    return result


def is_corruptions(res: dict) -> bool:
    """Whether a results dict measured the corruptions threat model."""
    return res.get("threat_model") == THREAT
