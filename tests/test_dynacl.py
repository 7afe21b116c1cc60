"""DynACL: its schedules, loss, dual BN, pair attack and momentum network, against hand-computed values, and a tiny
run end to end."""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import rocl_zoo
from rocl_zoo.attacks import pair_attack
from rocl_zoo.losses import dynacl_loss, nt_xent
from rocl_zoo.models.dual_bn import DualBatchNorm, bn_route, dual_bn, single_bn
from training import dynacl
from test_pretrain import pretrain_args


def test_strength_and_weight_follow_the_authors_schedule():
    # the paper's CIFAR run: 1000 epochs, reloaded every 50
    assert [dynacl.strength(e, 1000, 50) for e in (1, 50, 51, 100, 101, 1000)] == \
        pytest.approx([1.0, 1.0, 0.95, 0.95, 0.9, 0.05])
    # the weight steps one epoch before the data reload, as the code's `epoch // reload_frequency` does
    assert [dynacl.adv_weight(e, 1000, 50) for e in (1, 49, 50, 100, 1000)] == \
        pytest.approx([1.0, 1.0, 1 + 0.05 * 2 / 3, 1 + 0.1 * 2 / 3, 1 + 20 * 0.05 * 2 / 3])
    assert dynacl.adv_weight(10, 10, 1, swap=2.0) == 2.0  # capped
    # 3 epochs, every epoch: strengths 1, 2/3, 1/3; weights 1 + e * (1/3) * (2/3)
    assert [dynacl.strength(e, 3, 1) for e in (1, 2, 3)] == pytest.approx([1, 2 / 3, 1 / 3])
    assert [dynacl.adv_weight(e, 3, 1) for e in (1, 2, 3)] == pytest.approx([1 + 2 / 9, 1 + 4 / 9, 1 + 6 / 9])
    weak = dynacl.augment((28, 28), 0.25)
    assert weak.scale == pytest.approx((0.775, 1.0)) and weak.jitter == pytest.approx((0.1, 0.1, 0.1, 0.025))
    assert (weak.p_jitter, weak.p_grey, weak.p_flip) == pytest.approx((0.2, 0.05, 0.5))


def test_the_loss_weighs_its_two_terms():
    g = torch.Generator().manual_seed(0)
    clean = (torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g))
    adv = (torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g))
    c, a = nt_xent(*clean), nt_xent(*adv)
    total, c1, a1 = dynacl_loss(clean, adv, 1.0)
    assert total.item() == pytest.approx(((c + a) / 2).item()) and (c1, a1) == (c, a)
    assert dynacl_loss(clean, adv, 2.0)[0].item() == pytest.approx(a.item())  # the end: adversarial only
    assert dynacl_loss(clean, adv, 1.5)[0].item() == pytest.approx((0.5 * c + 1.5 * a).item() / 2)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 6), nn.BatchNorm1d(6))


def test_dual_bn_keeps_two_statistics_and_folds_back_to_the_plain_module():
    plain = _net()
    dual = dual_bn(_net())
    assert sum(isinstance(m, DualBatchNorm) for m in dual.modules()) == 2
    x = torch.rand(8, 1, 6, 6)
    with torch.no_grad():
        assert torch.equal(dual.eval()(x), plain.eval()(x))  # both BNs start as the original
        with bn_route(dual.train(), "adv"):
            dual(x + 1)  # only the adversarial BN's statistics move
    assert torch.equal(dual[1].clean.running_mean, plain[1].running_mean)
    assert not torch.equal(dual[1].adv.running_mean, plain[1].running_mean)
    assert dual[1].route == "clean"  # the route comes back after the block
    with torch.no_grad(), bn_route(dual.eval(), "adv"):
        routed = dual(x)
    folded = single_bn(dual, "adv")
    assert set(folded.state_dict()) == set(plain.state_dict())
    assert torch.equal(folded(x), routed) and not any(isinstance(m, DualBatchNorm) for m in folded.modules())
    with pytest.raises(ValueError, match="route"):
        single_bn(folded, "dirty")


def test_the_pair_attack_pushes_the_views_apart_within_budget():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                        nn.Linear(128, 16)).eval()
    x1 = torch.rand(16, 1, 12, 12)
    x2 = (x1 + 0.05 * torch.randn_like(x1)).clamp(0, 1)
    embed = lambda a, b: (net(a), net(b))  # noqa: E731
    eps = 0.1
    a1, a2 = pair_attack(embed, x1, x2, eps=eps, alpha=0.025, steps=5, generator=torch.Generator().manual_seed(0))
    for a, x in ((a1, x1), (a2, x2)):
        assert (a - x).abs().max() <= eps + 1e-6 and a.min() >= 0 and a.max() <= 1
    with torch.no_grad():
        before, after = nt_xent(*embed(x1, x2)).item(), nt_xent(*embed(a1, a2)).item()
        random = nt_xent(*embed((x1 + eps * torch.randn_like(x1).sign()).clamp(0, 1),
                                (x2 + eps * torch.randn_like(x2).sign()).clamp(0, 1))).item()
    assert after > before + 0.05 and after > random + 0.05
    assert all(p.grad is None for p in net.parameters())


