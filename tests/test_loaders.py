from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from labkit.loaders import ImageBatches, TripletBatches, image_loader, triplet_loader
from tests.helpers import tiny_dataset


def test_triplet_batches_follow_the_class_rules_over_many_draws():
    ds = tiny_dataset(remove_class=5)
    batches = TripletBatches(ds, batch_size=8, seed=0, sampler="vectorised")
    pos_pairs, neg_classes = Counter(), Counter()
    for _ in range(300):
        anchors = torch.randint(len(ds), (64,))
        pos, neg = (i.cpu() for i in batches.sample(anchors))  # the loader's device: CUDA in a GPU run
        ya, yp, yn = ds.targets[anchors], ds.targets[pos], ds.targets[neg]
        assert (yp == ya).all() and (pos != anchors).all()
        assert (yn != ya).all() and (yn != 5).all()
        pos_pairs.update(zip(anchors.tolist(), pos.tolist()))
        neg_classes.update(yn[ya == 4].tolist())
    # positives: for one anchor, every other image of its class, about equally often
    anchor = ds.target2indices[4][0]
    draws = {p: n for (a, p), n in pos_pairs.items() if a == anchor}
    assert set(draws) == set(ds.target2indices[4]) - {anchor}
    # negatives of class-4 anchors: each of the 8 other remaining classes about equally often
    assert set(neg_classes) == set(ds.classes) - {4}
    total = sum(neg_classes.values())
    assert all(abs(n / total - 1 / 8) < 0.03 for n in neg_classes.values()), neg_classes


def test_fast_and_course_sampling_have_the_same_distribution():
    ds = tiny_dataset()
    anchor = ds.target2indices[2][1]
    n = 9000
    torch.manual_seed(0)
    course = Counter(ds.targets[ds._sample_negative(anchor)].item() for _ in range(n))
    fast_neg = TripletBatches(ds, seed=1, sampler="vectorised").sample(torch.full((n,), anchor))[1].cpu()
    fast = Counter(ds.targets[fast_neg].tolist())
    assert set(course) == set(fast)
    for c in course:  # both about n / 9 = 1000; their difference has sd about 45
        assert abs(course[c] - fast[c]) < 250


def test_an_epoch_visits_each_anchor_once_and_drops_the_last_partial_batch():
    ds = tiny_dataset()  # 37 images
    batches = TripletBatches(ds, batch_size=8, seed=0)
    seen = []
    for anchor, positive, negative, target in batches:
        assert anchor.shape == positive.shape == negative.shape == (8, 1, 28, 28)
        seen.append(target)
    assert len(seen) == len(batches) == 37 // 8
    ids = torch.cat([a.flatten(1) for a, *_ in TripletBatches(ds, batch_size=37, seed=0)])
    assert len(torch.unique(ids, dim=0)) == 37


@pytest.mark.parametrize("sampler", ["dataset", "vectorised"])
def test_same_seed_same_batches(sampler):
    ds = tiny_dataset()
    torch.manual_seed(0)
    a = [torch.cat(batch[:3]) for batch in TripletBatches(ds, 8, seed=3, sampler=sampler)]
    state = torch.get_rng_state()
    b = [torch.cat(batch[:3]) for batch in TripletBatches(ds, 8, seed=3, sampler=sampler)]
    assert len(a) == 4 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(state, torch.get_rng_state())  # the caller's random state is left alone


class CountingDataset:
    """Wraps a dataset; its samplers return a fixed image (or a bad value) and count their calls."""

    def __init__(self, dataset, negative=0):
        self.inner, self.negative, self.calls = dataset, negative, Counter()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _sample_positive(self, index):
        self.calls["positive"] += 1
        return self.inner._sample_positive(index)

    def _sample_negative(self, index):
        self.calls["negative"] += 1
        return self.negative


