"""Supervised attacks: known worst cases on linear models, budgets, modes, AutoAttack adapter, transfer, errors."""
import sys

import pytest
import torch
from torch import nn

import rocl_zoo
from rocl_zoo import attacks
from rocl_zoo.attacks import trades_attack
from rocl_zoo.errors import ConfigError
from rocl_zoo.losses import trades_loss


def linear_model(d=20, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g))
        lin.bias.copy_(torch.randn(k, generator=g) * 0.1)
    return nn.Sequential(nn.Flatten(), lin)


def interior_batch(n=16, d=20, seed=1):
    # Pixels in [0.3, 0.7] and eps <= 0.1: the [0, 1] box never binds, so the worst case is analytic.
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(n, 1, 1, d, generator=g)


def margins(model, x, y):
    with torch.no_grad():
        return attacks.per_example_loss(model(x), y, "margin")


def analytic_worst_margin(model, x, y, eps, norm):
    """Exact max over the ball of max_{j != y} z_j - z_y for a linear model: w_diff . delta is maximised by
    eps * sign(w_diff) (l-inf, gain eps * ||w_diff||_1) or eps * w_diff / ||w_diff|| (l2, gain eps * ||w_diff||_2)."""
    lin = model[1]
    with torch.no_grad():
        z = model(x)
        best = torch.full((len(y),), float("-inf"))
        for j in range(lin.out_features):
            w_diff = lin.weight[j][None] - lin.weight[y]
            gain = eps * (w_diff.abs().sum(1) if norm == "linf" else w_diff.norm(dim=1))
            cand = z[:, j] - z.gather(1, y[:, None]).squeeze(1) + gain
            best = torch.where(y == j, best, torch.maximum(best, cand))
    return best


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
@pytest.mark.parametrize("loss", ["ce", "margin"])
@pytest.mark.parametrize("keep_best", [True, False])
def test_pgd_reaches_analytic_worst_case_binary(norm, eps, loss, keep_best):
    model, x = linear_model(k=2), interior_batch()
    y = torch.randint(0, 2, (len(x),))
    # l2 steps converge on the sphere geometrically; eps/4 gets within 1e-3 in 20 steps (2.5 eps/20 needs ~60).
    alpha = eps / 4 if norm == "l2" else None
    x_adv = attacks.pgd(model, x, y, eps=eps, alpha=alpha, steps=20, norm=norm, loss=loss, keep_best=keep_best)
    got, want = margins(model, x_adv, y), analytic_worst_margin(model, x, y, eps, norm)
    assert torch.all(got <= want + 1e-4), "PGD beat the analytic optimum: the budget leaked"
    assert torch.allclose(got, want, atol=2e-3 * want.abs().max().item() + 1e-3), (got - want).abs().max()


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
def test_pgd_multiclass_margin_near_optimum_with_restarts(norm, eps):
    model, x = linear_model(k=5), interior_batch(n=32)
    y = torch.randint(0, 5, (len(x),))
    want = analytic_worst_margin(model, x, y, eps, norm)
    alpha = eps / 4 if norm == "l2" else None
    got = margins(model, attacks.pgd(model, x, y, eps=eps, alpha=alpha, steps=30, norm=norm, loss="margin",
                                     restarts=3), y)
    assert torch.all(got <= want + 1e-4)
    assert (got >= want - 1e-3 * want.abs().max()).float().mean() >= 0.9  # max of linear pieces: local optima are rare


def test_fgsm_is_exact_on_binary_linear_model():
    model, x = linear_model(k=2), interior_batch()
    y = torch.randint(0, 2, (len(x),))
    got = margins(model, attacks.fgsm(model, x, y, eps=0.05), y)
    assert torch.allclose(got, analytic_worst_margin(model, x, y, 0.05, "linf"), atol=1e-4)


