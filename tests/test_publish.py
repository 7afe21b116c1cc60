"""training.publish: a complete, verified folder is uploaded (exactly its model files) through a mocked HfApi."""
import json
import shutil

import pytest
import torch

import rocl_zoo
from rocl_zoo import export as ex
from rocl_zoo.errors import ConfigError, IntegrityError
from rocl_zoo.results import SCHEMA
from training import publish as pub

PGD20 = {"name": "pgd20", "attack": "pgd", "norm": "linf", "eps": 0.1, "threat_model": "Linf", "steps": 20}
RESULTS = {"schema": SCHEMA, "architecture": "cnn4_rocl", "dataset": "fashion_mnist", "threat_model": "Linf",
           "eps": 0.1, "clean_acc": 80.0, "autoattack_acc": 50.0, "n_examples": 100,
           "attacks": {"pgd20": {"config": PGD20, "acc": 55.0}}}
EXPECTED = ["README.md", "config.json", "model.onnx", "model.safetensors", "results_linf.json"]


class FakeApi:
    """Records what publish asks of the Hub; `uploaded` is what upload_folder would send, by its own rules."""
    calls = []

    def __init__(self, token=None):
        self.token = token
        FakeApi.calls.append(("init", token))

    def create_repo(self, repo_id, **kw):
        FakeApi.calls.append(("create_repo", repo_id, kw))

    def create_branch(self, repo_id, **kw):
        FakeApi.calls.append(("create_branch", repo_id, kw))

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kw):
        from pathlib import Path

        from huggingface_hub.utils import filter_repo_objects

        names = sorted(p.name for p in Path(folder_path).iterdir() if p.is_file())
        FakeApi.uploaded = sorted(filter_repo_objects(names, allow_patterns=allow_patterns,
                                                      ignore_patterns=ignore_patterns))
        FakeApi.calls.append(("upload_folder", repo_id, kw))
        return "https://hub.invalid/commit/abc"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("pub")
    (root / "results_linf.json").write_text(json.dumps(RESULTS))
    torch.manual_seed(0)
    model = rocl_zoo.create_model("cnn4_rocl.fmnist").eval()
    return ex.export(model, root / "out", results=[root / "results_linf.json"], n_check=2, pgd_steps=1)


@pytest.fixture
def api(monkeypatch):
    FakeApi.calls, FakeApi.uploaded = [], None
    monkeypatch.setattr(pub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    return FakeApi


def test_publish_uploads_exactly_the_model_files(exported, tmp_path, api, capsys):
    folder = shutil.copytree(exported, tmp_path / "f")
    (folder / "notes.txt").write_text("not for the Hub")          # junk beside the model
    (folder / ".model.safetensors.abc.tmp").write_bytes(b"half")  # a leftover temp file
    (folder / "checkpoint.pt").write_bytes(b"pickle")
    rc = pub.main([str(folder), "--repo-id", "test-org/cnn4", "--revision", "v1", "--private"])
    assert rc == 0 and "published" in capsys.readouterr().out
    assert api.uploaded == EXPECTED
    kinds = [c[0] for c in api.calls]
    assert kinds == ["init", "create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][1] == "hf_test_token"
    assert api.calls[1][2]["private"] is True and api.calls[1][2]["exist_ok"] is True
    assert api.calls[2][2]["branch"] == "v1"
    upload = api.calls[3][2]
    assert upload["revision"] == "v1" and "cnn4_rocl" in upload["commit_message"]
    assert "results*.json" in upload["delete_patterns"]  # stale files of an older upload go in the same commit


def test_publish_main_without_branch(exported, api):
    pub.publish(exported, "test-org/cnn4")
    assert [c[0] for c in api.calls] == ["init", "create_repo", "upload_folder"] and api.uploaded == EXPECTED


def _broken(folder):
    (folder / "README.md").unlink()


def _tampered(folder):
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-3] ^= 1
    (folder / "model.safetensors").write_bytes(bytes(data))


def _wrong_config(folder):
    config = json.loads((folder / "config.json").read_text())
    config["num_classes"] = 3
    (folder / "config.json").write_text(json.dumps(config))


def _extra_results(folder):
    (folder / "results_l2.json").write_text("{}")


@pytest.mark.parametrize("damage, error, match", [
    (_broken, IntegrityError, "incomplete: README.md missing"),
    (_tampered, IntegrityError, "sha256"),
    (_wrong_config, IntegrityError, "field 'pretrained_cfg.num_classes' is 10 but num_classes is 3"),
    (_extra_results, IntegrityError, "does not record"),
])
def test_incomplete_or_broken_folders_are_refused(exported, tmp_path, api, damage, error, match):
    folder = shutil.copytree(exported, tmp_path / "f")
    damage(folder)
    with pytest.raises(error, match=match):
        pub.publish(folder, "test-org/cnn4")
    assert api.calls == []  # refused before any Hub call
    assert pub.main([str(folder), "--repo-id", "test-org/cnn4"]) == 2


def test_results_token_and_repo_id_are_required(exported, tmp_path, api, monkeypatch):
    model = rocl_zoo.create_model("cnn4_rocl").eval()
    with pytest.warns(UserWarning):
        bare = ex.export(model, tmp_path / "bare", onnx=False)
    with pytest.raises(ConfigError, match="no results file"):
        pub.publish(bare, "test-org/cnn4")
    assert pub.publish(bare, "test-org/cnn4", require_results=False, dry_run=True) == [
        "README.md", "config.json", "model.safetensors"]
    with pytest.raises(ConfigError, match="ORG/NAME"):
        pub.publish(exported, "cnn4")
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(pub, "get_token", lambda: None)
    with pytest.raises(ConfigError, match="hf auth login"):
        pub.publish(exported, "test-org/cnn4")
    assert api.calls == []
