import math

import pytest
import torch

from labkit import data
from labkit.dataset import MNISTMetricDataset
from labkit.device import prepare_model
from labkit.loaders import TripletBatches
from labkit.model import SimpleMetricEmbedding
from labkit.recipes import (RECIPES, ClassBalancedBatches, Recipe, get_recipe, results_table, retrieval_metrics,
                            make_optimizer, make_scheduler, other_dataset, run_recipe, train_recipe,
                            triplet_losses)
from tests.helpers import write_split_files


@pytest.fixture(scope="module")
def small():
    """40 training and 20 test digits per class from the bundled sample."""
    train, test = MNISTMetricDataset(split="train", source="sample"), MNISTMetricDataset(split="test", source="sample")

    def take(ds, per_class, split):
        keep = torch.cat([torch.nonzero(ds.targets == c).flatten()[:per_class] for c in range(10)])
        return MNISTMetricDataset.from_tensors(ds.images[keep], ds.targets[keep], split=split)

    return take(train, 40, "train"), take(train, 40, "traineval"), take(test, 20, "test")


def test_class_balanced_batches_hold_m_images_of_each_of_their_classes(small):
    train, _, _ = small
    batches = ClassBalancedBatches(train, m_per_class=4, batch_size=24, seed=0)
    assert len(batches) == len(train) // 24
    seen = []
    for images, targets in batches:
        assert images.shape == (24, 1, 28, 28)
        counts = torch.bincount(targets, minlength=10)
        assert sorted(counts.tolist()) == [0] * 4 + [4] * 6  # 6 classes, 4 images each
        seen.append(targets)
    again = [t for _, t in ClassBalancedBatches(train, m_per_class=4, batch_size=24, seed=0)]
    assert all(torch.equal(a, b) for a, b in zip(seen, again))  # the seed fixes the epoch


def test_class_balanced_batches_refuse_impossible_sizes(small):
    train, _, _ = small
    with pytest.raises(ValueError, match="multiple of m_per_class"):
        ClassBalancedBatches(train, m_per_class=8, batch_size=20)
    with pytest.raises(ValueError, match="at most 10 classes"):
        ClassBalancedBatches(train, m_per_class=8, batch_size=88)


def test_triplet_losses_equal_a_hand_loop():
    torch.manual_seed(0)
    model = SimpleMetricEmbedding(1, 8, margin=0.02)
    a, p, n = torch.rand(3, 12, 1, 28, 28)
    got = triplet_losses(model, a, p, n, "cpu", amp=False)
    with torch.no_grad():
        fa, fp, fn = (model.get_features(x).double() for x in (a, p, n))
    hand = [max(0.0, (fa[i] - fp[i]).norm().item() - (fa[i] - fn[i]).norm().item() + 0.02) for i in range(12)]
    assert 0 < hand.count(0.0) < 12
    assert torch.allclose(got.double(), torch.tensor(hand, dtype=torch.float64), atol=1e-5)


