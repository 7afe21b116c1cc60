"""training.reproduce: the whole experiment matrix at toy scale, end to end, then only what a lost result needs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rocl_zoo.results import is_results_file, read
from training.matrix import ENTRIES, TRAIN_IMAGES, Paths, items
from training.reproduce import STAMPS, Matrix

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("pyautoattack")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # 4-6 minutes alone: every stage of the zoo, once


def reproduce(tmp: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "ROCL_ZOO_WEIGHTS": str(tmp / "weights"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "training.reproduce", "--scale", "toy", "--results", str(tmp / "results"),
           "--runs", str(tmp / "runs"), "--threads", "1", "--in-process", *args]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


def ran(out: subprocess.CompletedProcess) -> list[str]:
    return [line[4:] for line in out.stdout.splitlines() if line.startswith("=== ")]


def check_output(path: Path) -> None:
    assert path.is_file(), path
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        assert load_file(str(path))
    else:  # every other output is a results file (rocl_zoo.evaluate's or rocl_zoo.finetune's)
        r = read(path)
        assert r.n > 0 and r.accuracy("clean") is not None, path


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toy")
    first = reproduce(tmp, "all")
    return tmp, first


def test_whole_matrix_runs_and_every_output_parses(toy):
    tmp, first = toy
    matrix = items(Paths(tmp / "results", tmp / "runs", tmp / "weights"), "toy")
    assert ran(first) == list(matrix)  # every item once, in dependency order
    logged = [line for line in first.stdout.splitlines() if "its epochs are logged in" in line]
    assert any(line.endswith("runs/fmnist_rocl_at/metrics.jsonl") for line in logged), logged
    for item in matrix.values():
        for out in item.outputs:
            check_output(Path(out))
    registry = json.loads((tmp / "weights" / "registry.json").read_text())
    assert sorted(registry) == sorted(e.name for e in ENTRIES)
    assert all(r["sha256"] and r["metrics"]["check"]["n_examples"] for r in registry.values())
    index = json.loads((tmp / "results" / "index.json").read_text())["results"]
    assert len(index) == sum(1 for p in (tmp / "results").rglob("*.json") if is_results_file(p))
    # a recipe with a held-out curve runs in results/curves/ and ships its best held-out epoch
    curve = tmp / "results" / "curves" / "fmnist_at"
    assert any("heldout_pgd" in line for line in (curve / "metrics.jsonl").read_text().splitlines())
    assert "curves/fmnist_at/best" in " ".join(map(str, matrix["release/cnn4_rocl.fmnist_at"].argv))
    assert "0 items to run" in reproduce(tmp, "--dry-run").stdout


def test_a_lost_result_is_remade_with_only_what_depends_on_it(toy):
    tmp, _ = toy
    victim = "eval/cnn4_rocl.fmnist_at/none/Linf-8_255/pgd-n12"
    path = tmp / "results" / (victim.removeprefix("eval/") + ".json")
    before = read(path).accuracy("pgd20")
    path.unlink()
    dry = reproduce(tmp, "--dry-run").stdout
    assert "run missing" in dry and victim in dry and "release/cnn4_rocl.fmnist_at" in dry
    again = reproduce(tmp, "all")
    # the release re-ships the same weights with the new results file; what reads the shipped weights (the
    # fine-tuning and transfers from this entry) sees the same tensors and is not redone
    assert ran(again) == [victim, "release/cnn4_rocl.fmnist_at"]
    assert read(path).accuracy("pgd20") == before  # seeded: the same number again
    assert "0 items to run" in reproduce(tmp, "--dry-run").stdout


def test_items_run_in_the_order_named(toy):
    tmp, _ = toy
    first, second = "eval/cnn4_rocl.fmnist_at/none/Linf-8_255/pgd-n12", "eval/cnn4_rocl.fmnist_at/none/L2-1.5/pgd-n12"
    matrix = list(items(Paths(tmp / "results", tmp / "runs", tmp / "weights"), "toy"))
    assert matrix.index(first) < matrix.index(second)
    for victim in (first, second):
        (tmp / "results" / (victim.removeprefix("eval/") + ".json")).unlink()
    assert ran(reproduce(tmp, second, first)) == [second, first]  # not the matrix's order
    assert ran(reproduce(tmp, "all")) == ["release/cnn4_rocl.fmnist_at"]  # re-ships with the new files


def test_changed_weights_make_their_measurements_stale(toy):
    tmp, _ = toy
    weights = tmp / "results" / "curves" / "fmnist_trades" / "best" / "model.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    key = next(k for k in state if k.endswith("weight"))
    state[key] = state[key] * 0.5
    save_file(state, str(weights))
    dry = reproduce(tmp, "--dry-run", "cnn4_rocl.fmnist_trades").stdout
    stale = [line.split()[-1] for line in dry.splitlines() if line.startswith("run stale")]
    assert stale and all(s.startswith(("eval/cnn4_rocl.fmnist_trades/", "release/cnn4_rocl.fmnist_trades"))
                         for s in stale)
    assert any(s.startswith("eval/") for s in stale)


def test_a_release_made_by_hand_can_be_recorded(toy):
    tmp, _ = toy
    stamps, item = tmp / "results" / "stamps.json", "release/cnn4_rocl.fmnist_at"
    data = json.loads(stamps.read_text())
    made = data.pop(item)
    stamps.write_text(json.dumps(data))  # as `python -m training.release` run by itself leaves it
    assert "recorded " + item in reproduce(tmp, "--record", item).stdout
    assert json.loads(stamps.read_text())[item] == made


def test_an_unrecorded_item_is_remade_after_what_it_needs(toy):
    tmp, _ = toy
    stamps, release = tmp / "results" / "stamps.json", "release/cnn4_rocl.fmnist_at"
    victim = "eval/cnn4_rocl.fmnist_at/none/L2-1.5/pgd-n12"
    data = json.loads(stamps.read_text())
    data.pop(release)  # a release from before stamps were recorded
    stamps.write_text(json.dumps(data))
    (tmp / "results" / (victim.removeprefix("eval/") + ".json")).unlink()
    assert ran(reproduce(tmp, "cnn4_rocl.fmnist_at")) == [victim, release]


def test_a_fresh_clone_reads_the_shipped_flagship_instead_of_training_it(toy):
    tmp, _ = toy
    import shutil

    curve = tmp / "results" / "curves" / "fmnist_resnet18_rocl"
    for p in curve.iterdir():  # what git holds of the flagship's run: its curve, not its exported folders
        if p.name not in ("config.json", "metrics.jsonl"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    shutil.rmtree(tmp / "runs" / "fmnist_resnet18_rocl")
    dry = reproduce(tmp, "--dry-run", "resnet18_rocl.fmnist").stdout
    planned = [line.split()[-1] for line in dry.splitlines() if line.startswith("run ")]
    assert "train/fmnist_resnet18_rocl" not in planned, dry
    assert planned and all(p.startswith(("head/resnet18_rocl.fmnist/", "eval/resnet18_rocl.fmnist/"))
                           for p in planned), dry
    assert "python -m rocl_zoo.evaluate resnet18_rocl.fmnist " in dry  # the heads read the shipped encoder


def test_a_head_writes_its_run_folder_where_the_shipped_entry_stands_in_for_it(toy):
    """The shipped entry stands in for the run folders an item reads, never for one it writes: a head whose encoder
    is new here saves its classifier into its run folder, not into a folder named after the entry."""
    tmp, _ = toy
    import shutil

    head = tmp / "runs" / "fmnist_rocl" / "linear"
    shutil.rmtree(head)
    out = reproduce(tmp, "head/cnn4_rocl.fmnist/linear")
    assert ran(out) == ["head/cnn4_rocl.fmnist/linear"]
    assert (head / "model.safetensors").is_file() and not (ROOT / "cnn4_rocl.fmnist").exists()


def test_a_stood_in_item_is_made_again_once_what_it_was_made_from_changed(toy):
    """A clone has the shipped RoCL+AT, not its run folder: the entry stands in for it until the encoder it was
    fine-tuned from is released anew (its stamp then says so), when it must be fine-tuned again."""
    tmp, _ = toy
    import shutil

    from training.reproduce import UNRECORDED

    def planned():
        dry = reproduce(tmp, "--dry-run", "cnn4_rocl.fmnist_rocl_at").stdout
        return [line.split()[-1] for line in dry.splitlines() if line.startswith("run ")]

    item, stamps = "finetune/cnn4_rocl.fmnist_rocl_at", tmp / "results" / "stamps.json"
    shutil.rmtree(tmp / "runs" / "fmnist_rocl_at")
    assert item not in planned()
    stamps.write_text(json.dumps({**json.loads(stamps.read_text()), item: UNRECORDED}))  # its encoder was remade
    assert item in planned()


def test_two_reproduce_processes_keep_each_others_stamps(tmp_path):
    paths = Paths(tmp_path / "results", tmp_path / "runs", tmp_path / "weights")
    paths.results.mkdir()
    first, second = "train/fmnist_at", "train/fmnist_trades"
    (paths.results / STAMPS).write_text(json.dumps({first: "before", second: "before"}))
    a, b = Matrix(paths, "toy"), Matrix(paths, "toy")  # both started before either recorded anything
    a.record(a.items[first], remade=False)
    b.record(b.items[second], remade=False)  # must not put back the value of `first` it read at its start
    stamps = json.loads((paths.results / STAMPS).read_text())
    assert stamps[first] == a.stamps[first] != "before" and stamps[second] == b.stamps[second] != "before"


def test_an_unrecorded_marker_does_not_overwrite_a_stamp_recorded_since(tmp_path):
    """One process remakes a head (its evaluations, never stamped, are marked unrecorded); another then evaluates
    the new head and stamps that; when the first records again, the evaluation's real stamp must stay."""
    from training.reproduce import UNRECORDED

    paths = Paths(tmp_path / "results", tmp_path / "runs", tmp_path / "weights")
    paths.results.mkdir()
    a = Matrix(paths, "toy")
    head = next(i for i in a.items.values() if any(i.name in o.needs for o in a.items.values()))
    dependant = next(o for o in a.items.values() if head.name in o.needs)
    a.record(head)
    assert json.loads((paths.results / STAMPS).read_text())[dependant.name] == UNRECORDED
    b = Matrix(paths, "toy")
    b.stamp = lambda item: "made from the new head"  # its inputs need not exist here
    b.record(dependant, remade=False)
    a.record(head)  # e.g. the next item of a's run
    assert json.loads((paths.results / STAMPS).read_text())[dependant.name] == "made from the new head"


