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
        """Build the dataset from uint8 (N, 28, 28) images and integer targets already in memory."""
        _check_split(split)
        ds = cls.__new__(cls)
        Dataset.__init__(ds)
        ds._setup(images, targets, split, remove_class)
        ds.source = source
        return ds

    def _setup(self, images, targets, split, remove_class):
        self.split = split
        self.images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        self.targets = torch.as_tensor(targets, dtype=torch.int64)
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
