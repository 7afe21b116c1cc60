"""rocl_zoo.export: verified Hub folders (safetensors, config, ONNX, results, model card), refused when broken."""
import json
import shutil

import pytest
import torch

import rocl_zoo
from rocl_zoo import export as ex
from rocl_zoo import model_card
from rocl_zoo.errors import ConfigError, ExportError, IntegrityError
from rocl_zoo.hub import save_pretrained
from rocl_zoo.results import SCHEMA


def _attack(name, kind, acc, **cfg):
    return {"config": {"name": name, "attack": kind, "norm": "linf", "eps": 0.1, "threat_model": "Linf", **cfg},
            "acc": acc}


RESULTS = {"schema": SCHEMA, "architecture": "cnn4_rocl", "dataset": "fashion_mnist", "split": "test",
           "threat_model": "Linf", "eps": 0.1, "clean_acc": 84.25, "autoattack_acc": 58.5, "n_examples": 500,
           "seed": 0, "attacks": {"pgd20": _attack("pgd20", "pgd", 61.75, steps=20, alpha=0.01, restarts=1),
                                  "fgsm": _attack("fgsm", "fgsm", 70.5)},
           "protocol": "linear", "hardware": "test CPU", "wall_time_s": 3.5}


def _x(model, n=3, seed=0):
    c, h, w = model.pretrained_cfg["input_size"]
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """cnn4_rocl.fmnist (untrained) exported with ONNX and a results file written by rocl_zoo.evaluate; the
    parity check uses real Fashion-MNIST test images when the dataset is readable here."""
    from rocl_zoo.evaluate import evaluate

    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = rocl_zoo.create_model("cnn4_rocl.fmnist").eval()
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = model(x).argmax(1)  # clean accuracy 100 %, so the attacks have something to lower
    res = evaluate(model, x, y, attacks="clean,fgsm,pgd3", eps=0.1, progress=False,
                   meta={"dataset": "fashion_mnist", "protocol": "linear"})
    (root / "results_linf.json").write_text(json.dumps(res))
    out = ex.export(model, root / "out", results=[root / "results_linf.json"], recipe="fmnist_rocl",
                    repo_id="test-org/cnn4_rocl.fmnist", n_check=8, pgd_steps=3)
    return out, model, root


ARCHS = ["cnn4_rocl", "cnn4w_rocl", "resnet18_rocl", "resnet50_rocl", "wrn34_10_rocl"]


@pytest.mark.parametrize("arch", ARCHS)
def test_export_every_architecture_with_onnx_parity(arch, tmp_path):
    """Every architecture, all its layers and weights. The 32x32 models are exported at 16x16 to keep this test
    fast on 2 shared cores (their convolutions are size-agnostic); the benchmark exports them at 32x32."""
    from rocl_zoo.onnx import OnnxClassifier

    model = rocl_zoo.create_model(arch).eval()
    c, h, w = model.pretrained_cfg["input_size"]
    if h > 28:
        model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (c, 16, 16)}
    with pytest.warns(UserWarning, match="without results"):
        out = ex.export(model, tmp_path / arch, n_check=4, pgd_steps=1, eps=8 / 255)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.onnx", "model.safetensors"]
    parity = json.loads((out / "config.json").read_text())["rocl_zoo"]["export"]["parity"]
    assert parity["max_abs_diff_random"] <= 1e-4 and parity["max_abs_diff_real"] <= 1e-4
    assert parity["top1_agreement_random"] == parity["top1_agreement_real"] == 100
    adv = parity["adversarial"]
    assert abs(adv["robust_acc_torch"] - adv["robust_acc_onnx"]) <= 0.5 and adv["n"] == 4
    assert parity["onnx_batch_sizes"] == [1, 7]  # the export traced batch 2: the batch axis is dynamic
    if arch.startswith("cnn4"):  # the folder's model.onnx runs from a fresh session with its checksum verified
        x = _x(model, n=3)
        with torch.no_grad():
            want = rocl_zoo.load(out)(x).numpy()
        got = OnnxClassifier(out).logits(x.numpy())
        assert got.shape == want.shape and abs(got - want).max() <= 1e-4


