"""Self-supervised losses: NT-Xent (SimCLR), the RoCL loss (Kim, Tack and Hwang, NeurIPS 2020) and DeACL's
feature distillation (Zhang et al., ECCV 2022); TRADES for the supervised baseline.

Conventions. Embeddings are rows; a batch of V views of N images is stacked view by view:
`z = cat([z_view0, z_view1, ...])`, shape (V*N, d), so row `v*N + i` is view v of image i. Every view of
image i is a positive of every other view of image i; all other rows are negatives.

The loss of one anchor row a and one of its positives p is

    -log( exp(s(a, p)) / sum_{k != a} exp(s(a, k)) ),   s(a, k) = cos(z_a, z_k) / temperature,

so the denominator holds every other row (V*N - 1 entries, the other positives included). An anchor with
two positives (RoCL) contributes two such terms. The total is the sum over anchors and positives divided by
the number of rows V*N: exactly the original code's `NT_xent` (whose 1e-8 guards we replace by logsumexp).

`detach_other_side=True` reproduces the original code's `z @ z.T.detach()`: the similarity matrix gets its
gradient through the anchor (row) side only. The value is the same either way; the gradient is not. The zoo's
recipes use `True` (the original behaviour, also what the released weights were trained with); the
function defaults are `False`, the textbook SimCLR gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["contrastive_rows", "multi_view_nt_xent", "nt_xent", "simclr_loss", "rocl_loss", "deacl_loss",
           "dynacl_loss", "inferior_positive_weights", "trades_loss"]


def contrastive_rows(anchors: torch.Tensor, columns: torch.Tensor, self_index: torch.Tensor,
                     positive_index: torch.Tensor, temperature: float = 0.5,
                     detach_other_side: bool = False, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-anchor sum of the -log terms of its positives. The building block of every loss here.

    anchors (A, d); columns (K, d): the rows an anchor is compared with (the anchors themselves among them);
    self_index (A,): the column of each anchor (excluded from its denominator); positive_index (A, P): the
    columns of its P positives; weights (A, P): each -log term's weight (default 1). Returns (A,) losses
    (float32).
    """
    a = F.normalize(anchors.float(), dim=1)
    c = F.normalize(columns.float(), dim=1)
    if detach_other_side:
        c = c.detach()
    logits = a @ c.t() / temperature
    logits = logits.masked_fill(F.one_hot(self_index, logits.shape[1]).bool(), float("-inf"))
    log_denominator = torch.logsumexp(logits, dim=1, keepdim=True)
    terms = log_denominator - logits.gather(1, positive_index)
    return (terms if weights is None else terms * weights).sum(dim=1)


