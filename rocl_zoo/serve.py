"""An HTTP inference server for zoo models on LitServe: requests from many clients are batched into one forward.

    python -m rocl_zoo.serve --model cnn4_rocl.fmnist_at [--backend onnx] [--port 8000] [--max-batch-size 32]
    curl -F image=@shirt.png http://127.0.0.1:8000/predict
    curl -d '{"image": "'$(base64 -w0 shirt.png)'", "output": "logits"}' http://127.0.0.1:8000/predict

Routes:
  POST /predict  one image as a multipart file (`image`, or several `images`) or base64 in JSON (`{"image": ...}`,
                 `{"images": [...]}`); `output` is `topk` (default; `topk` labels with probabilities, 5 unless
                 given), `logits` or `features` (the encoder's pooled features, as rocl_zoo.extract_features). The
                 answer holds one entry per image: {"predictions": [[{"label", "index", "prob"}, ...], ...]},
                 {"logits": [[...], ...]} or {"features": [[...], ...]}, with "notes" when an image is far from the
                 training data (the InputMismatchWarning of rocl_zoo.predict).
  GET /health    200 "ok" once the model is loaded, 503 before.
  GET /info      the model (name, sha256, threat model, measured clean / PGD-20 / AutoAttack accuracy when the zoo
                 registry has them) and the server's settings.

Images are preprocessed by rocl_zoo.inference.prepare_images, so answers equal rocl_zoo.predict's on the same
files. Bad requests get {"detail": "..."} and a 4xx: 400 a malformed body or field, 413 too many bytes, pixels
or images, 422 bytes that are not an image (`rocl_zoo.serve_requests`). Needs the `serve` extra: pip install "rocl-zoo[serve]".
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import types
import warnings
from queue import Empty
from typing import Iterable

import torch

from .cli import add_runtime_args, run
from .errors import ConfigError, DataError, InputMismatchWarning, RoclZooError
from .serve_requests import DEFAULT_TOPK, OUTPUTS, BadRequest, Job, RequestGate, parse_request
from .utils import resolve_device

try:
    import litserve as ls
    from litserve.loops import BatchedLoop
except ImportError:  # the `serve` extra is missing: main() says how to install it
    ls = None
    BatchedLoop = object

INSTALL_HINT = 'the inference server needs LitServe: pip install "rocl-zoo[serve]"'
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # the hosts LitServe binds


# ------------------------------------------------------------------------------------------------ the model


class TorchRunner:
    """The PyTorch model: logits or pooled features for a float batch in [0, 1]."""

    def __init__(self, source, device, precision: str = "fp32"):
        from .hub import load

        self.model, self.device, self.precision = load(source, device=device), torch.device(device), precision

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, output: str) -> torch.Tensor:
        from .precision import autocast

        x, m = x.to(self.device), self.model
        with autocast(self.precision, self.device):
            y = m(x) if output == "logits" else m.forward_head(m.forward_features(x), pre_logits=True)
        return y.float().cpu()


class OnnxRunner:
    """ONNX Runtime sessions of the graphs export_onnx wrote: "logits" (the classifier) and "features" (the encoder
    without its head)."""

    def __init__(self, paths: dict, device, threads: int | None):
        import onnxruntime as ort

        from .onnx import OnnxClassifier

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"] if torch.device(device).type == "cpu" else None
        self.graphs = {k: OnnxClassifier(p, providers, verify=False, session_options=opts) for k, p in paths.items()}

    def __call__(self, x: torch.Tensor, output: str) -> torch.Tensor:
        return torch.from_numpy(self.graphs[output].logits(x.numpy()))


def export_graphs(model, folder) -> dict:
    """The ONNX graphs the onnx backend runs, written by rocl_zoo.onnx_export.export_onnx (the exporter of `python -m
    rocl_zoo.export --onnx`): the model, and a copy without its head, whose output is the pooled features."""
    import copy
    from pathlib import Path

    from .onnx_export import export_onnx

    encoder = copy.deepcopy(model)
    encoder.reset_classifier(0)
    paths = {"features": str(export_onnx(encoder, Path(folder) / "features.onnx"))}
    if model.num_classes:
        paths["logits"] = str(export_onnx(model, Path(folder) / "logits.onnx"))
    return paths


def encode(job: Job, y: torch.Tensor, labels) -> dict:
    """A job's answer, shaped as rocl_zoo.predict's (topk) or as rows of numbers."""
    if job.output == "topk":
        top = y.softmax(-1).topk(max(1, min(job.topk, y.shape[1])), dim=1)
        out = {"predictions": [[{"label": str(labels[i]), "index": int(i), "prob": float(p)} for p, i in zip(ps, idx)]
                               for ps, idx in zip(top.values.tolist(), top.indices.tolist())]}
    else:
        out = {job.output: y.tolist()}
    if job.notes:
        out["notes"] = job.notes
    return out


class BlockingBatchedLoop(BatchedLoop):
    """LitServe's batched loop polls its request queue without blocking, so an idle server spins a core (and the
    queue's manager process); this one blocks for a batch's first request, then collects more for up to
    batch_timeout as LitServe does."""

    def get_batch_requests(self, lit_api, request_queue, transport):
        try:
            first = request_queue.get(timeout=1.0)
        except Empty:
            return [], []
        return super().get_batch_requests(lit_api, _Primed(request_queue, first), transport)


class _Primed:
    """A queue whose next item is `first`, then the queue's."""

    def __init__(self, queue, first):
        self.queue, self.first = queue, [first]

    def get(self, block=True, timeout=None):
        return self.first.pop() if self.first else self.queue.get(block=block, timeout=timeout)

    def get_nowait(self):
        return self.first.pop() if self.first else self.queue.get_nowait()


