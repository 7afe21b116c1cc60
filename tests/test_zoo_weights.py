"""The weights shipped inside the package: they load verified, and measure what the registry says."""
import json

import pytest
import torch

import rocl_zoo
from rocl_zoo import zoo
from rocl_zoo.errors import ConfigError

SHIPPED = [e.name for e in zoo.ZOO.values() if (e.embedded_dir / e.filename).is_file()]


def test_every_shipped_folder_is_registered_and_every_registered_entry_ships():
    registered = [e.name for e in zoo.ZOO.values() if e.published]
    assert sorted(SHIPPED) == sorted(registered)
    assert sorted(rocl_zoo.list_models(pretrained=True)) == sorted(registered)


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_matches_its_registry_entry(name):
    from training.release import quick_check

    entry = zoo.get_entry(name)
    model = rocl_zoo.load(name)  # sha256 checked against the registry
    check = entry.metrics["check"]
    measured = quick_check(model, entry.dataset, check["eps"], check["norm"], check["n_examples"])
    tolerance = max(1.0, 200 / check["n_examples"])  # percent: a point, and at least two images
    assert measured["clean_acc"] == pytest.approx(check["clean_acc"], abs=tolerance)
    assert measured["pgd20_acc"] == pytest.approx(check["pgd20_acc"], abs=tolerance)
    assert entry.metrics["clean_acc"] > 0 and entry.metrics["n_examples"] > 0
    x = torch.rand(2, *entry.input_size)
    assert model(x).shape == (2, len(entry.label_names))


