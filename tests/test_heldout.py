"""Held-out curves: images kept out of training, measured each epoch; the best epoch exported; kept on resume."""
import json
import shutil

import torch
from safetensors.torch import load_file

from rocl_zoo.data import ImageTensorDataset
from training import heldout, pretrain, supervised
from test_pretrain import TINY as PRETRAIN_TINY, pretrain_args
from test_supervised import TINY as SUPERVISED_TINY, args as supervised_args

CURVE = ["--set", "holdout=32", "--set", "eval_every=1", "--set", "probe_examples=32", "--set", "probe_epochs=2"]


def epoch_records(run):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["record"] == "epoch"]


def check_curve(run, folder):
    epochs = epoch_records(run)
    assert [e["epoch"] for e in epochs] == [1, 2]
    for e in epochs:
        assert 0 <= e["heldout_pgd"] <= e["heldout_clean"] <= 100
    best = max(epochs, key=lambda e: e["heldout_pgd"])  # the first of equals
    assert epochs[-1]["heldout_best_epoch"] == best["epoch"]
    assert (run / "best" / "model.safetensors").is_file() and (run / folder / "model.safetensors").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["n_train"] == 64 - 32 and config["holdout"] == 32  # the held-out images are not trained on


def test_split_is_fixed_and_disjoint():
    ds = ImageTensorDataset(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), torch.arange(100) % 10,
                            list(range(10)))
    train, held = heldout.split(ds, 30, seed=0)
    again, held2 = heldout.split(ds, 30, seed=0)
    ids = lambda d: set(d.images.flatten().tolist())  # noqa: E731
    assert len(held) == 30 and len(train) == 70 and not ids(train) & ids(held)
    assert torch.equal(held.images, held2.images) and not torch.equal(held.images, heldout.split(ds, 30, 1)[1].images)


def test_supervised_run_records_its_curve_and_keeps_the_best(tmp_path):
    run = supervised.train(supervised_args(["--recipe", "fmnist_at", *SUPERVISED_TINY, *CURVE, "--out",
                                            str(tmp_path)]))
    check_curve(run, "model")


def test_pretraining_reads_out_a_probe_and_resume_keeps_the_best(tmp_path):
    full = pretrain.train(pretrain_args([*PRETRAIN_TINY, *CURVE, "--out", str(tmp_path / "full")]))
    check_curve(full, "encoder")
    part = tmp_path / "part"
    pretrain.train(pretrain_args([*PRETRAIN_TINY, *CURVE, "--out", str(part), "--max-steps", "3"]))
    pretrain.train(pretrain_args([*PRETRAIN_TINY, *CURVE, "--out", str(part), "--resume"]))
    curve = lambda run: [(e["heldout_clean"], e["heldout_pgd"], e["heldout_best_epoch"])  # noqa: E731
                         for e in epoch_records(run)]
    assert curve(part) == curve(full)  # exact resume: the same weights, so the same held-out numbers
    a, b = load_file(full / "best/model.safetensors"), load_file(part / "best/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_recipe_that_ships_its_last_epoch_keeps_no_best_folder(tmp_path):
    """SimCLR is not robust: its held-out robust accuracy cannot pick an epoch, so it ships its last (ship=last)."""
    from training.matrix import Paths, product

    run = pretrain.train(pretrain_args([*PRETRAIN_TINY, *CURVE, "--set", "ship=last", "--out", str(tmp_path)]))
    assert "heldout_best_epoch" in epoch_records(run)[-1] and not (run / "best").exists()
    paths = Paths(results=tmp_path / "results", runs=tmp_path / "runs", weights=tmp_path / "weights")
    assert product("fmnist_simclr", paths).name == "encoder" and product("fmnist_rocl", paths).name == "best"


def test_curve_table_reads_the_epoch_records(tmp_path):
    recs = [{"record": "step", "step": 1}, {"record": "epoch", "epoch": 1, "time_s": 60.0},
            {"record": "epoch", "epoch": 2, "time_s": 120.0, "heldout_clean": 80.0, "heldout_pgd": 70.5,
             "heldout_best_epoch": 2},
            {"record": "epoch", "epoch": 3, "time_s": 60.0, "heldout_clean": 81.0, "heldout_pgd": 69.0,
             "heldout_best_epoch": 2}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "config.json").write_text(json.dumps({"hardware": "a CPU, 2 cores, 2 torch threads", "holdout": 50}))
    assert [(r["epoch"], r["minutes"], r["n"]) for r in heldout.curve(tmp_path)] == [(2, 6, 50), (3, 8, 50)]
    table = heldout.markdown(tmp_path).splitlines()
    assert table[2] == "| 2 | 80.00 | 70.50 (best) | 6 |" and table[3] == "| 3 | 81.00 | 69.00 | 8 |"
    assert "CPU-minutes" in table[0]
    (tmp_path / "config.json").write_text(json.dumps({"hardware": "NVIDIA H200 (CUDA 13.0)", "holdout": 50}))
    assert "GPU-minutes" in heldout.markdown(tmp_path).splitlines()[0]  # a GPU's minutes are not CPU time
    assert heldout.curve(tmp_path)[0]["clock"] == "GPU"


def test_a_runs_budget_counts_cpu_threads_and_gpu_wall_time(tmp_path):
    from rocl_zoo.loop import RunFolder
    from training.release import training_budget

    recs = [{"record": "epoch", "epoch": 1, "time_s": 1800.0, "heldout_best_epoch": 1},
            {"record": "epoch", "epoch": 2, "time_s": 1800.0, "heldout_best_epoch": 1}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "config.json").write_text(json.dumps({"hardware": "a CPU, 2 cores, 2 torch threads"}))
    assert RunFolder(tmp_path).budget("best") == {"run": tmp_path.name, "epochs": 2, "shipped_epoch": 1, "clock": "CPU",
                                                  "hardware": "a CPU, 2 cores, 2 torch threads", "hours": 2.0}
    assert RunFolder(tmp_path).budget("encoder")["shipped_epoch"] == 2
    kept = [{**r, "best_epoch": 1} for r in recs]  # a keep_best fine-tuning: its classifier holds epoch 1
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    assert RunFolder(tmp_path).budget("classifier")["shipped_epoch"] == 1
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "config.json").write_text(json.dumps({"hardware": "NVIDIA H200 (CUDA 13.0)"}))
    assert RunFolder(tmp_path).budget("best")["hours"] == 1.0 and RunFolder(tmp_path / "none").budget() is None
    # resumed on another machine: each epoch counts at its own machine's threads, and the card names both
    other = [{**recs[0], "hardware": "a CPU, 2 cores, 2 torch threads"}, {**recs[1], "hardware": "a CPU, 1 torch threads"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in other))
    assert RunFolder(tmp_path).budget("best") | {"run": None} == {
        "run": None, "epochs": 2, "shipped_epoch": 1, "clock": "CPU", "hours": 1.5,
        "hardware": "a CPU, 2 cores, 2 torch threads (epoch 1); a CPU, 1 torch threads (epoch 2)"}
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    # a head on that encoder: the encoder's run first, then the head's own (none here: no metrics beside it)
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "config.json").write_text("{}")
    head = tmp_path / "heads" / "linear"
    head.mkdir(parents=True)
    (head / "config.json").write_text(json.dumps({"rocl_zoo": {"encoder": str(tmp_path / "best")}}))
    assert [s["run"] for s in training_budget(head)] == [tmp_path.name]
    shutil.rmtree(tmp_path / "best")  # a clone without the encoder's folder still has its run's records
    assert [s["run"] for s in training_budget(head)] == [tmp_path.name]
    # a head that records its training (rocl_zoo.evaluate --save-classifier), its results file beside it
    (head / "config.json").write_text(json.dumps({"rocl_zoo": {"encoder": str(tmp_path / "best"), "protocol": {
        "protocol": "robust-linear", "epochs": 5, "train_time_s": 1800.0}}}))
    (tmp_path / "heads" / "linear.json").write_text(json.dumps({"hardware": "a CPU, 2 cores, 2 torch threads"}))
    assert training_budget(head)[1] == {"run": "robust-linear head", "epochs": 5, "shipped_epoch": 5, "clock": "CPU",
                                        "hardware": "a CPU, 2 cores, 2 torch threads", "hours": 1.0}


