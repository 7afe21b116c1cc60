"""The rocl-zoo demo: a robust classifier from the zoo and a standard one side by side, under attack.

    python app.py [--model SOURCE] [--baseline SOURCE] [--host 127.0.0.1] [--port 7860] [--mcp]

The page lists the zoo's Fashion-MNIST models with their measured accuracy (from the zoo's registry) and lets the
visitor pick the model under test; it opens on the most robust one. SOURCE is a zoo name, `hf-hub:ORG/NAME[@REV]`
or a model folder (see `rocl_zoo.load`). The zoo's models are embedded, so no network is needed; until they are
trained, the app runs the untrained architectures and says so in a banner. Every event has an `api_name`, so
`gradio_client` can call it (and, with --mcp, an MCP client as a tool):

    from gradio_client import Client, handle_file
    c = Client("http://127.0.0.1:7860/")
    c.predict(handle_file("boot.png"), api_name="/predict")
    c.predict(handle_file("boot.png"), "pgd_linf", 0.1, 20, "robust", "cnn4_rocl.fmnist", api_name="/attack")

The computations live in app_logic.py (no Gradio there); this file is the page and the server.
"""
from __future__ import annotations

import argparse
import atexit
import functools
import hashlib
import importlib
import io
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from types import SimpleNamespace

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
#models table { margin: 0; }  /* the zoo's table: compact, so the examples stay in the first screen */
#models th, #models td, #model-details th, #model-details td { padding: 3px 10px; }
#summary p:first-of-type { font-size: 1.15em; }  /* the plain-words verdict, above its numbers */
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


def checked_choice(component):
    """A Dropdown or Radio whose refusal of a value outside its choices is a message for the caller, without the
    traceback Gradio logs for it (API and MCP callers can send anything)."""
    preprocess = component.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except gr.Error as e:
            raise gr.Error(getattr(e, "message", str(e)), title="Not a choice", print_exception=False) from None

    component.preprocess = checked
    return component


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


def make_handlers(demo: L.Demo) -> SimpleNamespace:
    """The page's event handlers. Their names and docstrings (Args) describe them as MCP tools with --mcp."""
    png = PngStore()
    baseline = demo.baseline.name

    @user_errors
    def select_model(model):
        """The page's parts that name the model under test."""
        name = demo.pair(model)[L.ROBUST].name
        return (demo.table(model), gr.Label(label=f"{name}: clean"), gr.Label(label=f"{name}: attacked"),
                gr.Radio(choices=target_choices(name, baseline)))

    def reset_attack():
        return None, None, "", None, None, None

    return SimpleNamespace(**vars(image_handlers(demo, png)), **vars(attack_handlers(demo, png)),
                           select_model=select_model, reset_attack=reset_attack)


def image_handlers(demo: L.Demo, png: PngStore) -> SimpleNamespace:
    """What the page says of an image as it is: both models' predictions, its neighbours in feature space."""

    @user_errors
    def predict(image, model):
        """Classify an image with the model under test and the standard model: each one's top 5 classes.

        Args:
            image: an image file; Fashion-MNIST-like images (a garment, centred, on black) suit the models
            model: the model under test, a zoo entry of the page's list (the most robust one by default)
        """
        if image is None:  # the input was cleared
            return None, None, None, ""
        r = demo.predict(image, model)
        note = (f"True class: **{r['true']}** (a bundled Fashion-MNIST test image)." if r["true"] else
                "True class unknown: the attack tracks the attacked model's clean prediction.")
        return r[L.ROBUST], r[L.BASELINE], png(r["view"]), note

    @user_errors
    def neighbours(image, adversarial, model):
        """The bundled Fashion-MNIST images nearest to an image (and to its adversarial version) in each model's
        feature space.

        Args:
            image: an image file
            adversarial: its adversarial version (an attack's first output), or none
            model: the model under test, a zoo entry of the page's list
        """
        if image is None:
            return "", [], [], [], []
        r = demo.neighbours(image, adversarial, model=model)
        sims = [f"{v['name']} {v['similarity']:.2f}" for v in r.values() if v["similarity"] is not None]
        text = ("Cosine similarity of the clean and attacked image's features: " + ", ".join(sims) + "." if sims
                else "Run an attack to see the attacked image's neighbours.")
        return (text, r[L.ROBUST]["clean"], r[L.ROBUST]["attacked"], r[L.BASELINE]["clean"],
                r[L.BASELINE]["attacked"])

    return SimpleNamespace(predict=predict, neighbours=neighbours)


