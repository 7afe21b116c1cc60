"""The rocl-zoo demo: a robust (RoCL) and a standard encoder side by side, under attack.

    python app.py [--model SOURCE] [--baseline SOURCE] [--host 127.0.0.1] [--port 7860]

SOURCE is a zoo name, `hf-hub:ORG/NAME[@REV]` or a model folder (see `rocl_zoo.load`). The defaults are the
embedded zoo models, which need no network; until they are trained, the app runs the untrained architectures and
says so in a banner. Every event has an `api_name`, so `gradio_client` can call it:

    from gradio_client import Client, handle_file
    c = Client("http://127.0.0.1:7860/")
    c.predict(handle_file("boot.png"), api_name="/predict")
    c.predict(handle_file("boot.png"), "pgd_linf", 0.1, 10, "robust", api_name="/attack")

The computations live in app_logic.py (no Gradio there); this file is the page and the server.
"""
from __future__ import annotations

import argparse
import atexit
import functools
import hashlib
import io
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry calls

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import app_logic as L  # noqa: E402
from rocl_zoo.errors import RoclZooError  # noqa: E402

QUEUE_SIZE = 64           # requests waiting beyond this are refused with "queue full", not left to pile up
CONCURRENCY = 2           # events computed at once: the machine this targets has 2 cores
MAX_FILE_SIZE = "20mb"    # uploads above this are refused by Gradio before they reach the handlers
CSS = """
.pixelated img { image-rendering: pixelated; }
/* 28x28 images would show at their natural size: fill the frame, crisp pixels */
#input-image img, #model-view img, #adversarial img, #perturbation img {
  width: 100%; height: 100%; object-fit: contain; }
#banner { border: 2px solid #d97706; border-radius: 8px; padding: 0 12px; background: #fffbeb; color: #78350f; }
"""
# System fonts only: the default theme would fetch Google Fonts, and the demo must work with no network.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])


def checked_image(**kwargs) -> gr.Image:
    """gr.Image whose decoding failures (a non-image, a decompression bomb) become a clear message in the page
    rather than a bare "Error". The instance's preprocess is wrapped rather than subclassed: Gradio writes a
    .pyi stub next to any module that subclasses a component."""
    image = gr.Image(**kwargs)
    preprocess = image.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Exception:
            name = getattr(payload, "orig_name", None) or "The file"
            raise gr.Error(f"{name} is not an image this demo can read (or is far too large). Upload a PNG, "
                           f"JPEG, BMP, TIFF or WebP image of at most {L.MAX_UPLOAD_PIXELS // 1_000_000} "
                           f"megapixels.", title="Not an image", print_exception=False) from None

    image.preprocess = checked
    return image


def user_errors(fn):
    """Turn the library's errors into messages in the page; anything unexpected is logged and reported too, so
    one bad request never takes the server down."""

    @functools.wraps(fn)
    def wrapper(*args):
        try:
            return fn(*args)
        except gr.Error:
            raise
        except RoclZooError as e:
            raise gr.Error(str(e), title="Cannot do that", print_exception=False) from None
        except Exception as e:  # a bug: say so without a traceback in the page
            traceback.print_exc()
            raise gr.Error(f"Internal error ({type(e).__name__}: {e}). The server keeps running; please report "
                           f"this.", title="Internal error") from None

    return wrapper


class PngStore:
    """Result images as PNG files named by their content, each written atomically.

    Handlers return these paths rather than arrays: Gradio writes arrays into its cache in place, so 20
    concurrent requests with the same result image (the same example) could serve a half-rewritten file ("Too
    little data for declared Content-Length"); it copies files with a rename, which is safe.
    """

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="rocl_zoo_demo_"))
        atexit.register(shutil.rmtree, self.folder, ignore_errors=True)

    def __call__(self, arr: np.ndarray) -> str:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="png")
        data = buf.getvalue()
        path = self.folder / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
        if not path.is_file():
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return str(path)


def banner_markdown(demo: L.Demo) -> str:
    lines = [f"- {m.describe()}" for m in demo.models.values()]
    return "\n".join(lines)


