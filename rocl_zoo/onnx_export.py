"""ONNX export, and its proof: the graph checked, and ONNX Runtime matched against PyTorch on random, real and
adversarial images (`verify_onnx` raises `ExportError` with the numbers when they differ)."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import ExportError, RoclZooError
from .hub import architecture_of
from .inference import model_input_size, prepare_images
from .onnx import INPUT_NAME, META_ARCHITECTURE, META_INPUT_SIZE, META_LABELS, OUTPUT_NAME

DEFAULT_OPSET = 18
LOGIT_ATOL = 1e-4          # max |logit difference| ONNX Runtime vs PyTorch
ROBUST_ACC_TOL = 0.5       # points of robust accuracy on the adversarial batch


def _dynamic_batch(proto) -> bool:
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return bool(dims) and not dims[0].HasField("dim_value")


def export_onnx(model: nn.Module, path, *, opset: int = DEFAULT_OPSET, dynamo: bool = False) -> Path:
    """Write `model` as ONNX (input `images` (batch, C, H, W) in [0, 1], output `logits`) with a dynamic batch axis,
    atomically, after `onnx.checker` passes. dynamo=False uses the TorchScript exporter (fast and reliable for
    these convolutional nets in torch 2.x); dynamo=True the torch.export-based one."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = model_input_size(model)
    x = torch.rand(2, c, h, w)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notices
            with contextlib.redirect_stdout(sys.stderr):  # the dynamo exporter prints progress
                if dynamo:
                    torch.onnx.export(model, (x,), tmp, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                      opset_version=opset, dynamo=True, external_data=False,
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
                else:
                    torch.onnx.export(model, (x,), tmp, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                      opset_version=opset, dynamo=False, do_constant_folding=True,
                                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        proto = onnx.load(tmp)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        labels = cfg.get("label_names")
        props = {META_ARCHITECTURE: architecture_of(model), META_INPUT_SIZE: json.dumps([c, h, w])}
        if labels is not None and len(labels) == model.num_classes:
            props[META_LABELS] = json.dumps([str(v) for v in labels])
        onnx.helper.set_model_props(proto, props)
        proto.producer_name = "rocl_zoo.export"
        try:
            onnx.checker.check_model(proto, full_check=True)
        except onnx.checker.ValidationError as e:
            raise ExportError(f"onnx.checker rejects the exported graph ({e}); try another --opset or --dynamo.") from e
        if not _dynamic_batch(proto):
            raise ExportError("the exported ONNX graph has a fixed batch size; it must have a dynamic batch axis.")
        onnx.save(proto, tmp)
        os.chmod(tmp, 0o644)  # mkstemp made it private; the folder's other files are world-readable
        os.replace(tmp, path)
    finally:
        model.train(was_training)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def real_inputs(model: nn.Module, dataset: str | None, n: int, images=None) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """n real images at the model's input size: `images` if given, else the dataset's test split, else
    scikit-image's sample photographs. Returns (x, labels or None, description)."""
    if images is not None:
        x = prepare_images(images, model)[:n]
        return x, None, f"{len(x)} user images"
    if dataset:
        try:
            from .data import load_dataset

            ds = load_dataset(dataset, "test")
            idx = np.linspace(0, len(ds) - 1, num=min(n, len(ds))).round().astype(int)
            pairs = [ds[int(i)] for i in idx]
            x = prepare_images(torch.stack([p[0] for p in pairs]), model)
            y = torch.tensor([int(p[1]) for p in pairs])
            if model.num_classes and int(y.max()) < model.num_classes:
                return x, y, f"{len(x)} {dataset} test images"
            return x, None, f"{len(x)} {dataset} test images"
        except (ImportError, AttributeError, RoclZooError, OSError, RuntimeError, ValueError):
            pass
    try:
        import skimage.data as sk

        names = ["astronaut", "coffee", "chelsea", "camera", "rocket", "coins", "moon", "page", "horse",
                 "hubble_deep_field", "immunohistochemistry", "text", "brick", "grass", "gravel", "cell"]
        photos = []
        for name in names:
            with contextlib.suppress(Exception):
                img = np.asarray(getattr(sk, name)())
                photos.append(img.astype(np.float32) if img.dtype == bool else img)
        if photos:
            x = prepare_images(photos, model)
            x = torch.cat([x, x.flip(-1), x.flip(-2)])[:n]  # more views when n exceeds the photographs
            return x, None, f"{len(x)} scikit-image sample photographs"
    except ImportError:
        pass
    raise ExportError("no real images to check the ONNX model on: the dataset is not readable here and "
                      "scikit-image is not installed. Pass images (--images a.png b.png ...).")


@torch.no_grad()
def _torch_logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    return model(x).float().numpy()


def _agreement_under_attack(model: nn.Module, clf, x: torch.Tensor, y: torch.Tensor, *, labels: str, eps: float,
                            norm: str, steps: int, atol: float, robust_tol: float) -> tuple[dict, list[str]]:
    """PGD examples made on the PyTorch model, scored by both: what an export error near the decision boundary
    would change. Returns the numbers and what failed."""
    from .attacks import pgd

    x_adv = pgd(model, x, y, eps=eps, steps=steps, norm=norm, random_start=True)
    a, b = _torch_logits(model, x_adv), clf.logits(x_adv.numpy())
    acc_t = float((a.argmax(1) == y.numpy()).mean() * 100)
    acc_o = float((b.argmax(1) == y.numpy()).mean() * 100)
    diff = float(np.abs(a - b).max())
    report = {"attack": f"pgd{steps}", "eps": eps, "norm": norm, "n": len(y), "labels": labels,
              "robust_acc_torch": acc_t, "robust_acc_onnx": acc_o,
              "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean() * 100), "max_abs_diff": diff}
    failures = []
    if not abs(acc_t - acc_o) <= robust_tol:
        failures.append(f"robust accuracy under PGD-{steps} is {acc_t:.2f} % in PyTorch but {acc_o:.2f} % "
                        f"in ONNX Runtime (tolerance {robust_tol} point)")
    if not diff <= atol:
        failures.append(f"max |logit difference| on adversarial inputs is {diff:.3g} > {atol:g}")
    return report, failures


def verify_onnx(model: nn.Module, onnx_path, *, x_real: torch.Tensor, y_real: torch.Tensor | None = None,
                real_desc: str = "real images", n_random: int = 16, eps: float = 8 / 255, norm: str = "linf",
                pgd_steps: int = 10, atol: float = LOGIT_ATOL, robust_tol: float = ROBUST_ACC_TOL) -> dict:
    """Compare ONNX Runtime with PyTorch; return the numbers, or raise ExportError with them."""
    from .onnx import OnnxClassifier

    clf = OnnxClassifier(onnx_path, providers=["CPUExecutionProvider"], verify=False)
    model.eval()

    report = {"atol": atol, "real_inputs": real_desc}
    c, h, w = model_input_size(model)
    x_rand = torch.rand(n_random, c, h, w, generator=torch.Generator().manual_seed(0))
    xs = torch.cat([x_rand, x_real])
    a_all = _torch_logits(model, xs)  # one PyTorch pass for both checks
    # ONNX Runtime at batch sizes 1 and n-1, neither the export's: this also checks the dynamic batch axis.
    b_all = np.concatenate([clf.logits(xs[:1].numpy()), clf.logits(xs[1:].numpy())])
    report["onnx_batch_sizes"] = [1, len(xs) - 1]
    failures = []
    for what, sl in {"random": slice(0, n_random), "real": slice(n_random, None)}.items():
        a, b = a_all[sl], b_all[sl]
        diff = float(np.abs(a - b).max())
        report[f"max_abs_diff_{what}"] = diff
        report[f"n_{what}"] = len(a)
        if not diff <= atol:  # also catches NaN
            failures.append(f"max |logit difference| on {what} inputs is {diff:.3g} > {atol:g}")
        if model.num_classes:
            agree = float((a.argmax(1) == b.argmax(1)).mean() * 100)
            report[f"top1_agreement_{what}"] = agree
            if agree < 100:
                failures.append(f"top-1 agreement on {what} inputs is {agree:.2f} % < 100 %")
    if model.num_classes and pgd_steps > 0 and eps > 0:
        y, labels = (y_real, "dataset labels") if y_real is not None else (
            torch.from_numpy(a_all[n_random:].argmax(1)), "PyTorch predictions")
        report["adversarial"], adv_failures = _agreement_under_attack(
            model, clf, x_real, y, labels=labels, eps=eps, norm=norm, steps=pgd_steps, atol=atol,
            robust_tol=robust_tol)
        failures += adv_failures
    if failures:
        raise ExportError("the ONNX model does not reproduce the PyTorch model: " + "; ".join(failures) +
                          ". Nothing was written. Try --dynamo or another --opset, and report the model if it persists.")
    import onnxruntime

    report["onnxruntime"] = onnxruntime.__version__
    return report
