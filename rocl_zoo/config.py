"""What a model folder's config.json may hold, checked whole before anything is built from it.

A folder can come from anyone (a download, a Hub repo), so its config is untrusted input: only registered
architectures, only the constructor arguments our models take, sizes with bounds, and types checked, each
failure an IntegrityError that names the field. Nothing in it may make the loader reach the network or a path.
"""
from __future__ import annotations

import re
from numbers import Real

from .errors import IntegrityError

MODEL_ARGS = ("in_chans", "mean", "std", "drop_rate", "global_pool", "depth", "widen_factor")
MAX_CLASSES = 100_000  # ImageNet-21k has 21,843; a larger head is a typo or an attack (1e9 classes = 1 TB)
MAX_SIDE = 4096
SHA256 = re.compile(r"[0-9a-f]{64}")


def _fail(where: str, field: str, why: str):
    raise IntegrityError(f"{where}: field {field!r} {why}. Re-export the folder with rocl_zoo.save_pretrained or "
                         "`python -m rocl_zoo.export`, or fix config.json.")


def _int(where, field, value, lo, hi) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(where, field, f"must be an integer, not {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        _fail(where, field, f"is {value}, outside [{lo}, {hi}]")
    return value


def _per_channel(where, field, value, in_chans) -> None:
    values = value if isinstance(value, list) else [value]
    if len(values) not in (1, in_chans) or not all(isinstance(v, Real) and not isinstance(v, bool) for v in values):
        _fail(where, field, f"must be a number or {in_chans} numbers, not {value!r}")


def _model_args(where: str, args) -> dict:
    if not isinstance(args, dict):
        _fail(where, "model_args", f"must be an object, not {type(args).__name__}")
    unknown = sorted(set(args) - set(MODEL_ARGS))
    if unknown:
        _fail(where, "model_args", f"has keys {unknown} that no rocl-zoo architecture takes (allowed: {MODEL_ARGS})")
    in_chans = args.get("in_chans")
    if in_chans is not None and (in_chans not in (1, 3) or isinstance(in_chans, bool)):
        _fail(where, "model_args.in_chans", f"must be 1 (grey) or 3 (RGB), not {in_chans!r}")
    for key in ("mean", "std"):
        if args.get(key) is not None:
            _per_channel(where, f"model_args.{key}", args[key], in_chans or 3)
    if "drop_rate" in args and not (isinstance(args["drop_rate"], Real) and 0 <= args["drop_rate"] < 1):
        _fail(where, "model_args.drop_rate", f"must be a number in [0, 1), not {args['drop_rate']!r}")
    if "global_pool" in args and args["global_pool"] not in ("avg", "max", "", None):
        _fail(where, "model_args.global_pool", f"must be 'avg' or 'max', not {args['global_pool']!r}")
    for key, hi in (("depth", 200), ("widen_factor", 32)):
        if key in args:
            _int(where, f"model_args.{key}", args[key], 1, hi)
    return args


def _pretrained_cfg(where: str, cfg, in_chans: int | None, num_classes: int) -> None:
    size = cfg.get("input_size")
    if size is not None:
        if not isinstance(size, list) or len(size) != 3:
            _fail(where, "pretrained_cfg.input_size", f"must be [channels, height, width], not {size!r}")
        _int(where, "pretrained_cfg.input_size[0]", size[0], in_chans or 1, in_chans or 3)
        for i in (1, 2):
            _int(where, f"pretrained_cfg.input_size[{i}]", size[i], 1, MAX_SIDE)
    if cfg.get("num_classes", num_classes) != num_classes:
        _fail(where, "pretrained_cfg.num_classes", f"is {cfg['num_classes']!r} but num_classes is {num_classes}")


def _files(where: str, block) -> None:
    if not isinstance(block, dict):
        _fail(where, "rocl_zoo", f"must be an object, not {type(block).__name__}")
    files = block.get("files", {})
    if not isinstance(files, dict):
        _fail(where, "rocl_zoo.files", "must be an object of {filename: {sha256, size}}")
    for name, record in files.items():
        if not isinstance(record, dict):
            _fail(where, f"rocl_zoo.files.{name}", "must be an object with sha256 and size")
        if "sha256" in record and not (isinstance(record["sha256"], str) and SHA256.fullmatch(record["sha256"])):
            _fail(where, f"rocl_zoo.files.{name}.sha256", "must be 64 lowercase hex digits")
        if "size" in record:
            _int(where, f"rocl_zoo.files.{name}.size", record["size"], 0, 1 << 40)


def validate_config(config, where: str, architectures) -> dict:
    """Check config.json whole; return it unchanged, or raise IntegrityError naming the first bad field."""
    if not isinstance(config, dict):
        raise IntegrityError(f"{where} is not a JSON object: it is not a timm/rocl-zoo config.")
    arch = config.get("architecture")
    if not isinstance(arch, str) or arch not in architectures:
        _fail(where, "architecture", f"is {arch!r}, not one of rocl-zoo's architectures ({', '.join(architectures)})")
    pretrained_cfg = config.get("pretrained_cfg") or {}
    if not isinstance(pretrained_cfg, dict):
        _fail(where, "pretrained_cfg", f"must be an object, not {type(pretrained_cfg).__name__}")
    num_classes = _int(where, "num_classes", config.get("num_classes", pretrained_cfg.get("num_classes", 0)), 0,
                       MAX_CLASSES)
    in_chans = _model_args(where, config.get("model_args") or {}).get("in_chans")
    _pretrained_cfg(where, pretrained_cfg, in_chans, num_classes)
    labels = config.get("label_names")
    if labels is not None:
        if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
            _fail(where, "label_names", "must be a list of strings")
        if len(labels) != num_classes:
            _fail(where, "label_names", f"has {len(labels)} names for {num_classes} classes")
    if config.get("rocl_zoo") is not None:
        _files(where, config["rocl_zoo"])
    return config
