"""Batches for training and evaluation: the fast on-device path and the course's DataLoader path.

The fast path keeps the whole dataset as one tensor on the device and gathers each triplet batch
from it with one indexing per role; no worker processes. Which images form the triplets is decided
by a *sampler*: ``"dataset"`` (the default) asks the dataset's own ``_sample_positive`` /
``_sample_negative`` (the student's Task 1 code) for every anchor of the batch; ``"vectorised"``
draws the same distribution (positive: uniform over the anchor's class without the anchor;
negative: another class uniformly, then an image of it uniformly) with a few tensor operations and
no per-item Python. ``fast=False`` gives the course's ``DataLoader`` instead.
"""
import operator

import torch
from torch.utils.data import DataLoader

from labkit.device import cpu_rng, pick_device


SAMPLERS = ("dataset", "vectorised")


class TripletBatches:
    """Iterable of (anchor, positive, negative, target) batches, each image batch (B, 1, 28, 28).

    Each pass is one epoch: anchors in a fresh random order, the last incomplete batch dropped
    (as the course's ``drop_last=True``). Pass a ``seed`` for reproducible epochs.
    ``sampler``: ``"dataset"`` calls the dataset's per-item samplers (Task 1) for each anchor,
    ``"vectorised"`` samples the same distribution on the device without them (see the module doc).
    """

    def __init__(self, dataset, batch_size=64, device=None, seed=None, drop_last=True, sampler="dataset"):
        _check_batch_size(batch_size)
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
        self.sampler = sampler
        self.dataset = dataset
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.images = dataset.images.to(self.device).unsqueeze(1)  # (N, 1, 28, 28)
        self.targets = dataset.targets.to(self.device)
        classes = torch.as_tensor(sorted(dataset.classes), device=self.device)
        if not torch.isin(self.targets, classes).all():  # searchsorted below would merge them into a class
            stray = sorted(set(self.targets[~torch.isin(self.targets, classes)].tolist()))[:5]
            raise ValueError(f"targets {stray} are not among the dataset's classes {sorted(dataset.classes)}; "
                             f"build the dataset with MNISTMetricDataset.from_tensors, which checks them")
        # Images grouped by class: class k's images are order[start[k] : start[k] + count[k]].
        class_pos = torch.searchsorted(classes, self.targets)  # class of each image as 0..K-1
        self.order = torch.argsort(class_pos, stable=True)
        self.count = torch.bincount(class_pos, minlength=len(classes))
        self.start = torch.cumsum(self.count, 0) - self.count
        rank = torch.empty_like(self.order)
        rank[self.order] = torch.arange(len(self.order), device=self.device)
        self.rank_in_class = rank - self.start[class_pos]  # position of each image within its class
        self.class_pos = class_pos
        if len(classes) < 2 or int(self.count.min()) < 2:
            raise ValueError("triplets need at least two classes with at least two images each")
        seed = seed if seed is not None else int(torch.randint(2**62, ()).item())
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        # the dataset sampler runs on the host: its anchor order and per-batch seeds come from here,
        # so that it never waits for the device to finish a step
        self.host_generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        n = len(self.targets)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def sample(self, anchors):
        """Positive and negative indices (on the device) for a 1-D tensor of anchor indices."""
        if self.sampler == "dataset":
            positives, negatives = self._sample_with_dataset(anchors.cpu())
            return positives.to(self.device), negatives.to(self.device)
        return self._sample_vectorised(anchors)

    def _sample_with_dataset(self, anchors):
        """The dataset's own ``_sample_positive`` / ``_sample_negative`` for each anchor (host tensors).

        They draw from torch's global generator; it is seeded per batch from ``host_generator`` inside
        ``labkit.device.cpu_rng``, so batches follow ``seed`` and the caller's random state stays untouched.
        """
        batch_seed = int(torch.randint(2**62, (), generator=self.host_generator))
        ids = anchors.tolist()
        with cpu_rng(batch_seed):
            positives = [self.dataset._sample_positive(i) for i in ids]
            negatives = [self.dataset._sample_negative(i) for i in ids]
        return _index_tensor(positives, "_sample_positive"), _index_tensor(negatives, "_sample_negative")

    def _sample_vectorised(self, anchors):
        g, dev = self.generator, self.device
        k = self.class_pos[anchors]
        # positive: one of the n-1 other slots of the anchor's class; slots at or after the anchor shift by one
        r = _uniform_below(self.count[k] - 1, g, dev)
        r = r + (r >= self.rank_in_class[anchors])
        positives = self.order[self.start[k] + r]
        # negative: a uniformly chosen other class, then a uniform image of it
        num_classes = len(self.count)
        k_neg = (k + torch.randint(1, num_classes, k.shape, generator=g, device=dev)) % num_classes
        negatives = self.order[self.start[k_neg] + _uniform_below(self.count[k_neg], g, dev)]
        return positives, negatives

    def __iter__(self):
        n, b = len(self.targets), self.batch_size
        if self.sampler == "dataset":
            perm = torch.randperm(n, generator=self.host_generator)
            for i in range(len(self)):
                anchors = perm[i * b:(i + 1) * b]
                ids = torch.stack((anchors, *self._sample_with_dataset(anchors))).to(self.device, non_blocking=True)
                yield self.images[ids[0]], self.images[ids[1]], self.images[ids[2]], self.targets[ids[0]]
            return
        perm = torch.randperm(n, generator=self.generator, device=self.device)
        for i in range(len(self)):
            anchors = perm[i * b:(i + 1) * b]
            positives, negatives = self._sample_vectorised(anchors)
            yield self.images[anchors], self.images[positives], self.images[negatives], self.targets[anchors]


