"""rocl_zoo.results: one layout, one unit (percent), one reader; the committed results/ follow them."""
import json
from pathlib import Path

import pytest

from rocl_zoo import results as R
from rocl_zoo.errors import DataError
from rocl_zoo.zoo import ZOO

ROOT = Path(__file__).resolve().parents[1] / "results"


def attack(name, kind, acc, *, threat="Linf", eps=0.1, **extra):
    cfg = {"name": name, "attack": kind, **({} if kind == "clean" else {"threat_model": threat, "eps": eps})}
    return {"config": cfg, "acc": acc, **extra}


def result(model="m.tag", *, n=1000, schema=R.SCHEMA, protocol="none", dataset="fashion_mnist", **accs):
    return {"schema": schema, "model": model, "protocol": protocol, "dataset": dataset, "threat_model": "Linf",
            "eps": 0.1, "eps_str": "0.1", "n_examples": n, "clean_acc": 80.0,
            "attacks": {"clean": attack("clean", "clean", accs.pop("clean", 80.0)),
                        **{k: attack(k, "pgd", v) for k, v in accs.items()}}}


def test_upgrade_turns_schema_1_fractions_into_percent():
    old = result(schema="rocl_zoo.eval/1", clean=0.8, pgd20=0.4361)
    old["attacks"]["autoattack"] = attack("autoattack", "autoattack", None)
    new = R.upgrade(old)
    assert new["schema"] == R.SCHEMA and new["clean_acc"] == 80.0  # RobustBench's keys were percent already
    assert new["attacks"]["clean"]["acc"] == 80.0 and new["attacks"]["pgd20"]["acc"] == pytest.approx(43.61)
    assert new["attacks"]["autoattack"]["acc"] is None and new["attacks"]["pgd20"]["config"]["eps"] == 0.1
    assert old["attacks"]["pgd20"]["acc"] == 0.4361  # the caller's dict is left as it was
    current = result(pgd20=43.61)
    assert R.upgrade(current) == current
    with pytest.raises(DataError, match="newer"):
        R.upgrade(result(schema="rocl_zoo.eval/3"))
    with pytest.raises(DataError, match="not a rocl_zoo results file"):
        R.upgrade({"clean_acc": 80.0})


def test_wilson_interval_of_a_known_case():
    lo, hi = R.Accuracy(50.0, 100).interval()
    assert (round(lo, 1), round(hi, 1)) == (40.4, 59.6)
    assert R.Accuracy(50.0, 100).with_interval() == "50.0 [40.4, 59.6]" and str(R.Accuracy(43.57, 10)) == "43.6"
    assert R.Accuracy(0.0, 200).interval()[0] == 0.0 and R.Accuracy(100.0, 200).interval()[1] == 100.0
    assert R.wilson(50.0, 0) == (0.0, 100.0)


def test_lookup_picks_the_file_with_the_most_examples():
    files = [R.Result(result(n=200, pgd20=40.0)), R.Result(result(n=10000, pgd20=43.0)),
             R.Result(result(n=1000, pgd20=45.0)), R.Result(result(n=10000, pgd20=44.0)),
             R.Result(result(n=500, protocol="linear", pgd20=50.0)),
             R.Result(result(n=360, dataset="digits", schema="rocl_zoo.eval/1", pgd20=0.7))]
    assert R.lookup(files, "m.tag", "pgd20", protocol="none") == R.Accuracy(43.0, 10000)  # first of equals
    assert R.lookup(files, "m.tag", "pgd20", protocol=("linear", "none"), dataset="fashion_mnist").n == 10000
    assert R.lookup(files, "m.tag", "pgd20", protocol="linear") == R.Accuracy(50.0, 500)
    assert R.lookup(files, "m.tag", "pgd20", dataset="digits").pct == pytest.approx(70.0)  # upgraded as read
    assert R.lookup(files, "m.tag", "pgd20", eps=8 / 255) is None and R.lookup(files, "other", "pgd20") is None
    assert R.lookup(files, "m.tag", "clean", threat="L2", eps=1.5).n == 10000  # clean holds in any threat model
    assert R.most_examples(None, R.Accuracy(1.0, 5), R.Accuracy(2.0, 5)) == R.Accuracy(1.0, 5)
    assert R.most_examples(None) is None


