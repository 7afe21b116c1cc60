"""Adversarial attacks. Every attack takes [0, 1] images, stays inside [0, 1] and its budget, and leaves the
model in the train/eval mode it found it in.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------------------------
# Supervised attacks: FGSM, PGD (l-inf, l2), transfer, AutoAttack.
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# RoCL's instance-wise attack: no labels, maximises the contrastive loss against the other view.
# ---------------------------------------------------------------------------------------------------------------