def build_app(demo: L.Demo) -> gr.Blocks:
    """The page. Each event's api_name is the endpoint gradio_client calls."""
    png = PngStore()

    @user_errors
    def predict(image):
        if image is None:  # the input was cleared
            return None, None, None, ""
        r = demo.predict(image)
        note = (f"True class: **{r['true']}** (a bundled Fashion-MNIST test image)." if r["true"] else
                "True class unknown: the attack tracks the attacked model's clean prediction.")
        return r[L.ROBUST], r[L.BASELINE], png(r["view"]), note

    @user_errors
    def attack(image, method, eps, steps, target):
        r = demo.attack(image, method, eps, steps, target)
        return (png(r["adversarial"]), png(r["perturbation"]), r["summary"], r["after"][L.ROBUST],
                r["after"][L.BASELINE])

    @user_errors
    def curve(image, method, eps, steps):
        import pandas as pd  # a Gradio dependency

        return pd.DataFrame(demo.curve(image, method, eps, steps))

    @user_errors
    def neighbours(image, adversarial):
        if image is None:
            return "", [], [], [], []
        r = demo.neighbours(image, adversarial)
        sims = [f"{L.ROLE_NAMES[role]} {v['similarity']:.2f}" for role, v in r.items() if v["similarity"] is not None]
        text = ("Cosine similarity of the clean and attacked image's features: " + ", ".join(sims) + "." if sims
                else "Run an attack to see the attacked image's neighbours.")
        return (text, r[L.ROBUST]["clean"], r[L.ROBUST]["attacked"], r[L.BASELINE]["clean"],
                r[L.BASELINE]["attacked"])

    def reset_attack():
        return None, None, "", None, None, None

    # delete_cache: Gradio's copies of uploads and results older than an hour go, checked every 30 minutes.
    with gr.Blocks(title="rocl-zoo: robust self-supervised encoders", delete_cache=(1800, 3600)) as app:
        gr.Markdown("# rocl-zoo demo: robust (RoCL) vs. standard encoder under attack\n"
                    "RoCL (NeurIPS 2020) learns an encoder without labels that adversarial perturbations barely "
                    "move. Pick an example or upload an image, then attack it.")
        for warning in demo.warnings:
            gr.Markdown(f"**Warning.** {warning}", elem_id="banner", elem_classes="warning")
        gr.Markdown(banner_markdown(demo), elem_id="models")

        with gr.Row():
            with gr.Column(scale=2):
                image = checked_image(type="filepath", image_mode=None, label="Image", height=260,
                                      sources=["upload", "clipboard"], elem_id="input-image",
                                      elem_classes="pixelated")
                gr.Examples(examples=[[str(p)] for p in demo.examples.gallery_examples()], inputs=[image],
                            label="Examples: Fashion-MNIST test images, scikit-image samples",
                            examples_per_page=16)
            with gr.Column(scale=5):
                note = gr.Markdown(elem_id="true-class")
                with gr.Row():
                    view = gr.Image(label="What the models see", format="png", height=240, interactive=False,
                                    elem_id="model-view", elem_classes="pixelated")
                    label_robust = gr.Label(num_top_classes=demo.topk, label=f"{L.ROLE_NAMES[L.ROBUST]}: clean",
                                            elem_id="pred-robust")
                    label_base = gr.Label(num_top_classes=demo.topk, label=f"{L.ROLE_NAMES[L.BASELINE]}: clean",
                                          elem_id="pred-baseline")

        gr.Markdown("## Attack")
        with gr.Row():
            method = gr.Dropdown(choices=[(label, key) for key, (label, _) in L.METHODS.items()], value="pgd_linf",
                                 label="Method", elem_id="method")
            eps = gr.Number(value=0.1, label=f"eps (l-inf <= {L.EPS_MAX['linf']:g}, l2 <= {L.EPS_MAX['l2']:g})",
                            elem_id="eps")
            steps = gr.Number(value=10, precision=0, label=f"steps (1-{L.STEPS_MAX}; FGSM: 1)", elem_id="steps")
            target = gr.Radio(choices=[(L.ROLE_NAMES[r], r) for r in (L.ROBUST, L.BASELINE)], value=L.ROBUST,
                              label="Attacked model (white-box; the other sees a transfer)", elem_id="target")
            run = gr.Button("Run attack", variant="primary", elem_id="run-attack")
        with gr.Row():
            adversarial = gr.Image(label="Adversarial image", type="filepath", image_mode=None, format="png",
                                   height=220, interactive=False,
                                   elem_id="adversarial", elem_classes="pixelated")
            perturbation = gr.Image(label="Perturbation (amplified; grey = unchanged)", format="png", height=220,
                                    interactive=False, elem_id="perturbation", elem_classes="pixelated")
            after_robust = gr.Label(num_top_classes=demo.topk, label=f"{L.ROLE_NAMES[L.ROBUST]}: attacked",
                                    elem_id="after-robust")
            after_base = gr.Label(num_top_classes=demo.topk, label=f"{L.ROLE_NAMES[L.BASELINE]}: attacked",
                                  elem_id="after-baseline")
        summary = gr.Markdown(elem_id="summary")
        plot = gr.LinePlot(x="eps", y="confidence", color="model", y_lim=[0, 1], height=300,
                           title="Confidence in the tracked class against eps (each model attacked white-box)",
                           x_title="eps", y_title="confidence", elem_id="curve")

        gr.Markdown("## Feature space: nearest bundled Fashion-MNIST examples (cosine similarity of features)")
        similarity = gr.Markdown(elem_id="similarity")
        galleries = []
        for role in (L.ROBUST, L.BASELINE):
            with gr.Row():
                galleries += [gr.Gallery(label=f"{L.ROLE_NAMES[role]}: {which} image's neighbours", columns=5,
                                         rows=1, height=150, object_fit="contain", allow_preview=False,
                                         elem_classes="pixelated", elem_id=f"nn-{role}-{which}")
                              for which in ("clean", "attacked")]

        # A new image clears the old attack (its results would describe another image), then predicts.
        attack_outputs = [adversarial, perturbation, summary, after_robust, after_base, plot]
        image.change(reset_attack, None, attack_outputs, api_name="reset_attack", api_visibility="undocumented") \
            .then(predict, image, [label_robust, label_base, view, note], api_name="predict") \
            .success(neighbours, [image, adversarial], [similarity, *galleries], api_name="neighbours")
        # The attack first (fast), then the neighbours and the slower eps sweep, each its own endpoint.
        run.click(attack, [image, method, eps, steps, target],
                  [adversarial, perturbation, summary, after_robust, after_base], api_name="attack") \
            .success(neighbours, [image, adversarial], [similarity, *galleries], api_name="neighbours_attacked",
                     api_visibility="undocumented") \
            .success(curve, [image, method, eps, steps], plot, api_name="robustness_curve")
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    return app


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, **kwargs):
    """Start the server (Gradio prints the local URL); kwargs go to `Blocks.launch`."""
    return app.launch(server_name=host, server_port=port, show_error=True, max_file_size=MAX_FILE_SIZE,
                      theme=THEME, css=CSS, footer_links=["api"],
                      allowed_paths=[str(L.ASSETS)], **kwargs)  # bundled examples, wherever the package lives


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python app.py", description="The rocl-zoo Gradio demo: robust vs. standard "
                                "predictions, attacks, confidence-vs-eps curves and feature-space neighbours.")
    p.add_argument("--model", default="cnn4_rocl.fmnist",
                   help="the robust (RoCL) model: zoo name, hf-hub:ORG/NAME[@REV] or folder (default: %(default)s)")
    p.add_argument("--baseline", default="cnn4_rocl.fmnist_simclr",
                   help="the standard, non-robust model of the same architecture (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; 0.0.0.0 exposes "
                   "the demo to your network)")
    p.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per request (default: %(default)s: one "
                   "image is latency-bound, and CONCURRENCY requests run at once)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    # Single-image attacks are tiny: on a busy 2-core CPU one thread is ~50x faster than two contending ones.
    torch.set_num_threads(max(1, args.threads))
    try:
        demo = L.build_demo(args.model, args.baseline)
    except RoclZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for warning in demo.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    launch(build_app(demo), args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