class RoclAPI(ls.LitAPI if ls else object):
    """The LitServe API: decode_request turns one request into a Job (or a BadRequest, kept as the request's answer
    so that one client's bad input never fails the others batched with it), predict runs the batch's jobs in one
    forward per output kind, encode_response shapes each answer."""

    def __init__(self, source: str, *, backend: str, device: str, threads: int | None, input_cfg: dict,
                 labels: list, onnx_paths: dict | None, limits: dict, max_batch_size: int, batch_timeout: float,
                 precision: str = "fp32"):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout,
                         loop=BlockingBatchedLoop() if max_batch_size > 1 else "auto")
        self.source, self.backend, self.device_name, self.threads = source, backend, device, threads
        self.input_cfg, self.labels, self.onnx_paths, self.limits = input_cfg, labels, onnx_paths, limits
        self.precision = precision

    def setup(self, device):
        if self.threads:  # this worker is a fresh process: --threads must be applied here too
            torch.set_num_threads(self.threads)
        # preprocessing reads the input size and dataset from the loaded model's config, whichever backend runs
        self.input = types.SimpleNamespace(**self.input_cfg)
        self.runner = (OnnxRunner(self.onnx_paths, self.device_name, self.threads) if self.backend == "onnx"
                       else TorchRunner(self.source, self.device_name, self.precision))

    def decode_request(self, request):
        from .inference import prepare_images

        try:
            images, output, topk = parse_request(request, has_head=bool(self.labels), **self.limits)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", InputMismatchWarning)
                x = prepare_images(images, self.input)
        except BadRequest as e:
            return e
        except DataError as e:  # an image prepare_images cannot convert
            return BadRequest(422, str(e))
        return Job(x, output, topk, [str(w.message) for w in caught if issubclass(w.category, InputMismatchWarning)])

    def predict(self, x):
        items = x if isinstance(x, list) else [x]  # max batch 1 runs LitServe's single loop: one request
        outputs = list(items)
        for kind, wants in (("logits", ("topk", "logits")), ("features", ("features",))):
            group = [i for i, it in enumerate(items) if isinstance(it, Job) and it.output in wants]
            if group:
                y = self.runner(torch.cat([items[i].x for i in group]), kind)
                for i, part in zip(group, torch.split(y, [len(items[i].x) for i in group])):
                    outputs[i] = (items[i], part)
        return outputs if isinstance(x, list) else outputs[0]

    def encode_response(self, output):
        if isinstance(output, BadRequest):
            from fastapi.responses import JSONResponse

            return JSONResponse({"detail": output.message}, status_code=output.status)
        return encode(*output, self.labels)


# ------------------------------------------------------------------------------------------------ the server