def test_zero_loss_share_of_an_epoch_matches_a_hand_count(small):
    """With lr 0 the model never changes, so the epoch's share can be recounted triplet by triplet."""
    train, _, _ = small
    recipe = Recipe("frozen", batch_size=16, lr=0.0, margin=0.02)  # small margin: many triplets are zero
    _, history = train_recipe(recipe, train, epochs=1, device="cpu", seed=3, amp=False, log=False)
    torch.manual_seed(3)
    model = prepare_model(SimpleMetricEmbedding(1, 32), "cpu")
    zeros = total = 0
    with torch.no_grad():
        for a, p, n, _ in TripletBatches(train, 16, device="cpu", seed=3):
            fa, fp, fn = (model.get_features(x).double() for x in (a, p, n))
            for i in range(len(fa)):
                zeros += (fa[i] - fp[i]).norm().item() - (fa[i] - fn[i]).norm().item() + 0.02 <= 0
                total += 1
    assert total == 16 * (len(train) // 16)
    assert 0 < zeros < total
    assert history[0]["zero_loss_share"] == pytest.approx(zeros / total, abs=1.5 / total)


def reference_retrieval(features, targets):
    """P@1, R-precision and MAP@R by hand: each query ranks all other points by cosine similarity."""
    x = torch.nn.functional.normalize(features.double(), dim=1)
    p1, rprec, map_r = [], [], []
    for q in range(len(x)):
        others = [j for j in range(len(x)) if j != q]
        ranked = sorted(others, key=lambda j: -(x[q] @ x[j]).item())
        rel = [int(targets[j] == targets[q]) for j in ranked]
        r = sum(rel)
        p1.append(rel[0])
        rprec.append(sum(rel[:r]) / r)
        map_r.append(sum(sum(rel[:i + 1]) / (i + 1) for i in range(r) if rel[i]) / r)
    return {"precision_at_1": sum(p1) / len(x), "r_precision": sum(rprec) / len(x),
            "mean_average_precision_at_r": sum(map_r) / len(x)}


def test_pml_retrieval_metrics_agree_with_a_hand_count():
    g = torch.Generator().manual_seed(0)
    targets = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2])
    centres = torch.randn(3, 4, generator=g)
    features = centres[targets] + 0.9 * torch.randn(len(targets), 4, generator=g)  # classes overlap a little
    got, want = retrieval_metrics(features, targets, "cpu"), reference_retrieval(features, targets)
    assert 0 < want["precision_at_1"] < 1  # not a trivial toy set
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key


def test_a_recipe_trains_lowers_its_loss_and_beats_its_untrained_start(small):
    train, evalset, test = small
    result = run_recipe("semi-hard", train, evalset, test, epochs=4, device="cpu", seed=0, log=False)
    losses = [h["loss"] for h in result["history"]]
    assert losses[-1] < losses[0]
    untrained = run_recipe(Recipe("untrained", loss=RECIPES["semi-hard"].loss, lr=0.0), train, evalset, test,
                           epochs=1, device="cpu", seed=0, log=False)
    assert result["accuracy"] > untrained["accuracy"] + 0.1
    assert result["precision_at_1"] > untrained["precision_at_1"]


def test_without_a_class_batches_shrink_and_the_unseen_class_is_measured(small):
    train, evalset, test = small
    no0 = MNISTMetricDataset.from_tensors(train.images, train.targets, split="train", remove_class=0)
    result = run_recipe("multi-similarity", no0, evalset, test, epochs=1, device="cpu", seed=0, log=False,
                        unseen_class=0)  # 9 classes: batches of 72 instead of 80
    assert 0 <= result["unseen_accuracy"] <= 1 and 0 <= result["accuracy"] <= 1


