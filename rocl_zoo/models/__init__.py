"""Architectures, registered with timm on import: one module per family."""
from ._base import ClassifierBase, Normalize
from .convnet import ConvNet, cnn4_rocl, cnn4w_rocl
from .heads import AclProjectionHead, ProjectionHead
from .resnet import CifarResNet, resnet18_rocl, resnet50_rocl
from .wide_resnet import WideResNet, wrn34_10_rocl

ARCHITECTURES = ("cnn4_rocl", "cnn4w_rocl", "resnet18_rocl", "resnet50_rocl", "wrn34_10_rocl")

__all__ = ["ARCHITECTURES", "ClassifierBase", "Normalize", "ProjectionHead", "AclProjectionHead", "ConvNet", "CifarResNet", "WideResNet",
           "cnn4_rocl", "cnn4w_rocl", "resnet18_rocl", "resnet50_rocl", "wrn34_10_rocl"]