def multi_view_nt_xent(z: torch.Tensor, n_views: int, temperature: float = 0.5,
                       detach_other_side: bool = False, view_weights: torch.Tensor | None = None) -> torch.Tensor:
    """NT-Xent over V = n_views stacked views: every row has V-1 positives, each its own -log term over all
    V*N-1 other rows; the sum is divided by V*N. V=2 is SimCLR's loss, V=3 RoCL's contrastive term.
    view_weights (V, V): the weight of the term of an anchor in view a with its positive in view b (default 1)."""
    rows = z.shape[0]
    if n_views < 2 or rows % n_views:
        raise ValueError(f"z has {rows} rows, not a multiple of n_views={n_views} (>= 2).")
    n = rows // n_views
    idx = torch.arange(rows, device=z.device)
    image, view = idx % n, idx // n
    others = torch.stack([((view + k) % n_views) * n + image for k in range(1, n_views)], dim=1)
    weights = None if view_weights is None else view_weights.to(z.device, torch.float32)[view[:, None], others // n]
    return contrastive_rows(z, z, idx, others, temperature, detach_other_side, weights).sum() / rows


def nt_xent(z_anchor: torch.Tensor, z_positive: torch.Tensor, temperature: float = 0.5,
            detach_other_side: bool = False) -> torch.Tensor:
    """SimCLR's NT-Xent between two views (N, d) of the same N images: 2N rows, one positive each, / 2N."""
    if z_anchor.shape != z_positive.shape:
        raise ValueError(f"the two views differ in shape: {tuple(z_anchor.shape)} vs {tuple(z_positive.shape)}.")
    return multi_view_nt_xent(torch.cat([z_anchor, z_positive]), 2, temperature, detach_other_side)


def simclr_loss(z: torch.Tensor, temperature: float = 0.5, detach_other_side: bool = False) -> torch.Tensor:
    """SimCLR, the non-robust baseline: z = cat([t(x), t'(x)]) of shape (2N, d)."""
    return multi_view_nt_xent(z, 2, temperature, detach_other_side)


def inferior_positive_weights(degree: float = 0.2, adv_weight: float = 1.0) -> torch.Tensor:
    """A-InfoNCE's inferior positives for RoCL (Yu et al., ECCV 2022), as view weights over [t(x); t'(x); adv]:
    a clean anchor's term with the adversarial view weighs adv_weight x degree, the adversarial anchor's terms
    with the clean views adv_weight x (1 - degree); clean-clean terms weigh 1. degree 0.5 with adv_weight 2 is
    plain RoCL; the authors' RoCL-IP uses 0.2 and 1."""
    d, w = degree, adv_weight
    return torch.tensor([[0.0, 1.0, w * d], [1.0, 0.0, w * d], [w * (1 - d), w * (1 - d), 0.0]])


def rocl_loss(z: torch.Tensor, temperature: float = 0.5, lam: float = 256.0, detach_other_side: bool = False,
              z_reg: tuple[torch.Tensor, torch.Tensor] | None = None,
              view_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The RoCL loss. z = cat([t(x), t'(x), t(x)_adv]) of shape (3N, d).

    Returns (total, contrastive, regulariser) with total = contrastive + regulariser:
    - contrastive: 3-view NT-Xent (two positives per anchor, 3N-1 entries per denominator, sum / 3N);
    - regulariser: (1/lam) * NT-Xent(t(x)_adv, t'(x)). By default its embeddings are the adversarial and the
      t'(x) rows of z itself (the fused form: no extra forward pass, BN statistics of the 3N batch). Pass
      `z_reg=(z_adv, z_other)` from a separate train-mode pass on the 2N batch for the original's exact form.
    `lam=0` or `lam=inf` turns the regulariser off. view_weights: the contrastive term's weights per (anchor view,
    positive view), e.g. `inferior_positive_weights()` (A-InfoNCE).
    """
    if z.shape[0] % 3:
        raise ValueError(f"RoCL needs 3N rows (t(x), t'(x), adversarial), got {z.shape[0]}.")
    contrastive = multi_view_nt_xent(z, 3, temperature, detach_other_side, view_weights)
    if not lam or lam == float("inf"):
        return contrastive, contrastive, torch.zeros_like(contrastive)
    if z_reg is None:
        n = z.shape[0] // 3
        z_reg = (z[2 * n:], z[n:2 * n])
    reg = nt_xent(z_reg[0], z_reg[1], temperature, detach_other_side) / lam
    return contrastive + reg, contrastive, reg


def deacl_loss(s_clean: torch.Tensor, s_adv: torch.Tensor, t_clean: torch.Tensor,
               k: float = 2.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeACL's stage 2: -cos(s(x), t(x)) - k cos(s(x_adv), s(x)), each cosine averaged over the batch.

    s_clean, s_adv: the student's features of the clean and adversarial images (N, d); t_clean: the frozen
    teacher's features of the clean images (no gradient reaches it). Returns (total, distillation, robustness)
    with total = distillation + robustness; both terms keep their gradient to the student's clean features, as
    in the authors' code (one forward of the clean and adversarial batch together).
    """
    distill = -F.cosine_similarity(s_clean.float(), t_clean.detach().float(), dim=1).mean()
    robust = -k * F.cosine_similarity(s_adv.float(), s_clean.float(), dim=1).mean()
    return distill + robust, distill, robust


def dynacl_loss(clean: tuple[torch.Tensor, torch.Tensor], adv: tuple[torch.Tensor, torch.Tensor], weight: float,
                temperature: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DynACL (Luo et al., ICLR 2023): [(2 - w) NT-Xent(clean pair) + w NT-Xent(adversarial pair)] / 2.

    clean, adv: the two views' embeddings (N, d) each; w moves from 1 (both terms alike) to 2 (adversarial only)
    during training. Returns (total, clean term, adversarial term), the terms before weighting."""
    c, a = nt_xent(*clean, temperature), nt_xent(*adv, temperature)
    return ((2 - weight) * c + weight * a) / 2, c, a


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float = 6.0) -> torch.Tensor:
    """TRADES: CE(clean) + beta * KL(p_clean || p_adv), the KL summed over classes and averaged over the batch."""
    kl = F.kl_div(F.log_softmax(logits_adv.float(), dim=1), F.softmax(logits_clean.float(), dim=1),
                  reduction="batchmean")
    return F.cross_entropy(logits_clean.float(), y) + beta * kl
