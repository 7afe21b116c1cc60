"""Evaluation: attack specs (attack_suite), masking checks (sanity), linear probes, the CLI, results files, tables."""
import json

import pytest
import torch
from torch import nn

from rocl_zoo import attack_suite as suite
from rocl_zoo import attacks, results, sanity, threat
from rocl_zoo import evaluate as E
from rocl_zoo.errors import ConfigError
from rocl_zoo.results import SCHEMA, Result


# ------------------------------------------------------------------------------------------ attack specs

def test_parse_eps_and_attack_specs():
    assert threat.parse_eps("8/255") == pytest.approx(8 / 255) and threat.parse_eps("0.5") == 0.5
    assert threat.eps_str(8 / 255) == "8/255" and threat.eps_str(0.1) == "0.1"
    c = suite.parse_attack("pgd20", 8 / 255, "linf")
    assert (c["attack"], c["steps"], c["norm"], c["loss"], c["restarts"]) == ("pgd", 20, "linf", "ce", 1)
    assert c["alpha"] == pytest.approx(8 / 255 / 10)  # the protocol: PGD-20 at step eps/10
    c = suite.parse_attack("pgd20-l2", 8 / 255, "linf")  # an unseen norm gets that norm's usual budget
    assert (c["norm"], c["eps"], c["threat_model"]) == ("l2", 0.5, "L2")
    assert suite.parse_attack("pgd50-cwx3@0.2", 0.1, "linf")["restarts"] == 3
    assert suite.parse_attack("cw", 0.1, "linf")["loss"] == "margin"
    assert suite.parse_attack("autoattack", 0.1, "l2")["norm"] == "l2"


@pytest.mark.parametrize("spec,eps,match", [("pgd", 0.1, "unknown attack"), ("bim10", 0.1, "unknown attack"),
                                            ("pgd0", 0.1, "1 to 10,000 steps"),
                                            ("pgd1000000", 0.1, "1 to 10,000 steps"), ("pgd20x1000", 0.1, "restarts"), ("pgd20@x", 0.1, "not a number"),
                                            ("pgd20", 8.0, "8/255"), ("pgd20", -0.1, "eps")])
def test_bad_specs_and_eps(spec, eps, match):
    with pytest.raises(ConfigError, match=match):
        suite.parse_attack(spec, eps, "linf")


# ------------------------------------------------------------------------------- gradient-masking checks

class Quantised(nn.Module):
    """A deliberately gradient-masked model: 8-bit input quantisation (torch.round) has zero gradient."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 255) / 255)


def teacher_data(n=96, d=64, k=10, seed=0):
    """A linear model and inputs it classifies with 100 % accuracy (labels are its own predictions)."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g))
        lin.bias.zero_()
    model = nn.Sequential(nn.Flatten(), lin)
    x = torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_sanity_checks_fire_on_a_gradient_masked_model():
    plain, x, y = teacher_data()
    masked = Quantised(plain)
    assert attacks.accuracy(masked, x, y) == 1.0
    out = sanity.run_sanity_checks(masked, x, y, eps=0.05, norm="linf", num_classes=10, source_model=plain,
                              source_name="plain")
    assert not out["passed"]
    assert {"large_eps_chance", "black_box_not_stronger"} <= set(out["flags"]), out
    checks = {c["name"]: c for c in out["checks"]}
    assert checks["large_eps_chance"]["values"]["accuracy"] > 0.9


def test_sanity_checks_stay_quiet_on_a_plain_model():
    plain, x, y = teacher_data()
    out = sanity.run_sanity_checks(plain, x, y, eps=0.05, norm="linf", num_classes=10, source_model=plain,
                              source_name="plain")
    assert out["passed"], out
    out = sanity.run_sanity_checks(plain, x, y, eps=1.0, norm="l2", num_classes=10)
    assert out["passed"], out
    assert {c["name"]: c["ok"] for c in out["checks"]}["black_box_not_stronger"] is None  # skipped, not failed


