from collections import Counter

import pytest
import torch

from labkit.dataset import MNISTMetricDataset
from tests.helpers import tiny_dataset, tiny_digits


def test_item_layout_per_split():
    train = tiny_dataset("train")
    anchor, positive, negative, target = train[3]
    assert anchor.shape == positive.shape == negative.shape == (1, 28, 28)
    assert isinstance(target, int) and target == train.targets[3].item()
    assert torch.equal(anchor[0], train.images[3])
    for split in ("test", "traineval"):
        image, target = tiny_dataset(split)[3]
        assert image.shape == (1, 28, 28) and isinstance(target, int)


def test_images_are_scaled_to_unit_range():
    images, targets = tiny_digits()
    ds = MNISTMetricDataset.from_tensors(images, targets, split="test")
    assert ds.images.dtype == torch.float32 and ds.images.shape == images.shape
    assert torch.allclose(ds.images * 255, images.float())


def test_target2indices_matches_targets():
    ds = tiny_dataset()
    assert sorted(ds.target2indices) == ds.classes
    for c, indices in ds.target2indices.items():
        assert sorted(indices) == torch.nonzero(ds.targets == c).flatten().tolist()


def test_positive_is_uniform_over_the_class_and_never_the_anchor():
    ds = tiny_dataset()
    torch.manual_seed(0)
    for anchor in range(len(ds)):
        same = set(ds.target2indices[ds.targets[anchor].item()]) - {anchor}
        draws = Counter(ds._sample_positive(anchor) for _ in range(60 * len(same)))
        assert set(draws) == same  # every other member appears, the anchor never does
        assert max(draws.values()) < 2.0 * min(draws.values())


def test_negative_class_is_uniform_over_the_other_classes():
    ds = tiny_dataset()
    torch.manual_seed(1)
    anchor = ds.target2indices[4][0]
    draws = 9000
    classes = Counter(ds.targets[ds._sample_negative(anchor)].item() for _ in range(draws))
    assert set(classes) == set(range(10)) - {4}
    for c, n in classes.items():  # expected 1000 each; 5 standard deviations is about 150
        assert abs(n - draws / 9) < 150, (c, n)


def test_negative_image_is_uniform_within_its_class():
    ds = tiny_dataset(per_class=(2, 8, 2, 2, 2, 2, 2, 2, 2, 2))
    torch.manual_seed(2)
    anchor = ds.target2indices[0][0]
    negatives = [ds._sample_negative(anchor) for _ in range(9000)]
    of_class_1 = Counter(i for i in negatives if ds.targets[i] == 1)  # about 1000 draws, 125 per image
    assert set(of_class_1) == set(ds.target2indices[1])
    assert all(abs(n - 125) < 60 for n in of_class_1.values())


@pytest.mark.parametrize("removed", [0, 7])
def test_remove_class_drops_images_and_class(removed):
    full = tiny_dataset()
    ds = tiny_dataset(remove_class=removed)
    assert removed not in ds.classes and removed not in ds.target2indices
    assert not (ds.targets == removed).any()
    assert len(ds) == int((full.targets != removed).sum())
    # the remaining images are exactly the others, in order
    assert torch.equal(ds.images, full.images[full.targets != removed])
    torch.manual_seed(3)
    assert all(ds.targets[ds._sample_negative(i)] != removed for i in range(len(ds)) for _ in range(20))


def test_remove_class_accepts_integer_like_values():
    assert tiny_dataset(remove_class=torch.tensor(3)).remove_class == 3


@pytest.mark.parametrize("bad", [10, -1, "0", 1.0, True, [0]])
def test_remove_class_rejects_unknown_classes(bad):
    with pytest.raises(ValueError, match=r"not a class; use None or one of \[0, 1, 2"):
        tiny_dataset(remove_class=bad)


def test_bad_split_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown split 'val'.*'train', 'test', 'traineval'"):
        MNISTMetricDataset(split="val")
    with pytest.raises(ValueError, match="unknown split"):
        MNISTMetricDataset.from_tensors(*tiny_digits(), split="training")


def test_training_split_needs_two_images_per_class():
    with pytest.raises(ValueError, match=r"classes \[1\]"):
        tiny_dataset(per_class=(3, 1, 2, 2, 2, 2, 2, 2, 2, 2))
    tiny_dataset("test", per_class=(3, 1, 2, 2, 2, 2, 2, 2, 2, 2))  # evaluation splits do not sample triplets


def test_bundled_sample_through_the_seed_interface():
    ds = MNISTMetricDataset("./mnist/", split="train", source="sample")
    assert len(ds) == 4000 and ds.classes == list(range(10))
    assert len(MNISTMetricDataset("./mnist/", split="test", source="sample")) == 1000
    assert len(MNISTMetricDataset("./mnist/", split="traineval", remove_class=0, source="sample")) == 3600


def test_negative_indices_count_from_the_end_and_never_pair_an_anchor_with_itself():
    ds = tiny_dataset()
    torch.manual_seed(4)
    for _ in range(200):
        anchor, positive, _, target = ds[-1]
        assert target == ds.targets[-1].item() and torch.equal(anchor[0], ds.images[-1])
        assert not torch.equal(anchor, positive)  # the random test images are all distinct
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]