def attack_handlers(demo: L.Demo, png: PngStore) -> SimpleNamespace:
    """Attacking an image: one attack and what it changed, or the confidence curve over budgets."""

    @user_errors
    def attack(image, method, eps, steps, target, model):
        """Attack an image (white-box on one model; the other sees the same image) and say what changed.

        Args:
            image: an image file
            method: fgsm, pgd_linf, pgd_l2 or instance (RoCL's label-free attack on the encoder)
            eps: the budget on [0, 1] pixels: at most 0.5 for l-inf, 16 for l2
            steps: attack iterations, 1 to 100
            target: the model attacked: robust (the model under test) or baseline (the standard model)
            model: the model under test, a zoo entry of the page's list
        """
        r = demo.attack(image, method, eps, steps, target, model)
        return (png(r["adversarial"]), png(r["perturbation"]), r["summary"], r["after"][L.ROBUST],
                r["after"][L.BASELINE])

    @user_errors
    def robustness_curve(image, method, eps, steps, model):
        """Confidence in the image's class against eps, each model attacked white-box, from 0 to twice eps.

        Args:
            image: an image file
            method: fgsm, pgd_linf, pgd_l2 or instance
            eps: the largest budget is twice this
            steps: attack iterations, 1 to 100
            model: the model under test, a zoo entry of the page's list
        """
        import pandas as pd  # a Gradio dependency

        return pd.DataFrame(demo.curve(image, method, eps, steps, model))

    return SimpleNamespace(attack=attack, robustness_curve=robustness_curve)


def header(demo: L.Demo) -> tuple[gr.Markdown, gr.Dropdown]:
    """The page's top: what the demo shows, warnings, the zoo's table (one row per model) with details on demand,
    and the choice of the model under test. Returns the table and the choice, which events update and read."""
    gr.Markdown("# rocl-zoo demo: robust vs. standard classifiers under attack\n"
                "An adversarial attack changes an image too little for you to notice, yet a standard "
                "classifier's answer flips. Robust training (here RoCL, NeurIPS 2020, and adversarial "
                "training) makes the answer hold. Pick an example or upload an image, then run the attack.")
    for warning in demo.warnings:
        gr.Markdown(f"**Warning.** {warning}", elem_id="banner", elem_classes="warning")
    table = gr.Markdown(demo.table(), elem_id="models")
    with gr.Row(equal_height=True):
        choices = [(demo.choices[p.key].name, p.key) for p in demo.profiles() if p.key in demo.choices]
        model = checked_choice(gr.Dropdown(choices=choices, value=demo.default, label="Model under test",
                                           elem_id="model", scale=1))
        gr.Markdown(L.zoo_caption(), elem_id="models-caption", scale=3)
    with gr.Accordion("Details: 95 % intervals, how each model was made, where the numbers come from",
                      open=False, elem_id="model-details"):
        gr.Markdown(L.zoo_details(demo.profiles()))
    return table, model


def build_app(demo: L.Demo) -> gr.Blocks:
    """The page. Each event's api_name is the endpoint gradio_client calls, and an MCP tool with --mcp."""
    # delete_cache: Gradio's copies of uploads and results older than an hour go, checked every 30 minutes.
    with gr.Blocks(title="rocl-zoo: robust self-supervised encoders", delete_cache=(1800, 3600)) as app:
        table, model = header(demo)
        ui = SimpleNamespace(table=table, model=model, **vars(input_panel(demo)), **vars(attack_panel(demo)),
                             **vars(feature_panel(demo)))
        wire_events(make_handlers(demo), ui)
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    return app