def test_autoattack_and_eps_checks_fire():
    assert sanity.check_autoattack(pgd_acc=0.40, aa_acc=0.45, n=1000)["ok"] is False  # AA weaker than PGD: a bug
    assert sanity.check_autoattack(pgd_acc=0.60, aa_acc=0.20, n=1000)["ok"] is False  # PGD far above AA: masking
    assert sanity.check_autoattack(pgd_acc=0.42, aa_acc=0.40, n=1000)["ok"] is True
    assert sanity.check_black_box(0.3, 0.1, n=1000)["ok"] is False

    class RisingWithEps(nn.Module):  # accuracy that grows with the perturbation: must be flagged
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            far = (x - 0.5).abs().flatten(1).amax(1) > 0.45  # only heavily perturbed inputs are "correct"
            return torch.stack([far.float(), 1 - far.float()], 1) + 0 * self.w

    x = torch.full((32, 1, 4, 4), 0.5)
    out = sanity.check_eps_monotone(RisingWithEps(), x, torch.zeros(32, dtype=torch.long), eps=0.4, norm="linf")
    assert out["ok"] is False


def test_autoattack_on_a_subset_reports_pgd_on_the_same_images():
    plain, x, y = teacher_data(n=40)
    # at this eps APGD-CE breaks every image, so AutoAttack's slow later stages have nothing left to do
    r = E.evaluate(plain, x, y, attacks="clean,pgd10,autoattack", eps=0.08, autoattack_examples=12, sanity=True,
                   sanity_examples=30, progress=False)
    aa, sub = r["attacks"]["autoattack"], r["autoattack_subset"]
    assert aa["n_examples"] == 12 == r["autoattack_n_examples"] == sub["n_examples"] and r["n_examples"] == 40
    assert "n_examples" not in r["attacks"]["pgd10"]
    # the subset is the seed's fixed one: PGD re-run on exactly those images gives the recorded number
    idx = torch.randperm(40, generator=torch.Generator().manual_seed(0))[:12]
    again = E.evaluate(plain, x[idx], y[idx], attacks="clean,pgd10", eps=0.08, progress=False)
    assert (sub["pgd_acc"], sub["clean_acc"]) == (again["pgd_acc"], again["clean_acc"])
    assert r["autoattack_acc"] <= sub["pgd_acc"] + 1e-9
    check = next(c for c in r["sanity"]["checks"] if c["name"] == "autoattack_vs_pgd")
    assert check["ok"] is not None  # compared on AutoAttack's own 12 images, not the sanity checks' 30
    assert 100 * check["values"]["pgd_acc"] == pytest.approx(sub["pgd_acc"], abs=0.01)
    assert "(n=12)" in results.render_table([Result(r)])
    with pytest.raises(ConfigError, match="autoattack_examples"):
        E.evaluate(plain, x, y, attacks="clean", autoattack_examples=-1, progress=False)

def test_apgd_is_autoattacks_two_untargeted_attacks_with_one_restart(monkeypatch):
    cfg = suite.parse_attack("apgd", 0.1, "linf")
    assert (cfg["attacks"], cfg["iterations"], cfg["restarts"]) == (["apgd-ce", "apgd-dlr"], 100, 1)
    pyaa = pytest.importorskip("pyautoattack")
    seen = {}
    run = pyaa.AutoAttack.run_standard_evaluation

    def spy(self, *a, **kw):  # the package's own default for a custom run would be 5 restarts
        seen.update(restarts=self.apgd.n_restarts, iters=self.apgd.n_iter, attacks=list(self.attacks_to_run))
        return run(self, *a, **kw)

    monkeypatch.setattr(pyaa.AutoAttack, "run_standard_evaluation", spy)
    plain, x, y = teacher_data(n=16)
    r = E.evaluate(plain, x, y, attacks="clean,pgd10,apgd", eps=0.08, progress=False)
    assert seen == {"restarts": 1, "iters": 100, "attacks": ["apgd-ce", "apgd-dlr"]}
    assert r["attacks"]["apgd"]["acc"] <= r["attacks"]["clean"]["acc"]


