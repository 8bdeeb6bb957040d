"""The check cells' functions: each flags concrete wrong implementations, passes the reference, and
prints the same lines whatever data the notebook loaded (tiny, the bundled sample, a full 60k dataset)."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit import checks
from labkit.classify import mean_distances, means_from_sums, nearest_mean
from labkit.data import load_idx_digits
from labkit.dataset import MNISTMetricDataset
from labkit.loaders import image_loader
from labkit.model import IdentityModel, SimpleMetricEmbedding, _BNReluConv
from labkit.training import compute_representations
from labkit.viz import pca_2d
from tests.helpers import tiny_dataset

FULL_SIZE = Path("/usr/share/datasets/fashion-mnist")  # 60k MNIST-format images, a stand-in for full MNIST


def lines(capsys, check, *args, **kwargs):
    capsys.readouterr()
    check(*args, **kwargs)
    return capsys.readouterr().out.splitlines()


def assert_all_pass(out):
    assert out and all(line.startswith("✔ ") for line in out), "\n".join(out)


def failing(out):
    return [line for line in out if line.startswith("✘ ")]


# --- Task 1: wrong samplers and wrong remove_class, as small subclasses --------------------------------

class AnchorOneInN(MNISTMetricDataset):  # the example: the anchor itself with probability 1/n
    def _sample_positive(self, index):
        same = self.target2indices[self.targets[index].item()]
        return same[torch.randint(len(same), ()).item()]


class PositiveAnyImage(MNISTMetricDataset):
    def _sample_positive(self, index):
        return (index + 1 + torch.randint(len(self) - 1, ()).item()) % len(self)


class PositiveAlwaysTheFirstOther(MNISTMetricDataset):
    def _sample_positive(self, index):
        return next(i for i in self.target2indices[self.targets[index].item()] if i != index)


class NegativeMayShareTheClass(MNISTMetricDataset):
    def _sample_negative(self, index):
        return torch.randint(len(self), ()).item()


class NegativeImageUniform(MNISTMetricDataset):  # any image of another class: big classes too often
    def _sample_negative(self, index):
        others = (self.targets != self.targets[index]).nonzero().flatten()
        return others[torch.randint(len(others), ()).item()].item()


class NegativeIgnoresRemovedClass(MNISTMetricDataset):  # range(10) instead of self.classes
    def _sample_negative(self, index):
        others = [c for c in range(10) if c != self.targets[index].item()]
        candidates = self.target2indices[others[torch.randint(len(others), ()).item()]]
        return candidates[torch.randint(len(candidates), ()).item()]


class RemoveTargetsOnly(MNISTMetricDataset):  # forgets the images: they no longer match their targets
    def _setup(self, images, targets, split, remove_class):
        super()._setup(images, targets, split, None)
        if remove_class is not None:
            keep = self.targets != remove_class
            self.images = self.images[: int(keep.sum())]
            self.targets = self.targets[keep]
            self.classes.remove(remove_class)
            self.target2indices = {c: (self.targets == c).nonzero().flatten().tolist() for c in self.classes}


class RemoveKeepsTheClassListed(MNISTMetricDataset):
    def _setup(self, images, targets, split, remove_class):
        super()._setup(images, targets, split, None)
        if remove_class is not None:
            keep = self.targets != remove_class
            self.images, self.targets = self.images[keep], self.targets[keep]
            self.target2indices = {c: (self.targets == c).nonzero().flatten().tolist() for c in self.classes}


class Unwritten(MNISTMetricDataset):  # the student edition before Task 1
    def _sample_positive(self, index):
        raise NotImplementedError("Task 1: write this part in labkit/dataset.py")

    _sample_negative = _sample_positive

    def _setup(self, images, targets, split, remove_class):
        if remove_class is not None:
            raise NotImplementedError("Task 1: write this part in labkit/dataset.py")
        super()._setup(images, targets, split, None)


@pytest.fixture(scope="module")
def datasets():
    """The data a notebook may hold: tiny synthetic digits, the bundled sample, a full-size 60k dataset."""
    out = {"tiny": tiny_dataset(), "sample": MNISTMetricDataset(split="train", source="sample")}
    if FULL_SIZE.exists():
        digits = load_idx_digits(FULL_SIZE, train=True, source="fashion-mnist")
        out["full"] = MNISTMetricDataset.from_tensors(digits.images, digits.targets)
    return out


def as_class(cls, ds):
    """The same data as ``ds`` in a dataset of class ``cls`` (what the notebook would hold)."""
    return cls.from_tensors(ds.images, ds.targets, split="train")


def test_task1_checks_pass_the_reference_with_the_same_lines_on_any_data(datasets, capsys):
    outs = {name: lines(capsys, checks.check_triplets, ds) + lines(capsys, checks.check_images, ds)
            for name, ds in datasets.items()}
    for out in outs.values():
        assert_all_pass(out)
        assert out == outs["sample"]
    assert_all_pass(lines(capsys, checks.check_remove_class, MNISTMetricDataset, removed=0))
    assert "✔ positives are never the anchor itself (6400/6400)" in outs["sample"]


@pytest.mark.parametrize("cls, flagged", [
    (AnchorOneInN, ["positives are never the anchor itself"]),
    (PositiveAnyImage, ["positives share the anchor's class", "positives reach every other image"]),
    (PositiveAlwaysTheFirstOther, ["positives reach every other image"]),
    (NegativeMayShareTheClass, ["negatives come from another class"]),
    (NegativeImageUniform, ["negatives: another class uniformly"]),
])
def test_check_triplets_flags_wrong_samplers_on_any_data(cls, flagged, datasets, capsys):
    outs = [lines(capsys, checks.check_triplets, as_class(cls, ds)) for ds in datasets.values()]
    assert all(out == outs[0] for out in outs)  # decided on the fixed dataset: the same lines everywhere
    bad = failing(outs[0])
    for text in flagged:
        assert any(line.startswith(f"✘ {text}") for line in bad), (text, outs[0])


@pytest.mark.parametrize("cls, flagged", [
    (RemoveTargetsOnly, ["remove_class=0 removes every 0"]),
    (RemoveKeepsTheClassListed, ["classes no longer list 0", "no negative is ever a 0"]),
    (NegativeIgnoresRemovedClass, ["no negative is ever a 0"]),
])
def test_check_remove_class_flags_wrong_removal(cls, flagged, capsys):
    bad = failing(lines(capsys, checks.check_remove_class, cls, removed=0))
    for text in flagged:
        assert any(line.startswith(f"✘ {text}") for line in bad), (text, bad)


def test_task1_checks_report_unwritten_code_without_crashing(datasets, capsys):
    out = lines(capsys, checks.check_triplets, as_class(Unwritten, datasets["tiny"]))
    out += lines(capsys, checks.check_remove_class, Unwritten, removed=0)
    assert len(out) == 9 and failing(out) == out
    assert all("not written yet (Task 1: write this part in labkit/dataset.py)" in line for line in out)


def test_check_images_flags_wrong_scaling(datasets, capsys):
    ds = datasets["tiny"]
    for images in (ds.images * 255, ds.images * (255 / 256), ds.images.double()):
        wrong = MNISTMetricDataset.from_tensors(ds.images, ds.targets, split="test")
        wrong.images = images
        assert failing(lines(capsys, checks.check_images, wrong)) == [
            "✘ images are float32 in [0, 1], the raw bytes divided by 255"]


# --- Task 2 -------------------------------------------------------------------------------------------

class Squeezed(SimpleMetricEmbedding):
    def get_features(self, img):
        return self.net(img).squeeze()


def distances_loss(power=1, reduce=torch.mean, hinge=True, margin=None):
    def loss(self, anchor, positive, negative):
        a, p, n = self.get_features(anchor), self.get_features(positive), self.get_features(negative)
        d = (a - p).norm(dim=1) ** power - (a - n).norm(dim=1) ** power + (self.margin if margin is None else margin)
        return reduce(torch.relu(d) if hinge else d)
    return loss


Squared = type("Squared", (SimpleMetricEmbedding,), {"loss": distances_loss(power=2)})
Summed = type("Summed", (SimpleMetricEmbedding,), {"loss": distances_loss(reduce=torch.sum)})
NoHinge = type("NoHinge", (SimpleMetricEmbedding,), {"loss": distances_loss(hinge=False)})
MarginAlwaysOne = type("MarginAlwaysOne", (SimpleMetricEmbedding,), {"loss": distances_loss(margin=1.0)})


class Detached(SimpleMetricEmbedding):
    def get_features(self, img):
        return super().get_features(img).detach()


class FlatLinear(SimpleMetricEmbedding):
    def __init__(self, input_channels, emb_size=32, margin=1.0):
        super().__init__(input_channels, emb_size, margin)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784 * input_channels, emb_size))


class UnwrittenModel(SimpleMetricEmbedding):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("Task 2: write this part in labkit/model.py")


def test_task2_checks_pass_the_reference(capsys):
    out = lines(capsys, checks.check_block, _BNReluConv) + lines(capsys, checks.check_embedding, SimpleMetricEmbedding)
    assert_all_pass(out + lines(capsys, checks.check_identity, IdentityModel))
    assert len(out) == 8


@pytest.mark.parametrize("cls, flagged", [
    (Squeezed, ["get_features: (1, 1, 28, 28) → (1, 32)"]),
    (Squared, ["loss equals", "with margin=0.0"]),
    (Summed, ["loss equals", "with margin=0.0"]),
    (NoHinge, ["with margin=0.0"]),
    (MarginAlwaysOne, ["with margin=0.0"]),
    (Detached, ["the loss sends gradients"]),
    (FlatLinear, ["net: block"]),
    (UnwrittenModel, ["net: block", "get_features", "loss equals", "with margin", "the loss sends"]),
])
def test_check_embedding_flags_wrong_models(cls, flagged, capsys):
    bad = failing(lines(capsys, checks.check_embedding, cls))
    for text in flagged:
        assert any(line.startswith(f"✘ {text}") for line in bad), (text, bad)


def block(*layers):
    class Block(nn.Sequential):
        def __init__(self, num_maps_in, num_maps_out, k=3, bias=True):
            super().__init__(*(make(num_maps_in, num_maps_out, k) for make in layers))
    return Block


def test_check_block_and_identity_flag_wrong_layers(capsys):
    norm, relu = (lambda i, o, k: nn.GroupNorm(1, i)), (lambda i, o, k: nn.ReLU())
    conv, unpadded = (lambda i, o, k: nn.Conv2d(i, o, k, padding=k // 2)), (lambda i, o, k: nn.Conv2d(i, o, k))
    assert failing(lines(capsys, checks.check_block, block(relu, norm, conv))) == ["✘ _BNReluConv is GroupNorm → ReLU → Conv2d"]
    assert failing(lines(capsys, checks.check_block, block(norm, relu, unpadded))) == [
        "✘ a block maps (2, 4, 13, 13) to (2, 8, 13, 13)"]
    bn = lambda i, o, k: nn.BatchNorm2d(i)  # noqa: E731
    assert failing(lines(capsys, checks.check_block, block(bn, relu, conv)))[0].startswith("✘ _BNReluConv is")
    for features in (lambda self, img: img.squeeze(), lambda self, img: img.reshape(-1)):
        assert failing(lines(capsys, checks.check_identity, type("Wrong", (IdentityModel,), {"get_features": features})))


# --- Task 3 and 4: wrong functions --------------------------------------------------------------------

def summed_means(sums, counts, normalize=True):  # sum instead of mean
    out = F.normalize(sums, dim=1) if normalize else sums.clone()
    out[counts == 0] = float("nan")
    return out


def unnormalised_means(sums, counts, normalize=True):
    return means_from_sums(sums, counts, normalize=False)


def squared_distances(representations, features, normalize=True):
    return mean_distances(representations, features, normalize) ** 2


def farthest(representations, features, normalize=True):
    return mean_distances(representations, features, normalize).nan_to_num(-1.0).argmax(dim=1)


def nan_may_win(representations, features, normalize=True):
    return mean_distances(representations, features, normalize).nan_to_num(-1.0).argmin(dim=1)


def unwritten(*args, **kwargs):
    raise NotImplementedError("Task 3: write this part in labkit/classify.py")


@pytest.mark.parametrize("functions, flagged", [
    ((summed_means, mean_distances, nearest_mean), "class means are"),
    ((unnormalised_means, mean_distances, nearest_mean), "class means are"),
    ((means_from_sums, squared_distances, nearest_mean), "each query"),
    ((means_from_sums, mean_distances, farthest), "nearest_mean"),
    ((means_from_sums, mean_distances, nan_may_win), "nearest_mean"),
])
def test_check_classify_flags_wrong_functions(functions, flagged, capsys):
    bad = failing(lines(capsys, checks.check_classify, *functions))
    assert [line[2:].startswith(flagged) for line in bad] == [True], bad
    assert_all_pass(lines(capsys, checks.check_classify, means_from_sums, mean_distances, nearest_mean))


def test_unwritten_task3_and_task4_print_not_written_lines(capsys):
    out = lines(capsys, checks.check_classify, unwritten, unwritten, unwritten) + lines(capsys, checks.check_pca, unwritten)
    assert len(out) == 6 and all(line.startswith("✘ ") and "not written yet (Task 3" in line for line in out)


class BatchMeanRemoved(SimpleMetricEmbedding):  # each image's features depend on the rest of its batch
    def get_features(self, img):
        feats = super().get_features(img)
        return feats - feats.mean(0)


@pytest.mark.parametrize("cls, ok", [(SimpleMetricEmbedding, True), (BatchMeanRemoved, False)])
def test_check_batch_invariance_flags_batch_dependent_features(cls, ok, capsys):
    torch.manual_seed(0)
    ds = tiny_dataset("test")
    model = cls(1, 8).eval()
    reps = compute_representations(model, image_loader(ds, 64, device="cpu"), progress=False)
    out = lines(capsys, checks.check_batch_invariance, model, reps, ds)
    assert out == [f"{'✔' if ok else '✘'} evaluate gives the same accuracy with batch size 1 and 512"]


@pytest.mark.parametrize("wrong", [
    lambda x: x @ torch.linalg.svd(x, full_matrices=False)[2][:2].T,  # not centred
    lambda x: pca_2d(x).flip(1),  # narrowest first
    lambda x: pca_2d(x).T,
])
def test_check_pca_flags_wrong_projections(wrong, capsys):
    assert failing(lines(capsys, checks.check_pca, wrong))
    assert_all_pass(lines(capsys, checks.check_pca, pca_2d))


def test_other_exceptions_become_a_cross_with_their_place(capsys):
    def broken(x):
        return x[10_000]

    out = lines(capsys, checks.check_pca, broken)
    assert len(out) == 2 and all("IndexError" in line and "tests/test_checks.py:" in line for line in out), out
