"""The contrastive projection heads used during pretraining (dropped from the released encoders)."""
from torch import nn


class ProjectionHead(nn.Sequential):
    """RoCL/SimCLR projector: Linear(in, hidden) - ReLU - Linear(hidden, out), no BN."""

    def __init__(self, in_features: int = 512, hidden: int = 2048, out_features: int = 128):
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_features))


class AclProjectionHead(nn.Sequential):
    """ACL's and DynACL's projector: three Linear(d, d) layers, each followed by BN, ReLU between them (the second
    and third without bias, BN follows)."""

    def __init__(self, features: int = 512):
        d = features
        super().__init__(nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU(inplace=True),
                         nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(inplace=True),
                         nn.Linear(d, d, bias=False), nn.BatchNorm1d(d))
