"""Check cells: each function tests one task's code and prints one line per property, ✔ or ✘.

The printed lines never depend on the data source, the device or timing, so the notebooks' stored
outputs hold exactly the ✔ lines that nbval compares: a wrong implementation prints ✘ and fails.
"""
import functools

import torch
from torch import nn

from labkit.loaders import image_loader
from labkit.training import evaluate

DRAWS = 1000


def _own_rng(check):
    """Run a check that seeds torch on a forked random state: the notebook's own stream is untouched."""
    @functools.wraps(check)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return check(*args, **kwargs)

    return wrapper


def _line(ok, text):
    print(f"{'✔' if ok else '✘'} {text}")


def _ratio(hits, total, text):
    _line(hits == total, f"{text} ({hits}/{total})")


@_own_rng
def check_triplets(dataset, draws=DRAWS, seed=0):
    """Task 1: positives from the anchor's class (never the anchor), negatives from the others."""
    torch.manual_seed(seed)
    anchors = torch.randint(len(dataset), (draws,)).tolist()
    targets = dataset.targets
    pos = [dataset._sample_positive(i) for i in anchors]
    neg = [dataset._sample_negative(i) for i in anchors]
    _ratio(sum(targets[p] == targets[a] for a, p in zip(anchors, pos)), draws,
           "positives share the anchor's class")
    _ratio(sum(p != a for a, p in zip(anchors, pos)), draws, "positives are never the anchor itself")
    _ratio(sum(targets[n] != targets[a] for a, n in zip(anchors, neg)), draws,
           "negatives come from another class")
    neg_classes = {targets[n].item() for n in neg}
    _line(neg_classes == set(dataset.classes), "negatives cover every class over many draws")
    item = dataset[anchors[0]]
    shapes_ok = (len(item) == 4 and all(torch.is_tensor(x) and x.shape == (1, 28, 28) for x in item[:3])
                 and isinstance(item[3], int))
    _line(shapes_ok, "an item is (anchor, positive, negative) of shape (1, 28, 28) and an int target")


def check_images(dataset):
    """Task 1: pixel range and shape of the dataset's images."""
    x = dataset.images
    _line(x.dim() == 3 and tuple(x.shape[1:]) == (28, 28), "images have shape (N, 28, 28)")
    _line(x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1 and x.max() > 0.5,
                "images are float32 in [0, 1]")