def test_eval_batch_changes_how_an_evaluation_runs_not_what_it_is(tmp_path):
    from training.reproduce import command

    m = Matrix(Paths(tmp_path / "results", tmp_path / "runs", tmp_path / "weights"), "full")
    item = m.items["eval/cnn4_rocl.fmnist_at/none/Linf-0.1/autoattack-n1000"]
    plain, big = command(m, item, 1), command(m, item, 1, eval_batch=1000)
    assert plain[plain.index("--batch-size") + 1] == "100"  # the matrix's, for a CPU's .partial
    assert big.count("--batch-size") == 1 and big[big.index("--batch-size") + 1] == "1000"
    without = lambda argv: argv[:argv.index("--batch-size")] + argv[argv.index("--batch-size") + 2:]  # noqa: E731
    assert without(big) == without(plain)
    stamp = m.stamps.get(item.name)
    assert command(m, m.items["train/fmnist_at"], 1, eval_batch=1000) == command(m, m.items["train/fmnist_at"], 1)
    assert m.stamps.get(item.name) == stamp  # nothing recorded: what the item is did not change


def test_a_recipe_field_added_since_the_runs_were_stamped_counts_only_away_from_its_neutral_value(tmp_path):
    import dataclasses

    from training.recipes import ADDED_SINCE_STAMPED, get_recipe

    r = get_recipe("fmnist_dynacl_pp")
    assert set(r.to_dict()) - set(r.stamped()) == set(ADDED_SINCE_STAMPED)  # each at its neutral value here
    assert dataclasses.replace(r, pseudo_clusters=30).stamped()["pseudo_clusters"] == 30
    m = Matrix(Paths(tmp_path / "results", tmp_path / "runs", tmp_path / "weights"), "full")
    assert m.items["train/fmnist_dynacl_pp"].spec["recipe"] == r.stamped()