def test_a_tiny_run_follows_the_schedule_and_releases_the_momentum_encoder(tmp_path):
    argv = ["--recipe", "fmnist_dynacl", "--threads", "1", "--quiet", "--subset", "64", "--batch-size", "16",
            "--epochs", "2", "--set", "dataset=digits", "--set", "attack_steps=2", "--set", "log_every=1",
            "--set", "ckpt_every=3", "--set", "holdout=0", "--out", str(tmp_path / "run")]
    out = dynacl.train(pretrain_args(argv))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["record"] == "step"]
    assert [r["strength"] for r in steps] == pytest.approx([1.0] * 4 + [0.5] * 4)
    assert [r["adv_weight"] for r in steps] == pytest.approx([1 + 1 / 3] * 4 + [1 + 2 / 3] * 4)
    assert all(0 < r["adv_size_max"] <= 0.1 + 1e-6 for r in steps)  # within the recipe's eps
    encoder = rocl_zoo.load(out / "encoder")
    assert encoder.num_classes == 0 and encoder(torch.rand(2, 1, 8, 8)).shape == (2, 256)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    online = {k[len("online.0."):]: v for k, v in ckpt["model"].items() if k.startswith("online.0.")}
    released = load_file(out / "encoder" / "model.safetensors")
    conv = next(k for k in released if k.endswith("weight") and released[k].ndim == 4)
    assert not torch.equal(released[conv], online[conv])  # the momentum network's weights, not the online ones
    bn = next(k[:-len(".running_mean")] for k in released if k.endswith("running_mean"))
    adv_key = f"momentum.0.{bn}.adv.running_mean"
    assert torch.equal(released[f"{bn}.running_mean"], ckpt["model"][adv_key].cpu())  # its adversarial BN
    config = json.loads((out / "encoder" / "config.json").read_text())["rocl_zoo"]["training"]
    assert config["ema"] == 0.99 and config["reload_every"] == 1


def test_resume_is_exact_momentum_network_included(tmp_path):
    argv = ["--recipe", "fmnist_dynacl", "--threads", "1", "--quiet", "--subset", "64", "--batch-size", "16",
            "--epochs", "2", "--set", "dataset=digits", "--set", "attack_steps=1", "--set", "ckpt_every=3",
            "--set", "holdout=0"]
    full = dynacl.train(pretrain_args([*argv, "--out", str(tmp_path / "full")]))
    dynacl.train(pretrain_args([*argv, "--out", str(tmp_path / "part"), "--max-steps", "5"]))
    part = dynacl.train(pretrain_args([*argv, "--out", str(tmp_path / "part"), "--resume"]))
    a, b = load_file(full / "encoder/model.safetensors"), load_file(part / "encoder/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ DynACL++


def test_kmeans_finds_well_separated_clusters_and_the_labels_are_kept_for_a_resume(tmp_path, monkeypatch):
    from rocl_zoo.data import ImageTensorDataset
    from training import pseudo

    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3, 8) * 10
    feats = torch.cat([c + 0.1 * torch.randn(20, 8, generator=g) for c in centres])
    labels = pseudo.kmeans_labels(feats, 3, seed=0)
    groups = [set(labels[i * 20:(i + 1) * 20].tolist()) for i in range(3)]
    assert all(len(s) == 1 for s in groups) and len(set.union(*groups)) == 3  # one cluster per blob
    ds = ImageTensorDataset(torch.zeros(60, 1, 4, 4, dtype=torch.uint8), torch.arange(60) % 3, ["a", "b", "c"])
    monkeypatch.setattr(pseudo, "load_encoder", lambda source: nn.Flatten())
    monkeypatch.setattr(pseudo, "features", lambda encoder, images: feats)
    first = pseudo.relabel(ds, "enc", tmp_path, seed=0)
    assert torch.equal(first.labels, labels) and first.classes == ["cluster 0", "cluster 1", "cluster 2"]
    monkeypatch.setattr(pseudo, "kmeans_labels", lambda *a: pytest.fail("clustered again on resume"))
    assert torch.equal(pseudo.relabel(ds, "enc", tmp_path, seed=0).labels, labels)


