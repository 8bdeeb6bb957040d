import pytest
import torch
from torch.utils.data import DataLoader

from labkit.dataset import MNISTMetricDataset
from labkit.device import prepare_model
from labkit.experiment import SAMPLE_EPOCHS
from labkit.loaders import image_loader, triplet_loader
from labkit.model import IdentityModel, SimpleMetricEmbedding
from labkit.training import compute_representations, embed, evaluate, fit, train
from tests.helpers import tiny_dataset


@pytest.fixture(scope="module")
def sample():
    return (MNISTMetricDataset(split="train", source="sample"), MNISTMetricDataset(split="test", source="sample"))


def reference_evaluate(model, representations, dataset):
    """The course's rule, one image at a time (where normalising the batch is normalising the image)."""
    correct = 0
    with torch.no_grad():
        for image, target in dataset:
            r = model.get_features(image.unsqueeze(0))
            r = r / torch.linalg.vector_norm(r)
            correct += int(((representations - r) ** 2).sum(1).argmin().item() == target)
    return correct / len(dataset)


def test_evaluate_same_for_batch_1_and_512_and_equals_the_course_loop(sample):
    _, test = sample
    subset = MNISTMetricDataset.from_tensors(test.images[:400], test.targets[:400], split="test")
    torch.manual_seed(0)
    model = SimpleMetricEmbedding(1, 32)
    # briefly trained, so that no query sits on a near-tie between two classes (as with random weights)
    train(model, torch.optim.Adam(model.parameters(), 1e-3), triplet_loader(sample[0], 64, seed=0), progress=False,
          log=False)
    model.eval()
    reps = compute_representations(model, image_loader(subset, 128), 10, 32, progress=False)
    acc1 = evaluate(model, reps, image_loader(subset, 1), progress=False)
    acc512 = evaluate(model, reps, image_loader(subset, 512), progress=False)
    assert acc1 == acc512 == reference_evaluate(model, reps, subset)
    # and through the course's DataLoader too
    assert evaluate(model, reps, DataLoader(subset, batch_size=512), progress=False) == acc1


def test_class_means_are_unit_norm_means_of_each_class():
    ds = tiny_dataset("test")
    model = IdentityModel()
    reps = compute_representations(model, image_loader(ds, 7), 10, 784, progress=False).cpu()
    assert reps.shape == (10, 784)
    assert torch.allclose(reps.norm(dim=1), torch.ones(10))
    for c in range(10):  # against a direct computation
        mean = ds.images[ds.targets == c].flatten(1).mean(0)
        assert torch.allclose(reps[c], mean / mean.norm(), atol=1e-6)


def test_representations_accept_triplet_batches_and_mark_missing_classes():
    ds = tiny_dataset("train", remove_class=3)
    reps = compute_representations(IdentityModel(), DataLoader(ds, batch_size=4), 10, 784, progress=False)
    assert reps[3].isnan().all() and not reps[[0, 1, 2, 4]].isnan().any()
    # a class nobody represents is never predicted
    acc = evaluate(IdentityModel(), reps, image_loader(tiny_dataset("test"), 5), progress=False)
    assert 0 < acc < 1


def test_emb_size_mismatch_is_explained():
    with pytest.raises(ValueError, match="784-dim features but emb_size=32.*emb_size=784"):
        compute_representations(IdentityModel(), image_loader(tiny_dataset("test")), 10, 32, progress=False)


def test_empty_loader_is_an_error():
    with pytest.raises(ValueError, match="no batches"):
        train(SimpleMetricEmbedding(1, 8), None, [], progress=False, log=False)


def test_training_briefly_beats_pixel_space(sample):
    train_ds, test_ds = sample
    torch.manual_seed(0)
    model = prepare_model(SimpleMetricEmbedding(1, 32), "cpu")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    means, tests = image_loader(train_ds), image_loader(test_ds)
    # the sample's epochs (labkit.experiment.SAMPLE_EPOCHS says why the lab's 3 are too few on 4,000 digits)
    history = fit(model, optimizer, triplet_loader(train_ds, 64, seed=0), means, tests, SAMPLE_EPOCHS, progress=False,
                  log=False)
    identity = IdentityModel()
    pixel_acc = evaluate(identity, compute_representations(identity, means, 10, 784, progress=False), tests,
                         progress=False)
    assert history[1]["loss"] < history[0]["loss"]
    assert history[-1]["accuracy"] > pixel_acc


def test_same_seed_same_numbers(sample):
    train_ds, test_ds = sample
    small = MNISTMetricDataset.from_tensors(train_ds.images[:1000], train_ds.targets[:1000])

    def run(seed, fast):
        torch.manual_seed(seed)
        model = prepare_model(SimpleMetricEmbedding(1, 16), "cpu")
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loader = triplet_loader(small, 64, fast=fast, seed=seed, num_workers=0)
        history = fit(model, optimizer, loader, image_loader(small), image_loader(test_ds), 1, progress=False, log=False)
        return history[0]["loss"], history[0]["accuracy"], [p.detach().clone() for p in model.parameters()]

    for fast in (True, False):
        a, b = run(0, fast), run(0, fast)
        assert a[:2] == b[:2] and all(torch.equal(x, y) for x, y in zip(a[2], b[2]))
        assert run(1, fast)[0] != a[0]


@pytest.mark.parametrize("batch_size", [1, 6, 7, 1000])
def test_embed_returns_features_and_targets_in_order(batch_size):
    ds = tiny_dataset("test")
    assert len(ds) > 4 * 7  # the buffer grows several times, and the last batch is short
    feats, targets = embed(IdentityModel(), image_loader(ds, batch_size), progress=False)
    assert torch.equal(feats.cpu(), ds.images.flatten(1)) and torch.equal(targets.cpu(), ds.targets)
    assert feats.untyped_storage().nbytes() == feats.numel() * 4  # not a view of a larger buffer


def test_progress_switch(monkeypatch, capsys):
    from labkit.training import progress_enabled

    monkeypatch.setenv("LABKIT_PROGRESS", "0")
    assert not progress_enabled()
    assert progress_enabled(True)
    monkeypatch.setenv("LABKIT_PROGRESS", "1")
    assert progress_enabled() and not progress_enabled(False)


def test_device_must_hold_the_model():
    model = SimpleMetricEmbedding(1, 8)  # on the CPU
    with pytest.raises(ValueError, match=r"model is on cpu but device='meta'.*model.to\('meta'\)"):
        evaluate(model, torch.zeros(10, 8), image_loader(tiny_dataset("test")), "meta", progress=False)
    # without a device the model's own is used
    reps = compute_representations(model, image_loader(tiny_dataset("test")), 10, 8, progress=False)
    assert reps.device.type == "cpu"


def test_results_are_ordinary_tensors():
    reps = compute_representations(IdentityModel(), image_loader(tiny_dataset("test")), 10, 784, progress=False)
    feats, _ = embed(IdentityModel(), image_loader(tiny_dataset("test")), progress=False)
    assert not reps.is_inference() and not feats.is_inference()
    reps /= 2  # in-place use works