def test_dataset_sampler_takes_every_triplet_from_the_datasets_own_methods():
    ds = CountingDataset(tiny_dataset(), negative=7)
    batches = triplet_loader(ds, 8, device="cpu", seed=0)  # the default: the dataset's samplers
    assert batches.sampler == "dataset"
    for anchor, positive, negative, target in batches:
        assert torch.equal(negative, ds.images[7].expand(8, 1, 28, 28))  # what _sample_negative said
        assert (anchor != positive).any()
    assert ds.calls == {"positive": 4 * 8, "negative": 4 * 8}
    anchors = torch.tensor([0, 5, 9])
    pos, neg = batches.sample(anchors)
    assert neg.tolist() == [7, 7, 7] and (ds.targets[pos] == ds.targets[anchors]).all()


@pytest.mark.parametrize("bad", [None, 2.0, "3"])
def test_dataset_sampler_returning_no_index_fails_clearly(bad):
    batches = TripletBatches(CountingDataset(tiny_dataset(), negative=bad), 8, seed=0)
    with pytest.raises(TypeError, match="_sample_negative must return an int index"):
        next(iter(batches))


def test_image_batches_cover_the_dataset_in_order():
    ds = tiny_dataset("test")
    images = torch.cat([x for x, _ in ImageBatches(ds, batch_size=10)])
    assert torch.equal(images[:, 0].cpu(), ds.images)
    assert len(ImageBatches(ds, 10)) == 4


def test_switch_between_fast_and_course_paths():
    train = tiny_dataset()
    assert isinstance(triplet_loader(train, 8, fast=True), TripletBatches)
    course = triplet_loader(train, 8, fast=False, num_workers=0)
    assert isinstance(course, DataLoader) and course.drop_last
    assert len(next(iter(course))) == 4
    # image batches from a training set give (image, target), not triplets
    for fast in (True, False):
        images, targets = next(iter(image_loader(train, 5, fast=fast)))
        assert images.shape == (5, 1, 28, 28) and targets.shape == (5,)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split='test'"):
        triplet_loader(tiny_dataset("test"))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        TripletBatches(tiny_dataset(), batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        image_loader(tiny_dataset("test"), batch_size=2.5)
    with pytest.raises(ValueError, match="unknown sampler 'student'; choose one of"):
        triplet_loader(tiny_dataset(), sampler="student")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fast_path_on_cuda_keeps_the_rules_and_trains_in_mixed_precision():
    from labkit.device import prepare_model
    from labkit.model import SimpleMetricEmbedding
    from labkit.training import train

    ds = tiny_dataset()
    for sampler in ("dataset", "vectorised"):
        batches = TripletBatches(ds, batch_size=8, device="cuda", seed=0, sampler=sampler)
        anchors = torch.randint(len(ds), (4096,), device="cuda")
        pos, neg = batches.sample(anchors)
        targets = batches.targets
        assert pos.device.type == neg.device.type == "cuda"
        assert (targets[pos] == targets[anchors]).all() and (pos != anchors).all()
        assert (targets[neg] != targets[anchors]).all()
    model = prepare_model(SimpleMetricEmbedding(1, 16), "cuda")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = train(model, optimizer, batches, "cuda", progress=False, log=False)
    assert 0 < loss < 2 and all(p.dtype == torch.float32 for p in model.parameters())


def test_private_random_streams_leave_a_gpus_generators_alone(monkeypatch, capsys):
    """Batches of the dataset's samplers, sample_triplets and the checks seed the CPU's generator only,
    which they restore; torch.manual_seed would reseed every GPU's as well, for good."""
    from labkit import checks
    from labkit.explore import sample_triplets
    from labkit.viz import pca_2d

    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded.append)
    ds = tiny_dataset()
    before = torch.get_rng_state()
    list(TripletBatches(ds, 8, device="cpu", seed=0))
    sample_triplets(ds, 5)
    checks.check_pca(pca_2d)
    assert reseeded == [] and torch.equal(torch.get_rng_state(), before)
    assert "✘" not in capsys.readouterr().out