def model_info(model, source: str, backend: str) -> dict:
    """What GET /info says about the model. The threat model and measured accuracy come from the zoo registry's
    entry whose weights have this sha256 (so a folder or Hub copy of a zoo model gets them too); other models
    carry the metrics their config.json recorded, if any."""
    from .hub import WEIGHTS_NAME
    from .inference import model_input_size
    from .zoo import ZOO

    cfg = model.pretrained_cfg
    rz = cfg.get("rocl_zoo") or {}
    sha = ((rz.get("files") or {}).get(WEIGHTS_NAME) or {}).get("sha256")
    entry = next((e for e in ZOO.values() if sha and e.sha256 == sha), None)
    m = entry.metrics if entry else {}
    info = {"name": entry.name if entry else str(source), "source": str(source), "backend": backend,
            "architecture": cfg.get("architecture"), "sha256": sha, "dataset": rz.get("dataset"),
            "input_size": list(model_input_size(model)), "num_classes": model.num_classes,
            "num_features": model.num_features, "labels": list(cfg.get("label_names") or []),
            "threat_model": {"norm": m["norm"], "eps": m["eps"]} if "norm" in m else None,
            "accuracy": None}
    if "clean_acc" in m:
        info["accuracy"] = {"unit": "percent", "split": m.get("split"), "clean": _pct(m.get("clean_acc")),
                            "pgd20": _pct(m.get("pgd20_acc")), "autoattack": _pct(m.get("autoattack_acc")),
                            "n_examples": m.get("n_examples"), "autoattack_n_examples": m.get("autoattack_n_examples")}
    elif rz.get("metrics"):
        info["recorded_metrics"] = rz["metrics"]
    return info


def _pct(v):
    return None if v is None else round(float(v), 2)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rocl_zoo.serve", description="Serve a zoo model over HTTP "
                                "(LitServe): POST /predict (top-k, logits or features; requests batched across "
                                "clients), GET /health, GET /info.")
    p.add_argument("--model", required=True, help="zoo name, hf-hub:ORG/NAME[@REV] or model folder")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="torch (eager PyTorch) or onnx (ONNX Runtime; the graphs are exported at start, needs the "
                        "onnx extra) (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", choices=HOSTS,
                   help="address to bind; 0.0.0.0 or :: exposes the server to the network (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="TCP port, 1024-65535 (default: %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=32,
                   help="most requests run as one batch; 1 turns batching off (default: %(default)s)")
    p.add_argument("--batch-timeout", type=float, default=0.0, metavar="S",
                   help="seconds a batch waits for more requests after its first; 0 takes the requests that queued "
                        "while the previous batch ran, best on a CPU (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=64, help="most images in one request (default: %(default)s)")
    p.add_argument("--max-bytes", type=int, default=10_000_000,
                   help="largest request body in bytes (default: %(default)s)")
    p.add_argument("--max-pixels", type=int, default=16_000_000,
                   help="largest image, width x height (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1,
                   help="inference processes, each with its own copy of the model (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds a request may wait before it gets a 504 (default: %(default)s)")
    p.add_argument("--amp", default="off", choices=("off", "auto", "bf16"),
                   help="torch backend: bf16 autocast (auto: where the GPU or CPU has native bf16). Batches run "
                        "2-3x faster on such CPUs; answers then differ from rocl_zoo.predict's fp32 in the last "
                        "digits (default: %(default)s, fp32)")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"),
                   help="server log level; info logs every request (default: %(default)s)")
    add_runtime_args(p, data=False)
    return p


def main(argv: Iterable[str] | None = None) -> int:
    return run(_main, build_parser().parse_args(argv))


