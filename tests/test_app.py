"""The Gradio demo: its logic (app_logic), and every endpoint through gradio_client on a real server.

The server runs as `python app.py` in a subprocess on a free 127.0.0.1 port, with two small models this module
trains in about a second on the bundled examples (so the robust one classifies them correctly).
"""
from __future__ import annotations

import json
import re
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rocl_zoo
from rocl_zoo.zoo import ZooEntry

ROOT = Path(__file__).resolve().parents[1]
gradio_client = pytest.importorskip("gradio_client", reason="the demo needs the `demo` extra")
pytest.importorskip("gradio", reason="the demo needs the `demo` extra")

import app  # noqa: E402
import app_logic as L  # noqa: E402

# ------------------------------------------------------------------------------------------------ helpers


def make_models(folder: Path) -> tuple[Path, Path]:
    """Two cnn4_rocl folders: one fitted to the page's ten Fashion-MNIST examples (it stands in for the robust
    model and classifies them correctly), one untrained (the baseline). About a second of training."""
    ex = L.ExampleSet.load(samples_dir=folder / "samples")
    torch.manual_seed(0)
    trained = rocl_zoo.create_model("cnn4_rocl.fmnist")
    first = [ex.fashion[[e.label for e in ex.fashion].index(c)] for c in range(10)]  # one image per class
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(e.path), dtype=np.float32) / 255)[None] for e in first])
    y = torch.tensor([e.label for e in first])
    opt = torch.optim.Adam(trained.parameters(), lr=3e-3)
    trained.train()
    for _ in range(25):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(trained(x), y).backward()
        opt.step()
    # BN running statistics lag 25 steps behind; make them the batch's exactly, so eval mode agrees with training.
    for m in trained.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        trained(x)
    trained.eval()
    robust, baseline = folder / "robust", folder / "baseline"
    rocl_zoo.save_pretrained(trained, robust, dataset="fashion_mnist", recipe="test")
    rocl_zoo.save_pretrained(rocl_zoo.create_model("cnn4_rocl.fmnist"), baseline, dataset="fashion_mnist")
    return robust, baseline


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("demo_models"))


@pytest.fixture(scope="module")
def server(models):
    proc, url, _ = L.start_server(*models)
    yield url
    log = L.stop_server(proc)
    assert "Traceback" not in log, log  # every bad input was answered with a message, never a crash


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server, verbose=False)


@pytest.fixture(scope="module")
def demo(models):
    return L.build_demo(*map(str, models))


def boot(demo) -> str:
    """The bundled Ankle boot example (the first in the page's list)."""
    path = demo.examples.gallery_examples()[0]
    assert "ankle_boot" in path.name
    return str(path)


def confidences(label: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label["confidences"]}


def png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(path)
    return path


# ------------------------------------------------------------------------------------------------ logic


def test_check_attack_args_messages():
    assert L.check_attack_args("pgd_l2", "2.5", 10.0) == ("pgd_l2", 2.5, 10)
    for args, pattern in [(("pgd_linf", 0.9, 10), r"0 < eps <= 0\.5"), (("pgd_linf", -0.1, 10), "out of range"),
                          (("fgsm", float("nan"), 1), "out of range"), (("pgd_l2", 20, 10), r"<= 16"),
                          (("pgd_linf", "abc", 10), "must be a number"), (("pgd_linf", 0.1, 0), "1 to 100"),
                          (("pgd_linf", 0.1, 101), "1 to 100"), (("pgd_linf", 0.1, 2.5), "whole number"),
                          (("cw", 0.1, 10), "Unknown attack method")]:
        with pytest.raises(rocl_zoo.ConfigError, match=pattern):
            L.check_attack_args(*args)