def test_slow_attacks_are_costed_by_what_the_classifier_keeps():
    """AutoAttack's later stages run on the images still unbroken: a non-robust classifier's costs minutes."""
    from training.reproduce import estimate, survivor_fit

    assert survivor_fit([(0.0, 0.5), (0.5, 5.5), (1.0, 10.5)]) == pytest.approx((0.5, 10.0))
    assert survivor_fit([(0.5, 1.0), (0.5, 2.0)]) is None  # one fraction: no slope to fit
    rates = {"attack": {("cnn4_rocl", "autoattack"): 4.0, ("cnn4_rocl", "sanity"): 0.25}, "survivors": {("cnn4_rocl", "autoattack"): (0.5, 10.0)},
             "robust": {("cnn4_rocl.fmnist_simclr", "linear"): 0.0, ("cnn4_rocl.fmnist_at", "none"): 0.7}}
    tmp = Path("/nonexistent")
    item = {i.name: i for i in items(Paths(tmp / "results", tmp / "runs", tmp / "weights")).values()}
    simclr = item["eval/cnn4_rocl.fmnist_simclr/linear/Linf-0.1/autoattack-n1000"]
    simclr.cost["attacks"] = ["autoattack"]  # AutoAttack alone, without the cheap attacks beside it
    assert estimate(simclr, rates) == pytest.approx(750.0)  # 1,000 x (0.5 s + the sanity checks' 0.25)
    new = item["eval/cnn4_rocl.fmnist_dynacl/linear/Linf-0.1/autoattack-n1000"]
    new.cost["attacks"] = ["autoattack"]
    assert estimate(new, rates) == pytest.approx(4250.0)  # not measured yet: the median rate


