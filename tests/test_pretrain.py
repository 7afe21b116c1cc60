"""The pretraining loop: exact resume, DDP equivalence, the loss falls, clear errors."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rocl_zoo import data as D
from rocl_zoo.errors import ConfigError, IntegrityError
from training import pretrain
from training.common import LARS, warmup_cosine_lr
from training.recipes import get_recipe

ROOT = Path(__file__).resolve().parents[1]
# Tiny runs: the digits (8x8) with the small CNN, a 64-image subset, batch 16 (4 steps an epoch).
TINY = ["--recipe", "fmnist_rocl", "--threads", "1", "--quiet", "--subset", "64", "--batch-size", "16",
        "--epochs", "2", "--set", "dataset=digits", "--set", "proj_hidden=32", "--set", "proj_out=16",
        "--set", "attack_steps=2", "--set", "ckpt_every=3", "--set", "log_every=1", "--set", "warmup_epochs=0.5", "--set", "holdout=0"]


def run(out, *extra):
    return pretrain.train(pretrain_args([*TINY, "--out", str(out), *extra]))


def pretrain_args(argv):
    import argparse

    from training import common

    p = argparse.ArgumentParser()
    common.add_common_args(p)
    return p.parse_args(argv)


def metrics(out, record="step"):
    lines = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if m["record"] == record]


def test_resume_is_exact(tmp_path):
    full = run(tmp_path / "full")
    part = tmp_path / "part"
    run(part, "--max-steps", "5")
    assert not (part / "encoder").exists() and torch.load(part / "checkpoint.pt", weights_only=True)["step"] == 5
    run(part, "--resume")
    a, b = load_file(full / "encoder/model.safetensors"), load_file(part / "encoder/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [m["loss"] for m in metrics(full)] == [m["loss"] for m in metrics(part)]
    assert [m["step"] for m in metrics(part)] == list(range(1, 9))
    config = json.loads((full / "config.json").read_text())
    assert config["name"] == "fmnist_rocl" and config["dataset"] == "digits" and config["total_steps"] == 8
    import rocl_zoo.hub

    enc = rocl_zoo.hub.load(full / "encoder")
    assert enc.num_classes == 0 and enc(torch.rand(2, 1, 8, 8)).shape == (2, 256)
    # a started run is not overwritten by accident; a resume with other settings is refused
    with pytest.raises(ConfigError, match="--resume"):
        run(full)
    with pytest.raises(ConfigError, match="batch_size"):
        run(part, "--resume", "--batch-size", "32")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    run(out, "--max-steps", "1")
    ck = out / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:200])
    with pytest.raises(IntegrityError, match="corrupt"):
        run(out, "--resume")


def test_cli_errors(tmp_path, monkeypatch, capsys):
    assert pretrain.main(["--recipe", "fmnist_rocll", "--out", str(tmp_path)]) == 2
    assert "Did you mean fmnist_rocl" in capsys.readouterr().err
    assert pretrain.main(["--recipe", "fmnist_at", "--out", str(tmp_path)]) == 2  # a supervised recipe
    assert pretrain.main(["--recipe", "fmnist_rocl", "--set", "nope=1", "--out", str(tmp_path)]) == 2
    assert "unknown recipe field" in capsys.readouterr().err
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    assert pretrain.main(["--recipe", "fmnist_rocl", "--data-root", str(tmp_path / "d"), "--out", str(tmp_path / "o")]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err
    assert pretrain.main(["--list-recipes"]) == 0 and "cifar10_resnet18_rocl" in capsys.readouterr().out


def test_lars_and_schedule():
    assert warmup_cosine_lr(0, 100, 10, 0.1, 1, 15) == pytest.approx(0.1)
    assert warmup_cosine_lr(10, 100, 10, 0.1, 1, 15) == pytest.approx(1.5)
    assert warmup_cosine_lr(100, 100, 10, 0.1, 1, 15) == pytest.approx(0.0)
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = LARS([w], lr=1.0, momentum=0.9, weight_decay=0.0, trust_coef=0.001)
    w.grad = torch.tensor([0.0, 10.0])
    opt.step()  # step = lr * trust * ||w|| / ||g|| * g = 0.001 * 5 / 10 * g
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0 - 0.005]))


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path, torchrun):
    """torchrun --nproc_per_node=2 (gloo) vs one process on the same global batch: same losses, same weights."""
    # an fp32 identity; one attack step: over several, sign() turns the two sums' fp32 order into pixels stepped the
    # other way (seen on an AVX2 CPU: losses 1.6e-4 apart, BN statistics 3 %), which says nothing of DDP
    same = ["--max-steps", "3", "--set", "attack_negatives=global", "--amp", "off", "--set", "attack_steps=1"]
    common = [*TINY, *same]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*torchrun("training.pretrain"), *common, "--out", str(tmp_path / "ddp"), "--device", "cpu"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    run(tmp_path / "one", *same)
    two, one = metrics(tmp_path / "ddp"), metrics(tmp_path / "one")
    assert json.loads((tmp_path / "ddp/config.json").read_text())["world_size"] == 2
    assert len(two) == len(one) == 3
    for a, b in zip(two, one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["loss_reg"] == pytest.approx(b["loss_reg"], rel=1e-4)
    sa = torch.load(tmp_path / "ddp/checkpoint.pt", weights_only=True)["model"]
    sb = torch.load(tmp_path / "one/checkpoint.pt", weights_only=True)["model"]
    for k in sb:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-3, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not (D.DEBIAN_FASHION_MNIST / "train-labels-idx1-ubyte.gz").is_file(),
                    reason="apt-get install dataset-fashion-mnist")
def test_loss_falls_on_fashion_mnist(tmp_path):
    out = tmp_path / "fm"
    pretrain.train(pretrain_args([
        "--recipe", "fmnist_rocl", "--threads", "1", "--quiet", "--subset", "128", "--batch-size", "16",
        "--epochs", "15", "--max-steps", "80", "--data-root", str(tmp_path / "data"), "--out", str(out),
        "--set", "proj_hidden=64", "--set", "attack_steps=1", "--set", "log_every=1", "--set", "warmup_epochs=1",
        "--set", "ckpt_every=1000", "--set", "holdout=0"]))
    losses = [m["loss"] for m in metrics(out)]
    assert len(losses) == 80
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.3, (first, last)


def test_deacl_starts_from_its_teacher_and_trains_the_student_only(tmp_path):
    """DeACL end to end on a tiny run: the student starts as the teacher, the teacher stays as it was, the loss
    has both terms, and the exported encoder records its teacher."""
    teacher = run(tmp_path / "simclr", "--set", "kind=simclr", "--epochs", "1") / "encoder"
    before = load_file(teacher / "model.safetensors")
    out = pretrain.train(pretrain_args([*TINY, "--recipe", "fmnist_deacl", "--set", f"teacher={teacher}",
                                        "--out", str(tmp_path / "deacl")]))
    steps = metrics(out)
    assert len(steps) == 8 and all(m["loss_distill"] < 0 for m in steps) and "loss_robust" in steps[0]
    import rocl_zoo
    from rocl_zoo.data import dataset_info

    t = rocl_zoo.load(teacher)
    start = pretrain.build(get_recipe("fmnist_deacl"), dataset_info("digits"), t)
    assert isinstance(start.projector, torch.nn.Identity)  # the student starts as the teacher, no projector
    assert all(torch.equal(v, before[k]) for k, v in start.encoder.state_dict().items())
    after = load_file(teacher / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    student = load_file(out / "encoder/model.safetensors")
    assert student.keys() == before.keys() and any(not torch.equal(student[k], before[k]) for k in before)
    config = json.loads((out / "encoder/config.json").read_text())
    assert config["rocl_zoo"]["training"]["teacher"] == str(teacher) and config["rocl_zoo"]["training"]["deacl_k"] == 2


def test_deacl_refuses_a_teacher_of_another_architecture(tmp_path):
    import rocl_zoo

    folder = rocl_zoo.save_pretrained(rocl_zoo.create_model("cnn4w_rocl", num_classes=0, in_chans=1), tmp_path / "t")
    with pytest.raises(ConfigError, match="cnn4w_rocl"):
        pretrain.train(pretrain_args([*TINY, "--recipe", "fmnist_deacl", "--set", f"teacher={folder}",
                                      "--out", str(tmp_path / "deacl")]))
