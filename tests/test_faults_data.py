"""Fault injection, data: bad idx files, bad labels and images, a hanging network, a diverging training.

Each case is one a careless or unlucky user met (issue 10); each must fail clearly or do the right thing.
"""
import socket
import threading
import time

import pytest
import torch

from labkit import data
from labkit.dataset import MNISTMetricDataset
from labkit.loaders import TripletBatches
from labkit.model import SimpleMetricEmbedding
from labkit.training import train
from tests.helpers import tiny_digits, write_idx
from tests.test_data import fake_mnist, no_network


@pytest.fixture(autouse=True)
def fresh_resolution(monkeypatch):
    monkeypatch.setattr(data, "_resolved", {})


RAW = ("MNIST", "raw")
IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"


def damage(root, name, how):
    """Replace one file of a valid fake MNIST under root in one of the ways users met."""
    path = root.joinpath(*RAW, name)
    good = path.read_bytes()
    images, targets = tiny_digits(per_class=(3,) * 10, seed=30)
    if how == "truncated":
        path.write_bytes(good[:-100])
    elif how == "oversized":
        path.write_bytes(good + bytes(784))
    elif how == "wrong magic":
        path.write_bytes(b"\x00\x00\x0d" + good[3:])  # 0x0d: float32 data, not unsigned bytes
    elif how == "random bytes":
        path.write_bytes(torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(1),
                                       dtype=torch.uint8).numpy().tobytes())
    elif how == "32x32":
        write_idx(path, torch.zeros(30, 32, 32, dtype=torch.uint8))
    elif how == "29 labels":
        write_idx(path, targets[:29].to(torch.uint8))
    elif how == "31 labels":
        write_idx(path, torch.cat([targets, targets[:1]]).to(torch.uint8))
    elif how == "label 11":
        write_idx(path, torch.where(torch.arange(30) == 4, 11, targets).to(torch.uint8))
    elif how == "empty":
        path.write_bytes(b"")
    return path


CASES = [(IMAGES, "truncated", "is truncated"), (IMAGES, "oversized", "is oversized"),
         (IMAGES, "wrong magic", "not an idx file of unsigned bytes"), (IMAGES, "random bytes", "not an idx file"),
         (IMAGES, "32x32", "holds 32x32 images; labkit's network takes 28x28"),
         (LABELS, "29 labels", "holds 29 labels for the 30 images"),
         (LABELS, "31 labels", "holds 31 labels for the 30 images"),
         (LABELS, "label 11", "holds label 11; labels must be 0..9"), (LABELS, "empty", "not an idx file")]


@pytest.mark.parametrize("name, how, problem", CASES, ids=[c[1] for c in CASES])
def test_bad_mnist_file_is_named_with_the_fix(tmp_path, monkeypatch, name, how, problem):
    no_network(monkeypatch)
    path = damage(fake_mnist(tmp_path), name, how)
    with pytest.raises(data.DataFileError) as info:
        data.load_digits(tmp_path, source="mnist")
    message = str(info.value)
    assert str(path) in message and problem in message and "Fix: replace it with a good copy" in message


@pytest.mark.parametrize("name, how, problem", CASES[:3] + CASES[5:6], ids=[c[1] for c in CASES[:3] + CASES[5:6]])
def test_auto_falls_back_to_the_sample_on_a_bad_file_and_says_why(tmp_path, monkeypatch, capsys, name, how, problem):
    no_network(monkeypatch)
    path = damage(fake_mnist(tmp_path), name, how)
    digits = data.load_digits(tmp_path, source="auto")
    assert digits.source == "sample" and len(digits.images) == 4000
    line = capsys.readouterr().out
    assert line.startswith("[labkit] data: bundled MNIST sample") and str(path) in line and problem in line


def test_damaged_gzip_is_named(tmp_path):
    images, targets = tiny_digits()
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", targets.to(torch.uint8), compress=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])  # a cut download
    with pytest.raises(data.DataFileError, match=r"t10k-images-idx3-ubyte\.gz cannot be read as gzip"):
        data.load_idx_digits(tmp_path, train=False)


def test_legacy_processed_files_are_not_used_and_the_log_says_so(tmp_path, monkeypatch, capsys):
    no_network(monkeypatch)
    fake_mnist(tmp_path)
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir()
    seven = (torch.zeros(7, 28, 28, dtype=torch.uint8), torch.zeros(7, dtype=torch.int64))
    torch.save(seven, processed / "training.pt")
    torch.save(seven, processed / "test.pt")
    digits = data.load_digits(tmp_path, train=True, source="auto")
    assert digits.source == "mnist" and len(digits.images) == 30  # the raw files, not the 7 legacy images
    line = capsys.readouterr().out
    assert "full MNIST from" in line and "ignoring torchvision's legacy" in line and "processed" in line


# labels and images handed to the dataset