def test_proxy_loss_parameters_get_their_own_learning_rate():
    from pytorch_metric_learning import losses

    model = SimpleMetricEmbedding(1, 32)
    loss_fn = losses.NormalizedSoftmaxLoss(num_classes=10, embedding_size=32)
    recipe = Recipe("proxies", loss=losses.NormalizedSoftmaxLoss, proxies=True, lr=1e-3, loss_lr=1e-2)
    net, proxies = make_optimizer(recipe, model, loss_fn).param_groups
    assert net["lr"] == 1e-3 and len(net["params"]) == len(list(model.parameters()))
    assert proxies["lr"] == 1e-2 and proxies["params"][0] is loss_fn.W
    assert len(make_optimizer(RECIPES["semi-hard"], model, RECIPES["semi-hard"].loss()).param_groups) == 1


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_schedules_peak_at_the_recipe_lr_and_end_near_zero(schedule):
    optimizer = torch.optim.Adam(SimpleMetricEmbedding(1, 8).parameters(), lr=4e-3)
    scheduler = make_scheduler(schedule, optimizer, 100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert max(lrs) == pytest.approx(4e-3) and lrs[-1] < 4e-3 / 20
    assert make_scheduler(None, optimizer, 100) is None


def test_unknown_recipe_lists_the_choices():
    with pytest.raises(ValueError, match="semi-hard"):
        get_recipe("semihard")
    with pytest.raises(ValueError, match="onecycle"):
        train_recipe(Recipe("x", loss=RECIPES["batch-all"].loss, schedule="linear"), None, device="cpu")


def test_results_table_shows_mean_and_sd_per_recipe():
    runs = [{"recipe": "a", "accuracy": acc, "precision_at_1": 0.5, "r_precision": 0.4,
             "mean_average_precision_at_r": 0.3, "seconds_per_epoch": s} for acc, s in ((0.8, 1.0), (0.9, 3.0))]
    table = results_table(runs + [dict(runs[0], recipe="b")])
    row_a, row_b = table.splitlines()[2:]
    sd = math.sqrt(((80 - 85) ** 2 + (90 - 85) ** 2) / 1)
    assert row_a.split()[:3] == ["a", "85.00", "±"] and f"{sd:.2f}" in row_a and "2.00 ± 1.41" in row_a
    assert row_b.split()[:2] == ["b", "80.00"] and "±" not in row_b


def test_local_folder_finds_the_files_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_DIR", {"fashion": tmp_path / "debian"})
    monkeypatch.delenv("LABKIT_FASHION_DIR", raising=False)
    monkeypatch.setattr(data, "_download", lambda *a: pytest.fail("local_folder must never download"))
    assert data.local_folder("fashion", root=tmp_path) is None
    write_split_files(tmp_path / "debian")
    assert data.local_folder("fashion", root=tmp_path) == tmp_path / "debian"
    write_split_files(tmp_path / "FashionMNIST" / "raw")  # the data folder comes first, as for load_digits
    assert data.local_folder("fashion", root=tmp_path) == tmp_path / "FashionMNIST" / "raw"
    with pytest.raises(ValueError, match="sample is always here"):
        data.local_folder("sample")


def test_other_dataset_is_fashion_beside_digits_and_digits_beside_fashion(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_DIR", {"fashion": tmp_path / "nowhere"})
    monkeypatch.delenv("LABKIT_FASHION_DIR", raising=False)
    monkeypatch.delenv("LABKIT_MNIST_DIR", raising=False)
    monkeypatch.setenv("LABKIT_DATA_ROOT", str(tmp_path))
    assert other_dataset("sample") == ("fashion", None)  # not here: nothing to compare, nothing downloaded
    name, sets = other_dataset("fashion", size=(200, 20))  # no MNIST files here: the bundled sample
    assert name == "sample" and [len(s) for s in sets] == [200, 200, 20]
    assert [s.split for s in sets] == ["train", "traineval", "test"]
    write_split_files(tmp_path / "FashionMNIST" / "raw")  # 30 training, 10 test images
    name, sets = other_dataset("mnist", size=(100, 5))
    assert name == "fashion" and [len(s) for s in sets] == [30, 30, 5]  # at most what the files hold
    assert {s.source for s in sets} == {"fashion"}
    write_split_files(tmp_path / "MNIST" / "raw", seed=1)
    name, sets = other_dataset("fashion")
    assert name == "mnist" and [len(s) for s in sets] == [30, 30, 10] and {s.source for s in sets} == {"mnist"}


def test_results_table_fits_long_recipe_names():
    runs = [{"recipe": "batch-all 40 one-cycle (fashion, 4000)", "accuracy": 0.9, "precision_at_1": 0.8,
             "r_precision": 0.7, "mean_average_precision_at_r": 0.6, "seconds_per_epoch": 1.0}]
    header, _, row = results_table(runs).splitlines()
    assert row.startswith("batch-all 40 one-cycle (fashion, 4000)  ")
    assert len(header) == len(row) and header.index("accuracy") + len("accuracy") == row.index("90.00") + len("90.00")