def test_more_clusters_than_classes_relabel_into_that_many_and_a_resume_with_other_k_is_refused(tmp_path, monkeypatch):
    from rocl_zoo.data import ImageTensorDataset
    from rocl_zoo.errors import ConfigError
    from training import pseudo
    from training.recipes import get_recipe, validate

    g = torch.Generator().manual_seed(0)
    feats = torch.cat([c + 0.1 * torch.randn(10, 8, generator=g) for c in torch.eye(6, 8) * 10])
    ds = ImageTensorDataset(torch.zeros(60, 1, 4, 4, dtype=torch.uint8), torch.arange(60) // 20, ["a", "b", "c"])
    monkeypatch.setattr(pseudo, "load_encoder", lambda source: nn.Flatten())
    monkeypatch.setattr(pseudo, "features", lambda encoder, images: feats)
    six = pseudo.relabel(ds, "enc", tmp_path, seed=0, k=6)
    assert len(six.classes) == 6 and len(set(six.labels.tolist())) == 6  # one cluster per blob, two per class
    assert pseudo.cluster_purity(six.labels, ds.labels) == 100.0
    with pytest.raises(ConfigError, match="--overwrite"):
        pseudo.relabel(ds, "enc", tmp_path, seed=0)  # the saved 6 clusters are not 3
    with pytest.raises(ConfigError, match="--overwrite"):
        pseudo.relabel(ds, "enc", tmp_path, seed=0, k=12)  # nor 12: fewer clusters saved are refused too
    with pytest.raises(ConfigError, match="pseudo_clusters"):
        validate(dataclasses.replace(get_recipe("fmnist_dynacl_pp"), pseudo_clusters=1))


def test_cluster_accuracy_matches_clusters_to_classes_one_to_one():
    from training.pseudo import cluster_accuracy

    assert cluster_accuracy(torch.tensor([2, 2, 0, 0, 1]), torch.tensor([0, 0, 1, 1, 2])) == 100.0  # renamed only
    # best match 0->1, 1->0, 2->2: 5 of 6 (cluster 2's second image is class 1, which cluster 0 already holds)
    assert cluster_accuracy(torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([1, 1, 0, 0, 2, 1])) == 83.33
    assert cluster_accuracy(torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 2, 3])) == 25.0  # one cluster


def test_cluster_purity_lets_several_clusters_share_a_class():
    from training.pseudo import cluster_accuracy, cluster_purity

    pseudo, true = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([1, 1, 0, 0, 2, 1])
    assert cluster_purity(pseudo, true) == 83.33  # cluster 2 is half class 2, half class 1
    split = torch.tensor([0, 1, 2, 3, 4, 4])  # every class split over clusters: pure, but no one-to-one match
    assert cluster_purity(split, true) == 83.33 and cluster_accuracy(split, true) == 50.0


def test_dynacl_pp_trains_on_pseudo_labels_from_the_best_dynacl_epoch_and_releases_an_encoder(tmp_path):
    from training import supervised

    tiny = ["--threads", "1", "--quiet", "--subset", "64", "--batch-size", "16", "--epochs", "1",
            "--set", "dataset=digits", "--set", "attack_steps=1"]
    curve = ["--set", "holdout=32", "--set", "probe_examples=32", "--set", "probe_epochs=1"]
    run = dynacl.train(pretrain_args(["--recipe", "fmnist_dynacl", *tiny, *curve, "--out", str(tmp_path / "dynacl")]))
    best, clean = load_file(run / "best" / "model.safetensors"), load_file(run / "best_clean" / "model.safetensors")
    assert best.keys() == clean.keys() and (run / "encoder_clean" / "model.safetensors").is_file()
    bn = next(k for k in best if k.endswith("running_mean"))
    assert not torch.equal(best[bn], clean[bn])  # the same weights, each with its own BN statistics
    out = supervised.train(pretrain_args(["--recipe", "fmnist_dynacl_pp", *tiny, *curve,
                                          "--set", "pseudo_probe_epochs=1",
                                          "--set", f"start={run / 'best'}",
                                          "--set", f"pseudo_labels={run / 'best_clean'}",
                                          "--out", str(tmp_path / "pp")]))
    labels = torch.load(out / "pseudo_labels.pt", weights_only=True)
    assert len(labels) == 64 - 32 and 0 <= labels.min() and labels.max() < 10  # the held-out 32 get none
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    clusters = [r for r in records if r["record"] == "pseudo_labels"]
    assert len(clusters) == 1 and 10 <= clusters[0]["cluster_accuracy"] <= 100  # 10 clusters: at least 1 in 10
    assert "heldout_pgd" in [r for r in records if r["record"] == "epoch"][-1] and (out / "best" / "model.safetensors").is_file()
    encoder = rocl_zoo.load(out / "encoder")
    assert encoder.num_classes == 0 and not (out / "model").exists()
    start = load_file(run / "best" / "model.safetensors")
    trained = load_file(out / "encoder" / "model.safetensors")
    assert trained.keys() == start.keys() and any(not torch.equal(trained[k], start[k]) for k in start)
    config = json.loads((out / "encoder" / "config.json").read_text())["rocl_zoo"]["training"]
    assert config["pseudo_labels"] == str(run / "best_clean") and config["kind"] == "trades"