def test_times_measured_on_a_gpu_do_not_cost_a_cpu_run(tmp_path):
    """The flagship's AutoAttack took 70 s on an H200: a CPU's estimate must not read that (its accuracy counts)."""
    from training.reproduce import measured_rates

    source = Path(__file__).parents[1] / "results/resnet18_rocl.fmnist/linear/Linf-0.1/autoattack-n100.json"
    record = json.loads(source.read_text())
    assert "CUDA" in record["hardware"]
    out = tmp_path / "results" / "resnet18_rocl.fmnist" / "linear" / "Linf-0.1" / "autoattack-n100.json"
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps(record))
    rates = measured_rates(tmp_path / "results")
    assert ("resnet18_rocl", "autoattack") not in rates["attack"] and not rates["head"]
    assert rates["robust"][("resnet18_rocl.fmnist", "linear")] == pytest.approx(record["attacks"]["pgd20"]["acc"] / 100)
    out.write_text(json.dumps({**record, "hardware": "a CPU, 2 cores, 2 torch threads"}))
    assert measured_rates(tmp_path / "results")["attack"][("resnet18_rocl", "autoattack")] > 0


def test_an_interrupted_evaluation_is_costed_by_the_images_it_has_left(tmp_path):
    from training.reproduce import estimate, evaluated_images

    rates = {"attack": {("cnn4_rocl", "autoattack"): 4.0, ("cnn4_rocl", "sanity"): 0.25}, "survivors": {},
             "robust": {}}
    m = Matrix(Paths(tmp_path / "results", tmp_path / "runs", tmp_path / "weights"), "full")
    item = m.items["eval/cnn4_rocl.fmnist_dynacl/linear/Linf-0.1/autoattack-n1000"]
    item.cost["attacks"] = ["autoattack"]
    partial = Path(item.partial[0])
    partial.parent.mkdir(parents=True)
    partial.write_text(json.dumps({"fingerprint": "f", "batches": {"autoattack@0": "1" * 100}}))
    partial.with_name(partial.name + ".rank1").write_text(  # a torchrun sibling's batches count too
        json.dumps({"fingerprint": "f", "batches": {"autoattack@100": "01" * 50, "clean@0": "1" * 100}}))
    assert evaluated_images(item) == {"autoattack": 200, "clean": 100}
    assert estimate(item, rates) == pytest.approx(800 * 4.0 + 1000 * 0.25)  # the sanity checks run at the end