def test_folder_layout_and_checksums(exported):
    out, model, root = exported
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.onnx", "model.safetensors",
                                                    "results_linf.json"]
    assert not list(out.parent.glob(".out.*")), "the staging folder must be gone"
    assert json.loads((out / "results_linf.json").read_text()) == json.loads((root / "results_linf.json").read_text())
    config = ex.verify_folder(out, reference=model)
    assert config["architecture"] == "cnn4_rocl" and config["pretrained_cfg"]["input_size"] == [1, 28, 28]
    files = config["rocl_zoo"]["files"]
    assert set(files) == {"model.safetensors", "model.onnx", "results_linf.json"}
    res = json.loads((root / "results_linf.json").read_text())
    assert config["rocl_zoo"]["metrics"]["pgd3_linf_0.1"] == round(res["attacks"]["pgd3"]["acc"], 2)
    assert config["rocl_zoo"]["recipe"] == "fmnist_rocl"
    with torch.no_grad():
        assert torch.equal(rocl_zoo.load(out)(_x(model)), model(_x(model)))


def test_model_card_metadata_holds_the_results(exported):
    from huggingface_hub import ModelCard

    out, _, root = exported
    res = json.loads((root / "results_linf.json").read_text())
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "timm" and card.data.datasets == ["fashion_mnist"]
    got = {r.metric_config: r.metric_value for r in card.data.eval_results}
    # every accuracy in percent, in the results file and in the card
    assert got == {"clean": res["clean_acc"], "fgsm_linf_0.1": round(res["attacks"]["fgsm"]["acc"], 2),
                   "pgd3_linf_0.1": round(res["attacks"]["pgd3"]["acc"], 2),
                   "worst_case_linf_0.1": res["robust_acc"]}
    assert res["clean_acc"] == 100.0 and 0 <= got["pgd3_linf_0.1"] <= 100
    r = card.data.eval_results[0]
    assert (r.task_type, r.dataset_type, r.dataset_split, r.metric_type) == (
        "image-classification", "fashion_mnist", "test", "accuracy")
    text = card.text
    for needle in ["Fashion-MNIST", "split `test`", "eps = 0.1", "linf", "| pgd3 | steps=3", "fgsm",
                   "n_examples = 16", "fmnist_rocl", "Protocol: linear", 'rocl_zoo.load("hf-hub:test-org/cnn4_rocl.fmnist")',
                   "timm.create_model", 'rocl_zoo.load("cnn4_rocl.fmnist")', "OnnxClassifier",
                   "max |logit difference|", "python -m training.reproduce cnn4_rocl.fmnist"]:
        assert needle in text, needle


def test_a_zoo_entry_exports_with_its_shipped_results_and_no_invented_hub_repo(tmp_path):
    import stat

    out = ex.export("cnn4_rocl.fmnist_at", tmp_path / "f", n_check=4, pgd_steps=1)
    shipped = sorted(p.name for p in rocl_zoo.get_entry("cnn4_rocl.fmnist_at").embedded_dir.glob("results*.json"))
    assert shipped and sorted(p.name for p in out.glob("results*.json")) == shipped
    config = json.loads((out / "config.json").read_text())["rocl_zoo"]
    assert config["metrics"] and config["export"]["repo_id"] is None
    card = (out / "README.md").read_text()
    assert "No evaluation results" not in card and "hf-hub:" not in card and "training.supervised --recipe" not in card
    assert stat.S_IMODE((out / "model.onnx").stat().st_mode) == 0o644