def test_evaluate_with_transfer_and_sanity_results_dict():
    plain, x, y = teacher_data(n=48)
    r = E.evaluate(Quantised(plain), x, y, attacks="clean,fgsm,pgd10,pgd10-l2", eps=0.05, norm="linf",
                   source_model=plain, source_name="plain", sanity=True, progress=False,
                   meta={"model": "masked", "dataset": "synthetic"})
    assert r["clean_acc"] == 100.0 and r["threat_model"] == "Linf" and r["autoattack_acc"] is None
    # one unit: percent everywhere, full precision in the attacks block, two decimals in RobustBench's keys
    assert r["schema"] == SCHEMA and r["attacks"]["clean"]["acc"] == 100.0
    assert r["pgd_acc"] == round(r["attacks"]["pgd10"]["acc"], 2) and 0 <= r["attacks"]["fgsm"]["acc"] <= 100
    assert set(r["attacks"]) == {"clean", "fgsm", "pgd10", "pgd10-l2", "transfer-fgsm", "transfer-pgd10",
                                 "transfer-pgd10-l2"}
    assert r["attacks"]["transfer-pgd10"]["acc"] < r["attacks"]["pgd10"]["acc"]
    assert r["robust_acc"] <= r["pgd_acc"] and not r["sanity"]["passed"]
    json.dumps(r)  # serialisable


def test_an_interrupted_evaluation_resumes_where_it_stopped(tmp_path, monkeypatch):
    plain, x, y = teacher_data(n=40)
    kw = dict(attacks="clean,pgd10,fgsm", eps=0.05, batch_size=8, source_model=plain, source_name="plain",
              progress=False)
    whole = E.evaluate(plain, x, y, **kw)
    partial = tmp_path / "r.json.partial"
    calls, real, stop_at = [], suite.run_attack, [7]

    class Interrupted(Exception):
        pass

    def count_and_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) in stop_at:
            raise Interrupted
        return real(*args, **kwargs)

    monkeypatch.setattr(suite, "run_attack", count_and_stop)
    with pytest.raises(Interrupted):
        E.evaluate(plain, x, y, resume=partial, **kw)
    assert len(json.loads(partial.read_text())["batches"]) == 5 + 5 + 1  # clean's 5 batches, pgd10's, fgsm's first
    calls.clear()
    stop_at.clear()
    again = E.evaluate(plain, x, y, resume=partial, **kw)
    # the 4 attacks' 20 batches less the 6 done; the same numbers as the run nobody stopped
    assert len(calls) == 4 * 5 - 6 and again["resumed_batches"] == 11 and not partial.exists()
    assert {k: v["acc"] for k, v in again["attacks"].items()} == {k: v["acc"] for k, v in whole["attacks"].items()}
    assert 0 < again["pgd_acc"] < 100 and again["robust_acc"] == whole["robust_acc"]
    # each attack's wall time is for what this run attacked itself: the cost estimates divide by that
    assert {k: v["attacked_here"] for k, v in again["attacks"].items()} == {
        "clean": 0, "pgd10": 0, "fgsm": 32, "transfer-pgd10": 40, "transfer-fgsm": 40}
    # progress saved by another evaluation (here: another budget) is not reused
    calls.clear()
    stop_at.append(7)
    with pytest.raises(Interrupted):
        E.evaluate(plain, x, y, resume=partial, **kw)
    calls.clear()
    stop_at.clear()
    other = E.evaluate(plain, x, y, resume=partial, **{**kw, "eps": 0.06})
    assert len(calls) == 4 * 5 and "resumed_batches" not in other and not partial.exists()
    # the shards of a sharded (torchrun) run that stopped are read whatever the number of processes now
    calls.clear()
    stop_at.append(7)
    with pytest.raises(Interrupted):
        E.evaluate(plain, x, y, resume=partial, **kw)
    partial.rename(tmp_path / "r.json.partial.rank1")  # as rank 1 of a two-process run would have left it
    calls.clear()
    stop_at.clear()
    from_shard = E.evaluate(plain, x, y, resume=partial, **kw)
    assert len(calls) == 4 * 5 - 6 and from_shard["resumed_batches"] == 11 and not list(tmp_path.glob("r.json*"))
    assert from_shard["robust_acc"] == whole["robust_acc"]


# ----------------------------------------------------------------------------------------- linear probes

