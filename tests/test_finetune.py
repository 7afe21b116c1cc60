"""rocl_zoo.finetune: the four modes end to end on tiny data, frozen encoders, attacks that ran, exact resume,
channel and size adaptation, and errors that lose nothing already written.

Tiny on purpose (2 shared CPU cores): 8x8 digits (the model is told image_size=8, so no resize cost), 100-odd
training images, 1-2 epochs, PGD with 2 steps.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import rocl_zoo
from rocl_zoo import adapt
from rocl_zoo import finetune as ft
from rocl_zoo import finetune_modes as modes
from rocl_zoo.errors import ConfigError, DataError, IntegrityError
from rocl_zoo.results import SCHEMA

TINY = dict(image_size=8, epochs=1, batch_size=32, steps=2, subset=120, val_examples=20, eval_examples=40,
            progress=False, device="cpu")


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A small grey 28x28 encoder (random init) saved in the Hub layout, as a zoo encoder would be."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("enc") / "cnn4_enc"
    rocl_zoo.save_pretrained(rocl_zoo.create_model("cnn4_rocl", num_classes=0), folder, dataset="fashion_mnist")
    return folder


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _encoder_state(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


@pytest.fixture(scope="module")
def runs(encoder_dir, tmp_path_factory):
    """Each mode once, recording every training step's adversarial batch and counting PGD calls."""
    from rocl_zoo import attacks, steps

    out, seen = {}, {}
    mp = pytest.MonkeyPatch()
    for mode in ft.MODES:
        calls, x_adv = [], []

        def counting_pgd(model, x, y, eps, real=attacks.pgd, calls=calls, **kw):
            calls.append((len(x), kw.get("steps"), eps))
            return real(model, x, y, eps, **kw)

        def recording(step, x_adv=x_adv):
            def wrapped(*a, **kw):
                o = step(*a, **kw)
                x_adv.append(None if o.x_adv is None else o.x_adv.detach().clone())
                return o
            return wrapped

        mp.setattr(attacks, "pgd", counting_pgd)
        mp.setattr(steps, "pgd", counting_pgd)
        for name in ("slf_head_step", "alf_head_step", "pgd_at_step", "trades_step"):
            mp.setattr(steps, name, recording(getattr(steps, name)))
        try:
            folder = tmp_path_factory.mktemp("run") / mode
            out[mode] = ft.finetune(str(encoder_dir), "digits", mode=mode, out=folder, **TINY)
        finally:
            mp.undo()
        seen[mode] = dict(calls=calls, x_adv=x_adv)
    return out, seen


@pytest.mark.parametrize("mode", list(ft.MODES))
def test_mode_end_to_end(runs, encoder_dir, mode):
    import timm

    run = runs[0][mode]
    out = run.out
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "results.json", "classifier/model.safetensors",
                 "classifier/config.json", "classifier/README.md"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == SCHEMA and results["protocol"] == f"finetune-{mode}"
    assert results["dataset"] == "digits" and results["n_examples"] == 40 and results["eps"] == pytest.approx(0.1)
    assert results["precision"] == "fp32" and isinstance(results["cpu_native_bf16"], bool)  # evaluation: fp32
    assert 0 <= results["pgd_acc"] <= results["clean_acc"] <= 100
    # which encoder it started from and which classifier it measured (results.of_shipped_weights)
    from rocl_zoo.eval_progress import encoder_digest, weights_digest
    assert results["start_encoder_sha256"] == encoder_digest(rocl_zoo.load(encoder_dir)) is not None
    assert results["weights_sha256"] == weights_digest(rocl_zoo.load(out / "classifier"))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1] and metrics == run.metrics
    config = json.loads((out / "config.json").read_text())
    assert config["mode"] == mode and config["num_classes"] == 10 and config["input_size"] == [1, 8, 8]
    assert config["n_train"] + config["n_val"] == 120 and config["n_val"] == 12  # 10 % held out
    # Loadable three ways, the same function everywhere.
    clf = rocl_zoo.load(out / "classifier")
    via_timm = timm.create_model(f"local-dir:{out / 'classifier'}", pretrained=True).eval()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        ref = run.model.eval()(x)
        assert torch.equal(clf(x), ref) and torch.allclose(via_timm(x), ref)
    assert clf.num_classes == 10 and list(clf.pretrained_cfg["label_names"]) == [str(i) for i in range(10)]
    card = (out / "classifier" / "README.md").read_text()
    assert mode in card and "digits" in card and "Clean" in card
    # one unit in the results file and the card: percent (the validation's fractions of metrics.jsonl too)
    pgd = results["attacks"]["pgd20"]["acc"]
    row = next(line for line in card.splitlines() if line.startswith("| pgd20 |"))
    assert round(pgd, 2) == results["pgd_acc"] and row.endswith(f"| {pgd:.2f} |")
    assert f"--mode {mode}" in card and "Protocol: finetune-" + mode in card  # one card writer: rocl_zoo.model_card
    assert f"validation: clean {100 * metrics[-1]['val_clean_acc']:.2f} %" in card
    assert clf.pretrained_cfg["rocl_zoo"]["finetune"]["mode"] == mode
    # Linear modes: the encoder (weights and BN statistics) is bit-identical; full fine-tuning changes it.
    enc = _encoder_state(rocl_zoo.load(encoder_dir))
    trained = _encoder_state(clf)
    identical = all(torch.equal(enc[k], trained[k]) for k in enc)
    assert identical == (mode in modes.LINEAR_MODES)