def test_relpath_names_model_protocol_threat_suite_and_n():
    assert R.threat_name("linf", 8 / 255) == "Linf-8_255" and R.threat_name("L2", 1.5) == "L2-1.5"
    assert R.relpath("cnn4_rocl.fmnist_at", "none", "Linf-0.1", "autoattack", 1000) == \
        Path("cnn4_rocl.fmnist_at/none/Linf-0.1/autoattack-n1000.json")
    assert R.relpath("cnn4_rocl.fmnist", "finetune-at", "Linf-0.1", "finetune", 360, dataset="digits") == \
        Path("cnn4_rocl.fmnist/finetune-at.digits/Linf-0.1/finetune-n360.json")
    assert R.relpath("runs/x encoder", "linear", "L2-1.5", "pgd", 10) == \
        Path("runs-x-encoder/linear/L2-1.5/pgd-n10.json")  # any name becomes one safe path segment
    r = R.Result(result(n=360, dataset="digits", protocol="finetune-at"))
    assert r.relpath("finetune") == Path("m.tag/finetune-at.digits/Linf-0.1/finetune-n360.json")
    assert r.relpath("finetune", own_dataset="digits") == Path("m.tag/finetune-at/Linf-0.1/finetune-n360.json")
    # inside a model folder (export) the files lie side by side: the path below the model names each one
    assert R.folder_name("results/m.tag/none/Linf-0.1/pgd-n1000.json") == "results_none_Linf-0.1_pgd-n1000.json"
    assert R.folder_name("x/results_linf.json") == "results_linf.json" and R.folder_name("a.json") == "results_a.json"


def test_read_all_file_result_and_the_index(tmp_path):
    (tmp_path / "run" / "training").mkdir(parents=True)
    (tmp_path / "run" / "training" / "config.json").write_text(json.dumps({"epochs": 3}))  # not a results file
    old = result(schema="rocl_zoo.eval/1", clean=0.8, pgd20=0.5)
    (tmp_path / "run" / "results.json").write_text(json.dumps(old))
    dest = R.file_result(tmp_path / "run" / "results.json", tmp_path / "results", "pgd", own_dataset="fashion_mnist")
    assert dest == tmp_path / "results" / "m.tag" / "none" / "Linf-0.1" / "pgd-n1000.json"
    assert json.loads(dest.read_text())["attacks"]["pgd20"]["acc"] == 50.0  # written in the current schema
    assert [r.path for r in R.read_all(tmp_path)] == [dest, tmp_path / "run" / "results.json"]
    assert R.main([str(tmp_path / "results"), "--check"]) == 1  # no index yet
    assert R.main([str(tmp_path / "results")]) == 0 and R.main([str(tmp_path / "results"), "--check"]) == 0
    index = json.loads((tmp_path / "results" / R.INDEX_NAME).read_text())["results"]
    assert index == {"m.tag/none/Linf-0.1/pgd-n1000.json": {
        "model": "m.tag", "protocol": "none", "dataset": "fashion_mnist", "threat": "Linf 0.1", "n_examples": 1000,
        "accuracy": {"clean": 80.0, "pgd20": 50.0}}}
    assert [r.path.name for r in R.read_all(tmp_path / "results")] == ["pgd-n1000.json"]  # the index is no result
    assert R.main([str(tmp_path / "missing")]) == 2


def test_the_committed_index_is_current():
    assert R.main([str(ROOT), "--check"]) == 0, "run python -m rocl_zoo.results results"


def test_every_committed_results_file_is_in_percent_where_its_path_says():
    """results/<model>/<protocol>[.<dataset>]/<threat>/<suite>-n<n>.json, in the current schema, for every file
    but the precision A/B's (an experiment with its own table)."""
    files = [r for r in R.read_all(ROOT) if r.path.relative_to(ROOT).parts[0] != "precision-ab"]
    assert len(files) >= 58
    for r in files:
        assert json.loads(r.path.read_text())["schema"] == R.SCHEMA, r.path
        suite = r.path.name.rsplit("-n", 1)[0]
        own = ZOO[r.model].dataset if r.model in ZOO else None
        assert r.path.relative_to(ROOT) == r.relpath(suite, own_dataset=own), r.path
        assert all(a["acc"] is None or 0 <= a["acc"] <= 100 for a in r.attacks.values())


