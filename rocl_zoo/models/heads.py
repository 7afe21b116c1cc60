"""The contrastive projection head used during pretraining (dropped from the released encoders)."""
from torch import nn


class ProjectionHead(nn.Sequential):
    """RoCL/SimCLR projector: Linear(in, hidden) - ReLU - Linear(hidden, out), no BN."""

    def __init__(self, in_features: int = 512, hidden: int = 2048, out_features: int = 128):
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_features))