def images_and_targets(n=40):
    images, targets = tiny_digits(per_class=(n // 10,) * 10)
    return images, targets


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("bad", [-1, 10, 11])
def test_labels_outside_0_to_9_are_refused(split, bad):
    images, targets = images_and_targets()
    targets[5] = bad
    with pytest.raises(ValueError, match=rf"class numbers 0\.\.9; found \[{bad}\] \(1 of 40\)"):
        MNISTMetricDataset.from_tensors(images, targets, split=split)


def test_float_targets_are_refused_not_truncated():
    images, targets = images_and_targets()
    with pytest.raises(ValueError, match=r"integer class numbers.*torch.float32.*targets.long\(\)"):
        MNISTMetricDataset.from_tensors(images, targets.float() + 0.7)


@pytest.mark.parametrize("n_targets", [39, 41])
def test_images_and_targets_of_different_lengths_are_refused(n_targets):
    images, targets = images_and_targets()
    targets = torch.cat([targets, targets])[:n_targets]
    with pytest.raises(ValueError, match=rf"40 images, targets of shape \({n_targets},\)"):
        MNISTMetricDataset.from_tensors(images, targets)


def test_float_images_in_0_to_255_are_refused_with_the_fix():
    images, targets = images_and_targets()
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\], these range 0\.\.255.*images / 255"):
        MNISTMetricDataset.from_tensors(images.float(), targets)
    ds = MNISTMetricDataset.from_tensors(images.float() / 255, targets)  # the fix works
    assert torch.equal(ds.images, MNISTMetricDataset.from_tensors(images, targets).images)


def test_a_nan_image_is_named():
    images, targets = images_and_targets()
    images = images.float() / 255
    images[17, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="image 17 holds NaN or inf"):
        MNISTMetricDataset.from_tensors(images, targets, split="test")


def test_fast_batching_refuses_labels_it_would_merge_into_a_class():
    ds = MNISTMetricDataset.from_tensors(*images_and_targets())
    ds.targets[3] = -1  # changed after the checks: searchsorted would have put it in class 0
    with pytest.raises(ValueError, match=r"targets \[-1\] are not among the dataset's classes"):
        TripletBatches(ds, batch_size=8, device="cpu")


# training on bad numbers


def test_training_stops_at_the_first_non_finite_loss_and_names_the_batch():
    torch.manual_seed(0)
    model = SimpleMetricEmbedding(1, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [tuple(torch.rand(4, 1, 28, 28) for _ in range(3)) + (torch.zeros(4),) for _ in range(6)]
    batches[2][0][1, 0, 5, 5] = float("nan")  # one pixel of one anchor of the third batch
    drawn = []

    def loader():
        for batch in batches:
            drawn.append(batch)
            yield batch

    with pytest.raises(FloatingPointError, match=r"epoch 1/3, batch 3: the loss is nan; training stopped"):
        train(model, optimizer, loader(), "cpu", log=False, desc="epoch 1/3")
    assert len(drawn) == 3  # on the CPU (where a check costs nothing) it stops at once


# the download probe: a network that hangs must not hold anything up, nor leave threads behind


@pytest.fixture
def hanging_network(monkeypatch):
    """socket.create_connection that hangs until the test ends; its threads are released and joined then."""
    release, threads = threading.Event(), []

    def hang(*args, **kwargs):
        threads.append(threading.current_thread())
        release.wait(30)
        raise OSError("released by the test")

    monkeypatch.setattr(socket, "create_connection", hang)
    yield threads
    release.set()
    for thread in threads:
        thread.join(5)
    assert not any(t.is_alive() for t in threads)


def test_hanging_connections_give_up_within_the_probe_time(tmp_path, monkeypatch, hanging_network):
    monkeypatch.setattr(data, "PROBE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(data, "getproxies", dict)
    start = time.monotonic()
    assert data.load_digits(tmp_path, source="auto").source == "sample"
    assert time.monotonic() - start < 2  # all mirrors at once, one deadline for the whole probe
    assert hanging_network  # the probe did reach the (patched) network


def test_a_proxy_that_accepts_and_then_hangs_gives_up_within_seconds(tmp_path, monkeypatch, capsys):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # the kernel accepts connections; nobody ever answers
    proxy = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setattr(data, "getproxies", lambda: {"http": proxy, "https": proxy})
    monkeypatch.setattr(data, "PROBE_TIMEOUT_S", 1.0)
    try:
        start = time.monotonic()
        assert data.load_digits(tmp_path, source="auto").source == "sample"
        assert time.monotonic() - start < 3
    finally:
        server.close()  # the probe threads' reads end with the connection
    assert "no MNIST mirror answered within 1 s (nor the proxy)" in capsys.readouterr().out
    deadline = time.monotonic() + 5
    while any(t.name == "labkit-download-probe" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "labkit-download-probe" for t in threading.enumerate())