def test_status_table_says_where_each_curve_stands(tmp_path):
    recs = [{"record": "epoch", "epoch": 1, "time_s": 600.0, "heldout_clean": 80.0, "heldout_pgd": 70.0,
             "heldout_best_epoch": 1},
            {"record": "epoch", "epoch": 2, "time_s": 600.0, "heldout_clean": 81.0, "heldout_pgd": 69.0,
             "heldout_best_epoch": 1}]
    for name in ("fmnist_at", "fmnist_simclr"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        (tmp_path / name / "config.json").write_text(json.dumps({"hardware": "a CPU, 2 cores, 1 torch threads"}))
    lines = heldout.status_markdown(tmp_path).splitlines()
    row = {line.split(" | ")[0].strip("|` "): line for line in lines[2:]}
    assert row["fmnist_at"].endswith("| 2 of 20 | 1 | 80.0 | 70.0 | 10 CPU-min | under way (resumes from its checkpoint) |")
    assert "| 2 | 81.0 | 69.0 | 20 CPU-min |" in row["fmnist_simclr"]  # SimCLR ships its last epoch
    assert row["fmnist_trades"].endswith("| 0 of 20 | – | – | – | – | not started |")


def test_equal_compute_table_counts_the_teacher_first_and_marks_unfinished_runs(tmp_path):
    def run(name, *epochs):  # (epoch, minutes on one thread, held-out PGD)
        (tmp_path / name).mkdir()
        recs = [{"record": "epoch", "epoch": e, "time_s": 60.0 * m, "heldout_clean": 80.0, "heldout_pgd": pgd,
                 "heldout_best_epoch": e} for e, m, pgd in epochs]
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        (tmp_path / name / "config.json").write_text(json.dumps({"hardware": "a CPU, 2 cores, 1 torch threads"}))

    run("fmnist_simclr", (30, 50, 0.0))  # finished: DeACL's teacher, 50 minutes
    run("fmnist_deacl", (2, 20, 40.0), (4, 20, 45.0))  # 4 of 10 epochs, 40 minutes so far
    run("fmnist_at", (10, 60, 70.0), (20, 60, 75.0))  # finished in 120 minutes
    lines = heldout.equal_compute_markdown(tmp_path, budgets=(75, 150)).splitlines()
    row = {line.split(" | ")[0].strip("|` "): line for line in lines[2:]}
    assert "fmnist_simclr" not in row  # not robust: only counted as a teacher
    assert row["fmnist_deacl"] == "| `fmnist_deacl` | `fmnist_simclr` (50) | a CPU | 40.0 | ≥ 45.0 | 45.0 / 80.0 (4, 90) |"
    assert row["fmnist_at"] == "| `fmnist_at` | – | a CPU | 70.0 | 75.0 | 75.0 / 80.0 (20, 120) |"
    assert row["fmnist_dynacl_pp"].endswith("| – | – | waits for `fmnist_dynacl` |")
    assert row["fmnist_rocl"].endswith("| – | – | not run yet |")