def test_a_recipe_never_run_here_is_costed_like_runs_of_its_kind(tmp_path):
    """RoCL-IP's step is RoCL's (same kind, architecture and attack): its estimate is fmnist_rocl's rate."""
    from rocl_zoo.precision import resolve
    from training.reproduce import estimate, measured_rates

    run = tmp_path / "results" / "curves" / "fmnist_rocl"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"name": "fmnist_rocl", "kind": "rocl", "arch": "cnn4_rocl",
                                                 "attack_steps": 7, "precision": resolve("auto", "cpu"),
                                                 "hardware": "a CPU, 2 cores, 1 torch threads"}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "images_per_s": 100.0}) + "\n"
                                               for i in range(8)))
    rates = measured_rates(tmp_path / "results")
    m = Matrix(Paths(tmp_path / "results", tmp_path / "runs", tmp_path / "weights"), "full")
    ip, resnet = m.items["train/fmnist_rocl_ip"], m.items["train/fmnist_resnet18_rocl"]
    assert estimate(ip, rates) == pytest.approx(0.01 * ip.cost["epochs"] * TRAIN_IMAGES)
    assert estimate(resnet, rates) is None  # RoCL too, on another architecture: nothing comparable measured


def test_a_head_is_costed_from_the_head_records_beside_the_runs(tmp_path):
    """An ALF head's record stays in runs/ until its classifier ships: the next head's estimate reads it."""
    from training.reproduce import estimate, measured_rates

    record = json.loads((Path(__file__).parents[1] / "runs/fmnist_dynacl/robust-linear.json").read_text())
    record["hardware"] = "a CPU, 2 cores, 2 torch threads"
    record["protocol_config"]["train_time_s"] = 600.0
    (tmp_path / "runs" / "fmnist_dynacl").mkdir(parents=True)
    (tmp_path / "runs" / "fmnist_dynacl" / "robust-linear.json").write_text(json.dumps(record))
    m = Matrix(Paths(tmp_path / "results", tmp_path / "runs", tmp_path / "weights"), "full")
    head = m.items["head/cnn4_rocl.fmnist_dynacl_pp/robust-linear"]
    rates = measured_rates(tmp_path / "results", tmp_path / "runs")
    assert estimate(head, rates) == pytest.approx(1200.0)
    # interrupted after 1 of its 5 epochs: the head's progress folder (rocl_zoo.linear's resume) says so
    keep = Path(head.partial[0]).parent
    keep.mkdir(parents=True)
    (keep / "checkpoint.pt").write_bytes(b"")
    (keep / "config.json").write_text(json.dumps({"epochs": 5, "total_steps": 200}))
    (keep / "metrics.jsonl").write_text(json.dumps({"record": "epoch", "epoch": 1, "step": 40}) + "\n")
    assert m.state(head) == "partial" and estimate(head, rates) == pytest.approx(960.0)


