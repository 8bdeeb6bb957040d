"""load_or_train and the course's own script structure, run against labkit."""
import pytest
import torch
from torch.utils.data import DataLoader

from labkit.checkpoint import CheckpointError, save_checkpoint
from labkit.experiment import LAB_EPOCHS, SAMPLE_EPOCHS, Settings, lab_epochs, load_or_train
from labkit.model import SimpleMetricEmbedding


def test_load_or_train_trains_once_then_loads(tmp_path):
    settings = Settings(epochs=1, emb_size=8)
    model, meta, trained = load_or_train("m.pt", settings, folder=tmp_path, progress=False)
    assert trained and meta["epochs"] == 1 and meta["source"] == "sample" and 0 < meta["accuracy"] <= 1
    again, meta2, trained2 = load_or_train("m.pt", settings, folder=tmp_path)
    assert not trained2 and meta2 == meta
    x = torch.rand(2, 1, 28, 28, device=next(again.parameters()).device)  # load_or_train picks the device
    assert torch.equal(again.get_features(x), model.eval().get_features(x))


def test_load_or_train_never_overwrites_a_mismatched_file(tmp_path):
    save_checkpoint(SimpleMetricEmbedding(1, 16), "m.pt", tmp_path, remove_class=None)
    before = (tmp_path / "m.pt").read_bytes()
    with pytest.raises(CheckpointError, match="emb_size=16, but emb_size=8"):
        load_or_train("m.pt", Settings(epochs=1, emb_size=8), folder=tmp_path)
    assert (tmp_path / "m.pt").read_bytes() == before


@pytest.mark.filterwarnings("ignore:.*(worker|pin_memory):UserWarning")
def test_course_script_runs_with_only_its_imports_changed():
    # The seed's training script, condensed: its calls and arguments, unchanged but for the imports.
    from labkit.dataset import MNISTMetricDataset
    from labkit.model import IdentityModel, SimpleMetricEmbedding
    from labkit.training import compute_representations, evaluate, train

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mnist_download_root = "./mnist/"
    ds_train = MNISTMetricDataset(mnist_download_root, split="train")
    ds_test = MNISTMetricDataset(mnist_download_root, split="test")
    num_classes = 10
    train_loader = DataLoader(ds_train, batch_size=64, shuffle=True, pin_memory=True, num_workers=4, drop_last=True)
    test_loader = DataLoader(ds_test, batch_size=1, shuffle=False, pin_memory=True, num_workers=1)
    emb_size = 32
    model = SimpleMetricEmbedding(1, emb_size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_loss = train(model, optimizer, train_loader, device)
    representations = compute_representations(model, train_loader, num_classes, emb_size, device)
    acc1 = evaluate(model, representations, test_loader, device)
    assert train_loss > 0 and 0.5 < acc1 <= 1  # one epoch on the sample: far above chance

    # Task 3c with the same functions: IdentityModel, emb_size 784
    identity = IdentityModel().to(device)
    reps = compute_representations(identity, train_loader, num_classes, 28 * 28, device)
    assert 0.7 < evaluate(identity, reps, test_loader, device) < 0.9

    # the seed's visualisation script embeds the whole test set in one call
    test_rep = model.get_features(ds_test.images.unsqueeze(1).to(device))
    assert test_rep.shape == (len(ds_test), emb_size)
    assert torch.pca_lowrank(test_rep, 2)[0].shape == (len(ds_test), 2)


def test_lab_epochs_are_the_labs_on_full_data_more_on_the_sample_and_the_environment_overrides(monkeypatch):
    monkeypatch.delenv("LABKIT_EPOCHS", raising=False)
    assert [lab_epochs(s) for s in ("mnist", "fashion", "sample")] == [LAB_EPOCHS, LAB_EPOCHS, SAMPLE_EPOCHS]
    assert SAMPLE_EPOCHS > LAB_EPOCHS == 3
    monkeypatch.setenv("LABKIT_EPOCHS", " 2 ")
    assert lab_epochs("sample") == lab_epochs("mnist") == 2


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_bad_labkit_epochs_is_explained(monkeypatch, bad):
    monkeypatch.setenv("LABKIT_EPOCHS", bad)
    with pytest.raises(ValueError, match=r"LABKIT_EPOCHS=.*whole number of epochs, 1 or more; unset it"):
        lab_epochs("sample")