def test_quantize_toward_stays_in_the_ball():
    x = L.quantize(torch.rand(4, 1, 28, 28))
    for norm, eps in (("linf", 8 / 255), ("l2", 1.0)):
        x_adv = rocl_zoo.attacks.random_init(x, eps, norm)
        q = L.quantize_toward(x, x_adv)
        assert torch.equal(q, L.quantize(q))  # on the 8-bit grid: a PNG holds it exactly
        assert q.min() >= 0 and q.max() <= 1
        d = (q - x).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert (size <= eps + 1e-3 / 255).all()
        assert ((q - x).abs() <= (x_adv - x).abs() + 1e-3 / 255).all()  # every change only shrinks
    # An exact-eps l-inf step survives float error instead of losing one grey level.
    assert torch.allclose(L.quantize_toward(x, (x + 8 / 255).clamp(0, 1)) - x, ((x + 8 / 255).clamp(0, 1) - x),
                          atol=1e-6)


def test_read_image_modes_and_refusals(tmp_path):
    rng = np.random.default_rng(0)
    ok = {"grey": png(tmp_path / "g.png", rng.integers(0, 255, (40, 30), dtype=np.uint8)),
          "rgba": png(tmp_path / "a.png", rng.integers(0, 255, (40, 30, 4), dtype=np.uint8)),
          "16bit": png(tmp_path / "h.png", rng.integers(0, 65535, (40, 30), dtype=np.uint16)),
          "big": png(tmp_path / "b.png", np.zeros((3000, 1200), np.uint8))}
    assert Image.open(ok["16bit"]).mode.startswith("I")
    for name, path in ok.items():
        img = L.read_image(path)
        assert max(img.size) <= L.WORK_SIDE, name
    (tmp_path / "notes.png").write_text("not an image at all")
    with pytest.raises(rocl_zoo.DataError, match="not an image"):
        L.read_image(tmp_path / "notes.png")
    with pytest.raises(rocl_zoo.DataError, match="megapixels"):
        L.read_image(png(tmp_path / "huge.png", np.zeros((4200, 4200), np.uint8)))
    with pytest.raises(rocl_zoo.DataError, match="No image"):
        L.read_image(None)


def test_demo_logic(demo):
    path = boot(demo)
    r = demo.predict(path)
    assert r["true"] == "Ankle boot" and next(iter(r[L.ROBUST])) == "Ankle boot"
    assert r["view"].shape == (28, 28) and r["view"].dtype == np.uint8
    for method in L.METHODS:
        a = demo.attack(path, method, 0.1, 3, L.BASELINE)
        assert a["linf"] <= 0.1 + 1e-6 and a["adversarial"].shape == (28, 28), method
        assert set(a["after"]) == {L.ROBUST, L.BASELINE} and "transfer" in a["summary"]
    rows = demo.curve(path, "fgsm", 0.2, 1)
    assert [r["eps"] for r in rows] == pytest.approx([f * 0.2 for f in L.CURVE_FACTORS] * 2)
    assert rows[0]["confidence"] > 0.5  # the fitted model is confident on the clean boot
    nn_clean = demo.neighbours(path)
    assert nn_clean[L.ROBUST]["clean"][0][1] == "1.00 Ankle boot"  # the image itself comes first
    assert nn_clean[L.ROBUST]["attacked"] == [] and nn_clean[L.ROBUST]["similarity"] is None


def test_instance_attack_moves_features(demo, tmp_path):
    path = boot(demo)
    a = demo.attack(path, "instance", 0.2, 10, L.ROBUST)
    adv = png(tmp_path / "adv.png", a["adversarial"])
    r = demo.neighbours(path, adv)
    assert r[L.ROBUST]["similarity"] < 0.999 and len(r[L.ROBUST]["attacked"]) == 5


def test_untrained_fallback_is_announced():
    entry = rocl_zoo.get_entry("cnn4_rocl.fmnist")
    m = L.load_demo_model("cnn4_rocl.fmnist", L.ROBUST)
    if entry.published:
        assert m.warning is None
    else:
        assert "UNTRAINED" in m.warning and "--model" in m.warning and "UNTRAINED" in m.describe()
    with pytest.raises(rocl_zoo.ModelNotFoundError):
        L.load_demo_model("./no/such/folder", L.ROBUST)