@pytest.mark.parametrize("mode", ["robust-linear", "at", "trades"])
def test_adversarial_modes_train_on_attacks(runs, mode):
    run, seen = runs[0][mode], runs[1][mode]
    n_train, eps = run.config["n_train"], run.config["eps"]
    n_batches = -(-n_train // 32)
    m = run.metrics[0]
    assert m["train_examples"] == n_train and 0 < m["adv_size_mean"] <= m["adv_size_max"] <= eps + 1e-6
    assert len(seen["x_adv"]) == n_batches and all(xa is not None for xa in seen["x_adv"])
    train_calls = [c for c in seen["calls"] if c[1] == 2]  # PGD with the training steps (the eval's is PGD-20)
    if mode == "trades":
        assert len(train_calls) == 1  # only the validation's PGD: TRADES trains on its own KL attack
    else:
        assert len(train_calls) == n_batches + 1  # every training batch, plus the validation split
    assert "val_robust_acc" in m


def test_linear_mode_has_no_attack_in_training(runs):
    seen = runs[1]["linear"]
    assert all(xa is None for xa in seen["x_adv"])
    assert runs[0]["linear"].metrics[0]["train_on"] == "clean features"


def test_a_run_resumes_only_from_the_encoder_it_started_from(tmp_path):
    enc = tmp_path / "enc"  # the same name holds other weights later, as when a zoo entry is released anew
    torch.manual_seed(1)
    rocl_zoo.save_pretrained(rocl_zoo.create_model("cnn4_rocl", num_classes=0), enc, dataset="fashion_mnist")
    kw = dict(TINY, epochs=2, subset=100, mode="at", out=tmp_path / "cut")
    with pytest.raises(ft.FinetuneInterrupted):
        ft.finetune(str(enc), "digits", max_steps=2, **kw)
    rocl_zoo.save_pretrained(rocl_zoo.create_model("cnn4_rocl", num_classes=0), enc, dataset="fashion_mnist")
    with pytest.raises(ConfigError, match="start_encoder_sha256"):
        ft.finetune(str(enc), "digits", resume=True, **kw)


def test_resume_is_exact(encoder_dir, tmp_path, monkeypatch):
    from rocl_zoo import steps

    kw = dict(TINY, epochs=2, subset=100)  # 90 training images: 3 steps an epoch
    straight = ft.finetune(str(encoder_dir), "digits", mode="at", out=tmp_path / "straight", **kw)
    with pytest.raises(ft.FinetuneInterrupted, match="--resume"):  # stopped inside the second epoch
        ft.finetune(str(encoder_dir), "digits", mode="at", out=tmp_path / "cut", max_steps=4, **kw)
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 4 and len(ck["epochs"]) == 1 and not (tmp_path / "cut" / "results.json").exists()
    with pytest.raises(ConfigError, match="already holds"):
        ft.finetune(str(encoder_dir), "digits", mode="at", out=tmp_path / "cut", **kw)
    with pytest.raises(ConfigError, match="lr"):
        ft.finetune(str(encoder_dir), "digits", mode="at", out=tmp_path / "cut", resume=True, **dict(kw, lr=0.05))
    resumed = ft.finetune(str(encoder_dir), "digits", mode="at", out=tmp_path / "cut", resume=True, **kw)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda ms: [{k: v for k, v in m.items() if not k.endswith("time_s")} for m in ms]  # noqa: E731
    assert strip(straight.metrics) == strip(resumed.metrics)
    assert straight.results["pgd_acc"] == resumed.results["pgd_acc"]

    # A finished run resumes to its results without training again.
    def boom(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(steps, "pgd_at_step", boom)
    again = ft.finetune(str(encoder_dir), "digits", mode="at", out=tmp_path / "cut", resume=True, **kw)
    assert again.results["clean_acc"] == resumed.results["clean_acc"]
    old = json.loads((tmp_path / "cut" / "results.json").read_text())  # a finished run of schema 1 comes back
    old.update(schema="rocl_zoo.eval/1", attacks={k: dict(a, acc=a["acc"] / 100) for k, a in old["attacks"].items()})
    (tmp_path / "cut" / "results.json").write_text(json.dumps(old))
    again = ft.finetune(str(encoder_dir), "digits", mode="at", out=tmp_path / "cut", resume=True, **kw)
    assert again.results["schema"] == SCHEMA and again.results["attacks"]["pgd20"]["acc"] == pytest.approx(
        resumed.results["attacks"]["pgd20"]["acc"])  # in percent
    # ... and AutoAttack on a subset is added to a finished run, still without training (the README example)
    with_aa = ft.finetune(str(encoder_dir), "digits", mode="at", out=tmp_path / "cut", resume=True, autoattack=True,
                          autoattack_examples=6, **kw)
    r = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert r["autoattack_subset"]["n_examples"] == 6 and r["n_examples"] == 40 and r["autoattack_acc"] is not None
    assert (r["clean_acc"], r["pgd_acc"]) == (resumed.results["clean_acc"], resumed.results["pgd_acc"])
    assert with_aa.results["autoattack_acc"] == r["autoattack_acc"]
    aa_row = next(line for line in (tmp_path / "cut" / "classifier" / "README.md").read_text().splitlines()
                  if line.startswith("| autoattack |"))
    assert "n_examples=6" in aa_row and aa_row.endswith(f"| {r['autoattack_acc']:.2f} |")


def test_corrupt_checkpoint_is_a_clear_error(encoder_dir, tmp_path):
    kw = dict(TINY, epochs=2, subset=60, val_examples=6, eval_examples=10)
    with pytest.raises(ft.FinetuneInterrupted):
        ft.finetune(str(encoder_dir), "digits", mode="linear", out=tmp_path / "r", max_steps=1, **kw)
    path = tmp_path / "r" / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:100])
    before = _snapshot(tmp_path / "r")
    with pytest.raises(IntegrityError, match="corrupt"):
        ft.finetune(str(encoder_dir), "digits", mode="linear", out=tmp_path / "r", resume=True, **kw)
    after = _snapshot(tmp_path / "r")
    assert after == before


