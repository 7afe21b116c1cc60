"""Sources to verified models: zoo names, `hf-hub:org/repo[@rev]` and folders in the Hub layout.

A Hub folder holds `model.safetensors`, `config.json` in timm's schema (so `timm.create_model("hf-hub:...")`
and `"local-dir:..."` read it too) and `README.md`, the model card. Our own block in config.json,
`rocl_zoo`, records the dataset, recipe, metrics and each file's sha256 and size, so a folder verifies itself.
Weights are only ever read from safetensors, and loaded with `strict=True`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .config import validate_config
from .errors import ConfigError, IntegrityError, ModelNotFoundError, RoclZooError, WeightsUnavailableError
from .utils import atomic_write, sha256_file, write_json
from .zoo import ZooEntry, get_entry

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
ONNX_NAME = "model.onnx"  # written by rocl_zoo.export --onnx, run by rocl_zoo.onnx
HF_PREFIX = "hf-hub:"


# ------------------------------------------------------------------------------------------------ saving


def architecture_of(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture")
    if not arch:
        raise ConfigError("The model has no pretrained_cfg['architecture']; create it with rocl_zoo.create_model "
                          "or timm.create_model so it knows its registered name.")
    return arch


def build_config(model: nn.Module, *, weights_sha256: str, weights_size: int, dataset: str | None = None,
                 recipe: str | None = None, metrics: dict | None = None, label_names=None,
                 extra: dict | None = None) -> dict:
    """config.json in timm's schema plus the `rocl_zoo` block."""
    from . import __version__

    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    in_chans = model.in_chans
    input_size = list(cfg.get("input_size") or (in_chans, 32, 32))
    input_size[0] = in_chans
    if label_names is None and model.num_classes:
        label_names = cfg.get("label_names")
        if label_names is not None and len(label_names) != model.num_classes:
            label_names = None
    if label_names is None and model.num_classes:
        label_names = [str(i) for i in range(model.num_classes)]
    pretrained_cfg = {
        "tag": cfg.get("tag"),
        "input_size": input_size,
        "interpolation": cfg.get("interpolation", "bilinear"),
        "crop_pct": 1.0,
        "crop_mode": "center",
        # The model normalises inside (see `rocl_zoo.normalization`): timm's transforms must give [0, 1] inputs.
        "mean": [0.0] * in_chans,
        "std": [1.0] * in_chans,
        "num_classes": model.num_classes,
        "classifier": "fc",
        "license": cfg.get("license", "mit"),
    }
    config = {
        "architecture": architecture_of(model),
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "global_pool": "avg",
        "model_args": {"in_chans": in_chans},
        "pretrained_cfg": pretrained_cfg,
    }
    if label_names is not None:
        config["label_names"] = list(label_names)
    config["rocl_zoo"] = {
        "version": __version__,
        "dataset": dataset,
        "recipe": recipe,
        "normalization": {"mean": model.normalize.mean.flatten().tolist(), "std": model.normalize.std.flatten().tolist()},
        "metrics": metrics or {},
        "files": {WEIGHTS_NAME: {"sha256": weights_sha256, "size": weights_size}},
        **(extra or {}),
    }
    return config


def load_encoder(source, device="cpu") -> nn.Module:
    """`load(source)` without its classifier head (pooled features out), in eval mode: an encoder to read out,
    distil from or cluster with."""
    model = load(source, device=device)
    model.reset_classifier(0)
    return model.eval()


def model_dataset(model: nn.Module) -> str | None:
    """The dataset a loaded model records it was trained on (its config's rocl_zoo block), if any."""
    return ((getattr(model, "pretrained_cfg", None) or {}).get("rocl_zoo") or {}).get("dataset")


def save_pretrained(model: nn.Module, folder, *, dataset: str | None = None, recipe: str | None = None,
                    metrics: dict | None = None, label_names=None, extra: dict | None = None,
                    card: str | None = None, results=(), description: str | None = None) -> Path:
    """Write `model` as a Hub folder: model.safetensors, config.json (with checksums), README.md.

    The model card is `rocl_zoo.model_card.build_card`'s, from the config, `results` ([(file name, results dict)])
    and `description` (its opening paragraph), unless `card` gives the text.

    Everything is built in memory first and each file is replaced atomically, so a failure leaves the previous
    folder as it was; a crash between two files leaves weights that fail their checksum, never a silent mismatch.
    """
    import hashlib

    from safetensors.torch import save

    folder = Path(folder)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # one metadata key: safetensors writes its metadata map in no fixed order, and the same weights must give
    # the same bytes (and checksum) every time they are saved; config.json names the architecture
    data = save(state, metadata={"format": "pt"})
    config = build_config(model, weights_sha256=hashlib.sha256(data).hexdigest(), weights_size=len(data),
                          dataset=dataset, recipe=recipe, metrics=metrics, label_names=label_names, extra=extra)
    if card is None:
        from .model_card import build_card  # here, not above: the card writer reads this module's names

        card = build_card(config, list(results), model_name=config["architecture"], description=description)
    with atomic_write(folder / WEIGHTS_NAME) as f:
        f.write(data)
    write_json(folder / CONFIG_NAME, config)
    with atomic_write(folder / CARD_NAME, "w") as f:
        f.write(card)
    return folder