def measured(name, clean, pgd20, autoattack, eps=0.1, n_aa=200) -> ZooEntry:
    """A released Fashion-MNIST zoo entry measured as given (None: not measured)."""
    metrics = {"clean_acc": clean, "pgd20_acc": pgd20, "autoattack_acc": autoattack, "norm": "Linf", "eps": eps,
               "n_examples": 10000, "autoattack_n_examples": n_aa}
    return ZooEntry(name, "fashion_mnist", "recipe", f"{name}, described", sha256="0" * 64, metrics=metrics)


ENTRIES = [measured("a.std", 90, 0, 0), measured("a.at", 80, 70, 65),
           measured("a.best_pgd", 84, 76, 60),  # the best PGD-20, but AutoAttack breaks it further
           measured("a.l2", 80, 90, 90, eps=0.5),  # another threat model: not comparable
           measured("a.aa_only", 80, None, 66), measured("a.tie", 79, 71, 66)]  # a tie: PGD-20 decides


def test_default_model_is_the_most_robust_by_measured_accuracy():
    assert [p.key for p in L.by_robustness([L.zoo_profile(e) for e in ENTRIES])] == [
        "a.tie", "a.aa_only", "a.at", "a.best_pgd", "a.std", "a.l2"]
    assert L.default_sources(ENTRIES) == ("a.tie", "a.std")
    assert L.default_sources(ENTRIES[:1] + [measured("a.new", None, None, None)]) == (L.FALLBACK_MODEL,
                                                                                      L.FALLBACK_BASELINE)
    # The shipped registry: the page opens on its most robust entry, beside its least robust one.
    ranked = {p.key: p.robust.pct for p in map(L.zoo_profile, L.zoo_catalogue()) if p.robust}
    if len(ranked) >= 2:
        best, worst = L.default_sources()
        assert ranked[best] == max(ranked.values()) and ranked[worst] == min(ranked.values())


def test_zoo_table_is_one_readable_row_per_model_with_n():
    profiles = L.by_robustness([L.zoo_profile(e) for e in ENTRIES])
    table = L.zoo_table(profiles, "a.at", "a.std")
    lines = table.splitlines()
    assert "clean (n = 10,000)" in lines[0] and "PGD-20 (n = 10,000)" in lines[0] and "AutoAttack (n = 200)" in lines[0]
    assert len(lines) == 2 + len(ENTRIES)
    assert re.search(r"\| ▶ \| \*\*a.at\*\* \| a.at, described \| 80.0 % \| 70.0 % \| 65.0 % \|", table)
    assert re.search(r"\| ○ \| \*\*a.std\*\*", table) and "– |" in table  # not measured: a dash
    assert "attacked at linf eps 0.5" in table
    assert not re.search(r"results_|_acc|linf_0|:clean", table)  # no raw metric keys
    mixed = L.zoo_table([L.zoo_profile(measured("b.x", 80, 70, 65, n_aa=1000)), *profiles[:1]], "b.x", "b.x")
    assert "65.0 % (n = 1,000)" in mixed and "▶○" in mixed  # n in each cell when the rows differ
    details = L.zoo_details(profiles)
    assert "AutoAttack (n = 200)" in details and "| 65.0 % [58.2, 71.3] |" in details and "`recipe`" in details


