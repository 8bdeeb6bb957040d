"""Where the images come from: full MNIST or Fashion-MNIST idx files, or the real MNIST sample in the package.

Sources:
  * ``mnist``   - full MNIST (60k/10k) from ``root/MNIST/raw`` (torchvision's layout), downloaded if missing;
  * ``fashion`` - full Fashion-MNIST (60k/10k) from ``$LABKIT_FASHION_DIR``, ``root/FashionMNIST/raw``
    or Debian's ``/usr/share/datasets/fashion-mnist``, downloaded if missing; never replaced by digits;
  * ``sample``  - 5,000 real MNIST training digits shipped with labkit (400 train / 100 test per class);
  * ``auto``    - local MNIST files, else a download, else the sample.

The choice comes from the ``source`` argument, else the ``LABKIT_DATA`` environment variable, else
``auto``. Whatever is chosen is announced once per process in one line that says why. Every idx file
is read by ``read_idx`` and checked (format, size, 28x28 images, labels 0..9) before it is used.
"""
import gzip
import os
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.request import getproxies

import numpy as np
import torch

SOURCES = ("auto", "mnist", "fashion", "sample")
SOURCE_ENV = "LABKIT_DATA"
ROOT_ENV = "LABKIT_DATA_ROOT"
DIR_ENV = {"mnist": "LABKIT_MNIST_DIR", "fashion": "LABKIT_FASHION_DIR"}  # a folder of the four idx files
DEBIAN_DIR = {"fashion": Path("/usr/share/datasets/fashion-mnist")}  # apt install dataset-fashion-mnist
DEFAULT_ROOT = "data"
PROBE_TIMEOUT_S = 3.0  # the whole probe (name lookup, connection, first answer) gives up after this long
DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation once a mirror answered
IMAGE_SIZE = (28, 28)
NUM_CLASSES = 10
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_NAMES = {"mnist": "MNIST", "fashion": "Fashion-MNIST"}
_LAYOUT = {"mnist": "MNIST", "fashion": "FashionMNIST"}  # torchvision's folder (and class) names
_SAMPLE = "bundled MNIST sample (4,000 train / 1,000 test digits)"

_resolved = {}  # (root, requested source, env folders) -> (source, reason, folder); we probe and announce once


class DataFileError(ValueError):
    """A data file that is not what it should be; the message names the file and the fix."""


@dataclass(frozen=True)
class Digits:
    """One split of images: ``images`` uint8 (N, 28, 28), ``targets`` int64 (N,) in 0..9."""

    images: torch.Tensor
    targets: torch.Tensor
    source: str  # "mnist", "fashion", "sample" or a free-form name for other data


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
    chosen = resolve_source(root, source)
    if chosen == "sample":
        return _load_sample(train)
    folder = _resolved[_key(root, requested_source(source))][2]
    return load_idx_digits(folder, train=train, source=chosen)


def resolve_source(root=None, source=None, verbose=True):
    """Decide where the data comes from; announce the choice once. Returns the source name."""
    root = data_root(root)
    key = _key(root, requested_source(source))
    if key not in _resolved:
        _resolved[key] = _decide(root, key[1])
        if verbose:
            print(f"[labkit] data: {_resolved[key][1]}")
        # notebooks pass the chosen name on to the datasets: asking by it must not probe or announce again
        _resolved.setdefault(_key(root, _resolved[key][0]), _resolved[key])
    return _resolved[key][0]


def _key(root, requested):
    return (str(root), requested) + tuple(os.environ.get(v, "") for v in DIR_ENV.values())