@_own_rng
def check_remove_class(dataset_cls, removed=0, **kwargs):
    """Task 1: ``remove_class`` drops every image of that digit and nothing else."""
    full = dataset_cls(split="train", **kwargs)
    ds = dataset_cls(split="train", remove_class=removed, **kwargs)
    kept = (full.targets != removed).sum().item()
    _line(bool((ds.targets != removed).all()) and len(ds) == kept,
               f"remove_class={removed} removes every {removed} and keeps all other digits")
    _line(removed not in ds.classes and len(ds.classes) == 9, f"classes no longer list {removed}")
    neg_ok = all(ds.targets[ds._sample_negative(i)] != removed for i in range(0, len(ds), max(1, len(ds) // 200)))
    _line(neg_ok, f"no negative is ever a {removed}")


def check_block(block_cls):
    """Task 2: _BNReluConv is GroupNorm -> ReLU -> Conv2d keeping the spatial size."""
    block = block_cls(4, 8, k=3)
    kinds = [type(m) for m in block]
    _line(kinds == [nn.GroupNorm, nn.ReLU, nn.Conv2d], "_BNReluConv is GroupNorm → ReLU → Conv2d")
    out = block(torch.randn(2, 4, 13, 13))
    _line(out.shape == (2, 8, 13, 13), "a block maps (2, 4, 13, 13) to (2, 8, 13, 13)")


@_own_rng
def check_embedding(model_cls, emb_size=32, seed=0):
    """Task 2: shapes of SimpleMetricEmbedding.get_features and its loss against torch's."""
    torch.manual_seed(seed)
    model = model_cls(1, emb_size)
    x = torch.rand(64, 1, 28, 28)
    _line(model.get_features(x).shape == (64, emb_size), f"get_features: (64, 1, 28, 28) → (64, {emb_size})")
    _line(model.get_features(x[:1]).shape == (1, emb_size), f"get_features: (1, 1, 28, 28) → (1, {emb_size})")
    a, p, n = torch.rand(3, 16, 1, 28, 28)
    reference = nn.TripletMarginLoss(margin=1.0, p=2)(model.get_features(a), model.get_features(p),
                                                      model.get_features(n))
    loss = model.loss(a, p, n)
    _line(loss.dim() == 0 and torch.allclose(loss, reference, rtol=1e-4, atol=1e-5),
                "loss equals torch.nn.TripletMarginLoss(margin=1.0, p=2)")
    loss.backward()
    _line(all(p.grad is not None for p in model.parameters()), "the loss sends gradients to every parameter")


def check_identity(model_cls):
    """Task 2: IdentityModel returns flattened images."""
    x = torch.rand(8, 1, 28, 28)
    feats = model_cls().get_features(x)
    _line(feats.shape == (8, 784) and torch.equal(feats, x.reshape(8, -1)),
                 "IdentityModel: (8, 1, 28, 28) → (8, 784), the pixels themselves")


def check_representations(representations):
    """Task 3a: one unit-length class mean per class that has images."""
    seen = ~representations.isnan().any(dim=1)
    norms = representations[seen].norm(dim=1)
    _line(representations.dim() == 2 and representations.shape[0] == 10, "one representation per class, (10, D)")
    _line(bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-5)), "class means are unit vectors")


def check_batch_invariance(model, representations, dataset, device=None, n=300):
    """Task 3a: the accuracy must not depend on the evaluation batch size."""
    subset = type(dataset).from_tensors(dataset.images[:n], dataset.targets[:n], split="test")
    accs = [evaluate(model, representations, image_loader(subset, b, device=device), device, progress=False)
            for b in (1, 512)]
    _line(accs[0] == accs[1], "evaluate gives the same accuracy with batch size 1 and 512")


def check_better(accuracy, baseline, what, than):
    _line(accuracy > baseline, f"{what} classifies better than {than}")


def check_reload(accuracy, reloaded_accuracy):
    """Task 3d: a checkpoint reproduces the model exactly."""
    _line(accuracy == reloaded_accuracy, "the reloaded model gives the same accuracy")


def check_unseen(class_accuracy, digit=0, chance=0.1):
    """Task 3e: a digit never trained on is still recognised far above chance."""
    _line(class_accuracy > 3 * chance, f"digit {digit}, never seen in training, is recognised far above chance "
                                       f"(more than {3 * chance:.0%} of its test images)")


def check_separation(image_ratio, feature_ratios):
    """Task 4: classes separate better in the learned spaces than in pixel space (2-D PCA)."""
    _line(all(r > image_ratio for r in feature_ratios),
          "in 2-D PCA the digits separate better in every feature space than in image space")


# Notebook 05 (ungraded): recipes beyond the lab.
def check_zero_loss_share(shares):
    """5a: random triplets stop teaching: most of them have zero loss once the network has learned a little."""
    _line(shares[-1] > 0.5, "in the last epoch most random triplets (more than half) have zero loss: no gradient")
    _line(shares[-1] > shares[0], "the share of zero-loss triplets grows during training")


def check_class_balanced(targets, m_per_class):
    """5b: a class-balanced batch holds exactly ``m_per_class`` images of each class in it."""
    counts = torch.bincount(torch.as_tensor(targets).cpu())
    _line(bool((counts[counts > 0] == m_per_class).all()),
          f"every class in the batch has exactly {m_per_class} images")


def check_retrieval_metrics(results):
    """5c: the retrieval metrics are consistent: MAP@R never exceeds R-precision."""
    ok = all(0 <= r["mean_average_precision_at_r"] <= r["r_precision"] <= 1 and 0 <= r["precision_at_1"] <= 1
             for r in results)
    _line(ok, "for every recipe 0 ≤ MAP@R ≤ R-precision ≤ 1 and 0 ≤ P@1 ≤ 1")


def check_recipe_ahead(best, baseline):
    """5c: the best recipe beats the lab's random triplets on every measure of quality."""
    keys = ("accuracy", "precision_at_1", "mean_average_precision_at_r")
    _line(all(best[k] > baseline[k] for k in keys),
          f"{best['recipe']} is ahead of {baseline['recipe']} in nearest-class-mean accuracy, P@1 and MAP@R")


def check_unseen_recipe(class_accuracy, recipe, cls=0, chance=0.1):
    """5d: the class left out of training is still recognised far above chance."""
    _line(class_accuracy > 3 * chance, f"class {cls}, never seen in training by {recipe}, is recognised far above "
                                       f"chance (more than {3 * chance:.0%} of its test images)")