def input_panel(demo: L.Demo) -> SimpleNamespace:
    """The image to classify, with examples, what the models see and each one's clean prediction."""
    name, baseline = demo.models[L.ROBUST].name, demo.baseline.name
    with gr.Row():
        with gr.Column(scale=2):
            image = checked_image(type="filepath", image_mode=None, label="Image", height=260,
                                  sources=["upload", "clipboard"], elem_id="input-image", elem_classes="pixelated")
            gr.Examples(examples=[[str(p)] for p in demo.examples.gallery_examples()], inputs=[image],
                        label="Examples: Fashion-MNIST test images, scikit-image samples", examples_per_page=16)
        with gr.Column(scale=5):
            note = gr.Markdown(elem_id="true-class")
            with gr.Row():
                view = gr.Image(label="What the models see", format="png", height=240, interactive=False,
                                elem_id="model-view", elem_classes="pixelated")
                label_robust = gr.Label(num_top_classes=demo.topk, label=f"{name}: clean", elem_id="pred-robust")
                label_base = gr.Label(num_top_classes=demo.topk, label=f"{baseline}: clean", elem_id="pred-baseline")
    return SimpleNamespace(image=image, note=note, view=view, label_robust=label_robust, label_base=label_base)


def attack_panel(demo: L.Demo) -> SimpleNamespace:
    """The attack's settings, its results on both models and the eps sweep's plot."""
    name, baseline = demo.models[L.ROBUST].name, demo.baseline.name
    gr.Markdown("## Attack")
    with gr.Row():
        method = checked_choice(gr.Dropdown(choices=[(label, key) for key, (label, _) in L.METHODS.items()],
                                            value="pgd_linf", label="Method", elem_id="method"))
        eps = gr.Number(value=L.DEMO_EPS, elem_id="eps",
                        label=f"eps (l-inf <= {L.EPS_MAX['linf']:g}, l2 <= {L.EPS_MAX['l2']:g})")
        steps = gr.Number(value=L.DEMO_STEPS, precision=0, label=f"steps (1-{L.STEPS_MAX}; FGSM: 1)", elem_id="steps")
        target = checked_choice(gr.Radio(choices=target_choices(name, baseline), value=L.ROBUST, elem_id="target",
                                         label="Attacked model (white-box; the other sees the same image, a "
                                               "transfer)"))
        run = gr.Button("Run attack", variant="primary", elem_id="run-attack")
    summary = gr.Markdown(elem_id="summary")
    with gr.Row():
        adversarial = gr.Image(label="Adversarial image", type="filepath", image_mode=None, format="png", height=220,
                               interactive=False, elem_id="adversarial", elem_classes="pixelated")
        perturbation = gr.Image(label="Perturbation (amplified; grey = unchanged)", format="png", height=220,
                                interactive=False, elem_id="perturbation", elem_classes="pixelated")
        after_robust = gr.Label(num_top_classes=demo.topk, label=f"{name}: attacked", elem_id="after-robust")
        after_base = gr.Label(num_top_classes=demo.topk, label=f"{baseline}: attacked", elem_id="after-baseline")
    plot = gr.LinePlot(x="eps", y="confidence", color="model", y_lim=[0, 1], height=300,
                       title="Confidence in the tracked class against eps (each model attacked white-box)",
                       x_title="eps", y_title="confidence", elem_id="curve")
    return SimpleNamespace(method=method, eps=eps, steps=steps, target=target, run=run, summary=summary,
                           adversarial=adversarial, perturbation=perturbation, after_robust=after_robust,
                           after_base=after_base, plot=plot)


def feature_panel(demo: L.Demo) -> SimpleNamespace:
    """Each model's nearest bundled examples to the clean and the attacked image."""
    gr.Markdown("## Feature space: nearest bundled Fashion-MNIST examples (cosine similarity of features)")
    similarity = gr.Markdown(elem_id="similarity")
    galleries = []
    for role, title in ((L.ROBUST, "Model under test"), (L.BASELINE, demo.baseline.name)):
        with gr.Row():
            galleries += [gr.Gallery(label=f"{title}: {which} image's neighbours", columns=5, rows=1, height=150,
                                     object_fit="contain", allow_preview=False, elem_classes="pixelated",
                                     elem_id=f"nn-{role}-{which}")
                          for which in ("clean", "attacked")]
    return SimpleNamespace(similarity=similarity, galleries=galleries)