def _decide(root, requested):
    if requested == "sample":
        return "sample", f"{_SAMPLE}, as requested", None
    source = "fashion" if requested == "fashion" else "mnist"
    name = _NAMES[source]
    folders = _candidate_folders(root, source)
    legacy = _legacy_note(root) if source == "mnist" else ""
    folder = local_folder(source, root)
    how = "files found"
    if folder is None and os.environ.get(DIR_ENV[source]):
        raise RuntimeError(
            f"${DIR_ENV[source]}={os.environ[DIR_ENV[source]]} does not hold the four {name} idx files "
            f"({', '.join(_file_names())}, gzipped or not). Fix: point it at the folder that holds them, "
            f"or unset it.")
    if folder is None:
        problem = _download(root, source)
        if problem is None:
            folder, how = _raw_dir(root, source), "downloaded"
        elif requested == "fashion":
            raise RuntimeError(
                f"Fashion-MNIST is not in {', '.join(map(str, folders))} and could not be downloaded "
                f"({problem}). Fix: connect to the internet and retry; or put its four idx files "
                f"(train-images-idx3-ubyte.gz, ...) in a folder and set ${DIR_ENV['fashion']} to it; on "
                f"Debian/Ubuntu `apt install dataset-fashion-mnist` puts them in {DEBIAN_DIR['fashion']}.")
        elif requested == "mnist":
            raise RuntimeError(
                f"full MNIST is not under {_raw_dir(root, 'mnist')} and could not be downloaded ({problem}){legacy}. "
                f"Fix: connect to the internet and retry, or copy the four MNIST idx files "
                f"(train-images-idx3-ubyte, ...) into {_raw_dir(root, 'mnist')}, or use the sample "
                f"with source='sample' (or {SOURCE_ENV}=sample).")
        else:
            return "sample", f"{_SAMPLE}: no MNIST files under {_raw_dir(root, 'mnist')} and no download ({problem}){legacy}", None
    try:
        for train in (True, False):  # read and check every file once before anything trains on it
            load_idx_digits(folder, train=train, source=source)
    except DataFileError as exc:
        if requested != "auto":
            raise
        return "sample", f"{_SAMPLE}: the MNIST files are unusable: {exc}", None
    return source, f"full {name} from {folder} ({how}){legacy}", folder


def local_folder(source, root=None):
    """The folder on this machine that holds the four idx files of ``source`` ("mnist" or "fashion"),
    looked up as ``load_digits`` would (``$LABKIT_MNIST_DIR`` / ``$LABKIT_FASHION_DIR``, the data
    folder, Debian's folder), or None. Never downloads; the files are not read."""
    if source not in DIR_ENV:
        raise ValueError(f"local_folder takes one of {tuple(DIR_ENV)}, got {source!r} (the sample is always here)")
    return next((f for f in _candidate_folders(data_root(root), source) if _complete(f)), None)


def _raw_dir(root, source):
    return Path(root) / _LAYOUT[source] / "raw"


def _candidate_folders(root, source):
    if os.environ.get(DIR_ENV[source]):
        return [Path(os.environ[DIR_ENV[source]])]  # the user's explicit choice, nothing else
    return [_raw_dir(root, source)] + ([DEBIAN_DIR[source]] if source in DEBIAN_DIR else [])


def _file_names():
    return [f"{p}-{k}-idx{3 if k == 'images' else 1}-ubyte" for p in ("train", "t10k") for k in ("images", "labels")]


def _find(folder, name):
    """``folder/name`` or ``folder/name.gz``, whichever exists (None if neither)."""
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def _complete(folder):
    return all(_find(Path(folder), name) is not None for name in _file_names())


def _legacy_note(root):
    processed = Path(root) / "MNIST" / "processed"
    if any((processed / f).exists() for f in ("training.pt", "test.pt")):
        return f" (ignoring torchvision's legacy {processed}/*.pt: labkit reads only checked idx files)"
    return ""


def _first_answering(urls, timeout):
    """The first of ``urls`` (in order) that answers an HTTP request, or None; all are asked at once and
    the whole probe (name lookup, proxy, connection, reply) is over within ``timeout`` seconds."""
    answered = [False] * len(urls)
    done = threading.Semaphore(0)

    def ask(i):
        try:
            answered[i] = _probe(urls[i], timeout)
        except Exception:  # noqa: BLE001 - any failure means "not reachable"; nothing may escape the thread
            pass
        finally:
            done.release()

    for i in range(len(urls)):  # daemon threads: one stuck in a name lookup may linger, never delays us
        threading.Thread(target=ask, args=(i,), daemon=True, name="labkit-download-probe").start()
    deadline = time.monotonic() + timeout
    for _ in urls:
        if not done.acquire(timeout=max(0.0, deadline - time.monotonic())) or any(answered):
            break
    return next((url for url, ok in zip(urls, answered) if ok), None)


def _probe(url, timeout):
    """Does ``url`` answer a HEAD request (through the proxy, if one is set)?"""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler(getproxies()))
    with opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout) as reply:
        return reply.status < 400


