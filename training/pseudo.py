"""Label-free post-processing (DynACL++, Luo et al., ICLR 2023): labels no human gave, for supervised AT.

k-means (k = the dataset's number of classes, or the recipe's pseudo_clusters: more clusters are purer, a lever the
paper does not use) on an encoder's features of the training images gives pseudo-labels;
a linear probe on them starts the head; TRADES (training.supervised) then trains the whole network on them. No
true label is read: `relabel` replaces them before training, and the held-out curve reads the encoder out through
its own probe. The pseudo-labels are written to the run folder once (pseudo_labels.pt) so a resumed run trains on
the same ones. Their clustering accuracy and purity against the true classes are logged once (metrics.jsonl's
pseudo_labels record), for the record only.
"""
from __future__ import annotations

import torch
from torch import nn

from rocl_zoo.data import ImageTensorDataset
from rocl_zoo.errors import ConfigError
from rocl_zoo.hub import load_encoder

LABELS = "pseudo_labels.pt"


def encoder_of(net: nn.Module) -> nn.Module:
    """A copy of a classifier without its head: what the held-out curve reads out with true labels."""
    import copy

    encoder = copy.deepcopy(net)
    encoder.reset_classifier(0)
    return encoder.eval()


@torch.no_grad()
def features(encoder: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    device = next(encoder.parameters()).device
    return torch.cat([encoder(images[i:i + batch_size].to(device).float().div_(255)).float().cpu()
                      for i in range(0, len(images), batch_size)])


def kmeans_labels(feats: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Cluster indices of L2-normalised features (scikit-learn's k-means, 10 starts, seeded)."""
    try:
        from sklearn.cluster import KMeans
    except ImportError as e:
        raise ImportError('pseudo-labels need scikit-learn: pip install "rocl-zoo[eval]"') from e
    x = nn.functional.normalize(feats, dim=1).numpy()
    return torch.as_tensor(KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x), dtype=torch.long)


def _counts(pseudo: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Images per (cluster, class)."""
    shape = (int(pseudo.max()) + 1, int(true.max()) + 1)
    return torch.zeros(shape, dtype=torch.long).index_put_((pseudo, true), torch.tensor(1), accumulate=True)


def cluster_accuracy(pseudo: torch.Tensor, true: torch.Tensor) -> float:
    """% of images whose cluster is their class under the best one-to-one match of clusters to classes (the
    Hungarian algorithm, as clustering accuracy is usually reported). A diagnostic only: nothing trains on it."""
    from scipy.optimize import linear_sum_assignment

    counts = _counts(pseudo, true)
    rows, cols = linear_sum_assignment(counts.numpy(), maximize=True)
    return round(100 * counts[rows, cols].sum().item() / len(true), 2)


def cluster_purity(pseudo: torch.Tensor, true: torch.Tensor) -> float:
    """% of images whose cluster's most common class is their own: with more clusters than classes (several
    clusters may share a class), how pure the clusters are. A diagnostic only, like cluster_accuracy."""
    return round(100 * _counts(pseudo, true).max(1).values.sum().item() / len(true), 2)


def cluster_scores(pseudo: torch.Tensor, true: torch.Tensor, classes: int) -> dict:
    """Purity, and cluster accuracy where there is one cluster per class (a one-to-one match needs that)."""
    one_to_one = {"cluster_accuracy": cluster_accuracy(pseudo, true)} if int(pseudo.max()) + 1 == classes else {}
    return {"cluster_purity": cluster_purity(pseudo, true), **one_to_one}


def relabel(ds: ImageTensorDataset, source: str, run_path, seed: int, k: int = 0) -> ImageTensorDataset:
    """`ds` with k-means pseudo-labels of `source`'s features instead of its labels (read from the run folder
    when an earlier start of the run made them); k clusters, or one per class when k is 0."""
    from rocl_zoo.utils import atomic_write

    path, k = run_path / LABELS, k or len(ds.classes)
    if path.is_file():
        labels = torch.load(path, weights_only=True)
        if len(labels) != len(ds) or int(labels.max()) + 1 != k:  # k-means leaves no cluster empty
            raise ConfigError(f"{path} holds {len(labels)} labels in {int(labels.max()) + 1} clusters, this run wants "
                              f"{len(ds)} images in {k}: a run of other data or clusters; start it again with "
                              f"--overwrite.")
    else:
        labels = kmeans_labels(features(load_encoder(source), ds.images), k, seed)
        with atomic_write(path) as f:
            torch.save(labels, f)
    return ImageTensorDataset(ds.images, labels, [f"cluster {i}" for i in range(k)],
                              f"{ds.name} pseudo-labelled by {source}")


def start_from(net: nn.Module, start: str, ds: ImageTensorDataset, probe_epochs: int, seed: int) -> nn.Module:
    """`net` (in place) with `start`'s encoder weights and a linear probe on `ds`'s (pseudo-)labels as its head."""
    from rocl_zoo.linear import train_linear_head

    encoder = load_encoder(start)
    head = train_linear_head(encoder, ds, epochs=probe_epochs, progress=False, seed=seed).get_classifier()
    state = {**encoder.state_dict(), **{f"fc.{k}": v for k, v in head.state_dict().items()}}
    net.load_state_dict(state)
    return net