def blobs(n, seed):
    """Two-class images told apart by their left-half brightness: a frozen random CNN separates them."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.1 + 0.3 * torch.rand(n, 1, 8, 8, generator=g)
    x[:, :, :, :4] += 0.5 * y.view(-1, 1, 1, 1)
    return x, y


def encoder():
    import timm

    import rocl_zoo  # noqa: F401  (registers the architectures)

    enc = timm.create_model("cnn4_rocl", num_classes=0, in_chans=1)
    # Calibrate BN on the data, as training would: with untouched running statistics a random CNN's eval-mode
    # features are ~0.01 and a linear head needs hundreds of steps to read them.
    for m in enc.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        enc.train()(blobs(256, 2)[0])
    return enc.eval()


def test_linear_head_learns_and_leaves_the_encoder_alone():
    from rocl_zoo.linear import milestones, train_linear_head

    enc = encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    clf = train_linear_head(enc, blobs(256, 0), num_classes=2, epochs=15, batch_size=32, progress=False)
    x, y = blobs(128, 1)
    assert attacks.accuracy(clf, x, y) > 0.9
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    assert enc.num_classes == 0 and clf.num_classes == 2 and not clf.training
    assert all(p.requires_grad for p in clf.parameters())
    assert milestones(150) == [30, 50, 100] and milestones(3) == [1, 2]

    rob = train_linear_head(enc, blobs(64, 0), num_classes=2, robust=True, epochs=1, steps=2, progress=False)
    assert torch.equal(rob.forward_features(x), enc.forward_features(x))  # encoder frozen in ALF too


# -------------------------------------------------------------------------------------------------- CLI

class TinySet(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y, self.classes = x, y, ["dark", "bright"]

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


@pytest.fixture
def saved_encoder(tmp_path, monkeypatch):
    from rocl_zoo.hub import save_pretrained

    enc = encoder()
    enc.pretrained_cfg = {**enc.pretrained_cfg, "input_size": (1, 8, 8)}  # the blobs' size
    folder = save_pretrained(enc, tmp_path / "enc", dataset="blobs", recipe="test")
    real = E._load_dataset  # other names go to rocl_zoo.data (and its errors)
    monkeypatch.setattr(E, "_load_dataset", lambda name, split, root=None, download=False: (
        TinySet(*blobs(96, 0 if split == "train" else 1)) if name == "blobs" else real(name, split, root, download)))
    return folder


def test_cli_linear_protocol_writes_results_classifier_and_table(saved_encoder, tmp_path, capsys):
    import rocl_zoo

    out = tmp_path / "results" / "enc.json"
    rc = E.main([str(saved_encoder), "--protocol", "linear", "--epochs", "10", "--linear-batch-size", "16", "--attacks", "clean,fgsm,pgd5",
                 "--eps", "0.05", "--n-examples", "48", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    r = json.loads(out.read_text())
    for key in ("clean_acc", "autoattack_acc", "eps", "dataset", "threat_model", "architecture", "n_examples",
                "seed", "hardware", "wall_time_s", "attacks", "protocol_config"):
        assert key in r, key
    assert r["dataset"] == "blobs" and r["architecture"] == "cnn4_rocl" and r["n_examples"] == 48
    assert r["batch_size"] == 256  # the default: it and the seed fix each batch's random draws
    from rocl_zoo.eval_progress import encoder_digest

    assert r["encoder_sha256"] == encoder_digest(rocl_zoo.load(saved_encoder)) != r["weights_sha256"]
    assert r["attacks"]["pgd5"]["config"]["steps"] == 5 and r["clean_acc"] > 80
    clf = rocl_zoo.load(r["classifier"])  # encoder + head in the Hub layout
    assert clf.num_classes == 2 and clf.pretrained_cfg["label_names"] == ("dark", "bright")
    x, y = blobs(48, 1)
    assert attacks.accuracy(clf, x, y) * 100 == pytest.approx(r["clean_acc"], abs=5)

    rc = E.main(["--table", str(tmp_path / "results")])
    table = capsys.readouterr().out
    assert rc == 0 and "| Model | Dataset | Protocol | Threat model | Clean | FGSM | pgd5 |" in table
    assert f"{r['clean_acc']:.2f}" in table and "Linf 0.05" in table


def test_cli_rerun_after_an_interruption_resumes_from_the_partial_file(saved_encoder, tmp_path, monkeypatch):
    clf = tmp_path / "clf.json"
    assert E.main([str(saved_encoder), "--protocol", "linear", "--epochs", "5", "--attacks", "clean", "--n-examples",
                   "48", "--out", str(clf), "--quiet"]) == 0
    out = tmp_path / "r.json"
    argv = [str(tmp_path / "clf.classifier"), "--attacks", "clean,pgd5", "--eps", "0.05", "--n-examples", "48",
            "--batch-size", "16", "--out", str(out), "--quiet"]
    real = suite.run_attack

    def power_cut(model, x, y, cfg, seed=0, verbose=False):
        if seed == 16:  # the second batch
            raise SystemExit("killed")
        return real(model, x, y, cfg, seed, verbose)

    monkeypatch.setattr(suite, "run_attack", power_cut)
    with pytest.raises(SystemExit):
        E.main(argv)
    assert not out.exists() and len(json.loads((tmp_path / "r.json.partial").read_text())["batches"]) == 3 + 1
    monkeypatch.setattr(suite, "run_attack", real)
    (tmp_path / ".r.json.partial.k1ll3d.tmp").write_text("{half a fi")  # a kill during an atomic write
    (tmp_path / ".other.json.x1.tmp").write_text("{")  # another file's write in progress: not ours to remove
    assert E.main(argv) == 0
    assert not (tmp_path / ".r.json.partial.k1ll3d.tmp").exists() and (tmp_path / ".other.json.x1.tmp").exists()
    r = json.loads(out.read_text())
    assert r["resumed_batches"] == 4 and not (tmp_path / "r.json.partial").exists()
    assert E.main([*argv[:-3], "--out", str(tmp_path / "whole.json"), "--quiet"]) == 0
    whole = json.loads((tmp_path / "whole.json").read_text())
    assert r["attacks"]["pgd5"]["acc"] == whole["attacks"]["pgd5"]["acc"] and "resumed_batches" not in whole


def test_cli_robust_linear_and_sanity(saved_encoder, tmp_path):
    out = tmp_path / "r.json"
    rc = E.main([str(saved_encoder), "--protocol", "robust-linear", "--epochs", "1", "--train-examples", "32",
                 "--attacks", "clean,pgd20", "--eps", "0.05", "--n-examples", "16", "--sanity",
                 "--sanity-examples", "8", "--out", str(out), "--quiet", "--name", "tiny.blobs", "--threads", "1"])
    assert rc == 0
    r = json.loads(out.read_text())
    assert (r["model"], r["source"]) == ("tiny.blobs", str(saved_encoder))  # --name: what tables and claims show
    attack = r["protocol_config"]["train_attack"]
    assert r["protocol"] == "robust-linear" and attack["steps"] == 10
    assert attack["alpha"] == pytest.approx(0.007 * 0.05 / (8 / 255))  # RoCL's step, scaled to the budget
    assert {c["name"] for c in r["sanity"]["checks"]} == {"eps_monotone", "large_eps_chance", "more_steps_restarts",
                                                          "black_box_not_stronger", "autoattack_vs_pgd"}
    # the saved ALF classifier, attacked again as it is, still files under robust-linear (not the SLF rows)
    again = tmp_path / "again.json"
    assert E.main([r["classifier"], "--protocol-label", "robust-linear", "--attacks", "clean", "--n-examples", "16",
                   "--out", str(again), "--quiet", "--name", "tiny.blobs"]) == 0
    a = json.loads(again.read_text())
    assert a["protocol"] == "robust-linear" and a["protocol_config"]["head_trained_before"]
    assert a["clean_acc"] == r["clean_acc"]


def test_an_interrupted_robust_head_resumes_and_equals_an_uninterrupted_one(saved_encoder, tmp_path, monkeypatch):
    import os
    import signal

    import rocl_zoo
    from rocl_zoo import steps

    def argv(name):
        return [str(saved_encoder), "--protocol", "robust-linear", "--epochs", "2", "--linear-batch-size", "16",
                "--train-examples", "64", "--train-steps", "2", "--attacks", "clean", "--n-examples", "16",
                "--out", str(tmp_path / f"{name}.json"), "--quiet"]

    assert E.main(argv("whole")) == 0
    real, calls = steps.alf_head_step, []

    def preempted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # a scheduler's SIGTERM mid-epoch: the loop stops after this step, checkpointed
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(steps, "alf_head_step", preempted)
    assert E.main(argv("cut")) == 130
    keep = tmp_path / "cut.classifier.partial"
    assert (keep / "checkpoint.pt").stat().st_size < 100_000  # the head's state only, not the encoder's
    assert not (tmp_path / "cut.json").exists()
    calls.clear()
    monkeypatch.setattr(steps, "alf_head_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert E.main(argv("cut")) == 0 and not keep.exists()
    assert len(calls) == 2 * 64 // 16 - 3  # only the steps the first run had not taken
    whole, cut = (rocl_zoo.load(tmp_path / f"{n}.classifier") for n in ("whole", "cut"))
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), cut.state_dict().values()))
    assert json.loads((tmp_path / "cut.json").read_text())["clean_acc"] == \
        json.loads((tmp_path / "whole.json").read_text())["clean_acc"]


def test_a_head_progress_folder_from_other_settings_starts_over(tmp_path):
    from rocl_zoo.linear import train_linear_head

    enc, data = encoder(), blobs(32, 0)
    kw = dict(num_classes=2, robust=True, steps=2, batch_size=16, progress=False)
    train_linear_head(enc, data, epochs=1, resume=tmp_path / "h", **kw)
    again = train_linear_head(enc, data, epochs=2, resume=tmp_path / "h", **kw)  # not a resume of the 1-epoch run
    fresh = train_linear_head(enc, data, epochs=2, **kw)
    assert torch.equal(again.get_classifier().weight, fresh.get_classifier().weight)
    assert json.loads((tmp_path / "h" / "config.json").read_text())["epochs"] == 2


def test_a_finished_heads_progress_folder_rebuilds_its_classifier_without_a_step(tmp_path, monkeypatch):
    """A head whose last checkpoint is its last step (the classifier lost, or not committed: a ResNet-18's is 45 MB
    where the head's progress is 49 KB) is remade from the folder without attacking anything, weights equal."""
    from rocl_zoo import steps
    from rocl_zoo.linear import train_linear_head

    enc, data = encoder(), blobs(32, 0)
    kw = dict(num_classes=2, robust=True, steps=2, batch_size=16, epochs=2, progress=False, resume=tmp_path / "h")
    first = train_linear_head(enc, data, **kw)
    calls = []
    monkeypatch.setattr(steps, "alf_head_step", lambda *a, **k: calls.append(1))
    again = train_linear_head(enc, data, **kw)
    assert calls == [] and torch.equal(again.get_classifier().weight, first.get_classifier().weight)


@pytest.mark.parametrize("argv,match", [
    (["no_such_arch.tag"], "No zoo entry|Unknown architecture|not"),
    (["{enc}", "--dataset", "no_such_data"], "unknown dataset"),
    (["{enc}", "--eps", "-1"], "eps"),
    (["{enc}", "--eps", "8"], "8/255"),
    (["{enc}", "--eps", "eight"], "not a number"),
    (["{enc}", "--attacks", "clean,bogus"], "unknown attack"),
    (["{enc}", "--norm", "l2", "--eps", "100"], "larger than any two images of 64 values"),
    (["{enc}", "--attacks", "clean,pgd20-l2@10"], "larger than any two images of 64 values"),
    (["{enc}", "--out", "{tmp}"], "is a folder; name the file"),
    (["{enc}", "--out", "{tmp}/file.txt/r.json"], "is a file, so nothing can be written under it"),
    (["{enc}", "--protocol", "linear", "--epochs", "1", "--transfer-from", "{enc}"], "transfer needs a classifier"),
    (["{enc}"], "encoder without a classifier head"),
    (["{enc}", "--protocol", "robust-linear", "--train-steps", "0"], "--train-steps"),
    (["{enc}", "--protocol", "linear", "--protocol-label", "robust-linear"], "--protocol-label"),
    ([], "SOURCE"),
])
def test_cli_errors_are_clear(saved_encoder, tmp_path, capsys, argv, match):
    (tmp_path / "file.txt").write_text("")
    argv = [a.replace("{enc}", str(saved_encoder)).replace("{tmp}", str(tmp_path)) for a in argv]
    assert E.main(argv + ["--quiet", "--n-examples", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and __import__("re").search(match, err), err


def test_table_of_nothing_and_bad_folder(tmp_path, capsys):
    assert E.main(["--table", str(tmp_path)]) == 0 and "No results" in capsys.readouterr().out
    assert E.main(["--table", str(tmp_path / "missing")]) == 2


def test_table_keeps_transfer_sources_apart():
    def res(model, src, acc):
        cfg = {"name": "transfer-pgd20", "attack": "pgd", "norm": "linf", "steps": 20, "eps": 0.1,
               "transfer_from": src}
        return Result({"schema": SCHEMA, "model": model, "dataset": "d", "protocol": "none", "threat_model": "Linf",
                       "eps": 0.1, "n_examples": 10, "attacks": {"transfer-pgd20": {"config": cfg, "acc": acc}}})

    table = results.render_table([res("a", "src1", 50.0), res("b", "src2", 25.0)])
    head = table.splitlines()[0]
    assert "transfer-pgd20 from src1" in head and "transfer-pgd20 from src2" in head
    assert "| `a` | d | none | Linf 0.1 | 50.00 <sub>[23.7, 76.3]</sub> | – | 10 |" in table  # Wilson, n=10
    assert "| `b` | d | none | Linf 0.1 | – | 25.00 <sub>" in table


def test_cli_refuses_images_of_another_size(tmp_path, capsys):
    # a 28x28 Fashion-MNIST classifier on 8x8 digits would run (global pooling) and score garbage
    import rocl_zoo

    folder = rocl_zoo.save_pretrained(rocl_zoo.create_model("cnn4_rocl.fmnist"), tmp_path / "clf",
                                      dataset="fashion_mnist")
    assert E.main([str(folder), "--dataset", "digits", "--n-examples", "8", "--quiet"]) == 2
    assert "8x8 images but" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(saved_encoder, tmp_path, torchrun):
    """torchrun --nproc_per_node=2 (gloo, CPU): each process attacks half the batches; the merged results file
    equals a one-process run on the same images and seed, and an interrupted sharded run resumes from its shards."""
    import os
    import subprocess
    from pathlib import Path

    from rocl_zoo.hub import load, save_pretrained

    root = Path(__file__).resolve().parents[1]
    # a digits classifier (8x8): the subprocesses cannot see this test's monkeypatched blobs
    clf = load(saved_encoder)
    clf.reset_classifier(10)
    clf.pretrained_cfg = {**clf.pretrained_cfg, "num_classes": 10}
    folder = save_pretrained(clf.eval(), tmp_path / "clf", dataset="digits", recipe="test")
    argv = [str(folder), "--attacks", "clean,pgd5,fgsm", "--eps", "0.1", "--n-examples", "100", "--batch-size", "16",
            "--sanity", "--sanity-examples", "40", "--threads", "1", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*torchrun("rocl_zoo.evaluate"), *argv, "--out", str(tmp_path / "two.json")], cwd=root,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert E.main([*argv, "--out", str(tmp_path / "one.json")]) == 0
    two, one = (json.loads((tmp_path / f).read_text()) for f in ("two.json", "one.json"))
    assert two["processes"] == 2 and two["n_examples"] == one["n_examples"] == 100
    for key in ("clean_acc", "pgd_acc", "robust_acc"):
        assert two[key] == one[key], key
    assert {n: a["acc"] for n, a in two["attacks"].items()} == {n: a["acc"] for n, a in one["attacks"].items()}
    # the gradient-masking checks are sharded too: a first process running them alone failed once its peers exited
    assert [c["values"] for c in two["sanity"]["checks"]] == [c["values"] for c in one["sanity"]["checks"]]
    assert not list(tmp_path.glob("*.partial*"))


def test_attacks_run_on_the_bn_folded_copy_and_measure_what_the_model_gives():
    import rocl_zoo
    from rocl_zoo.data import load_dataset
    from rocl_zoo.linear import as_tensors

    model = rocl_zoo.load("cnn4_rocl.fmnist_at")
    x, y = as_tensors(load_dataset("fashion_mnist", "test"), 64, 0)
    folded, plain = (E.evaluate(model, x, y, attacks="clean,pgd10", eps=0.1, progress=False, fold_bn=f)
                     for f in (True, False))
    assert folded["bn_folded"] and not plain["bn_folded"]
    assert folded["clean_acc"] == plain["clean_acc"]
    assert abs(folded["pgd_acc"] - plain["pgd_acc"]) <= 100 / 64  # the same function: one image at most
    assert model.training is False and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
