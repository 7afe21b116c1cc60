"""Supervised baselines (PGD-AT, TRADES): they train, resume exactly, export a loadable classifier."""
import argparse
import json

import pytest
import torch
from safetensors.torch import load_file

from rocl_zoo.data import crop_flip
from training import common, supervised

TINY = ["--threads", "1", "--quiet", "--subset", "64", "--batch-size", "16", "--epochs", "2",
        "--set", "dataset=digits", "--set", "attack_steps=2", "--set", "eps=0.1", "--set", "log_every=1",
        "--set", "lr_milestones=1", "--set", "holdout=0"]


def args(argv):
    p = argparse.ArgumentParser()
    common.add_common_args(p)
    return p.parse_args(argv)


@pytest.mark.parametrize("recipe", ["fmnist_at", "fmnist_trades"])
def test_trains_resumes_and_exports(tmp_path, recipe):
    full = supervised.train(args(["--recipe", recipe, *TINY, "--out", str(tmp_path / "full")]))
    part = tmp_path / "part"
    supervised.train(args(["--recipe", recipe, *TINY, "--out", str(part), "--max-steps", "3"]))
    supervised.train(args(["--recipe", recipe, *TINY, "--out", str(part), "--resume"]))
    a, b = load_file(full / "model/model.safetensors"), load_file(part / "model/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    logs = [m for m in lines if m["record"] == "step"]
    assert len(logs) == 8 and all(m["loss"] == m["loss"] for m in logs)
    assert logs[-1]["lr"] == pytest.approx(0.01)  # divided by 10 at epoch 1
    epochs = [m for m in lines if m["record"] == "epoch"]
    assert [m["epoch"] for m in epochs] == [1, 2] and all(0 <= m["train_acc"] <= 1 for m in epochs)
    assert 0 < epochs[0]["adv_size_mean"] <= epochs[0]["adv_size_max"] <= 0.1 + 1e-6
    import rocl_zoo.hub

    model = rocl_zoo.hub.load(full / "model")
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)


def test_crop_flip_is_exact_shift():
    x = torch.arange(2 * 16, dtype=torch.float32).view(2, 1, 4, 4)
    out = crop_flip(x, torch.Generator().manual_seed(0), pad=0)
    for i in range(2):  # pad 0: either the image or its mirror, pixel-exact
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))


def test_wrong_entry_point():
    assert supervised.main(["--recipe", "fmnist_rocl"]) == 2
