import gzip

import pytest
import torch

from labkit import data
from tests.helpers import tiny_digits, write_idx, write_split_files


@pytest.fixture(autouse=True)
def fresh_resolution(monkeypatch):
    """Each test decides the source anew (the module remembers decisions per process)."""
    monkeypatch.setattr(data, "_resolved", {})


def fake_mnist(root):
    write_split_files(root / "MNIST" / "raw")
    return root


def no_network(monkeypatch):
    monkeypatch.setattr(data, "_probe", lambda *a, **k: False)


@pytest.fixture
def no_fashion_elsewhere(monkeypatch, tmp_path):
    """Neither $LABKIT_FASHION_DIR nor a Debian package: only what a test puts under its data root."""
    monkeypatch.delenv(data.DIR_ENV["fashion"], raising=False)
    monkeypatch.setitem(data.DEBIAN_DIR, "fashion", tmp_path / "no-debian-package")


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
    with pytest.raises(ValueError, match=r"LABKIT_DATA.*'auto', 'mnist', 'fashion', 'sample'"):
        data.resolve_source(tmp_path)


def test_unknown_source_argument():
    with pytest.raises(ValueError, match="unknown data source 'cifar'"):
        data.load_digits(source="cifar")


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
    monkeypatch.setattr(data, "_probe", lambda url, timeout: probed.append(data.getproxies()) and False)
    assert data.load_digits(tmp_path, source="auto").source == "sample"
    assert probed and all(p["https"] == "http://127.0.0.1:9" for p in probed)


# Fashion-MNIST: a second data source through the same layer, never replaced by digits


def test_fashion_from_torchvision_layout(tmp_path, monkeypatch, capsys, no_fashion_elsewhere):
    no_network(monkeypatch)
    raw = write_split_files(tmp_path / "FashionMNIST" / "raw", seed=7)
    assert data.resolve_source(tmp_path, "fashion") == "fashion"
    test = data.load_digits(tmp_path, train=False, source="fashion")
    assert test.source == "fashion" and test.images.shape == (10, 28, 28)
    assert torch.equal(test.images, data.read_idx(raw / "t10k-images-idx3-ubyte"))
    out = capsys.readouterr().out
    assert out.count("[labkit] data:") == 1 and "Fashion-MNIST" in out and str(raw) in out


def test_fashion_from_env_folder_of_gzipped_files(tmp_path, monkeypatch, no_fashion_elsewhere):
    no_network(monkeypatch)
    folder = write_split_files(tmp_path / "anywhere", compress=True, seed=3)
    write_split_files(tmp_path / "FashionMNIST" / "raw", seed=99)  # the variable wins over the data root
    monkeypatch.setenv(data.DIR_ENV["fashion"], str(folder))
    monkeypatch.setenv(data.SOURCE_ENV, "fashion")
    train = data.load_digits(tmp_path, train=True)
    expected, _ = tiny_digits(per_class=(3,) * 10, seed=33)
    assert train.source == "fashion" and torch.equal(train.images, expected)


def test_fashion_env_folder_without_files_names_the_variable(tmp_path, monkeypatch, no_fashion_elsewhere):
    no_network(monkeypatch)
    monkeypatch.setenv(data.DIR_ENV["fashion"], str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="LABKIT_FASHION_DIR=.*empty.*train-images-idx3-ubyte"):
        data.load_digits(tmp_path, source="fashion")


def test_fashion_found_where_debian_puts_it(tmp_path, monkeypatch, no_fashion_elsewhere):
    no_network(monkeypatch)
    debian = write_split_files(tmp_path / "usr-share-datasets-fashion-mnist", compress=True)
    monkeypatch.setitem(data.DEBIAN_DIR, "fashion", debian)
    assert data.load_digits(tmp_path / "data", train=False, source="fashion").images.shape == (10, 28, 28)


def test_missing_fashion_is_an_error_never_digits(tmp_path, monkeypatch, no_fashion_elsewhere):
    no_network(monkeypatch)
    fake_mnist(tmp_path)  # MNIST digits are right there: they must not stand in for Fashion-MNIST
    with pytest.raises(RuntimeError, match="Fashion-MNIST is not in.*LABKIT_FASHION_DIR.*dataset-fashion-mnist"):
        data.load_digits(tmp_path, source="fashion")


def test_fashion_downloads_through_torchvision_when_online(tmp_path, monkeypatch, no_fashion_elsewhere):
    """The download path: torchvision's download_and_extract_archive fetches and unpacks each file."""
    import torchvision.datasets.utils as tv_utils
    from torchvision.datasets import FashionMNIST

    served = write_split_files(tmp_path / "server", compress=True)
    fetched = []

    def fake_fetch(url, download_root, extract_root, filename, md5):
        fetched.append(url)
        name = filename[:-len(".gz")]
        (extract_root / name).parent.mkdir(parents=True, exist_ok=True)
        (extract_root / name).write_bytes(gzip.decompress((served / filename).read_bytes()))

    monkeypatch.setattr(data, "_probe", lambda url, timeout: url.startswith(FashionMNIST.mirrors[0]))
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_fetch)
    assert data.load_digits(tmp_path / "data", source="fashion").images.shape == (30, 28, 28)
    assert sorted(fetched) == sorted(FashionMNIST.mirrors[0] + f for f, _ in FashionMNIST.resources)
    assert (tmp_path / "data" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").exists()


def test_fashion_dataset_through_the_data_layer(tmp_path, monkeypatch, no_fashion_elsewhere):
    from labkit.dataset import MNISTMetricDataset

    no_network(monkeypatch)
    write_split_files(tmp_path / "FashionMNIST" / "raw")
    ds = MNISTMetricDataset(tmp_path, split="test", source="fashion")
    assert ds.source == "fashion" and len(ds) == 10 and len(data.FASHION_CLASSES) == 10
