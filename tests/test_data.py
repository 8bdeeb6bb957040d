import time

import pytest
import torch

from labkit import data
from tests.helpers import tiny_digits, write_idx


@pytest.fixture(autouse=True)
def fresh_resolution(monkeypatch):
    """Each test decides the source anew (the module remembers decisions per process)."""
    monkeypatch.setattr(data, "_resolved", {})


def fake_mnist(root):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 30), ("t10k", 10)):
        images, targets = tiny_digits(per_class=(n // 10,) * 10, seed=n)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", targets.to(torch.uint8))
    return root


def no_network(monkeypatch):
    monkeypatch.setattr(data, "_reachable", lambda *a, **k: False)


def test_sample_is_real_stratified_mnist():
    train = data.load_digits(train=True, source="sample")
    test = data.load_digits(train=False, source="sample")
    assert train.images.shape == (4000, 28, 28) and test.images.shape == (1000, 28, 28)
    assert train.images.dtype == torch.uint8 and train.targets.dtype == torch.int64
    assert torch.equal(torch.bincount(train.targets), torch.full((10,), 400))
    assert torch.equal(torch.bincount(test.targets), torch.full((10,), 100))
    # real digits: mostly background with a stroke of bright pixels, not noise
    assert 0.70 < (train.images == 0).float().mean() < 0.90
    # no image is in both splits
    train_set = {bytes(x.numpy()) for x in train.images}
    assert not any(bytes(x.numpy()) in train_set for x in test.images)


def test_local_mnist_files_are_used_as_they_are(tmp_path, monkeypatch, capsys):
    no_network(monkeypatch)
    root = fake_mnist(tmp_path)
    digits = data.load_digits(root, train=False, source="auto")
    assert digits.source == "mnist" and digits.images.shape == (10, 28, 28)
    assert "full MNIST" in capsys.readouterr().out


def test_auto_falls_back_to_sample_offline_and_says_why(tmp_path, monkeypatch, capsys):
    no_network(monkeypatch)
    digits = data.load_digits(tmp_path, train=True, source="auto")
    assert digits.source == "sample"
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "sample" in out and "no network" in out


def test_decision_is_announced_once_per_process(tmp_path, monkeypatch, capsys):
    no_network(monkeypatch)
    for train in (True, False, True):
        data.load_digits(tmp_path, train=train, source="auto")
    assert capsys.readouterr().out.count("[labkit] data:") == 1


def test_mnist_source_without_files_or_network_explains_the_fix(tmp_path, monkeypatch):
    no_network(monkeypatch)
    with pytest.raises(RuntimeError, match="MNIST/raw.*source='sample'"):
        data.load_digits(tmp_path, source="mnist")


def test_env_variable_chooses_the_source(tmp_path, monkeypatch):
    monkeypatch.setenv(data.SOURCE_ENV, "sample")
    assert data.resolve_source(tmp_path) == "sample"
    monkeypatch.setenv(data.SOURCE_ENV, "everything")
    with pytest.raises(ValueError, match=r"LABKIT_DATA.*'auto', 'mnist', 'sample'"):
        data.resolve_source(tmp_path)


def test_unknown_source_argument():
    with pytest.raises(ValueError, match="unknown data source 'cifar'"):
        data.load_digits(source="cifar")


def test_offline_download_attempt_gives_up_within_seconds(tmp_path, monkeypatch):
    def hanging_connect(*args, **kwargs):  # a network that swallows packets
        time.sleep(60)

    monkeypatch.setattr(data.socket, "create_connection", hanging_connect)
    monkeypatch.setattr(data, "PROBE_TIMEOUT_S", 0.5)
    start = time.monotonic()
    digits = data.load_digits(tmp_path, source="auto")
    assert digits.source == "sample"
    # every mirror is probed in turn, each bounded by the timeout plus one second
    from torchvision.datasets import MNIST
    assert time.monotonic() - start < len(MNIST.mirrors) * 1.5 + 1


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
    images, _ = tiny_digits()
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    write_idx(path, images, compress=compress)
    assert torch.equal(data.read_idx(path), images)


def test_read_idx_rejects_other_files(tmp_path):
    (tmp_path / "x").write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(ValueError, match="not an idx file"):
        data.read_idx(tmp_path / "x")
    write_idx(tmp_path / "short", torch.zeros(4, 3, dtype=torch.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-2])
    with pytest.raises(ValueError, match="header promises"):
        data.read_idx(tmp_path / "short")


def test_load_idx_digits_from_a_folder(tmp_path):
    images, targets = tiny_digits()
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", targets.to(torch.uint8), compress=True)
    digits = data.load_idx_digits(tmp_path, train=False)
    assert torch.equal(digits.images, images) and torch.equal(digits.targets, targets)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.load_idx_digits(tmp_path, train=True)


def test_behind_a_proxy_the_proxy_is_probed(tmp_path, monkeypatch):
    probed = []
    monkeypatch.setattr(data, "getproxies", lambda: {"https": "http://127.0.0.1:9", "http": "http://127.0.0.1:9"})
    monkeypatch.setattr(data, "_reachable", lambda host, port, timeout: probed.append((host, port)) and False)
    assert data.load_digits(tmp_path, source="auto").source == "sample"
    assert probed and set(probed) == {("127.0.0.1", 9)}
