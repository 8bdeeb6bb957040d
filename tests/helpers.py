"""Small synthetic datasets, idx files and a full-disk stand-in for the tests (no dependence on the bundled data)."""
import errno
import gzip
import os
import struct

import torch

from labkit.dataset import MNISTMetricDataset


def tiny_digits(per_class=(5, 3, 4, 2, 6, 3, 2, 4, 5, 3), seed=0):
    """uint8 images (N, 28, 28) and int64 targets with the given count per class, shuffled."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    targets = targets[torch.randperm(len(targets), generator=g)]
    images = torch.randint(0, 256, (len(targets), 28, 28), generator=g, dtype=torch.uint8)
    return images, targets


def tiny_dataset(split="train", remove_class=None, **kwargs):
    images, targets = tiny_digits(**kwargs)
    return MNISTMetricDataset.from_tensors(images, targets, split=split, remove_class=remove_class)


def write_idx(path, array, compress=False):
    """Write a uint8 tensor in the idx format (magic 0x0000 08 ndim, big-endian sizes, raw bytes)."""
    header = bytes([0, 0, 0x08, array.dim()]) + b"".join(struct.pack(">I", s) for s in array.shape)
    data = header + array.contiguous().numpy().tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(data)


def write_split_files(raw, compress=False, seed=0):
    """The four idx files of a tiny MNIST-format dataset (30 train / 10 test) in ``raw``."""
    raw.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for prefix, n in (("train", 30), ("t10k", 10)):
        images, targets = tiny_digits(per_class=(n // 10,) * 10, seed=n + seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", images, compress=compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", targets.to(torch.uint8), compress=compress)
    return raw


class FullDisk:
    """A file object for ``labkit.outputs._open_fd`` on a full disk: it writes the first ``written``
    bytes of what it is given, then raises ENOSPC."""

    def __init__(self, fd, written=0):
        self.f = os.fdopen(fd, "wb")
        self.written = written

    def write(self, data):
        self.f.write(bytes(data)[:self.written])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def require_kernels():
    """Skip where no C compiler is found; fail where one is but labkit.native's kernels did not build."""
    import pytest

    from labkit import native

    if native.kernels() is None:
        try:
            native._compiler()
        except RuntimeError as err:
            pytest.skip(f"no compiled kernels here: {err}")
        pytest.fail(f"a C compiler is here but the kernels did not build: {native.why_not()}")


def spy_on_kernels(monkeypatch):
    """The list that gets the name of each compiled kernel called from now on (labkit.native.call)."""
    from labkit import native

    called, call = [], native.call
    monkeypatch.setattr(native, "call", lambda name, *args: called.append(name) or call(name, *args))
    return called