def test_attack_in_words():
    names = {L.ROBUST: "RoCL+AT", L.BASELINE: "SimCLR"}
    before = {L.ROBUST: {"Trouser": 0.97, "Dress": 0.03}, L.BASELINE: {"Trouser": 0.99, "Bag": 0.01}}
    after = {L.ROBUST: {"Trouser": 0.93, "Dress": 0.07}, L.BASELINE: {"Bag": 0.71, "Trouser": 0.29}}
    assert L.attack_in_words("pgd_linf", 0.1, 20, names, L.ROBUST, before, after) == (
        "PGD-20, aimed at RoCL+AT, changed each pixel by at most 0.1 (on a 0–1 scale): RoCL+AT still says "
        "**Trouser** (93 %). SimCLR, shown the same image, now says **Bag** (71 %), not Trouser.")
    # The standard model attacked; the robust one sees a transfer, and is then attacked directly too.
    own = {L.ROBUST: {"Dress": 0.55, "Trouser": 0.45}}
    text = L.attack_in_words("pgd_l2", 1.5, 10, names, L.BASELINE, before, after, own)
    assert text.startswith("PGD-10 in l2, aimed at SimCLR, changed the image by at most 1.5 in l2 norm")
    assert text.endswith("SimCLR now says **Bag** (71 %), not Trouser. RoCL+AT, shown the same image, still says "
                         "**Trouser** (93 %); when attacked directly the same way, it now says **Dress** (55 %), "
                         "not Trouser.")
    assert L.attack_in_words("fgsm", 0.05, 1, names, L.ROBUST, before, before).startswith(
        "FGSM (one gradient step), aimed at RoCL+AT, changed each pixel by at most 0.05")


def test_the_model_under_test_can_be_switched(demo):
    path = boot(demo)
    with pytest.raises(rocl_zoo.ConfigError, match="Unknown model 'no.such'"):
        demo.predict(path, "no.such")
    assert demo.profiles()[0].key == demo.default  # the --model given on the command line leads the list
    others = [k for k in demo.choices if k != demo.default]
    if not others:
        pytest.skip("no released zoo weights in this tree: the page offers only --model")
    other = demo.choices[others[0]]
    r = demo.predict(path, other.source)
    assert r["names"] == {L.ROBUST: other.name, L.BASELINE: demo.baseline.name}
    assert re.search(rf"\| ▶○? \| \*\*{re.escape(other.name)}\*\* \|", demo.table(other.source))
    assert r[L.ROBUST] != demo.predict(path)[L.ROBUST] and r[L.BASELINE] == demo.predict(path)[L.BASELINE]
    a = demo.attack(path, "fgsm", 0.1, 1, L.ROBUST, other.source)
    assert a["words"].startswith(f"FGSM (one gradient step), aimed at {other.name},") and a["words"] in a["summary"]
    assert "its own attack" in a["summary"] and set(a["own"]) == {L.BASELINE}
    assert {row["model"] for row in demo.curve(path, "fgsm", 0.1, 1, other.source)} == {other.name,
                                                                                        demo.baseline.name}


@pytest.mark.slow
def test_the_flagship_can_be_the_model_under_test(models):
    """`python app.py --model resnet18_rocl.fmnist`: the page serves the trained ResNet-18 and attacks it."""
    demo = L.build_demo("resnet18_rocl.fmnist", str(models[1]))
    path = boot(demo)
    assert demo.default == "resnet18_rocl.fmnist"
    r = demo.predict(path)
    assert r["true"] == "Ankle boot" and max(r[L.ROBUST], key=r[L.ROBUST].get) == "Ankle boot"
    assert re.search(rf"\| ▶○? \| \*\*{re.escape(r['names'][L.ROBUST])}\*\* \|", demo.table())
    a = demo.attack(path, "fgsm", 0.1, 1, L.ROBUST)
    assert a["words"].startswith(f"FGSM (one gradient step), aimed at {r['names'][L.ROBUST]},")