def _imagefolder(root, classes=("cat", "dog"), n=8, size=(10, 12), bad=None):
    rng = np.random.default_rng(0)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = (rng.random((size[1], size[0], 3)) * 100 + 120 * ci).astype(np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    if bad:
        (root / classes[0] / bad).write_bytes(b"not an image")
    return root


def test_errors_lose_nothing(runs, encoder_dir, tmp_path):
    out = runs[0]["linear"].out
    before = _snapshot(out)
    with pytest.raises(ConfigError, match="--resume"):
        ft.finetune(str(encoder_dir), "digits", mode="linear", out=out, **TINY)
    with pytest.raises(DataError, match="unknown dataset"):
        ft.finetune(str(encoder_dir), "digitz", mode="linear", out=out, overwrite=True, **TINY)
    with pytest.raises(DataError, match="not a folder"):
        ft.finetune(str(encoder_dir), f"imagefolder:{tmp_path / 'missing'}", mode="linear", out=out, overwrite=True,
                    **TINY)
    one = _imagefolder(tmp_path / "one", classes=("only",))
    with pytest.raises(DataError, match="at least 2"):
        ft.finetune(str(encoder_dir), f"imagefolder:{one}", mode="linear", out=out, overwrite=True, **TINY)
    broken = _imagefolder(tmp_path / "broken", bad="broken.png")
    with pytest.raises(DataError, match="broken.png"):
        ft.finetune(str(encoder_dir), f"imagefolder:{broken}", mode="linear", out=out, overwrite=True, **TINY)
    with pytest.raises(ConfigError, match="mode"):
        ft.finetune(str(encoder_dir), "digits", mode="fgsm", out=out, overwrite=True, **TINY)
    with pytest.raises(rocl_zoo.ModelNotFoundError):
        ft.finetune(str(tmp_path / "no-such-model"), "digits", mode="linear", out=out, overwrite=True, **TINY)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is a file; name a folder"):  # refused before training, not after
        ft.finetune(str(encoder_dir), "digits", mode="linear", out=tmp_path / "notes.txt", **TINY)
    assert _snapshot(out) == before and (tmp_path / "notes.txt").read_text() == "mine"


def test_adapt_in_chans_keeps_the_function():
    torch.manual_seed(0)
    grey = rocl_zoo.create_model("cnn4_rocl", num_classes=0, in_chans=1, mean=0.3, std=0.4).eval()
    rgb = adapt.adapt_in_chans(__import__("copy").deepcopy(grey), 3).eval()
    assert rgb.in_chans == 3 and rgb.normalize.mean.shape == (1, 3, 1, 1)
    x = torch.rand(2, 1, 12, 12)
    with torch.no_grad():
        assert torch.allclose(rgb(x.expand(-1, 3, -1, -1)), grey(x), atol=1e-5)
    colour = rocl_zoo.create_model("cnn4_rocl", num_classes=0, in_chans=3, mean=(0.5, 0.5, 0.5),
                                   std=(0.2, 0.2, 0.2)).eval()
    back = adapt.adapt_in_chans(__import__("copy").deepcopy(colour), 1).eval()
    with torch.no_grad():
        assert torch.allclose(back(x), colour(x.expand(-1, 3, -1, -1)), atol=1e-5)


def test_channel_and_size_adaptation_end_to_end(encoder_dir, tmp_path):
    """RGB 10x12 images into a grey 28x28 encoder: the data are converted (default), or the model is (in_chans)."""
    folder = _imagefolder(tmp_path / "pets", n=10)
    data = adapt.load_data(f"imagefolder:{folder}", in_chans=1, size=(28, 28), val_fraction=0.1)
    assert data["train"][0].shape[1:] == (1, 28, 28) and data["test"][0].shape[1:] == (1, 28, 28)
    assert len(data["test"][1]) == 4 and len(data["train"][1]) + len(data["val"][1]) == 16  # test held out
    assert data["classes"] == ["cat", "dog"]
    kw = dict(epochs=1, batch_size=8, steps=1, val_examples=4, progress=False, device="cpu")
    run = ft.finetune(str(encoder_dir), f"imagefolder:{folder}", mode="linear", out=tmp_path / "grey", **kw)
    assert run.config["input_size"] == [1, 28, 28] and run.config["source_input_size"] == [3, 28, 28]
    rgb = ft.finetune(str(encoder_dir), f"imagefolder:{folder}", mode="at", in_chans=3, image_size=16,
                      out=tmp_path / "rgb", **kw)
    clf = rocl_zoo.load(tmp_path / "rgb" / "classifier")
    assert clf.in_chans == 3 and clf.num_classes == 2 and tuple(clf.pretrained_cfg["input_size"]) == (3, 16, 16)
    assert list(clf.pretrained_cfg["label_names"]) == ["cat", "dog"]
    with torch.no_grad():
        assert clf(torch.rand(1, 3, 16, 16)).shape == (1, 2)
    assert rgb.config["adapt"] == "model"


def test_settings_defaults():
    at = modes.resolve_settings("at", "cifar10")
    assert (at["epochs"], at["lr"], at["milestones"], at["weight_decay"]) == (25, 0.1, [15, 20], 2e-4)
    assert at["eps"] == pytest.approx(8 / 255) and at["alpha"] == pytest.approx(2 / 255) and at["steps"] == 10
    trades = modes.resolve_settings("trades", "digits")
    assert trades["beta"] == 6 and trades["eps"] == 0.1
    rlin = modes.resolve_settings("robust-linear", "fashion_mnist")
    assert rlin["alpha"] == pytest.approx(0.007 * 0.1 / (8 / 255))  # RoCL's ALF step, as evaluate's
    lin = modes.resolve_settings("linear", "cifar10")
    assert (lin["epochs"], lin["milestones"], lin["weight_decay"]) == (150, [30, 50, 100], 5e-4)
    assert [modes.lr_at(at, e) for e in (0, 14, 15, 19, 20, 24)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    with pytest.raises(ConfigError):
        modes.resolve_settings("at", "digits", eps="8")


def test_cli(encoder_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        ft.main(["--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    for mode, line in ft.MODES.items():
        assert mode in help_text and line[:40] in help_text
    for flag in ("--epochs", "--lr", "--batch-size", "--eps", "--steps", "--image-size", "--out", "--resume",
                 "--device", "--autoattack", "--in-chans"):
        assert flag in help_text
    assert ft.main(["--model", str(encoder_dir), "--dataset", "nope", "--mode", "at", "--out",
                    str(tmp_path / "x")]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    code = ft.main(["--model", str(encoder_dir), "--dataset", "digits", "--mode", "robust-linear", "--out",
                    str(tmp_path / "cli"), "--epochs", "1", "--image-size", "8", "--subset", "60", "--steps", "1",
                    "--eval-examples", "20", "--val-examples", "6", "--eps", "8/255", "--milestones", "1",
                    "--quiet", "--device", "cpu"])
    assert code == 0
    assert "robust-linear: clean" in capsys.readouterr().out
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert config["eps"] == pytest.approx(8 / 255) and config["milestones"] == [1]


@pytest.mark.parametrize("mode", ["robust-linear", "at"])
def test_trains_on_the_attacks_output(encoder_dir, monkeypatch, mode):
    """Training with an 'attack' that returns 1 - x on data D must equal training with an identity attack on 1 - D:
    the weights then depend on the attack's output, not on the clean batch."""
    from rocl_zoo import steps
    from rocl_zoo.data import load_dataset

    train, test = load_dataset("digits", "train").subset(80), load_dataset("digits", "test").subset(20)
    x, y = train.images.float() / 255, train.labels
    xt, yt = test.images.float() / 255, test.labels
    kw = dict(TINY, subset=None, eval_examples=0, attacks="clean")

    monkeypatch.setattr(steps, "pgd", lambda model, xb, yb, eps, **k: 1 - xb)
    flipped_by_attack = ft.finetune(str(encoder_dir), (x, y), test=(xt, yt), mode=mode, **kw)
    monkeypatch.setattr(steps, "pgd", lambda model, xb, yb, eps, **k: xb.clone())
    flipped_data = ft.finetune(str(encoder_dir), (1 - x, y), test=(xt, yt), mode=mode, **kw)
    clean_data = ft.finetune(str(encoder_dir), (x, y), test=(xt, yt), mode=mode, **kw)
    a, b, c = (r.model.state_dict() for r in (flipped_by_attack, flipped_data, clean_data))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_classifier_loads_through_torch_hub(runs):
    """torch.hub builds the architecture (offline, from this repository); the folder's safetensors fit it."""
    from pathlib import Path

    from safetensors.torch import load_file

    run = runs[0]["at"]
    folder = run.out / "classifier"
    cfg = json.loads((folder / "config.json").read_text())
    repo = str(Path(__file__).resolve().parents[1])
    model = torch.hub.load(repo, cfg["architecture"], source="local", pretrained=False,
                           num_classes=cfg["num_classes"], **cfg["model_args"])
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), run.model.eval()(x))


def test_keep_best_ends_with_the_best_validation_epoch(encoder_dir, tmp_path):
    from safetensors.torch import load_file

    kw = dict(TINY, epochs=3, subset=100, keep_best=True)  # 90 training images: 3 steps an epoch
    straight = ft.finetune(str(encoder_dir), "digits", mode="at", out=tmp_path / "straight", **kw)
    accs = [m["val_robust_acc"] for m in straight.metrics]
    best = accs.index(max(accs)) + 1  # the first of equals
    assert straight.metrics[-1]["best_epoch"] == best == straight.results["protocol_config"]["best_epoch"]
    kept = load_file(str(tmp_path / "straight" / "best.safetensors"))
    assert all(torch.equal(v, kept[k]) for k, v in straight.model.state_dict().items())
    with pytest.raises(ft.FinetuneInterrupted):  # cut inside the last epoch: the best so far comes from disk
        ft.finetune(str(encoder_dir), "digits", mode="at", out=tmp_path / "cut", max_steps=7, **kw)
    resumed = ft.finetune(str(encoder_dir), "digits", mode="at", out=tmp_path / "cut", resume=True, **kw)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and resumed.metrics[-1]["best_epoch"] == best
    with pytest.raises(ConfigError, match="adversarial mode"):
        ft.finetune(str(encoder_dir), "digits", mode="linear", keep_best=True, **TINY)