def test_tampered_weights_are_refused_on_load(exported, tmp_path):
    folder = shutil.copytree(exported[0], tmp_path / "f")
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-5] ^= 0x01  # one bit of one weight
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256.*corrupt or were edited"):
        rocl_zoo.load(folder)
    with pytest.raises(IntegrityError, match="sha256"):
        ex.verify_folder(folder)


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.update(num_classes=5, label_names=c["label_names"][:5],
                        pretrained_cfg={**c["pretrained_cfg"], "num_classes": 5}), "do not fit"),
    (lambda c: c.update(num_classes=5), "field 'pretrained_cfg.num_classes' is 10 but num_classes is 5"),
    (lambda c: c.update(architecture="resnet18_rocl"), "do not fit"),
    (lambda c: c.pop("architecture"), "field 'architecture' is None"),
    (lambda c: c["rocl_zoo"]["files"]["model.safetensors"].update(size=12), "bytes but 12 were recorded"),
])
def test_wrong_config_is_refused_on_load(exported, tmp_path, edit, match):
    folder = shutil.copytree(exported[0], tmp_path / "f")
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(IntegrityError, match=match):
        rocl_zoo.load(folder)


def test_tampered_onnx_is_refused(exported, tmp_path):
    from rocl_zoo.onnx import OnnxClassifier

    folder = shutil.copytree(exported[0], tmp_path / "f")
    with open(folder / "model.onnx", "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\x00" * 4)
    with pytest.raises(IntegrityError, match="sha256"):
        OnnxClassifier(folder)


def test_failed_verification_writes_nothing(tmp_path, monkeypatch):
    """An ONNX graph that drifts from PyTorch is refused with the numbers, and no folder is left behind."""
    model = rocl_zoo.create_model("cnn4_rocl").eval()
    real_export = ex.export_onnx

    def drifting_export(m, path, **kw):
        other = rocl_zoo.create_model("cnn4_rocl").eval()
        other.load_state_dict(m.state_dict())
        with torch.no_grad():
            other.fc.bias.add_(1e-3)  # logits off by 1e-3 > 1e-4
        return real_export(other, path, **kw)

    monkeypatch.setattr(ex, "export_onnx", drifting_export)
    with pytest.warns(UserWarning), pytest.raises(ExportError, match=r"max \|logit difference\| on random inputs is 0\.001"):
        ex.export(model, tmp_path / "out", n_check=4, pgd_steps=1)
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_and_foreign_results_are_refused(exported, tmp_path):
    model = exported[1]
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    with pytest.raises(ConfigError, match="--overwrite"):
        ex.export(model, tmp_path / "busy", onnx=False)
    other = tmp_path / "results_other.json"
    other.write_text(json.dumps({**RESULTS, "architecture": "resnet18_rocl"}))
    with pytest.raises(ConfigError, match="results of 'resnet18_rocl'"):
        ex.export(model, tmp_path / "new", onnx=False, results=[other])
    assert (tmp_path / "busy" / "x").read_text() == "keep me" and not (tmp_path / "new").exists()