def small_cnn(num_classes=10, in_chans=1):
    return nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, num_classes))


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_budgets_box_and_mode_hold(norm, eps):
    model = small_cnn().train()
    x = torch.rand(12, 1, 12, 12)
    x[:4] = 0.0  # corners of the box: the clamp must act
    x[4:8] = 1.0
    y = torch.randint(0, 10, (12,))
    bn_before = model[1].running_mean.clone()
    runs = [attacks.pgd(model, x, y, eps=eps, norm=norm, steps=5, restarts=2),
            attacks.pgd(model, x, y, eps=eps, norm=norm, steps=5, loss="margin", targeted=True),
            attacks.pgd(model, x, y, eps=eps, norm=norm, steps=3, alpha=10.0)]  # a huge step must still be projected
    if norm == "linf":
        runs.append(attacks.fgsm(model, x, y, eps=eps))
    for x_adv in runs:
        assert x_adv.shape == x.shape and not x_adv.requires_grad
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert size.max() <= eps + 1e-5
    assert model.training and all(m.training for m in model.modules()), "attack must restore train mode"
    assert torch.equal(model[1].running_mean, bn_before), "attack must run in eval mode (no BN update)"
    assert all(p.grad is None for p in model.parameters()), "attacks take input gradients only"


def test_random_init_l2_inside_ball():
    x = torch.full((64, 3, 8, 8), 0.5)
    r = (attacks.random_init(x, 0.3, "l2") - x).flatten(1).norm(dim=1)
    assert r.max() <= 0.3 + 1e-6 and r.min() > 0.2  # uniform in a 192-d ball sits near its surface


def test_ascent_step_matches_hand_computed_steps():
    x = torch.tensor([[0.5, 0.5, 0.98]])
    grad = torch.tensor([[3.0, -4.0, 1.0]])
    # l-inf: +-alpha per pixel, then the box [x - eps, x + eps] and [0, 1]
    step = attacks.ascent_step(x, x, grad, alpha=0.05, eps=0.1, norm="linf")
    assert torch.allclose(step, torch.tensor([[0.55, 0.45, 1.0]]))
    assert torch.allclose(attacks.ascent_step(step, x, grad, 0.08, 0.1), torch.tensor([[0.6, 0.4, 1.0]]))
    # l2: alpha along grad / ||grad|| (||(3, -4)|| = 5), then back onto the eps-ball
    x2, g2 = torch.tensor([[0.5, 0.5]]), torch.tensor([[3.0, -4.0]])
    assert torch.allclose(attacks.ascent_step(x2, x2, g2, 0.1, 1.0, "l2"), torch.tensor([[0.56, 0.42]]))
    assert torch.allclose(attacks.ascent_step(x2, x2, g2, 0.5, 0.2, "l2"), torch.tensor([[0.62, 0.34]]))


def test_pgd_breaks_a_plain_model_and_targeted_hits_target():
    model, x = linear_model(k=4), interior_batch(n=32)
    y = attacks.predict_labels(model, x)
    assert attacks.accuracy(model, attacks.pgd(model, x, y, eps=0.1), y) == 0.0
    target = (y + 1) % 4
    hit = attacks.predict_labels(model, attacks.pgd(model, x, target, eps=0.3, targeted=True, loss="margin"))
    assert (hit == target).float().mean() >= 0.9


def test_transfer_from_the_model_itself_equals_white_box():
    """Black-box transfer (examples made on a source, scored on the target) is the suite's `source_model`."""
    from rocl_zoo.attack_suite import correct_under, parse_attack

    model, x = linear_model(k=4), interior_batch(n=32)
    y = attacks.predict_labels(model, x)
    cfg = parse_attack("pgd10@0.02", 0.02, "linf")
    white = correct_under(model, x, y, cfg, batch_size=16)
    assert torch.equal(correct_under(model, x, y, cfg, batch_size=16, source_model=model), white)
    other = linear_model(k=4, seed=5)
    transferred = correct_under(other, x, y, parse_attack("fgsm", 0.02, "linf"), source_model=model)
    assert transferred.shape == (32,) and transferred.dtype == torch.bool


@pytest.mark.parametrize("k", [10, 3])
def test_autoattack_runs_on_tiny_model(k):
    model = linear_model(d=64, k=k)
    x = torch.rand(6, 1, 8, 8)
    y = attacks.predict_labels(model, x)
    x_adv = attacks.autoattack(model, x, y, eps=0.3, norm="linf")
    assert (x_adv - x).abs().max() <= 0.3 + 1e-5 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert attacks.accuracy(model, x_adv, y) <= attacks.accuracy(model, x, y)


def test_autoattack_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    monkeypatch.setitem(sys.modules, "autoattack", None)
    model, x = linear_model(d=64), torch.rand(2, 1, 8, 8)
    with pytest.raises(ImportError, match=r"pip install 'rocl-zoo\[eval\]'"):
        attacks.autoattack(model, x, torch.zeros(2, dtype=torch.long), eps=0.1)