def test_only_the_shipped_weights_measurements_of_a_released_entry_reach_the_readme():
    import rocl_zoo
    from rocl_zoo.eval_progress import encoder_digest, weights_digest
    from rocl_zoo.results import Result, of_shipped_weights

    model = rocl_zoo.load("cnn4_rocl.fmnist_at")
    shipped, encoder = weights_digest(model), encoder_digest(model)
    base = {"schema": "rocl_zoo.eval/2", "model": "cnn4_rocl.fmnist_at", "protocol": "none",
            "dataset": "fashion_mnist", "threat_model": "Linf", "eps": 0.1, "n_examples": 10, "clean_acc": 50.0}
    cases = {"shipped": dict(base, weights_sha256=shipped),
             "a new run, not released yet": dict(base, weights_sha256="0" * 64),
             "from before results named their weights": dict(base),
             "another protocol": dict(base, protocol="finetune-at", weights_sha256="0" * 64),
             "an entry not released": dict(base, model="cnn4_rocl.fmnist_dynacl", weights_sha256="0" * 64),
             "an ALF head on the shipped encoder": dict(base, protocol="robust-linear", weights_sha256="1" * 64,
                                                        encoder_sha256=encoder),
             "an ALF head on a new encoder": dict(base, protocol="robust-linear", encoder_sha256="0" * 64),
             "an ALF head from before": dict(base, protocol="robust-linear", weights_sha256="1" * 64),
             "a fine-tuning of the shipped encoder": dict(base, protocol="finetune-at", dataset="digits",
                                                          start_encoder_sha256=encoder),
             "a fine-tuning of another encoder": dict(base, protocol="finetune-linear", dataset="digits",
                                                      start_encoder_sha256="0" * 64)}
    kept = of_shipped_weights([Result(d, Path(name)) for name, d in cases.items()])
    assert [str(r.path) for r in kept] == [n for n in cases if n not in ("a new run, not released yet",
                                                                         "an ALF head on a new encoder",
                                                                         "a fine-tuning of another encoder")]


def test_a_fine_tuning_reaches_the_readme_only_while_its_classifier_is_the_one_the_zoo_ships():
    import rocl_zoo
    from rocl_zoo.eval_progress import encoder_digest, weights_digest
    from rocl_zoo.results import Result, of_shipped_weights

    from training.matrix import FINETUNED

    assert FINETUNED[("cnn4_rocl.fmnist", "finetune-at")] == "cnn4_rocl.fmnist_rocl_at"
    encoder = encoder_digest(rocl_zoo.load("cnn4_rocl.fmnist"))
    shipped = weights_digest(rocl_zoo.load("cnn4_rocl.fmnist_rocl_at"))
    base = {"schema": "rocl_zoo.eval/2", "model": "cnn4_rocl.fmnist", "protocol": "finetune-at",
            "dataset": "fashion_mnist", "threat_model": "Linf", "eps": 0.1, "n_examples": 10, "clean_acc": 50.0,
            "start_encoder_sha256": encoder}
    cases = {"the shipped RoCL+AT": dict(base, weights_sha256=shipped),
             "a new fine-tuning, not released yet": dict(base, weights_sha256="0" * 64),
             "from before fine-tunings named their classifier": dict(base),
             "on another dataset: no zoo entry": dict(base, dataset="digits", weights_sha256="0" * 64),
             "another mode: no zoo entry": dict(base, protocol="finetune-trades", weights_sha256="0" * 64)}
    results = [Result(d, Path(name)) for name, d in cases.items()]
    assert len(of_shipped_weights(results)) == len(cases)  # without the map, nothing says what they ship as
    kept = of_shipped_weights(results, FINETUNED)
    assert [str(r.path) for r in kept] == [n for n in cases if n != "a new fine-tuning, not released yet"]
