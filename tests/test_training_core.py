"""The one training core: precision chosen at run time, one step function per method shared by every trainer,
the BN-folded attack network, exact resume after a real kill, Ctrl-C."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rocl_zoo
from rocl_zoo import precision, steps, utils
from rocl_zoo.attacks import attack_view
from rocl_zoo.errors import ConfigError
from training import pretrain, supervised

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
# Digits (8x8), 64 images, batch 16: 4 steps an epoch.
TINY = ["--threads", "1", "--quiet", "--subset", "64", "--batch-size", "16", "--set", "dataset=digits",
        "--set", "attack_steps=2", "--set", "log_every=1", "--set", "holdout=0"]
TINY_ROCL = [*TINY, "--set", "proj_hidden=32", "--set", "proj_out=16", "--set", "warmup_epochs=0.5"]


def trainer_args(argv):
    import argparse

    from training import common

    p = argparse.ArgumentParser()
    common.add_common_args(p)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ precision


@pytest.mark.parametrize("native, setting, device, expected", [
    (True, "auto", "cpu", "bf16"), (False, "auto", "cpu", "fp32"), (True, "bf16", "cpu", "bf16"),
    (True, "off", "cpu", "fp32"), (False, "off", "cpu", "fp32")])
def test_precision_is_chosen_from_the_hardware(monkeypatch, native, setting, device, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.resolve(setting, device) == expected


def test_bf16_without_native_support_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ConfigError, match="no native bf16.*amp=auto"):
        precision.resolve("bf16", "cpu")
    with pytest.raises(ConfigError, match="amp must be one of"):
        precision.resolve("fp16", "cpu")
    argv = ["--recipe", "fmnist_rocl", *TINY_ROCL, "--epochs", "1", "--out", str(tmp_path / "r"), "--amp", "bf16"]
    assert pretrain.main(argv) == 2
    assert "no native bf16" in capsys.readouterr().err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("native", [True, False])
def test_the_run_records_its_precision(monkeypatch, tmp_path, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    out = supervised.train(trainer_args(["--recipe", "fmnist_at", *TINY, "--epochs", "1", "--out",
                                         str(tmp_path / "r")]))
    config = json.loads((out / "config.json").read_text())
    assert config["precision"] == ("bf16" if native else "fp32") and config["cpu_native_bf16"] is native
    assert config["amp"] == "auto"
    epochs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"epoch"' in x]
    assert [e["precision"] for e in epochs if e["record"] == "epoch"] == [config["precision"]]


def test_a_run_resumed_on_a_machine_of_another_precision_trains_on_in_its_precision(monkeypatch, tmp_path):
    """Sessions change machines: an fp32 run resumed where bf16 is native continues in bf16, and its export says
    which epochs trained in which."""
    argv = ["--recipe", "fmnist_at", *TINY, "--epochs", "2", "--out", str(tmp_path / "r")]
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    supervised.train(trainer_args([*argv, "--max-steps", "4"]))  # the first epoch (4 steps), then a checkpoint
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    out = supervised.train(trainer_args([*argv, "--resume"]))
    epochs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"record": "epoch"' in x]
    assert [e["precision"] for e in epochs] == ["fp32", "bf16"] and all(e["hardware"] for e in epochs)
    exported = json.loads(next(out.glob("*/config.json")).read_text())["rocl_zoo"]["training"]
    assert exported["precision"] == "fp32 (epoch 1); bf16 (epoch 2)"


def test_trained_precision_names_each_span_of_epochs():
    from rocl_zoo.loop import trained_precision

    recs = lambda *ps: [{"epoch": i + 1, "precision": p} for i, p in enumerate(ps)]  # noqa: E731
    assert trained_precision([], "fp32") == "fp32"
    assert trained_precision(recs("bf16", "bf16"), "fp32") == "bf16"
    assert trained_precision(recs("fp32", "fp32", "bf16", "fp32"), "bf16") == \
        "fp32 (epochs 1-2); bf16 (epoch 3); fp32 (epoch 4)"
    assert trained_precision([{"epoch": 1}, {"epoch": 2, "precision": "bf16"}], "fp32") == \
        "fp32 (epoch 1); bf16 (epoch 2)"  # records from before precision was recorded: the default


@pytest.mark.parametrize("native", [True, False])
def test_the_hardware_line_names_the_vector_isa_and_its_threads(monkeypatch, native):
    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: native)
    line = utils.hardware_name("cpu")
    isa = torch.backends.cpu.get_cpu_capability()
    assert (f"({isa}, native bf16)," if native else f"({isa}),") in line
    assert utils.hardware_threads(line) == torch.get_num_threads() and utils.hardware_clock(line) == "CPU"


# ------------------------------------------------------------------------------------------------ one step per method


def test_supervised_and_finetune_train_pgd_at_with_the_same_step(monkeypatch, tmp_path):
    """training.supervised and rocl_zoo.finetune --mode at both call steps.pgd_at_step; on the same batch, model
    and seed it gives the same update whoever calls it."""
    from rocl_zoo import finetune

    callers = []
    real = steps.pgd_at_step

    def recording(model, x, y, **kw):
        callers.append(dict(x=x.clone(), y=y.clone(), state={k: v.clone() for k, v in model.state_dict().items()},
                            seed=kw["generator"].initial_seed(), kw={k: v for k, v in kw.items()
                                                                     if k not in ("generator", "net", "amp")}))
        return real(model, x, y, **kw)

    monkeypatch.setattr(steps, "pgd_at_step", recording)
    supervised.train(trainer_args(["--recipe", "fmnist_at", *TINY, "--epochs", "1", "--max-steps", "1", "--amp",
                                   "off", "--set", "eps=0.1", "--out", str(tmp_path / "sup")]))
    enc = tmp_path / "enc"
    rocl_zoo.save_pretrained(rocl_zoo.create_model("cnn4_rocl", num_classes=0), enc, dataset="fashion_mnist")
    with pytest.raises(finetune.FinetuneInterrupted):
        finetune.finetune(str(enc), "digits", mode="at", image_size=8, epochs=1, batch_size=16, steps=2, subset=40,
                          max_steps=1, amp="off", progress=False, device="cpu", out=tmp_path / "ft")
    assert len(callers) == 2  # one step each, through the same function

    def update(call):
        model = rocl_zoo.create_model("cnn4_rocl", num_classes=10, in_chans=1)
        model.load_state_dict(call["state"])
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        real(model, call["x"], call["y"], generator=torch.Generator().manual_seed(call["seed"]),
             **call["kw"]).objective.backward()
        opt.step()
        return model.state_dict()

    for call in callers:
        a, b = update(call), update(call)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_attack_view_folds_bn_and_keeps_the_function():
    torch.manual_seed(0)
    for arch, shape in (("cnn4_rocl", (1, 28, 28)), ("resnet18_rocl", (3, 32, 32))):
        model = rocl_zoo.create_model(arch, num_classes=10, in_chans=shape[0])
        model.train()
        model(torch.rand(16, *shape))  # BN statistics that are not the identity
        model.eval()
        folded = attack_view(model)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        assert model.training is False and all(p.requires_grad for p in model.parameters())
        x = torch.rand(4, *shape, requires_grad=True)
        g1, = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), torch.arange(4)), x)
        g2, = torch.autograd.grad(torch.nn.functional.cross_entropy(folded(x), torch.arange(4)), x)
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(g2, g1, rtol=1e-3, atol=1e-5)


def test_trades_normalises_clean_and_adversarial_images_as_one_batch():
    """The step's clean and adversarial logits are those of one train-mode batch of both (BN statistics of the mix,
    as its running statistics at evaluation), not of two batches with their own statistics."""
    torch.manual_seed(0)
    model = rocl_zoo.create_model("cnn4_rocl", num_classes=10, in_chans=1).train()
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)
    out = steps.trades_step(model, x, y, eps=0.1, alpha=0.05, steps=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        together = model(torch.cat([x, out.x_adv]))
        apart = model(x)
    torch.testing.assert_close(out.logits, together[:8], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out.logits, apart, rtol=1e-3, atol=1e-3)
    kl = torch.nn.functional.kl_div(together[8:].log_softmax(1), together[:8].softmax(1), reduction="batchmean")
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(together[:8], y) + 6.0 * kl,
                               rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ kill, Ctrl-C


def _wait_for(path: Path, proc, timeout=120):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


def _pretrain_cmd(out, *extra):
    return [sys.executable, "-m", "training.pretrain", "--recipe", "fmnist_rocl", *TINY_ROCL, "--epochs", "30",
            "--set", "ckpt_every=3", "--out", str(out), *extra]


def _finetune_cmd(encoder, out, *extra):
    return [sys.executable, "-m", "rocl_zoo.finetune", "--model", str(encoder), "--dataset", "digits", "--mode", "at",
            "--image-size", "8", "--epochs", "20", "--batch-size", "16", "--steps", "2", "--subset", "120",
            "--val-examples", "10", "--eval-examples", "20", "--checkpoint-every", "2", "--threads", "1", "--quiet",
            "--device", "cpu", "--out", str(out), *extra]


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["pretrain", "finetune"])
def test_resume_after_a_kill_is_bit_identical(tmp_path, trainer):
    """SIGKILL mid-run (no chance to clean up), then --resume: the same weights as a run never interrupted."""
    if trainer == "pretrain":
        cmd, weights, total = _pretrain_cmd, "encoder/model.safetensors", 120
    else:
        encoder = tmp_path / "enc"
        torch.manual_seed(0)
        rocl_zoo.save_pretrained(rocl_zoo.create_model("cnn4_rocl", num_classes=0), encoder, dataset="fashion_mnist")
        cmd, weights, total = (lambda out, *e: _finetune_cmd(encoder, out, *e)), "classifier/model.safetensors", 140
    subprocess.run(cmd(tmp_path / "straight"), cwd=ROOT, env=ENV, check=True, capture_output=True)
    proc = subprocess.Popen(cmd(tmp_path / "killed"), cwd=ROOT, env=ENV, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    _wait_for(tmp_path / "killed" / "checkpoint.pt", proc)
    proc.kill()
    proc.wait()
    step = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["step"]
    assert 2 <= step < total and not (tmp_path / "killed" / weights).exists()
    subprocess.run(cmd(tmp_path / "killed", "--resume"), cwd=ROOT, env=ENV, check=True, capture_output=True)
    a, b = load_file(tmp_path / "straight" / weights), load_file(tmp_path / "killed" / weights)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "killed").rglob(".*.tmp"))


def _assert_stopped_with_a_checkpoint(out: Path, total: int = 120):
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert 1 <= ck["step"] < total and logged[-1]["step"] == ck["step"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_after_a_step_with_a_checkpoint(tmp_path, sig):
    proc = subprocess.Popen(_pretrain_cmd(tmp_path / "r", "--set", "ckpt_every=1000"), cwd=ROOT, env=ENV,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    _wait_for(tmp_path / "r" / "metrics.jsonl", proc)  # the loop runs
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "--resume" in err and sig.name in err
    _assert_stopped_with_a_checkpoint(tmp_path / "r")


def test_a_repeated_signal_aborts_only_once_the_first_is_seconds_old(capsys):
    """A scheduler's SIGTERM and torchrun's copy of it reach a worker together: one request to stop, not an abort;
    a second Ctrl-C seconds later aborts."""
    from rocl_zoo.loop import _StopSignals

    stop = _StopSignals()
    stop._handle(signal.SIGTERM, None)
    stop._handle(signal.SIGTERM, None)
    assert stop.requested and "SIGTERM: stopping after this step" in capsys.readouterr().err
    stop.first -= _StopSignals.SAME
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)


def _rank_process(parent: int, rank: int) -> int:
    """The pid of torchrun's worker of `rank` (its children, read from /proc)."""
    for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in env:
            return int(pid)
    raise AssertionError(f"no rank {rank} among torchrun's processes")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds torchrun's workers in /proc")