@pytest.mark.parametrize("kwargs,match", [
    (dict(eps=-0.1), "eps"), (dict(eps=float("nan")), "eps"), (dict(eps=0.1, norm="l1"), "norm"),
    (dict(eps=0.1, loss="hinge"), "loss"), (dict(eps=0.1, steps=-1), "steps"), (dict(eps=0.1, restarts=0), "restarts"),
])
def test_bad_arguments_raise_config_error(kwargs, match):
    model, x = linear_model(), interior_batch(n=2)
    with pytest.raises(ConfigError, match=match):
        attacks.pgd(model, x, torch.zeros(2, dtype=torch.long), **kwargs)


def test_inputs_outside_unit_box_are_refused():
    model = linear_model()
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        attacks.pgd(model, torch.full((2, 1, 1, 20), 255.0), torch.zeros(2, dtype=torch.long), eps=0.1)


def test_early_stop_gives_the_same_per_example_outcome():
    # Eval mode makes examples independent, so dropping fooled ones must not change anyone else's trajectory.
    model = small_cnn()
    x, y = torch.rand(24, 1, 12, 12), torch.randint(0, 10, (24,))
    outcome = []
    for early in (False, True):
        torch.manual_seed(7)
        x_adv = attacks.pgd(model, x, y, eps=0.03, steps=8, early_stop=early)
        assert (x_adv - x).abs().max() <= 0.03 + 1e-6
        outcome.append(attacks.predict_labels(model, x_adv) == y)
    assert 0 < outcome[0].sum() < len(y), "pick eps so that some, not all, examples survive"
    assert torch.equal(outcome[0], outcome[1])
    torch.manual_seed(7)
    several = attacks.predict_labels(model, attacks.pgd(model, x, y, eps=0.03, steps=8, restarts=3, early_stop=True))
    assert ((several == y) <= outcome[0]).all()  # restarts only ever remove survivors


def test_trades_loss_and_attack():
    torch.manual_seed(0)
    model = rocl_zoo.create_model("cnn4_rocl", num_classes=3).eval()
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    assert torch.allclose(trades_loss(logits, logits, y, 6.0), torch.nn.functional.cross_entropy(logits, y))
    assert trades_loss(logits, logits.flip(1), y, 6.0) > trades_loss(logits, logits, y, 6.0)
    x = torch.rand(4, 1, 8, 8)
    x_adv = trades_attack(model.train(), x, eps=0.1, alpha=0.05, steps=3)
    assert model.training  # mode restored
    g = torch.Generator().manual_seed(1)
    again = trades_attack(model, x, eps=0.1, alpha=0.05, steps=3, generator=g)
    assert torch.equal(again, trades_attack(model, x, eps=0.1, alpha=0.05, steps=3,
                                            generator=torch.Generator().manual_seed(1)))  # resumable start
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and (x_adv - x).abs().max() > 0.05
    assert x_adv.min() >= 0 and x_adv.max() <= 1


class _SignGradient(torch.autograd.Function):
    """Identity forward, a backward of its own: what fx would inline and lose."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g.sign()


class _WithBN(nn.Module):
    def __init__(self, custom_backward: bool):
        super().__init__()
        self.custom_backward = custom_backward
        self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        x = _SignGradient.apply(x) if self.custom_backward else x
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_checked_attack_view_folds_bn_only_where_the_gradients_stay_the_models():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 8, 8)
    for custom, folds in ((False, True), (True, False)):
        model = _WithBN(custom)
        model.train()
        model(x)  # BN statistics that are not the identity
        model.eval()
        net = attacks.checked_attack_view(model, x)
        assert (net is not model) == folds
        assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules()) != folds
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))  # nothing to fold: attacked as it is
    assert attacks.checked_attack_view(plain, x) is plain


def test_checked_attack_view_runs_a_channels_last_copy_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 3)).eval()
    x = torch.rand(4, 3, 8, 8)
    net = attacks.checked_attack_view(model, x)
    conv = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert conv and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in conv)
    assert not any(m.weight.is_contiguous(memory_format=torch.channels_last)
                   for m in model.modules() if isinstance(m, nn.Conv2d))
    torch.testing.assert_close(net(x), model(x), rtol=1e-4, atol=1e-5)