def _check(args) -> None:
    if not 1024 <= args.port <= 65535:
        raise ConfigError(f"--port must lie in 1024-65535, got {args.port}.")
    for name in ("max_batch_size", "max_images", "max_bytes", "max_pixels", "workers"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if not 0 <= args.batch_timeout < args.timeout:
        raise ConfigError(f"--batch-timeout must lie in [0, --timeout), got {args.batch_timeout}.")


def _make_stop(main_pid: int):
    """A SIGTERM handler: in the main process it takes LitServe's Ctrl-C path, which stops the worker processes
    (and removes the ONNX folder); the HTTP processes LitServe forks inherit it and must just exit."""
    def stop(signum, frame):
        if os.getpid() == main_pid:
            raise KeyboardInterrupt
    return stop


def build_server(args, model, folder):
    """The LitServer for parsed arguments and the loaded model (a CPU copy: the workers load their own); the onnx
    backend's graphs go to `folder`."""
    from . import precision

    device = resolve_device(args.device)
    if args.amp != "off" and args.backend != "torch":
        raise ConfigError("--amp applies to the torch backend; ONNX Runtime runs the graph in fp32.")
    prec = precision.resolve(args.amp, device)
    limits = {"max_images": args.max_images, "max_pixels": args.max_pixels}
    info = model_info(model, args.model, args.backend)
    info["serving"] = {"max_batch_size": args.max_batch_size, "batch_timeout": args.batch_timeout, "precision": prec,
                       "max_bytes": args.max_bytes, **limits, "outputs": list(OUTPUTS), "default_topk": DEFAULT_TOPK}
    onnx_paths = None
    if args.backend == "onnx":
        from .onnx import _import_ort

        _import_ort()  # the install hint, before exporting
        onnx_paths = export_graphs(model, folder)
    api = RoclAPI(args.model, backend=args.backend, device=str(device), threads=args.threads, onnx_paths=onnx_paths,
                  input_cfg={"pretrained_cfg": dict(model.pretrained_cfg), "in_chans": model.in_chans},
                  labels=[str(v) for v in model.pretrained_cfg.get("label_names") or range(model.num_classes)],
                  limits=limits, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout, precision=prec)
    # LitServe 0.2 mounts its MCP bridge when the `mcp` package is installed (the demo's mcp extra brings it) but
    # builds it only when `fastmcp` is too: without fastmcp it fails at start with a NameError. This server exposes
    # no MCP tools, so the bridge stays off.
    import litserve.server

    litserve.server._MCP_AVAILABLE = False
    return ls.LitServer(api, accelerator="cuda" if device.type == "cuda" else "cpu", devices=1,
                        workers_per_device=args.workers, timeout=args.timeout, model_metadata=info,
                        middlewares=[(RequestGate, {"max_bytes": args.max_bytes, "max_images": args.max_images})])


def _main(args) -> int:
    import signal
    import tempfile

    from .hub import load

    if ls is None:
        raise ImportError(INSTALL_HINT)
    _check(args)
    device = resolve_device(args.device)  # --device cuda without a GPU fails here, before the model loads
    model = load(args.model)  # here too, so that a bad source fails before any process starts, and for /info
    signal.signal(signal.SIGTERM, _make_stop(os.getpid()))
    with tempfile.TemporaryDirectory(prefix="rocl_serve_") as tmp:
        server = build_server(args, model, tmp)
        name = server.model_metadata["name"]
        del model  # the forked HTTP processes need no copy
        print(f"serving {name} ({args.backend}, {device}) on http://{args.host}:{args.port}: POST /predict, "
              f"GET /health, GET /info", file=sys.stderr, flush=True)
        try:
            server.run(host=args.host, port=args.port, log_level=args.log_level, generate_client_file=False)
        except RuntimeError as e:  # LitServe's "workers failed to start"; the worker logged why
            raise RoclZooError(f"the server did not start: {e}") from e
    return 0


def _healthy(port: int) -> bool:
    """Whether GET /health on the loopback port answers 200 (http.client: no proxy settings apply)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def launched(argv: list, *, startup_timeout: float = 180.0, env: dict | None = None):
    """`python -m rocl_zoo.serve ARGV --port P` in its own process group on a free loopback port, for tests and
    benchmarks: yields the base URL once GET /health answers 200, and stops every process of the server after
    the with block (SIGTERM to the server, then SIGKILL to its process group). A failed start raises with the
    server's log."""
    import signal
    import socket
    import subprocess
    import tempfile
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "rocl_zoo.serve", *map(str, argv), "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + startup_timeout
            while not _healthy(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    why = f"exited with {proc.returncode}" if proc.poll() is not None else "did not answer"
                    raise RuntimeError(f"the server {why} ({' '.join(map(str, argv))}):\n"
                                       f"{log.read().decode(errors='replace')[-3000:]}")
                time.sleep(0.2)
            yield url
        finally:  # the main process stops its workers on SIGTERM; SIGKILL then takes whatever is left
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