# ------------------------------------------------------------------------------------------------ loading


def parse_source(source) -> tuple[str, str, str | None]:
    """('folder', path, None) | ('hf-hub', repo_id, revision) | ('zoo', name, None)."""
    if isinstance(source, os.PathLike):
        return "folder", str(source), None
    source = str(source)
    if source.startswith(HF_PREFIX):
        repo, _, rev = source[len(HF_PREFIX):].partition("@")
        if repo.count("/") != 1:
            raise ConfigError(f"{source!r}: expected hf-hub:ORG/NAME[@REVISION].")
        return "hf-hub", repo, rev or None
    if source.startswith("local-dir:"):
        return "folder", source[len("local-dir:"):], None
    if os.sep in source or source.startswith(".") or Path(source).is_dir():
        return "folder", source, None
    return "zoo", source, None


def _hub_file(repo_id: str, filename: str, revision: str | None) -> Path:
    """hf_hub_download with errors that say what to do. Honours HF_HUB_OFFLINE, HF_ENDPOINT and the cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except RepositoryNotFoundError as e:
        raise ModelNotFoundError(f"No Hub repo {repo_id!r} (or it is private: log in with `hf auth login`).") from e
    except RevisionNotFoundError as e:
        raise ModelNotFoundError(f"Hub repo {repo_id!r} has no revision {revision!r}.") from e
    # LocalEntryNotFoundError (offline, not cached) subclasses EntryNotFoundError: it must come first.
    except LocalEntryNotFoundError as e:
        raise WeightsUnavailableError(
            f"{filename} of {repo_id!r} is not in the local Hugging Face cache and cannot be downloaded now "
            f"(offline: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}, or no network). Connect and unset "
            f"HF_HUB_OFFLINE, or download the folder elsewhere and load it by path.") from e
    except EntryNotFoundError as e:
        raise IntegrityError(f"Hub repo {repo_id!r} has no file {filename!r}: it is not a rocl-zoo/timm folder "
                             f"(expected {WEIGHTS_NAME}, {CONFIG_NAME}, {CARD_NAME}).") from e


def read_config(path: Path) -> dict:
    """A model folder's config.json, parsed and validated whole (rocl_zoo/config.py)."""
    if not path.is_file():
        raise IntegrityError(f"{path} is missing: a model folder needs {CONFIG_NAME} next to {WEIGHTS_NAME} "
                             f"(write one with rocl_zoo.hub.save_pretrained or `python -m rocl_zoo.export`).")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IntegrityError(f"{path} is not valid JSON ({e}); re-download or re-export the folder.") from e
    return validate_config(config, str(path), list_architectures())


def verify_file(path: Path, sha256: str | None, size: int | None = None, *, what: str = "") -> None:
    """Raise IntegrityError unless `path` exists and matches the recorded size and sha256."""
    if not path.is_file():
        raise IntegrityError(f"{path} is missing{what}; re-download or re-export the model folder.")
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise IntegrityError(f"{path} has {actual_size} bytes but {size} were recorded{what}: the file is "
                             f"truncated or was replaced. Re-download it (delete the cached copy first).")
    if sha256 is not None and sha256_file(path) != sha256:
        raise IntegrityError(f"{path} fails its sha256 check{what}: the weights are corrupt or were edited. "
                             f"Re-download them; never load weights you cannot verify.")


def _resolve(source) -> tuple[dict, Path, dict, ZooEntry | None]:
    """Locate config and weights for a source; return (config, weights path, expected file record, entry)."""
    kind, value, revision = parse_source(source)
    entry = None
    if kind == "zoo":
        entry = get_entry(value)
        if not entry.published:
            raise WeightsUnavailableError(
                f"{entry.name} has no published weights yet. Make them with `{entry.command}`"
                + (f" (recipe `{entry.recipe}`)" if entry.recipe else "") + " and load its folder (see README), or "
                f"create the architecture untrained with rocl_zoo.create_model({entry.architecture!r}).")
        if (entry.embedded_dir / CONFIG_NAME).is_file():
            folder = entry.embedded_dir
            config_path, weights = folder / CONFIG_NAME, folder / entry.filename
        else:
            config_path = _hub_file(entry.hf_hub_id, CONFIG_NAME, None)
            weights = _hub_file(entry.hf_hub_id, entry.filename, None)
        record = {"sha256": entry.sha256}
    elif kind == "hf-hub":
        config_path = _hub_file(value, CONFIG_NAME, revision)
        weights = _hub_file(value, WEIGHTS_NAME, revision)
        record = None
    else:
        folder = Path(value).expanduser()
        if not folder.is_dir():
            raise ModelNotFoundError(f"No folder {folder}: pass a zoo name (rocl_zoo.list_models(pretrained=True)), "
                                     f"hf-hub:ORG/NAME, or a folder holding {WEIGHTS_NAME} and {CONFIG_NAME}.")
        config_path, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        record = None
    config = read_config(config_path)
    if record is None:
        record = (config.get("rocl_zoo") or {}).get("files", {}).get(WEIGHTS_NAME)
    return config, weights, record, entry