def wire_events(h: SimpleNamespace, ui: SimpleNamespace) -> None:
    """Connect the handlers to the page's components."""
    # A new image (or model) clears the old attack (its results would describe another), then predicts.
    attack_outputs = [ui.adversarial, ui.perturbation, ui.summary, ui.after_robust, ui.after_base, ui.plot]
    predict_io = ([ui.image, ui.model], [ui.label_robust, ui.label_base, ui.view, ui.note])
    neighbours_io = ([ui.image, ui.adversarial, ui.model], [ui.similarity, *ui.galleries])
    ui.image.change(h.reset_attack, None, attack_outputs, api_name="reset_attack", api_visibility="undocumented") \
        .then(h.predict, *predict_io, api_name="predict") \
        .success(h.neighbours, *neighbours_io, api_name="neighbours")
    ui.model.change(h.select_model, ui.model, [ui.table, ui.label_robust, ui.after_robust, ui.target],
                    api_name="select_model", api_visibility="undocumented") \
        .success(h.reset_attack, None, attack_outputs, api_name="reset_attack_model", api_visibility="undocumented") \
        .then(h.predict, *predict_io, api_name="predict_model", api_visibility="undocumented") \
        .success(h.neighbours, *neighbours_io, api_name="neighbours_model", api_visibility="undocumented")
    # The attack first (fast), then the neighbours and the slower eps sweep, each its own endpoint.
    ui.run.click(h.attack, [ui.image, ui.method, ui.eps, ui.steps, ui.target, ui.model],
                 [ui.adversarial, ui.perturbation, ui.summary, ui.after_robust, ui.after_base], api_name="attack") \
        .success(h.neighbours, *neighbours_io, api_name="neighbours_attacked", api_visibility="undocumented") \
        .success(h.robustness_curve, [ui.image, ui.method, ui.eps, ui.steps, ui.model], ui.plot,
                 api_name="robustness_curve")


def target_choices(name: str, baseline: str) -> list[tuple[str, str]]:
    return [(f"{name} (under test)", L.ROBUST), (f"{baseline} (standard)", L.BASELINE)]


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, **kwargs):
    """Start the server (Gradio prints the local URL); kwargs go to `Blocks.launch`."""
    return app.launch(server_name=host, server_port=port, show_error=True, max_file_size=MAX_FILE_SIZE,
                      theme=THEME, css=CSS, footer_links=["api"],
                      allowed_paths=[str(L.ASSETS)], **kwargs)  # bundled examples, wherever the package lives


def parse_args(argv=None) -> argparse.Namespace:
    model, baseline = L.default_sources()
    p = argparse.ArgumentParser(prog="python app.py", description="The rocl-zoo Gradio demo: a robust and a standard "
                                "classifier side by side under attack: predictions, attacks, confidence-vs-eps "
                                "curves and feature-space neighbours. The page lists the zoo's Fashion-MNIST models "
                                "and lets you pick the one under test.")
    p.add_argument("--model", help=f"the model under test when the page opens: zoo name, hf-hub:ORG/NAME[@REV] or "
                   f"folder (default: the zoo's most robust by its measured accuracy, now {model})")
    p.add_argument("--baseline", help=f"the standard model beside it (default: the zoo's least robust, now "
                   f"{baseline})")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; 0.0.0.0 exposes "
                   "the demo to your network)")
    p.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per request (default: %(default)s: one "
                   "image is latency-bound, and CONCURRENCY requests run at once)")
    p.add_argument("--mcp", action="store_true", help="also serve the page's endpoints as MCP tools, at "
                   "/gradio_api/mcp/ (needs the mcp extra: pip install 'rocl-zoo[mcp]')")
    return p.parse_args(argv)


def mcp_missing() -> str | None:
    """Why --mcp cannot work here, or None: Gradio's MCP server needs the `mcp` package."""
    try:
        importlib.import_module("mcp.server.streamable_http_manager")  # what Gradio's MCP server uses
    except ImportError as e:
        return (f"--mcp needs the MCP extra ({e}): pip install 'rocl-zoo[mcp]' (or pip install 'gradio[mcp]'), "
                f"or run without --mcp.")
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.mcp and (why := mcp_missing()):  # before loading models: fail in a second, not after the start-up
        print(f"error: {why}", file=sys.stderr)
        return 2
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
    print(f"model under test: {demo.models[L.ROBUST].describe()}\nstandard model: {demo.baseline.describe()}")
    app = build_app(demo)
    launch(app, args.host, args.port, mcp_server=args.mcp, prevent_thread_lock=True)
    if args.mcp and not app.mcp_server:  # Gradio printed why and serves the page alone: --mcp promised more
        app.close()
        print("error: the MCP server did not start (see above).", file=sys.stderr)
        return 2
    app.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
