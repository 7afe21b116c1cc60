"""rocl_zoo.corruptions: a seeded corrupted Fashion-MNIST (the same bytes everywhere), its cache, and the
`corruptions` threat model end to end, read back by the results table, the claims summary and the model card."""
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from rocl_zoo import corruption_eval as CE
from rocl_zoo import corruptions as C
from rocl_zoo import data as D
from rocl_zoo import results as R

ROOT = Path(__file__).resolve().parents[1]
needs_fmnist = pytest.mark.skipif(not (D.DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                                  reason="needs Debian's dataset-fashion-mnist")
# sha256 over every type x severity of test images 0..3, in CORRUPTIONS and SEVERITIES order: a change here
# means every machine's corrupted set (and every number measured on it) changes: bump C.VERSION with it
SUBSET_SHA256 = "1d74e2be2b78c69e00dbdb3b69e50f9ad1f7ecf2714be85f6675464d26fc46a2"


@pytest.fixture(scope="module")
def test_split():
    return D.load_dataset("fashion_mnist", "test")


def all_corruptions(images, indices):
    return {(c, s): C.corrupt(images, c, s, indices) for c in C.CORRUPTIONS for s in C.SEVERITIES}


@needs_fmnist
def test_the_set_is_seeded_per_image_and_its_bytes_are_fixed(test_split):
    images = test_split.images[:4].numpy()
    out = all_corruptions(images, np.arange(4))
    h = hashlib.sha256()
    for key in out:
        h.update(out[key].tobytes())
    assert h.hexdigest() == SUBSET_SHA256
    again = all_corruptions(images[2:], np.arange(2, 4))  # other images beside them, or none: the same bytes
    assert all((again[k] == out[k][2:]).all() for k in out)
    assert not (C.corrupt(images, "shot_noise", 3, seed=1) == out["shot_noise", 3]).all()  # the seed counts


@needs_fmnist
def test_every_type_and_severity_changes_every_image_and_stays_an_image(test_split):
    images, labels = test_split.images[:8], test_split.labels[:8]
    cset = CE.CorruptedSet(images, labels)
    assert len(C.CORRUPTIONS) >= 10 and C.SEVERITIES == (1, 2, 3, 4, 5)
    for c in C.CORRUPTIONS:
        arr = cset.images(c)
        assert arr.shape == (5, 8, 1, 28, 28) and arr.dtype == np.uint8
        assert (arr != images.numpy()[None]).any(axis=(2, 3, 4)).all(), c  # each image, at each severity
        for s in C.SEVERITIES:
            ds = cset.dataset(c, s)
            x, y = ds[3]
            assert x.dtype == torch.float32 and x.shape == (1, 28, 28) and 0 <= x.min() and x.max() <= 1
            assert y == int(labels[3]) and len(ds) == 8


@needs_fmnist
def test_severity_grows_the_change(test_split):
    """The mean absolute change from the clean image grows with the severity, for every type."""
    images = test_split.images[:64].numpy()
    for c in C.CORRUPTIONS:
        mad = [np.abs(C.corrupt(images, c, s).astype(float) - images).mean() for s in C.SEVERITIES]
        assert all(a < b for a, b in zip(mad, mad[1:])), (c, mad)


def test_bad_names_severities_and_images_are_refused():
    grey = np.zeros((2, 28, 28), np.uint8)
    with pytest.raises(C.ConfigError, match="unknown corruption"):
        C.corrupt(grey, "snow", 1)
    with pytest.raises(C.ConfigError, match="severity"):
        C.corrupt(grey, "fog", 6)
    with pytest.raises(C.DataError, match="28x28"):
        C.corrupt(np.zeros((2, 32, 32), np.uint8), "fog", 1)
    with pytest.raises(C.DataError, match="grey"):
        CE.CorruptedSet(torch.zeros(2, 3, 28, 28, dtype=torch.uint8), torch.zeros(2))
    assert CE.parse_names("fog,shear") == ["shear", "fog"] and CE.parse_names("all") == list(C.CORRUPTIONS)
    with pytest.raises(C.ConfigError, match="known"):
        CE.parse_names("fog,frost")


def test_the_cache_is_checked_and_a_corrupt_file_regenerated(tmp_path):
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 1, 28, 28), dtype=np.uint8))
    labels = torch.arange(6)
    first = CE.CorruptedSet(images, labels, folder=tmp_path).images("stripe")
    data, meta = tmp_path / "stripe.npy", tmp_path / "stripe.json"
    assert json.loads(meta.read_text())["sha256"] == CE.digest(first[:, :, 0])
    cached = CE.CorruptedSet(images, labels, folder=tmp_path)
    assert (cached.images("stripe") == first).all() and cached.generated == []  # read back, not made again
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF  # one pixel
    data.write_bytes(bytes(raw))
    again = CE.CorruptedSet(images, labels, folder=tmp_path)
    with pytest.warns(UserWarning, match="sha256"):
        assert (again.images("stripe") == first).all()
    assert again.generated == ["stripe"]
    assert CE.CorruptedSet(images, labels, folder=tmp_path)._cached("stripe") is not None  # written anew
    data.write_bytes(data.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="unreadable"):
        assert (CE.CorruptedSet(images, labels, folder=tmp_path).images("stripe") == first).all()
    # a subset reads the whole set's cache; other images never do (the cache records what it was made from)
    sub = CE.CorruptedSet(images, labels, folder=tmp_path, select=[1, 4])
    assert (sub.images("stripe") == first[:, [1, 4]]).all() and sub.generated == []
    other = CE.CorruptedSet(255 - images, labels, folder=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert other._cached("stripe") is None


@pytest.fixture(scope="module")
def cli_result(tmp_path_factory):
    """`python -m rocl_zoo.evaluate MODEL --threat-model corruptions` on 20 test images, read back."""
    pytest.importorskip("scipy")
    if not (D.DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs Debian's dataset-fashion-mnist")
    from rocl_zoo.evaluate import main

    out = tmp_path_factory.mktemp("corr") / R.relpath("cnn4_rocl.fmnist_at", "none", "corruptions", "corruptions", 20)
    assert main(["cnn4_rocl.fmnist_at", "--threat-model", "corruptions", "--n-examples", "20", "--quiet",
                 "--device", "cpu", "--out", str(out)]) == 0
    return R.read(out)


def test_evaluate_cli_writes_a_results_file_with_every_corruption_and_the_mean(cli_result):
    r = cli_result
    assert r.data["schema"] == R.SCHEMA and r.threat_model == "corruptions" and r.eps is None and r.n == 20
    entries = [n for n, a in r.attacks.items() if a["config"]["attack"] == "corruption"]
    assert len(entries) == len(C.CORRUPTIONS) * 5 and "shot_noise-1" in entries and "zigzag-5" in entries
    mean = sum(r.attacks[n]["acc"] for n in entries) / len(entries)
    assert r.accuracy("corruptions").pct == pytest.approx(mean) and r.data["corruptions_acc"] == round(mean, 2)
    assert r.accuracy("clean") is not None and r.accuracy("pgd20") is None
    assert r.data["corruptions"]["by_type"].keys() == set(C.CORRUPTIONS)
    assert r.relpath("corruptions", own_dataset="fashion_mnist") == \
        Path("cnn4_rocl.fmnist_at/none/corruptions/corruptions-n20.json")
    assert R.folder_name(r.path) == "results_none_corruptions_corruptions-n20.json"
    assert r.summary()["threat"] == "corruptions" and not Path(f"{r.path}.partial").exists()


def test_evaluate_cli_refuses_what_belongs_to_lp_threats(capsys):
    from rocl_zoo.evaluate import main

    assert main(["cnn4_rocl.fmnist_at", "--threat-model", "corruptions", "--eps", "0.1", "--sanity"]) == 2
    assert "--eps, --sanity" in capsys.readouterr().err
    assert main(["cnn4_rocl.fmnist_at", "--threat-model", "corruptions", "--corruptions", "frost"]) == 2
    assert "frost" in capsys.readouterr().err


def test_table_summary_and_card_read_the_corruptions_file(cli_result):
    import sys

    from rocl_zoo.results import render_table
    from rocl_zoo.model_card import build_card, result_metrics

    r = cli_result
    table = render_table([r])
    assert "Corruptions (mean)" in table and "| corruptions |" in table and "shot_noise" not in table
    sys.path.insert(0, str(ROOT / "scripts"))
    from claims import SUMMARY_COLUMNS, find

    assert any(attack == "corruptions" for _, attack, _ in SUMMARY_COLUMNS)
    assert find([r], "cnn4_rocl.fmnist_at", "corruptions", protocol="none", threat="corruptions", eps=None).n == 20
    metrics = result_metrics(r.data)
    assert [m["config"] for m in metrics] == ["clean", "corruptions"]
    config = json.loads((ROOT / "rocl_zoo/weights/cnn4_rocl.fmnist_at/config.json").read_text())
    card = build_card(config, [("results_none_corruptions_corruptions-n20.json", r.data)],
                      model_name="cnn4_rocl.fmnist_at")
    assert f"Mean corruption accuracy: {r.data['corruptions_acc']:.2f} %" in card and "| zigzag |" in card


def test_matrix_measures_every_shipped_entry_and_the_zoo_ships_the_numbers():
    """Every entry has a corruptions item that its release reads; every shipped entry is measured (on the images its
    protocol says: all 10,000 for the small CNN), and the number is in the registry and in the shipped model card."""
    from training.matrix import ENTRIES, Paths, items

    matrix = items(Paths(Path("results"), Path("runs"), Path("weights")))
    registry = json.loads((ROOT / "rocl_zoo/weights/registry.json").read_text())
    measured = 0
    for e in ENTRIES:
        name = f"eval/{e.name}/{e.protocols[0]}/corruptions/corruptions-n{e.corruptions_n}"
        assert name in matrix and name in matrix[f"release/{e.name}"].needs
        assert "--threat-model" in matrix[name].argv
        path = ROOT / "results" / (name.removeprefix("eval/") + ".json")
        if not path.is_file():  # `python -m training.reproduce {name}` makes it
            assert not (registry.get(e.name) or {}).get("sha256"), f"{e.name} ships without its corruptions result"
            continue
        # the release's copy: results/ may hold a newer run's measurement that waits for its release
        copy = ROOT / "rocl_zoo/weights" / e.name / R.folder_name(path)
        shipped, measured = R.read(copy if copy.is_file() else path), measured + 1
        assert shipped.n == e.corruptions_n
        if shipped.n == 10000:  # the reference checksums are of the whole test split's corrupted images
            assert shipped.data["corruptions"].get("matches_reference") is True
        if e.name not in registry:  # measured, not yet released: `python -m training.reproduce release/{e.name}`
            continue
        assert registry[e.name]["metrics"]["corruptions_acc"] == shipped.data["corruptions_acc"]
        card = (ROOT / "rocl_zoo/weights" / e.name / "README.md").read_text()
        assert f"Mean corruption accuracy: {shipped.data['corruptions_acc']:.2f} %" in card
    assert measured, "no shipped entry measured under corruptions: python -m training.reproduce eval/.../corruptions"