def test_sigterm_to_one_torchrun_process_stops_every_process_after_the_same_step(tmp_path, torchrun):
    """A signal that reaches one process only (rank 1 here): every rank stops after the same step, rank 0 writes
    the checkpoint, and none waits forever in a collective the other has left."""
    cmd = [*torchrun("training.pretrain"), *_pretrain_cmd(tmp_path / "r", "--set", "ckpt_every=1000",
                                                           "--device", "cpu")[3:]]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        _wait_for(tmp_path / "r" / "metrics.jsonl", proc)
        os.kill(_rank_process(proc.pid, 1), signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:  # a hung rank must not outlive the test
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and err.count("SIGTERM: stopping after this step") == 1, err[-3000:]
    _assert_stopped_with_a_checkpoint(tmp_path / "r")


def test_stale_temporaries_are_removed_on_resume(tmp_path):
    out = tmp_path / "r"
    supervised.train(trainer_args(["--recipe", "fmnist_at", *TINY, "--epochs", "1", "--max-steps", "1",
                                   "--out", str(out)]))
    stale = out / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    supervised.train(trainer_args(["--recipe", "fmnist_at", *TINY, "--epochs", "1", "--out", str(out), "--resume"]))
    assert not stale.exists() and (out / "model" / "model.safetensors").is_file()
