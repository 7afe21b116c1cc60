"""ONNX Runtime inference for exported models, with the same preprocessing as the PyTorch path.

    from rocl_zoo.onnx import OnnxClassifier
    clf = OnnxClassifier("export/cnn4_rocl.fmnist")          # a folder holding model.onnx, or the .onnx file
    clf.predict(["shirt.png"], topk=3)                        # as rocl_zoo.predict(model, ...)
    logits = clf(batch)                                       # float32 (B, C, H, W) in [0, 1] -> (B, classes)

`model.onnx` is written and verified by `python -m rocl_zoo.export ... --onnx`. The model normalises inside,
so ONNX inputs are [0, 1] images like the PyTorch model's. Needs the `onnx` extra (`pip install rocl-zoo[onnx]`,
or `[onnx-gpu]` for the CUDA provider).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError, IntegrityError, ModelNotFoundError
from .hub import ONNX_NAME, read_config

CONFIG_NAME = "config.json"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
# Keys of the metadata written into model.onnx by rocl_zoo.export, so the file describes itself without config.json.
META_ARCHITECTURE, META_INPUT_SIZE, META_LABELS = "rocl_zoo.architecture", "rocl_zoo.input_size", "rocl_zoo.label_names"


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError("ONNX Runtime is not installed: `pip install rocl-zoo[onnx]` (CPU) or "
                          "`pip install rocl-zoo[onnx-gpu]` (CUDA; install only one of the two).") from e
    return ort


def resolve_providers(providers=None) -> list[str]:
    """Execution providers to use: the ones asked for (all must be available), or CUDA when onnxruntime-gpu sees
    a GPU, then the CPU."""
    ort = _import_ort()
    available = ort.get_available_providers()
    if providers is None:
        chosen = [p for p in DEFAULT_PROVIDERS if p in available]
        if "CUDAExecutionProvider" in chosen:
            import torch

            if not torch.cuda.is_available():  # onnxruntime-gpu on a machine without a GPU
                chosen.remove("CUDAExecutionProvider")
        return chosen or list(available)
    providers = [providers] if isinstance(providers, str) else list(providers)
    missing = [p if isinstance(p, str) else p[0] for p in providers
               if (p if isinstance(p, str) else p[0]) not in available]
    if missing:
        raise ConfigError(f"ONNX Runtime providers {missing} are not available here (available: {available}). "
                          f"For CUDA install onnxruntime-gpu instead of onnxruntime; or pass providers=None.")
    return providers


class OnnxClassifier:
    """An exported classifier run by ONNX Runtime.

    path: a model folder (holding model.onnx and config.json) or an .onnx file. Label names and input size come
    from config.json beside it, else from the metadata export writes into the file. verify: check model.onnx
    against the sha256 recorded in config.json (IntegrityError on mismatch).
    """

    def __init__(self, path, providers=None, *, verify: bool = True, session_options=None):
        ort = _import_ort()
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / ONNX_NAME
        if not path.is_file():
            raise ModelNotFoundError(f"No ONNX model at {path}. Export one with "
                                     f"`python -m rocl_zoo.export SOURCE --out DIR --onnx`.")
        self.path = path
        config = read_config(path.parent / CONFIG_NAME) if (path.parent / CONFIG_NAME).is_file() else {}
        if verify and config:
            record = ((config.get("rocl_zoo") or {}).get("files") or {}).get(path.name)
            if record:
                from .hub import verify_file

                verify_file(path, record.get("sha256"), record.get("size"), what=" (ONNX model)")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=session_options,
                                                providers=resolve_providers(providers))
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise IntegrityError(f"ONNX Runtime cannot load {path} ({e}); re-export it with "
                                 f"`python -m rocl_zoo.export`.") from e
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name = inp.name
        meta = self.session.get_modelmeta().custom_metadata_map or {}
        graph_shape = list(inp.shape)
        input_size = ((config.get("pretrained_cfg") or {}).get("input_size")
                      or (json.loads(meta[META_INPUT_SIZE]) if META_INPUT_SIZE in meta else None)
                      or [d if isinstance(d, int) else None for d in graph_shape[1:]])
        self.in_chans, self.height, self.width = (int(v) if v is not None else None for v in input_size)
        if self.in_chans is None or self.height is None or self.width is None:
            raise ConfigError(f"{path}: cannot tell the input size (graph input {graph_shape}, no config.json); "
                              f"re-export it with `python -m rocl_zoo.export`.")
        # Spatial sizes fixed in the graph must be fed exactly; dynamic ones accept any size.
        self._fixed_hw = tuple(d if isinstance(d, int) else None for d in graph_shape[2:4])
        num_classes = config.get("num_classes")
        if num_classes is None:
            num_classes = out.shape[-1] if isinstance(out.shape[-1], int) else 0
        labels = config.get("label_names") or (json.loads(meta[META_LABELS]) if META_LABELS in meta else None)
        if num_classes and (labels is None or len(labels) != num_classes):
            labels = [str(i) for i in range(num_classes)]
        self.num_classes = int(num_classes or 0)  # 0: an encoder without a head, whose output is its features
        self.label_names = [str(v) for v in (labels or [])]
        self.architecture = config.get("architecture") or meta.get(META_ARCHITECTURE)
        # The attributes rocl_zoo.inference.prepare_images reads, so both paths preprocess identically.
        self.pretrained_cfg = {"architecture": self.architecture, "input_size": (self.in_chans, self.height, self.width),
                               "label_names": tuple(self.label_names)}

    @property
    def providers(self) -> list[str]:
        """The providers the session actually runs on, best first."""
        return self.session.get_providers()

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (self.in_chans, self.height, self.width)

    def check_batch(self, x) -> np.ndarray:
        """Validate a (B, C, H, W) float batch in [0, 1]; return it as contiguous float32 numpy."""
        if hasattr(x, "detach"):  # torch.Tensor, without importing torch
            x = x.detach().cpu().numpy()
        if not isinstance(x, np.ndarray):
            raise DataError(f"expected a numpy array or torch tensor of shape (B, C, H, W), got {type(x).__name__}; "
                            f"use .predict() for paths, PIL images or lists.")
        if x.dtype.kind != "f":
            raise DataError(f"expected float images in [0, 1], got dtype {x.dtype}; divide uint8 images by 255, or "
                            f"use .predict(), which converts them.")
        if x.ndim != 4:
            hint = " (one image: add a batch axis, x[None])" if x.ndim == 3 else ""
            raise DataError(f"expected a batch of shape (B, C, H, W), got shape {x.shape}{hint}.")
        if x.shape[1] != self.in_chans:
            raise DataError(f"the model takes {self.in_chans}-channel images, got {x.shape[1]} channels (shape "
                            f"{x.shape}); .predict() converts grey and RGB images.")
        for axis, (want, got) in enumerate(zip(self._fixed_hw, x.shape[2:]), start=2):
            if want is not None and want != got:
                raise DataError(f"the ONNX model takes {self.height}x{self.width} images, got shape {x.shape}; "
                                f".predict() resizes images.")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.size and not np.isfinite(x).all():
            raise DataError("the images contain NaN or infinite values.")
        if x.size and (x.min() < 0 or x.max() > 1):
            raise DataError(f"images must lie in [0, 1] (the model normalises inside), got values in "
                            f"[{x.min():.3g}, {x.max():.3g}].")
        return x

    def logits(self, x, batch_size: int = 256) -> np.ndarray:
        """Logits (B, num_classes) for a float (B, C, H, W) batch in [0, 1] (features, for a model without a head)."""
        x = self.check_batch(x)
        if len(x) == 0:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        return np.concatenate([self.session.run(None, {self.input_name: x[i:i + batch_size]})[0]
                               for i in range(0, len(x), batch_size)])

    __call__ = logits

    def predict(self, images, topk: int = 5, batch_size: int = 256) -> list[list[dict]]:
        """Top-k predictions per image, exactly as `rocl_zoo.predict` returns them: a list (one per image) of
        [{"label", "index", "prob"}, ...], best first. Accepts paths, PIL images, arrays and tensors."""
        from .inference import prepare_images

        if not self.num_classes:
            raise ConfigError("this ONNX model has no classifier head (num_classes=0): its output are features; use "
                              ".logits() for them, or fine-tune a head (`python -m rocl_zoo.finetune`) and re-export.")
        x = prepare_images(images, self).numpy()
        z = self.logits(x, batch_size=batch_size)
        z = z - z.max(axis=1, keepdims=True)
        probs = np.exp(z)
        probs /= probs.sum(axis=1, keepdims=True)
        k = max(1, min(int(topk), probs.shape[1]))
        idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[{"label": self.label_names[i], "index": int(i), "prob": float(p[i])} for i in row]
                for p, row in zip(probs, idx)]

    def __repr__(self) -> str:
        return (f"OnnxClassifier({str(self.path)!r}, architecture={self.architecture!r}, "
                f"input_size={self.input_size}, providers={self.providers})")


__all__ = ["OnnxClassifier", "resolve_providers", "ONNX_NAME"]
