"""Task 1: MNIST as triplets (anchor, positive, negative) for metric learning."""
import operator
from collections import defaultdict
from numbers import Integral

import torch
from torch.utils.data import Dataset

from labkit.data import load_digits

SPLITS = ("train", "test", "traineval")
NUM_CLASSES = 10


class MNISTMetricDataset(Dataset):
    """MNIST digits; ``split='train'`` yields (anchor, positive, negative, target), others (image, target).

    ``images`` are float in [0, 1] with shape (N, 28, 28); items carry a channel axis, (1, 28, 28).
    ``remove_class`` drops one digit entirely (Task 3e trains without it).
    """

    def __init__(self, root=None, split="train", remove_class=None, source=None):
        super().__init__()
        _check_split(split)
        digits = load_digits(root, train=split != "test", source=source)
        self._setup(digits.images, digits.targets, split, remove_class)
        self.source = digits.source

    @classmethod
    def from_tensors(cls, images, targets, split="train", remove_class=None, source="tensors"):
        """Build the dataset from images already in memory: uint8 (N, 28, 28) in 0..255, or float in [0, 1],
        and integer targets in 0..9, one per image. Anything else raises ValueError saying how to fix it."""
        _check_split(split)
        ds = cls.__new__(cls)
        Dataset.__init__(ds)
        ds._setup(images, targets, split, remove_class)
        ds.source = source
        return ds

    def _setup(self, images, targets, split, remove_class):
        self.split = split
        self.images, self.targets = _checked_images(images), _checked_targets(targets, len(images))
        self.classes = list(range(NUM_CLASSES))
        self.remove_class = _check_class(remove_class, self.classes)

        if self.remove_class is not None:
            # Drop every image of self.remove_class from self.images and self.targets,
            # and the class itself from self.classes.
            # BEGIN SOLUTION
            keep = self.targets != self.remove_class
            self.images, self.targets = self.images[keep], self.targets[keep]
            self.classes.remove(self.remove_class)
            # END SOLUTION

        self.target2indices = defaultdict(list)
        for i, t in enumerate(self.targets.tolist()):
            self.target2indices[t].append(i)

        if split == "train":
            too_small = [c for c in self.classes if len(self.target2indices[c]) < 2]
            if too_small or len(self.classes) < 2:
                raise ValueError(
                    f"triplets need at least two classes and two images per class; classes {too_small} "
                    f"have fewer. Use a larger dataset or remove those classes."
                )

    def _sample_positive(self, index):
        """Index of another image of the anchor's class, uniformly; never ``index`` itself."""
        # Use self.target2indices and torch.randint; return an int.
        # BEGIN SOLUTION
        same = self.target2indices[self.targets[index].item()]
        j = torch.randint(len(same) - 1, ()).item()  # one of the first n-1 slots...
        return same[-1] if same[j] == index else same[j]  # ...the anchor's slot stands for the last
        # END SOLUTION

    def _sample_negative(self, index):
        """Index of an image of another class: the class uniformly, then an image of it uniformly."""
        # Choose among self.classes (a removed class is no longer there); return an int.
        # BEGIN SOLUTION
        anchor_class = self.targets[index].item()
        others = [c for c in self.classes if c != anchor_class]
        candidates = self.target2indices[others[torch.randint(len(others), ()).item()]]
        return candidates[torch.randint(len(candidates), ()).item()]
        # END SOLUTION

    def __getitem__(self, index):
        index = operator.index(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} images")
        index %= len(self)  # the samplers compare indices: -1 must become len - 1
        anchor = self.images[index].unsqueeze(0)  # (1, 28, 28)
        target = self.targets[index].item()
        if self.split != "train":
            return anchor, target
        positive = self.images[self._sample_positive(index)].unsqueeze(0)
        negative = self.images[self._sample_negative(index)].unsqueeze(0)
        return anchor, positive, negative, target

    def __len__(self):
        return len(self.images)


def _checked_images(images):
    """Float images (N, 28, 28) in [0, 1]: uint8 divided by 255; floats must already lie in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a tensor (N, 28, 28), got {type(images).__name__}")
    if images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
        raise ValueError(f"images must have shape (N, 28, 28), got {tuple(images.shape)}"
                         + (" (drop the channel axis: images.squeeze(1))" if images.dim() == 4 else ""))
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 (0..255) or float in [0, 1], got {images.dtype}")
    if len(images) and not torch.isfinite(images).all():
        bad = int((~torch.isfinite(images)).flatten(1).any(1).nonzero()[0])
        raise ValueError(f"image {bad} holds NaN or inf: remove or repair the non-finite images "
                         f"(torch.isfinite(images).flatten(1).all(1) marks the good ones)")
    # floats in 0..255 are not rescaled by guesswork: images in [0, 1.5] or standardised ones would
    # be scaled wrongly without a word; the fix is one call
    if len(images) and (images.min() < 0 or images.max() > 1):
        raise ValueError(f"float images must lie in [0, 1], these range {images.min().item():g}..{images.max().item():g}"
                         f"; pass uint8 images, or divide 0..255 floats by 255 (images / 255)")
    return images.float()


def _checked_targets(targets, num_images):
    """int64 targets in 0..9, one per image."""
    targets = torch.as_tensor(targets)
    if targets.dtype == torch.bool or targets.is_floating_point() or targets.is_complex():
        raise ValueError(f"targets must be integer class numbers 0..{NUM_CLASSES - 1}, got {targets.dtype}"
                         f"{' (convert whole-number floats with targets.long())' if targets.is_floating_point() else ''}")
    if targets.dim() != 1 or len(targets) != num_images:
        raise ValueError(f"targets must be one class number per image: {num_images} images, targets of "
                         f"shape {tuple(targets.shape)}")
    if len(targets) and (targets.min() < 0 or targets.max() >= NUM_CLASSES):
        bad = targets[(targets < 0) | (targets >= NUM_CLASSES)]
        raise ValueError(f"targets must be class numbers 0..{NUM_CLASSES - 1}; found {sorted(set(bad.tolist()))[:5]} "
                         f"({len(bad)} of {len(targets)}). Drop those images or fix their labels")
    return targets.to(torch.int64)


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")


def _check_class(remove_class, classes):
    if remove_class is None:
        return None
    if isinstance(remove_class, torch.Tensor) and remove_class.numel() == 1:
        remove_class = remove_class.item()
    if isinstance(remove_class, bool) or not isinstance(remove_class, Integral) or remove_class not in classes:
        raise ValueError(f"remove_class={remove_class!r} is not a class; use None or one of {classes}")
    return int(remove_class)
