"""How well do k-means clusters of an encoder's features match the true classes? The question behind DynACL++'s
post-processing (training/pseudo.py), which trains on such clusters as labels: cluster accuracy (clusters matched
to classes one to one) with k = the number of classes, and purity (each cluster's most common class) with more
clusters, for each encoder named. The true labels are read only to score the clusters.

    python scripts/pseudo_labels.py results/curves/fmnist_dynacl/best_clean cnn4_rocl.fmnist_simclr --k 10,30
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="+", help="zoo names or Hub-layout folders of encoders or classifiers")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--k", default="10", help="comma-separated cluster counts (default 10)")
    p.add_argument("--subset", type=int, default=None, help="a fixed random subset of N training images (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from rocl_zoo.data import load_dataset
    from rocl_zoo.hub import load_encoder
    from rocl_zoo.utils import hardware_name
    from training.pseudo import cluster_scores, features, kmeans_labels

    ds = load_dataset(a.dataset, "train", subset=a.subset)
    print(f"# k-means (10 starts, seed {a.seed}) on {len(ds)} {a.dataset} training images; {hardware_name()}")
    print("| encoder | k | cluster accuracy % | purity % | CPU time |\n|---|---:|---:|---:|---:|")
    for source in a.sources:
        feats = features(load_encoder(source), ds.images)
        for k in map(int, a.k.split(",")):
            start = time.process_time()
            scores = cluster_scores(kmeans_labels(feats, k, a.seed), ds.labels, len(ds.classes))
            acc = f"{scores['cluster_accuracy']:.1f}" if "cluster_accuracy" in scores else "–"
            print(f"| {source} | {k} | {acc} | {scores['cluster_purity']:.1f} | "
                  f"{time.process_time() - start:.0f} s |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