def load_state_dict(path: Path) -> dict:
    """Read a safetensors file into CPU tensors; a corrupt or non-safetensors file raises IntegrityError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise IntegrityError(f"{path} is missing; re-download or re-export the model folder.")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise IntegrityError(f"{path} is not a readable safetensors file ({e}); it is truncated or corrupt. "
                             f"Re-download it. (rocl-zoo never unpickles weights.)") from e


def load_weights_into(model: nn.Module, state: dict, *, source: str = "") -> nn.Module:
    """`model.load_state_dict(state, strict=True)`, with a readable error when they do not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                 f"{len(mismatched)} of another shape (e.g. {mismatched[:2]})" if mismatched else ""]
        raise IntegrityError(f"The weights{(' of ' + source) if source else ''} do not fit "
                             f"{type(model).__name__}: " + "; ".join(p for p in parts if p) +
                             ". Check that config.json names the architecture, in_chans and num_classes the "
                             "weights were trained with.")
    model.load_state_dict(state, strict=True)
    return model


def load(source, device: str | torch.device = "cpu", *, verify: bool = True) -> nn.Module:
    """Load a model from a zoo name (`cnn4_rocl.fmnist`), `hf-hub:ORG/NAME[@REV]`, or a Hub-layout folder.

    The weights' sha256 is checked against the zoo registry (zoo names) or the folder's config.json, and the
    state dict must fit the architecture exactly. Returns the model in eval mode, its `pretrained_cfg` holding
    input_size, label_names, the source and the `rocl_zoo` block (dataset, recipe, metrics).
    """
    import timm

    config, weights, record, entry = _resolve(source)
    if verify:
        if record and record.get("sha256"):
            verify_file(weights, record.get("sha256"), record.get("size"), what=f" (source {source})")
        elif entry is None:
            import warnings

            warnings.warn(f"{source}: config.json records no sha256 for {WEIGHTS_NAME}; loading unverified "
                          f"safetensors. Re-export with rocl_zoo.hub.save_pretrained to add one.", stacklevel=2)
    arch = config["architecture"]
    model_args = dict(config.get("model_args") or {})
    num_classes = config.get("num_classes", config.get("pretrained_cfg", {}).get("num_classes", 0))
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **model_args)
    load_weights_into(model, load_state_dict(weights), source=str(source))
    pretrained_cfg = dict(model.pretrained_cfg)
    pretrained_cfg.update(config.get("pretrained_cfg") or {})
    pretrained_cfg["architecture"] = arch
    if config.get("label_names") is not None:
        pretrained_cfg["label_names"] = tuple(config["label_names"])
    pretrained_cfg["source"] = str(source)
    pretrained_cfg["rocl_zoo"] = config.get("rocl_zoo") or {}
    model.pretrained_cfg = model.default_cfg = pretrained_cfg
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------------ creating


def list_architectures() -> list[str]:
    from .models import ARCHITECTURES

    return list(ARCHITECTURES)


def create_model(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """An architecture (`cnn4_rocl`) or zoo entry (`cnn4_rocl.fmnist`), untrained or with its verified weights.

    Untrained, an entry's name sets the entry's classes, channels and normalisation; kwargs override them.
    Pretrained, `num_classes` may replace the head (a fresh linear layer) for fine-tuning.
    """
    import timm

    arch, _, tag = name.partition(".")
    if arch not in list_architectures():
        import difflib

        close = difflib.get_close_matches(arch, list_architectures(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelNotFoundError(f"Unknown architecture {arch!r}.{hint} Known: {', '.join(list_architectures())}.")
    if pretrained:
        model = load(name)
        num_classes = kwargs.pop("num_classes", model.num_classes)
        if kwargs:
            raise ConfigError(f"create_model({name!r}, pretrained=True) accepts only num_classes as an override, "
                              f"got {sorted(kwargs)}; the weights fix the rest.")
        if num_classes != model.num_classes:
            model.reset_classifier(num_classes)
        return model
    if tag:
        entry = get_entry(name)
        kwargs = {**entry.model_kwargs(), **kwargs}
        return timm.create_model(name, pretrained=False, **kwargs)
    return timm.create_model(arch, pretrained=False, **kwargs)


def list_models(pattern: str | None = None, pretrained: bool = False) -> list[str]:
    """Architecture names, or with pretrained=True the zoo entries (`arch.tag`) whose weights are published."""
    import fnmatch

    from .zoo import list_entries

    if pretrained:
        return list_entries(pattern, published_only=True)
    return sorted(a for a in list_architectures() if pattern is None or fnmatch.fnmatch(a, pattern))


__all__ = ["load", "save_pretrained", "create_model", "list_models", "verify_file", "RoclZooError"]
