"""Where the digits come from: full MNIST through torchvision, or the real MNIST sample in the package.

Sources:
  * ``mnist``  - full MNIST (60k/10k) from ``root/MNIST/raw`` (torchvision's layout), downloaded if missing;
  * ``sample`` - 5,000 real MNIST training digits shipped with labkit (400 train / 100 test per class);
  * ``auto``   - local MNIST files, else a download, else the sample.

The choice comes from the ``source`` argument, else the ``LABKIT_DATA`` environment variable, else
``auto``. Whatever is chosen is announced once per process in one line that says why.
"""
import os
import socket
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import getproxies

import numpy as np
import torch

SOURCES = ("auto", "mnist", "sample")
SOURCE_ENV = "LABKIT_DATA"
ROOT_ENV = "LABKIT_DATA_ROOT"
DEFAULT_ROOT = "data"
PROBE_TIMEOUT_S = 3.0  # an offline machine gives up on the download within this many seconds
DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation once a mirror answered

_resolved = {}  # (root, requested source) -> (source, reason); remembered so we probe and announce once


@dataclass(frozen=True)
class Digits:
    """One split of digits: ``images`` uint8 (N, 28, 28), ``targets`` int64 (N,)."""

    images: torch.Tensor
    targets: torch.Tensor
    source: str  # "mnist", "sample" or a free-form name for other data


def data_root(root=None):
    """The data folder: the argument, else ``$LABKIT_DATA_ROOT``, else ``./data``."""
    return Path(root if root is not None else os.environ.get(ROOT_ENV, DEFAULT_ROOT))


def requested_source(source=None):
    origin = "source argument" if source is not None else f"${SOURCE_ENV}"
    source = source if source is not None else os.environ.get(SOURCE_ENV, "auto")
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r} (from the {origin}); choose one of {SOURCES}")
    return source


def load_digits(root=None, train=True, source=None):
    """Load the training (``train=True``) or test split as uint8 images and int64 targets."""
    root = data_root(root)
    source = resolve_source(root, source)
    if source == "sample":
        return _load_sample(train)
    return _load_mnist(root, train, download=False)


def resolve_source(root=None, source=None, verbose=True):
    """Decide between full MNIST and the sample; announce the choice once. Returns the source name."""
    root = data_root(root)
    requested = requested_source(source)
    key = (str(root), requested)
    if key not in _resolved:
        _resolved[key] = _decide(root, requested)
        if verbose:
            print(f"[labkit] data: {_resolved[key][1]}")
    return _resolved[key][0]


def _decide(root, requested):
    sample = "bundled MNIST sample (4,000 train / 1,000 test digits)"
    if requested == "sample":
        return "sample", f"{sample}, as requested"
    if _mnist_present(root):
        return "mnist", f"full MNIST from {root}/MNIST/raw (files found)"
    problem = _download_mnist(root)
    if problem is None:
        return "mnist", f"full MNIST, downloaded to {root}/MNIST/raw"
    if requested == "mnist":
        raise RuntimeError(
            f"full MNIST is not under {root}/MNIST/raw and could not be downloaded ({problem}). "
            f"Fix: connect to the internet and retry, or copy the four MNIST idx files "
            f"(train-images-idx3-ubyte, ...) into {root}/MNIST/raw, or use the sample "
            f"with source='sample' (or {SOURCE_ENV}=sample)."
        )
    return "sample", f"{sample}: no MNIST files under {root}/MNIST/raw and no download ({problem})"


def _mnist_present(root):
    from torchvision.datasets import MNIST

    return all((Path(root) / "MNIST" / "raw" / Path(url).stem).exists() for url, _ in MNIST.resources)


def _reachable(host, port, timeout):
    """Can we open a TCP connection to host:port? Name lookup is bounded too (it runs in a thread)."""
    ok = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(ok)


def _download_mnist(root):
    """Try torchvision's download; return None on success or a short description of the problem."""
    from torchvision.datasets import MNIST

    proxies = getproxies()  # behind a proxy the proxy is what must answer
    targets = [urlparse(proxies.get(m.scheme) or m.geturl()) for m in map(urlparse, MNIST.mirrors)]
    if not any(_reachable(t.hostname, t.port or (443 if t.scheme == "https" else 80), PROBE_TIMEOUT_S)
               for t in targets):
        return "no network: no MNIST mirror answered" + (" (nor the proxy)" if proxies else "")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        for train in (True, False):
            MNIST(str(root), train=train, download=True)
    except Exception as exc:  # torchvision raises RuntimeError, urllib OSError subclasses
        return f"download failed: {type(exc).__name__}: {exc}"
    finally:
        socket.setdefaulttimeout(previous)
    return None


def _load_mnist(root, train, download):
    from torchvision.datasets import MNIST

    ds = MNIST(str(root), train=train, download=download)
    return Digits(ds.data.to(torch.uint8), ds.targets.to(torch.int64), "mnist")


def sample_path():
    return resources.files("labkit") / "_data" / "mnist_sample.npz"


def _load_sample(train):
    split = "train" if train else "test"
    with resources.as_file(sample_path()) as path, np.load(path) as arrays:
        images = torch.from_numpy(arrays[f"{split}_images"].copy())
        targets = torch.from_numpy(arrays[f"{split}_targets"].copy()).to(torch.int64)
    return Digits(images, targets, "sample")


def read_idx(path):
    """Read one (optionally gzipped) idx file, the format of MNIST and Fashion-MNIST, as a uint8 tensor."""
    import gzip

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes (magic {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {data.size} bytes of data, its header promises shape {shape}")
    return torch.from_numpy(data.reshape(shape).copy())


def load_idx_digits(folder, train=True, source="idx"):
    """Load an MNIST-format split (``train-*`` or ``t10k-*`` idx files, gzipped or not) from a folder."""
    prefix = "train" if train else "t10k"
    folder = Path(folder)

    def find(kind):
        name = f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"no {name}[.gz] in {folder}")

    images, targets = read_idx(find("images")), read_idx(find("labels")).to(torch.int64)
    return Digits(images, targets, source)