def test_release_writes_folder_registry_and_check(tmp_path, monkeypatch, capsys):
    """The release step on a small (untrained) classifier, into a temporary weights folder."""
    from rocl_zoo.data import load_dataset
    from rocl_zoo.evaluate import evaluate
    from rocl_zoo.linear import as_tensors
    from rocl_zoo.utils import write_json
    from training import release

    model = rocl_zoo.create_model("cnn4_rocl.fmnist").eval()
    folder = rocl_zoo.save_pretrained(model, tmp_path / "clf", dataset="fashion_mnist")
    # the run the folder sits in: its epochs and time go onto the card (2 threads x 1.5 h wall = 3 CPU-hours)
    (tmp_path / "config.json").write_text(json.dumps({"hardware": "a CPU, 2 cores, 2 torch threads"}))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"record": "epoch", "epoch": e, "time_s": 2700.0}) + "\n"
                                                    for e in (1, 2)))
    x, y = as_tensors(load_dataset("fashion_mnist", "test"), 40, 0)
    result = evaluate(model, x, y, attacks="clean,pgd20", eps=0.1, norm="linf", progress=False,
                      meta={"dataset": "fashion_mnist", "architecture": "cnn4_rocl"})
    write_json(tmp_path / "Linf-0.1.json", result)
    # AutoAttack in files of their own, run on subsets of their examples (--autoattack-examples): the headline is
    # the one on the most examples, wherever it comes in the list
    for n, acc in ((10, 50.0), (20, 55.0)):
        write_json(tmp_path / f"Linf-0.1-autoattack-n{n}.json",
                   dict(result, autoattack_acc=acc, autoattack_subset={"n_examples": n, "pgd_acc": 60.0}))
    weights = tmp_path / "weights"
    record = release.release("cnn4_rocl.fmnist", folder, [tmp_path / "Linf-0.1.json",
                                                          tmp_path / "Linf-0.1-autoattack-n10.json",
                                                          tmp_path / "Linf-0.1-autoattack-n20.json"],
                             weights_dir=weights, check_examples=40)
    assert (record["metrics"]["autoattack_acc"], record["metrics"]["autoattack_n_examples"]) == (55.0, 20)
    assert record["metrics"]["autoattack_results"] == "cnn4_rocl.fmnist/results_Linf-0.1-autoattack-n20.json"
    assert (weights / "cnn4_rocl.fmnist" / "model.safetensors").is_file()
    card = (weights / "cnn4_rocl.fmnist" / "README.md").read_text()
    assert "\n\n## Training budget\n" in card and "| 2 | 2 | a CPU, 2 cores, 2 torch threads | 3.00 CPU-hours |" in card
    registry = (weights / zoo.REGISTRY_NAME).read_text()
    assert record["sha256"] in registry
    assert record["metrics"]["check"]["n_examples"] == 40
    assert record["metrics"]["clean_acc"] == result["clean_acc"]  # percent, as torchvision's metrics
    assert record["metrics"]["pgd20_acc"] == result["attacks"]["pgd20"]["acc"] and record["metrics"]["check"][
        "clean_acc"] == pytest.approx(result["attacks"]["clean"]["acc"], abs=100 / 40)
    # the registry and folder are what `rocl_zoo.load(name)` verifies against
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", weights)
    monkeypatch.setattr(zoo, "ZOO", zoo._published(zoo.ZOO))
    assert torch.equal(rocl_zoo.load("cnn4_rocl.fmnist")(x[:2]), model(x[:2]))
    # --recheck: the quick check again on other images, from the shipped file; the rest of the record stays
    rechecked = release.recheck("cnn4_rocl.fmnist", weights, check_examples=20)
    assert rechecked["metrics"]["check"]["n_examples"] == 20
    assert {**rechecked, "metrics": {**rechecked["metrics"], "check": None}} == {
        **record, "metrics": {**record["metrics"], "check": None}}
    assert json.loads((weights / zoo.REGISTRY_NAME).read_text())["cnn4_rocl.fmnist"] == rechecked
    (weights / "cnn4_rocl.fmnist" / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(ConfigError, match="release the weights again"):
        release.recheck("cnn4_rocl.fmnist", weights)
    with pytest.raises(ConfigError, match="not released"):
        release.recheck("cnn4_rocl.fmnist_at", weights)
    assert release.main(["cnn4_rocl.fmnist"]) != 0 and "--recheck" in capsys.readouterr().err


def test_a_release_removes_the_results_of_other_weights_from_its_folder(tmp_path):
    from rocl_zoo.eval_progress import encoder_digest, weights_digest
    from rocl_zoo.evaluate import evaluate
    from rocl_zoo.utils import write_json
    from training.release import retire_superseded

    torch.manual_seed(0)
    new, old = (rocl_zoo.create_model("cnn4_rocl.fmnist").eval() for _ in range(2))
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    result = evaluate(new, x, y, attacks="clean", eps=0.1, progress=False,
                      meta={"dataset": "fashion_mnist", "architecture": "cnn4_rocl"})
    folder = tmp_path / "results" / "cnn4_rocl.fmnist"
    files = {"shipped": ("linear", dict(result, source="runs/new", weights_sha256=weights_digest(new))),
             "same weights": ("linear", dict(result, source="cnn4_rocl.fmnist", weights_sha256=weights_digest(new))),
             "other weights": ("linear", dict(result, source="runs/new", weights_sha256=weights_digest(old))),
             "legacy, same source": ("linear", dict(result, source="runs/new")),
             "legacy, other source": ("linear", dict(result, source="runs/old")),
             "ALF, legacy": ("robust-linear", dict(result, source="runs/old")),
             "ALF, new encoder": ("robust-linear", dict(result, encoder_sha256=encoder_digest(new))),
             "ALF, old encoder": ("robust-linear", dict(result, encoder_sha256=encoder_digest(old))),
             "fine-tuning, legacy": ("finetune-at", dict(result, weights_sha256=weights_digest(old))),
             "fine-tuning, new encoder": ("finetune-at", dict(result, start_encoder_sha256=encoder_digest(new))),
             "digits fine-tuning, old encoder": ("finetune-at.digits",
                                                 dict(result, start_encoder_sha256=encoder_digest(old)))}
    paths = {}
    for name, (protocol, data) in files.items():
        paths[name] = folder / protocol / "Linf-0.1" / f"{name.replace(' ', '_').replace(',', '')}.json"
        write_json(paths[name], data)
    # the same weights released again (say, with another quick check): only files that name other weights go
    named_other = ("other weights", "ALF, old encoder", "digits fine-tuning, old encoder")
    assert sorted(retire_superseded("cnn4_rocl.fmnist", [paths["shipped"]], new, weights_changed=False)) == \
        sorted(paths[n] for n in named_other)
    for name in named_other:
        write_json(paths[name], files[name][1])
    gone = retire_superseded("cnn4_rocl.fmnist", [paths["shipped"]], new)
    assert sorted(gone) == sorted(paths[n] for n in (*named_other, "legacy, other source", "ALF, legacy",
                                                     "fine-tuning, legacy"))
    assert {n for n, p in paths.items() if p.exists()} == {"shipped", "same weights", "legacy, same source",
                                                            "ALF, new encoder", "fine-tuning, new encoder"}
    assert retire_superseded("cnn4_rocl.fmnist_at", [paths["shipped"]], new) == []  # another model's folder


def test_headline_metrics_keep_the_autoattack_subset_size():
    from rocl_zoo.results import Result
    from training.release import headline_metrics

    pgd20 = {"name": "pgd20", "attack": "pgd", "threat_model": "Linf", "eps": 0.1}
    result = {"schema": "rocl_zoo.eval/1", "clean_acc": 80.0, "autoattack_acc": 60.0, "threat_model": "Linf",
              "eps": 0.1, "n_examples": 1000, "dataset": "fashion_mnist",
              "attacks": {"pgd20": {"config": pgd20, "acc": 0.65}}}
    m = headline_metrics(Result(result))  # schema 1: the attacks' fractions come out in percent
    assert "autoattack_n_examples" not in m and m["pgd20_acc"] == pytest.approx(65.0)  # AutoAttack on all 1,000
    m = headline_metrics(Result(dict(result, autoattack_subset={"n_examples": 100, "pgd_acc": 64.0})))
    assert (m["autoattack_acc"], m["autoattack_n_examples"], m["n_examples"]) == (60.0, 100, 1000)


def test_release_without_results_records_the_checksum_and_the_quick_check(tmp_path):
    from training import release

    model = rocl_zoo.create_model("cnn4_rocl.fmnist").eval()
    folder = rocl_zoo.save_pretrained(model, tmp_path / "clf", dataset="fashion_mnist")
    with pytest.warns(UserWarning, match="without results"):
        record = release.release("cnn4_rocl.fmnist", folder, weights_dir=tmp_path / "weights", check_examples=20)
    check = record["metrics"].pop("check")
    assert record["metrics"] == {} and (check["eps"], check["norm"], check["n_examples"]) == (0.1, "linf", 20)
    assert 0 <= check["pgd20_acc"] <= check["clean_acc"] <= 100
    assert (tmp_path / "weights" / zoo.REGISTRY_NAME).is_file()


@pytest.mark.parametrize("registry", ['{"cnn4_rocl.fmnist": ', '["not", "an", "object"]',
                                      '{"cnn4_rocl.nope": {"sha256": null}}', '{"cnn4_rocl.fmnist": {"colour": 1}}'])
def test_a_broken_registry_never_breaks_the_import_and_is_reported_on_use(tmp_path, registry):
    import subprocess
    import sys

    (tmp_path / zoo.REGISTRY_NAME).write_text(registry)
    code = ("import warnings, rocl_zoo\n"
            "try:\n    rocl_zoo.load('cnn4_rocl.fmnist')\n"
            "except rocl_zoo.IntegrityError as e:\n    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "ROCL_ZOO_WEIGHTS": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused:") and "registry.json cannot be used" in out.stdout
    assert "RuntimeWarning" in out.stderr and "training.release" in out.stdout
