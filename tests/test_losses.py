"""RoCL / SimCLR losses against a direct loop computation; the instance-wise attack's guarantees."""
import math

import pytest
import torch
from torch import nn

from rocl_zoo.attacks import feature_attack, instance_attack
from rocl_zoo.losses import deacl_loss, nt_xent, rocl_loss, simclr_loss


def reference_loss(z, n_views, tau):
    """Straight from the definition: each (anchor, positive) pair gives -log(exp(s_ap) / sum_{k != a} exp(s_ak))."""
    rows = z.shape[0]
    n = rows // n_views
    zn = [v / v.norm() for v in z.double()]
    total = 0.0
    for a in range(rows):
        sims = [float(zn[a] @ zn[k]) / tau for k in range(rows)]
        denom = sum(math.exp(sims[k]) for k in range(rows) if k != a)
        for p in range(rows):
            if p != a and p % n == a % n:
                total += -math.log(math.exp(sims[p]) / denom)
    return total / rows


@pytest.mark.parametrize("detach", [False, True])
def test_rocl_loss_matches_reference(detach):
    z = torch.randn(3 * 5, 8)
    total, con, reg = rocl_loss(z, temperature=0.5, lam=256, detach_other_side=detach)
    assert con.item() == pytest.approx(reference_loss(z, 3, 0.5), rel=1e-5)
    reg_ref = reference_loss(torch.cat([z[10:], z[5:10]]), 2, 0.5) / 256
    assert reg.item() == pytest.approx(reg_ref, rel=1e-5)
    assert total.item() == pytest.approx(con.item() + reg_ref, rel=1e-5)
    # lam=0 switches the regulariser off; an explicit separate-pass pair is used when given
    assert rocl_loss(z, lam=0)[2].item() == 0
    z_reg = (torch.randn(5, 8), torch.randn(5, 8))
    assert rocl_loss(z, lam=4, z_reg=z_reg)[2].item() == pytest.approx(
        reference_loss(torch.cat(z_reg), 2, 0.5) / 4, rel=1e-5)


def test_simclr_and_nt_xent_match_reference():
    z = torch.randn(2 * 6, 4)
    assert simclr_loss(z, 0.2).item() == pytest.approx(reference_loss(z, 2, 0.2), rel=1e-5)
    assert nt_xent(z[:6], z[6:], 0.2).item() == pytest.approx(reference_loss(z, 2, 0.2), rel=1e-5)
    with pytest.raises(ValueError):
        rocl_loss(torch.randn(10, 4))


def test_detached_mode_only_changes_the_gradient():
    z = torch.randn(3 * 4, 6, requires_grad=True)
    g_full = torch.autograd.grad(rocl_loss(z, detach_other_side=False)[0], z)[0]
    # detached: the gradient of the anchor-side only: sum over rows of d(row loss)/d(anchor)
    z2 = z.detach().clone().requires_grad_(True)
    g_det = torch.autograd.grad(rocl_loss(z2, detach_other_side=True)[0], z2)[0]
    assert not torch.allclose(g_full, g_det)
    zd = z.detach()
    manual = torch.zeros_like(zd)
    for i in range(12):  # the loss of row i with row i free and the other rows constant
        zi = zd[i].clone().requires_grad_(True)
        zz = torch.cat([zd[:i], zi[None], zd[i + 1:]])
        zn = zz / zz.norm(dim=1, keepdim=True)
        logits = zn[i] @ zn.detach().t() / 0.5
        logits = logits.masked_fill(torch.arange(12) == i, float("-inf"))
        pos = [k for k in range(12) if k != i and k % 4 == i % 4]
        loss_i = sum(torch.logsumexp(logits, 0) - logits[p] for p in pos)
        manual[i] = torch.autograd.grad(loss_i / 12, zi)[0]
    z3 = zd.clone().requires_grad_(True)
    g_con = torch.autograd.grad(rocl_loss(z3, lam=0, detach_other_side=True)[0], z3)[0]
    torch.testing.assert_close(g_con, manual, rtol=1e-4, atol=1e-6)


class TinyProj(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=None), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 16))
        with torch.no_grad():  # sensible BN running statistics for the eval-mode attack
            self.net(torch.rand(64, 1, 12, 12))

    def forward(self, x):
        return self.net(x)


def test_instance_attack_raises_loss_and_respects_budget():
    model = TinyProj().train()
    x = torch.rand(16, 1, 12, 12)
    x_t = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    eps = 0.1
    with torch.no_grad():
        model.eval()
        before = nt_xent(model(x), model(x_t)).item()
        model.train()
    x_adv = instance_attack(model, x, x_t, eps=eps, alpha=0.02, steps=7)
    assert model.training and all(m.training for m in model.modules())  # mode restored
    assert all(p.requires_grad and p.grad is None for p in model.parameters())  # no parameter gradients
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        model.eval()
        after = nt_xent(model(x_adv), model(x_t)).item()
        random = nt_xent(model((x + eps * torch.randn_like(x).sign()).clamp(0, 1)), model(x_t)).item()
    assert after > before + 0.05 and after > random + 0.05
    # non-detached variant works too and also raises the loss
    x_adv2 = instance_attack(model.eval(), x, x_t, eps=eps, steps=3, detach_other_side=False)
    with torch.no_grad():
        assert nt_xent(model(x_adv2), model(x_t)).item() > before
    assert not model.training  # eval mode found, eval mode kept


