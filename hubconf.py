"""torch.hub entry points: `torch.hub.load("<org>/rocl", "cnn4_rocl")` is the pretrained model, as in DINO's,
DINOv2's and SwAV's hubconf files.

Each entry point builds one architecture and, by default (`pretrained=True`), loads the zoo's default tag for it
(or `tag=`), with its sha256 verified; `pretrained=False` gives the bare architecture. An entry whose weights
are not published yet raises an error that names the recipe that makes them.
Offline: `torch.hub.load("/path/to/rocl-zoo", "cnn4_rocl", source="local", pretrained=True)`.
"""
dependencies = ["torch", "torchvision", "timm", "safetensors", "huggingface_hub"]

from rocl_zoo.hub import create_model as _create_model  # noqa: E402


def _entry_point(arch: str):
    def entry(pretrained: bool = True, tag: str | None = None, **kwargs):
        name = f"{arch}.{tag}" if tag else arch
        return _create_model(name, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = arch
    return entry


cnn4_rocl = _entry_point("cnn4_rocl")
cnn4_rocl.__doc__ = """Small 4-conv CNN (256-d features) for 28x28 images; default tag `fmnist` (RoCL, Fashion-MNIST).

Args: pretrained (default True: load the zoo weights; False: the bare architecture), tag (e.g. "fmnist_simclr",
"fmnist_at", "fmnist_rocl_at"), num_classes, in_chans."""
cnn4w_rocl = _entry_point("cnn4w_rocl")
cnn4w_rocl.__doc__ = """Double-width 4-conv CNN (512-d features) for 28x28 images; default tag `fmnist`.

Args: pretrained, tag, num_classes, in_chans."""
resnet18_rocl = _entry_point("resnet18_rocl")
resnet18_rocl.__doc__ = """CIFAR ResNet-18 (the RoCL paper's encoder, 512-d features); default tag: `fmnist` (RoCL on
Fashion-MNIST, the zoo's flagship) once its weights ship and until the paper's `cifar10` ones do.

Args: pretrained (default True: load the zoo weights; False: the bare architecture), tag (e.g. "cifar10_simclr",
"fmnist"), num_classes, in_chans."""
resnet50_rocl = _entry_point("resnet50_rocl")
resnet50_rocl.__doc__ = """CIFAR ResNet-50 (2048-d features); default tag `cifar10`.

Args: pretrained, tag, num_classes, in_chans."""
wrn34_10_rocl = _entry_point("wrn34_10_rocl")
wrn34_10_rocl.__doc__ = """WideResNet-34-10 (640-d features), the robustness field's standard; default tag `cifar10`.

Args: pretrained, tag, num_classes, in_chans."""


def load(source: str, **kwargs):
    """Any model rocl_zoo can load: a zoo name (`cnn4_rocl.fmnist`), `hf-hub:ORG/NAME[@REV]`, or a folder in the
    Hub layout (for example a `python -m rocl_zoo.finetune` output's `classifier/`), verified against its sha256.

    `torch.hub.load(repo, "load", "runs/digits-at/classifier", source="local")`."""
    from rocl_zoo.hub import load as _load

    return _load(source, **kwargs)