class ImageBatches:
    """Iterable of (images (B, 1, 28, 28), targets) over a dataset held on the device, in order."""

    def __init__(self, dataset, batch_size=256, device=None):
        _check_batch_size(batch_size)
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.images = dataset.images.to(self.device).unsqueeze(1)
        self.targets = dataset.targets.to(self.device)

    def __len__(self):
        return -(-len(self.targets) // self.batch_size)

    def __iter__(self):
        for i in range(0, len(self.targets), self.batch_size):
            yield self.images[i:i + self.batch_size], self.targets[i:i + self.batch_size]


def triplet_loader(dataset, batch_size=64, fast=True, device=None, seed=None, num_workers=2, sampler="dataset"):
    """Training batches: ``TripletBatches`` (fast, with ``sampler``) or the course's shuffled ``DataLoader``."""
    if dataset.split != "train":
        raise ValueError(f"triplets come from a split='train' dataset, this one is split={dataset.split!r}")
    if fast:
        return TripletBatches(dataset, batch_size, device=device, seed=seed, sampler=sampler)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
                      generator=generator, persistent_workers=num_workers > 0)


def image_loader(dataset, batch_size=256, fast=True, device=None, num_workers=0):
    """Evaluation batches of (images, targets) in dataset order, from any split."""
    if fast:
        return ImageBatches(_as_plain(dataset), batch_size, device=device)
    return DataLoader(_as_plain(dataset), batch_size=batch_size, shuffle=False, num_workers=num_workers)


def _as_plain(dataset):
    """A view of the dataset that yields (image, target), whatever its split."""
    if dataset.split != "train":
        return dataset
    return type(dataset).from_tensors(dataset.images, dataset.targets, split="traineval", source=dataset.source)


def _index_tensor(indices, method):
    """The indices a dataset sampler returned as a long tensor; anything but an int index is an error."""
    try:
        return torch.tensor([operator.index(i) for i in indices], dtype=torch.long)
    except TypeError:
        bad = next(i for i in indices if not hasattr(type(i), "__index__"))
        raise TypeError(f"dataset.{method} must return an int index, it returned {bad!r} "
                        f"({type(bad).__name__}); return e.g. torch.randint(...).item()") from None


def _uniform_below(n, generator, device):
    """One uniform integer in [0, n_i) for each entry of the integer tensor n."""
    u = torch.rand(n.shape, generator=generator, device=device)
    return torch.minimum((u * n).long(), n - 1)


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