def test_cli_exports_a_run_folder_with_its_results(tmp_path, capsys):
    """A training run folder (Hub layout + results*.json) exported by the CLI, overwriting an older export."""
    torch.manual_seed(1)
    model = rocl_zoo.create_model("cnn4_rocl.fmnist")
    run = save_pretrained(model, tmp_path / "run", dataset="fashion_mnist", recipe="fmnist_rocl")
    (run / "results_linf_0.1.json").write_text(json.dumps(RESULTS))
    (run / "results_linf_8.json").write_text(json.dumps({**RESULTS, "eps": 8 / 255, "clean_acc": 84.25,
                                                         "attacks": {"pgd20": _attack("pgd20", "pgd", 75.0,
                                                                                      eps=8 / 255)},
                                                         "autoattack_acc": None}))
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.bin").write_text("old")
    (tmp_path / ".out.partial-k1ll3d").mkdir()  # the staging folder of an export that was killed
    rc = ex.main([str(run), "--out", str(out), "--onnx", "--n-check", "4", "--pgd-steps", "1", "--overwrite",
                  "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "model.onnx" in printed and "ONNX parity" in printed
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.onnx", "model.safetensors",
                                                    "results_linf_0.1.json", "results_linf_8.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]
    from huggingface_hub import ModelCard

    got = {r.metric_config: r.metric_value for r in ModelCard.load(out / "README.md").data.eval_results}
    assert got["pgd20_linf_8/255"] == 75.0 and got["pgd20_linf_0.1"] == 61.75 and got["clean"] == 84.25
    assert got["autoattack_linf_0.1"] == 58.5
    assert ex.main(["no_such_model.tag", "--out", str(tmp_path / "x")]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.slow  # the torch.export-based exporter takes ~10 s even for the small CNN
def test_dynamo_exporter_also_verifies(tmp_path):
    model = rocl_zoo.create_model("cnn4_rocl").eval()
    with pytest.warns(UserWarning):
        out = ex.export(model, tmp_path / "out", dynamo=True, n_check=4, pgd_steps=1)
    parity = json.loads((out / "config.json").read_text())["rocl_zoo"]["export"]["parity"]
    assert parity["exporter"] == "dynamo" and parity["max_abs_diff_random"] <= 1e-4


def test_an_attack_run_on_a_subset_says_so_in_the_card():
    res = dict(RESULTS, attacks={**RESULTS["attacks"], "autoattack": {
        "acc": 55.0, "n_examples": 100, "config": {"name": "autoattack", "attack": "autoattack", "norm": "linf",
                                                   "eps": 0.1, "version": "standard"}}})
    aa = next(m for m in model_card.result_metrics(res) if m["kind"] == "autoattack")
    assert "on 100 of the examples" in aa["name"] and aa["settings"]["n_examples"] == 100
    assert all("n_examples" not in m["settings"] for m in model_card.result_metrics(RESULTS))
    worst = next(m for m in model_card.result_metrics(dict(res, robust_acc=60.0)) if m["kind"] == "worst_case")
    assert worst["settings"]["over"] == "pgd20, fgsm"  # the per-example worst case leaves the subset out


def test_a_baseline_published_as_its_own_entry_gets_that_entrys_card_and_tag(tmp_path):
    """Baselines are trained from cnn4_rocl.fmnist's config (tag "fmnist"): published as cnn4_rocl.fmnist_at,
    the card and config must describe PGD-AT, not the RoCL entry whose tag the model carried."""
    from rocl_zoo.zoo import get_entry

    model = rocl_zoo.create_model("cnn4_rocl.fmnist").eval()
    assert model.pretrained_cfg["tag"] == "fmnist"
    entry = get_entry("cnn4_rocl.fmnist_at")
    with pytest.warns(UserWarning, match="without results"):
        out = ex.export(model, tmp_path / "at", onnx=False, results=[], repo_id=entry.hf_hub_id,
                        dataset="fashion_mnist")
    card = (out / "README.md").read_text()
    assert "# cnn4_rocl.fmnist_at" in card and entry.description in card and "RoCL encoder (no labels)" not in card
    assert json.loads((out / "config.json").read_text())["pretrained_cfg"]["tag"] == "fmnist_at"
    assert "Recipe `fmnist_at`: `python -m training.reproduce cnn4_rocl.fmnist_at`" in card  # the entry's recipe
    assert model.pretrained_cfg["tag"] == "fmnist"  # the caller's model is left as it was


def test_a_schema_1_results_file_is_exported_in_percent(exported, tmp_path):
    """Files written before schema 2 held the attacks' accuracies as fractions: the copy and the card say percent."""
    from huggingface_hub import ModelCard

    old = dict(RESULTS, schema="rocl_zoo.eval/1", attacks={"pgd20": _attack("pgd20", "pgd", 0.6175)})
    (tmp_path / "results_old.json").write_text(json.dumps(old))
    out = ex.export(exported[1], tmp_path / "out", onnx=False, results=[tmp_path / "results_old.json"])
    copy = json.loads((out / "results_old.json").read_text())
    assert copy["schema"] == SCHEMA and copy["attacks"]["pgd20"]["acc"] == pytest.approx(61.75)
    assert copy["clean_acc"] == 84.25  # RobustBench's keys were percent already
    got = {r.metric_config: r.metric_value for r in ModelCard.load(out / "README.md").data.eval_results}
    assert got["pgd20_linf_0.1"] == 61.75 and got["clean"] == 84.25
    ex.verify_folder(out)  # the copy's recorded checksum is the rewritten file's