def _download(root, source):
    """Try torchvision's download of every file; return None on success or a short description of the problem."""
    from torchvision import datasets
    from torchvision.datasets.utils import download_and_extract_archive

    cls = getattr(datasets, _LAYOUT[source])
    first = cls.resources[0][0]
    proxy = " (nor the proxy)" if getproxies() else ""
    answered = _first_answering([m + first for m in cls.mirrors], PROBE_TIMEOUT_S)
    mirror = next((m for m in cls.mirrors if answered == m + first), None)
    if mirror is None:
        return f"no network: no {_NAMES[source]} mirror answered within {PROBE_TIMEOUT_S:g} s{proxy}"
    raw = _raw_dir(root, source)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        for filename, md5 in cls.resources:
            download_and_extract_archive(mirror + filename, raw / ".download", raw, filename, md5)
    except Exception as exc:  # noqa: BLE001 - torchvision raises RuntimeError, urllib OSError subclasses
        return f"download failed: {type(exc).__name__}: {exc}"
    finally:
        socket.setdefaulttimeout(previous)
    return None


def sample_path():
    return resources.files("labkit") / "_data" / "mnist_sample.npz"


def _load_sample(train):
    split = "train" if train else "test"
    with resources.as_file(sample_path()) as path, np.load(path) as arrays:
        images = torch.from_numpy(arrays[f"{split}_images"].copy())
        targets = torch.from_numpy(arrays[f"{split}_targets"].copy()).to(torch.int64)
    return Digits(images, targets, "sample")


def read_idx(path, ndim=None, item_shape=None):
    """Read one (optionally gzipped) idx file of unsigned bytes, the format of MNIST, as a uint8 tensor.

    ``ndim`` and ``item_shape`` say what the file must hold (images: 3 and (28, 28); labels: 1).
    Anything else raises ``DataFileError`` naming the file and the problem.
    """
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError; a cut gzip stream an EOFError
        raise DataFileError(f"{path} cannot be read as {'gzip' if path.suffix == '.gz' else 'a file'}: {exc}") from exc
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise DataFileError(f"{path} is not an idx file of unsigned bytes (it starts with {raw[:4].hex() or 'nothing'})")
    dims = raw[3]
    if len(raw) < 4 + 4 * dims:
        raise DataFileError(f"{path} is truncated: it ends inside its header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    if ndim is not None and dims != ndim:
        raise DataFileError(f"{path} holds {dims}-dimensional data {shape}; expected {ndim} dimensions")
    if item_shape is not None and shape[1:] != tuple(item_shape):
        size = "x".join(map(str, shape[1:]))
        raise DataFileError(f"{path} holds {size} images; labkit's network takes {'x'.join(map(str, item_shape))} (the MNIST format)")
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    expected = int(np.prod(shape))
    if data.size != expected:
        state = "truncated" if data.size < expected else "oversized"
        raise DataFileError(f"{path} is {state}: its header promises shape {shape} ({expected} bytes of data), "
                            f"it holds {data.size}")
    return torch.from_numpy(data.reshape(shape).copy())


def load_idx_digits(folder, train=True, source="idx"):
    """Load an MNIST-format split (``train-*`` or ``t10k-*`` idx files, gzipped or not) from a folder, checked."""
    prefix = "train" if train else "t10k"
    folder = Path(folder)

    def find(kind):
        name = f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        path = _find(folder, name)
        if path is None:
            raise FileNotFoundError(f"no {name}[.gz] in {folder}")
        return path

    fix = (f" Fix: replace it with a good copy (delete the four files in {folder} and download or copy them "
           f"again){'' if source == 'fashion' else f', or use the bundled sample ({SOURCE_ENV}=sample)'}.")
    images_path, labels_path = find("images"), find("labels")
    try:
        images = read_idx(images_path, ndim=3, item_shape=IMAGE_SIZE)
        labels = read_idx(labels_path, ndim=1)
    except DataFileError as exc:
        raise DataFileError(f"{exc}.{fix}") from None
    if len(labels) != len(images):
        raise DataFileError(f"{labels_path} holds {len(labels)} labels for the {len(images)} images of "
                            f"{images_path.name}: they belong to different files.{fix}")
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        raise DataFileError(f"{labels_path} holds label {int(labels.max())}; labels must be 0..{NUM_CLASSES - 1}.{fix}")
    return Digits(images, labels.to(torch.int64), source)