def test_instance_attack_with_gather_equals_whole_batch():
    """Splitting the batch in two 'ranks' whose negatives are gathered gives the whole-batch attack step."""
    model = TinyProj().eval()
    x, x_t = torch.rand(8, 1, 12, 12), torch.rand(8, 1, 12, 12)
    delta = (torch.rand_like(x) * 2 - 1) * 0.03
    with torch.no_grad():
        z_all_t = model(x_t).float()
    one = instance_attack(model, x, x_t, eps=0.03, steps=1, delta_init=delta)
    with torch.no_grad():
        x0 = (x + delta).clamp(0, 1)
        z0 = model(x0).float()
    halves = []
    for r in range(2):
        sl = slice(4 * r, 4 * r + 4)
        calls = iter([(z_all_t, 4 * r), (z0, 4 * r)])
        halves.append(instance_attack(model, x[sl], x_t[sl], eps=0.03, steps=1, delta_init=delta[sl],
                                      gather=lambda z, calls=calls: next(calls)))
    torch.testing.assert_close(torch.cat(halves), one)
    assert not torch.equal(one, (x + delta).clamp(0, 1))


# ------------------------------------------------------------------------------------------------------ DeACL


def test_deacl_loss_matches_hand_computed_values():
    # cos(s, t) = 1 for row 0 and 0 for row 1 -> distillation -(1 + 0) / 2 = -0.5;
    # cos(s_adv, s) = 0.6 for row 0 (3-4-5 triangle) and -1 for row 1 -> robustness -2 (0.6 - 1) / 2 = 0.4
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[3.0, 0.0], [5.0, 0.0]])
    s_adv = torch.tensor([[3.0, 4.0], [0.0, -1.0]])
    total, distill, robust = deacl_loss(s, s_adv, t, k=2.0)
    assert distill.item() == pytest.approx(-0.5) and robust.item() == pytest.approx(0.4)
    assert total.item() == pytest.approx(-0.1)
    assert deacl_loss(s, s_adv, t, k=0.0)[0].item() == pytest.approx(-0.5)
    # the teacher gets no gradient; the student's clean features get one from both terms
    s, t = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
    deacl_loss(s, s_adv, t)[0].backward()
    assert t.grad is None and s.grad.abs().sum() > 0


def test_feature_attack_pushes_features_from_the_target_within_budget():
    model = TinyProj().train()
    x = torch.rand(16, 1, 12, 12)
    with torch.no_grad():
        target = model.eval()(x)
        model.train()
    eps = 0.1
    x_adv = feature_attack(model, x, target, eps=eps, alpha=0.025, steps=5, generator=torch.Generator().manual_seed(0))
    assert model.training and all(p.grad is None for p in model.parameters())  # mode restored, no parameter grads
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        model.eval()
        cos = torch.nn.functional.cosine_similarity
        attacked = cos(model(x_adv), target).mean().item()
        random = cos(model((x + eps * torch.randn_like(x).sign()).clamp(0, 1)), target).mean().item()
    assert attacked < random - 0.01 and attacked < 0.99
    again = feature_attack(model, x, target, eps=eps, alpha=0.025, steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, x_adv)  # seeded start: the same examples


# ---------------------------------------------------------------------------------- A-InfoNCE (RoCL-IP)


def _term(z, anchor, positive, temperature=0.5):
    """One -log term by hand: anchor row against one positive row, the denominator over every other row."""
    zn = torch.nn.functional.normalize(z, dim=1)
    s = zn @ zn.t() / temperature
    others = [k for k in range(len(z)) if k != anchor]
    return -(s[anchor, positive] - torch.logsumexp(s[anchor, others], 0))


def test_inferior_positives_weigh_each_term_as_the_authors_do():
    from rocl_zoo.losses import inferior_positive_weights, multi_view_nt_xent

    g = torch.Generator().manual_seed(0)
    n, z = 3, torch.randn(9, 4, generator=g)  # [t(x); t'(x); adv] for 3 images
    d, w = 0.2, 1.0
    want = 0.0
    for i in range(n):
        c1, c2, a = i, n + i, 2 * n + i
        want += _term(z, c1, c2) + _term(z, c2, c1)
        want += w * ((_term(z, c1, a) + _term(z, c2, a)) * d + (_term(z, a, c1) + _term(z, a, c2)) * (1 - d))
    got = multi_view_nt_xent(z, 3, view_weights=inferior_positive_weights(d, w))
    assert got.item() == pytest.approx(want.item() / (3 * n), rel=1e-5)
    # degree 0.5 with weight 2 is plain RoCL's contrastive term
    plain = rocl_loss(z, lam=0)[1]
    assert rocl_loss(z, lam=0, view_weights=inferior_positive_weights(0.5, 2.0))[1].item() == pytest.approx(plain.item())
    # the regulariser is untouched
    assert rocl_loss(z, view_weights=inferior_positive_weights())[2].item() == pytest.approx(rocl_loss(z)[2].item())