def test_an_interrupted_fine_tuning_is_costed_for_the_epochs_it_has_left(tmp_path):
    """A fine-tuning's config counts epochs, not steps: 5 of 20 epochs done leaves three quarters of its cost, at
    the precision this machine trains in."""
    from rocl_zoo.precision import resolve
    from training.reproduce import estimate, trained_fraction

    m = Matrix(Paths(tmp_path / "results", tmp_path / "runs", tmp_path / "weights"), "full")
    item = m.items["finetune/cnn4_rocl.fmnist_simclr_at"]
    run = Path(item.partial[0]).parent
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"")
    (run / "config.json").write_text(json.dumps({"epochs": 20}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        *({"record": "epoch", "epoch": e, "step": 100 * e} for e in range(1, 6)), {"record": "step", "step": 520}]))
    here = resolve("auto", "cpu")
    other = {"bf16": "fp32", "fp32": "bf16"}[here]
    assert trained_fraction(item) == pytest.approx(0.25)
    assert estimate(item, {"head": {(item.cost["key"], here): 400.0}}) == pytest.approx(300.0)
    # measured only in the other precision: scaled as training recipes measured in both run (median of 2 and 4)
    train = {("fmnist_at", here): 2.0, ("fmnist_at", other): 1.0, ("fmnist_rocl", here): 8.0,
             ("fmnist_rocl", other): 2.0, ("fmnist_simclr", here): 5.0}
    rates = {"head": {(item.cost["key"], other): 400.0}, "train": train}
    assert estimate(item, rates) == pytest.approx(400.0 * 3 * 0.75)
    assert estimate(item, {"head": rates["head"], "train": {}}) is None  # nothing to scale by: not guessed


def test_an_interrupted_run_is_costed_at_its_own_epochs(tmp_path, capsys, monkeypatch):
    """Epochs the run itself trained on a CPU in this machine's precision price what it has left (their median,
    at each epoch's threads), ahead of recipes measured elsewhere; epochs in the other precision or on a GPU don't."""
    from rocl_zoo.precision import resolve
    import training.reproduce
    from training.reproduce import estimate, show

    monkeypatch.setattr(training.reproduce, "measured_rates", lambda *a: rates)
    here = resolve("auto", "cpu")
    other = {"bf16": "fp32", "fp32": "bf16"}[here]
    m = Matrix(Paths(tmp_path / "results", tmp_path / "runs", tmp_path / "weights"), "full")
    item = m.items["finetune/cnn4_rocl.fmnist_simclr_at"]
    run = Path(item.partial[0]).parent
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"")
    (run / "config.json").write_text(json.dumps({"epochs": 10, "hardware": "a CPU, 2 cores, 2 torch threads"}))
    epochs = [(other, None, 50.0), (here, None, 100.0), (here, "a CPU, 4 cores, 4 torch threads", 60.0),
              (here, None, 130.0), (here, "NVIDIA H200 (CUDA 12.8)", 1.0)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(
        {"record": "epoch", "epoch": e, "step": 100 * e, "time_s": t, "precision": p, "hardware": h}) + "\n"
        for e, (p, h, t) in enumerate(epochs, 1)))
    rates = {"head": {(item.cost["key"], here): 1e6}, "train": {}}
    assert estimate(item, rates) == pytest.approx(240.0 * 5)  # median of 200, 240, 260 CPU-s, 5 epochs left
    show(m, [item.name], [item.name], [])
    assert f"run partial 50%    20 min  {item.name}\n" in capsys.readouterr().out  # the dry run's line
    (run / "metrics.jsonl").write_text("".join(json.dumps(
        {"record": "epoch", "epoch": e, "step": 100 * e, "time_s": 9.0, "precision": other}) + "\n" for e in (1, 2)))
    assert estimate(item, rates) == pytest.approx(1e6 * 0.8)  # none in this precision: the recipes' rate


def test_sigterm_to_reproduce_is_passed_on_to_the_running_item(tmp_path):
    """`kill PID` of the reproduce process alone: the child gets SIGTERM too (a training run checkpoints, an
    evaluation keeps its batches) and reproduce stops after it, as on Ctrl-C."""
    import signal
    import threading

    from training.reproduce import _run_child

    marker = tmp_path / "child got SIGTERM"
    child = ("import pathlib, signal, sys, time\n"
             f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(marker)!r}).touch(), sys.exit(0)))\n"
             f"pathlib.Path({str(tmp_path / 'started')!r}).touch()\n"
             "time.sleep(60)\n")
    started = tmp_path / "started"

    def terminate_once_started():
        while not started.exists():
            threading.Event().wait(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=terminate_once_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        _run_child([sys.executable, "-c", child])
    assert marker.exists()
    assert signal.getsignal(signal.SIGTERM) == before  # the handler was this call's only