def test_cli_mcp_without_the_extra_says_how_to_get_it(monkeypatch, capsys):
    for name in ("mcp", "mcp.server", "mcp.server.streamable_http_manager"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    assert app.main(["--mcp"]) == 2
    assert "pip install 'rocl-zoo[mcp]'" in capsys.readouterr().err


def test_cli_refuses_a_bad_model_folder(capsys):
    assert app.main(["--model", "./no/such/folder"]) == 2
    assert "No folder" in capsys.readouterr().err


def test_page_has_banner_bounded_queue_and_named_endpoints(demo):
    untrained = L.Demo(demo.models[L.ROBUST], L.DemoModel(L.BASELINE, "x", demo.models[L.BASELINE].model,
                                                          warning="weights missing: UNTRAINED"), demo.examples)
    blocks = app.build_app(untrained)
    banners = [b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "banner"]
    assert len(banners) == 1 and "UNTRAINED" in banners[0].value
    assert blocks._queue.max_size == app.QUEUE_SIZE
    assert not (ROOT / "app.pyi").exists()  # Gradio writes one beside modules that subclass a component
    names = {fn.api_name for fn in blocks.fns.values() if fn.api_name}
    assert {"predict", "attack", "robustness_curve", "neighbours"} <= names
    # Every event the page defines is named, so gradio_client can reach it (Gradio's own example loader aside).
    unnamed = [fn for fn in blocks.fns.values() if not fn.api_name and fn.name not in ("load_example", "<lambda>")]
    assert not unnamed, [fn.name for fn in unnamed]


# ------------------------------------------------------------------------------------------------ the server


def test_endpoints(client, demo):
    file = gradio_client.handle_file(boot(demo))
    rob, base, view, note = client.predict(file, api_name="/predict")
    assert rob["label"] == "Ankle boot" and confidences(rob)["Ankle boot"] > 0.5
    assert len(rob["confidences"]) == 5 and len(base["confidences"]) == 5
    assert "Ankle boot" in note
    view_px = np.asarray(Image.open(view))
    assert view_px.shape == (28, 28)

    adv, pert, summary, after_rob, after_base = client.predict(file, "pgd_linf", 0.1, 10, "robust",
                                                               api_name="/attack")
    adv_px = np.asarray(Image.open(adv)).astype(int)
    # The PNG the page shows is the adversarial image itself: inside the eps-ball around the model's view.
    assert adv_px.shape == (28, 28) and np.abs(adv_px - view_px).max() <= round(0.1 * 255)
    assert np.abs(adv_px - view_px).max() >= 20
    assert np.asarray(Image.open(pert)).shape == (28, 28)
    assert "PGD l-inf" in summary and "white-box" in summary and "transfer" in summary
    assert after_rob["label"] in L.ExampleSet.load().classes and len(after_base["confidences"]) == 5

    plot = client.predict(file, "pgd_linf", 0.1, 10, api_name="/robustness_curve")
    assert plot["columns"] == ["eps", "confidence", "model"] and len(plot["data"]) == 2 * len(L.CURVE_FACTORS)
    assert {row[2] for row in plot["data"]} == set(L.ROLE_NAMES.values())

    text, rob_clean, rob_adv, base_clean, base_adv = client.predict(file, gradio_client.handle_file(adv),
                                                                    api_name="/neighbours")
    assert "Cosine similarity" in text and len(rob_clean) == 5 and len(base_adv) == 5
    assert rob_clean[0]["caption"].endswith("Ankle boot")

    inst = client.predict(file, "instance", 0.1, 5, "baseline", api_name="/attack")
    assert "Instance-wise" in inst[2]


def test_endpoints_take_the_model_under_test(client, demo):
    file = gradio_client.handle_file(boot(demo))
    # Only the page's choices: anything else is a message (and no traceback in the server's log).
    _expect_message(client, (file, "no.such.model"), "/predict", "no.such.model", "not in the list of choices")
    _expect_message(client, (file, "cw", 0.1, 5, "robust"), "/attack", "'cw'|cw is not in the list")
    _expect_message(client, (file, "fgsm", 0.1, 1, "both"), "/attack", "both")
    others = [k for k in demo.choices if k != demo.default]
    if not others:
        pytest.skip("no released zoo weights in this tree: the page offers only --model")
    default = client.predict(file, api_name="/predict")
    chosen = client.predict(file, others[0], api_name="/predict")
    assert chosen[0] != default[0] and chosen[1] == default[1]
    summary = client.predict(file, "pgd_linf", 0.1, 5, "robust", others[0], api_name="/attack")[2]
    assert f"aimed at {demo.choices[others[0]].name}" in summary


def test_mcp_flag_serves_the_endpoints_as_tools(models):
    pytest.importorskip("mcp", reason="needs the mcp extra: pip install 'rocl-zoo[mcp]'")
    proc, url, _ = L.start_server(*models, extra_args=["--mcp"])
    try:
        with urllib.request.urlopen(url + "gradio_api/mcp/schema", timeout=60) as r:
            tools = {t["name"]: t for t in json.load(r)}
    finally:
        log = L.stop_server(proc)
    assert {"predict", "attack", "robustness_curve", "neighbours"} <= set(tools), log
    assert "model" in tools["attack"]["inputSchema"]["properties"]


def _expect_message(client, args, api_name, *patterns):
    with pytest.raises(Exception) as info:
        client.predict(*args, api_name=api_name)
    for p in patterns:
        assert re.search(p, str(info.value)), (p, str(info.value))


def test_bad_inputs_get_messages_and_the_server_keeps_serving(client, demo, tmp_path):
    handle = gradio_client.handle_file
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    _expect_message(client, (handle(str(text)),), "/predict", "not an image")
    _expect_message(client, (handle(str(text)), "fgsm", 0.1, 1, "robust"), "/attack", "not an image")
    huge = png(tmp_path / "huge.png", np.zeros((4200, 4200), np.uint8))  # 17.6 MP, compresses to 18 kB
    _expect_message(client, (handle(str(huge)),), "/predict", "megapixels")
    file = handle(boot(demo))
    _expect_message(client, (file, "pgd_linf", 0.8, 10, "robust"), "/attack", r"eps = 0\.8 is out of range")
    _expect_message(client, (file, "pgd_linf", 0.1, 1000, "robust"), "/attack", "steps", "1 to 100")
    _expect_message(client, (file, "pgd_l2", 50, 10), "/robustness_curve", "out of range")

    rng = np.random.default_rng(1)
    for name, arr in {"grey": rng.integers(0, 255, (300, 200), dtype=np.uint8),
                      "rgba": rng.integers(0, 255, (64, 64, 4), dtype=np.uint8),
                      "rgb": rng.integers(0, 255, (1500, 1500, 3), dtype=np.uint8),
                      "sixteen": rng.integers(0, 65535, (50, 60), dtype=np.uint16)}.items():
        path = png(tmp_path / f"{name}.png", arr)
        rob, base, _, note = client.predict(handle(str(path)), api_name="/predict")
        assert len(rob["confidences"]) == 5 and "unknown" in note, name
        adv = client.predict(handle(str(path)), "fgsm", 0.05, 1, "robust", api_name="/attack")
        assert np.asarray(Image.open(adv[0])).shape == (28, 28), name
    assert client.predict(file, api_name="/predict")[0]["label"] == "Ankle boot"


def test_twenty_concurrent_requests_are_all_answered(server, demo):
    """20 clients at once, each running an attack: the bounded queue holds them and all get their answer."""
    file = boot(demo)

    def one(i):
        c = gradio_client.Client(server, verbose=False)
        if i % 2:
            return c.predict(gradio_client.handle_file(file), api_name="/predict")[0]["label"]
        return c.predict(gradio_client.handle_file(file), "pgd_linf", 0.05, 5, "robust", api_name="/attack")[2]

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert len(results) == 20
    assert all(r == "Ankle boot" for r in results[1::2])
    assert all("PGD l-inf" in r for r in results[0::2])
