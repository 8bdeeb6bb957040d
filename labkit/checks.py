"""Check cells: each function tests one task's code and prints one line per property, ✔ or ✘.

Each property is decided where a bug shows with certainty: task code runs on small fixed inputs
(a dataset of a few images per class, fixed tensors, a seeded model), never on the data the notebook
loaded, so the printed lines are the same on the bundled sample, on full MNIST, on any device. The
notebooks' stored outputs hold exactly the ✔ lines that nbval compares: a wrong implementation
prints ✘ and fails. Task code that is not written yet (``NotImplementedError``) or that raises prints
✘ with the reason instead of stopping the notebook.
"""
import copy
import functools
import math
import traceback
from pathlib import Path

import torch
from torch import nn

from labkit.device import model_device
from labkit.loaders import image_loader
from labkit.training import evaluate

DRAWS = 200  # samples per anchor on the fixed dataset: a bug with probability >= 1/2 per draw never hides
# the fixed dataset of the Task 1 checks: images per class 0-9, unequal on purpose (class 8 is large)
CLASS_SIZES = (2, 3, 2, 4, 2, 2, 3, 2, 10, 2)


def _own_rng(check):
    """Run a check that seeds torch on a forked random state: the notebook's own stream is untouched.

    Checks seed ``torch.default_generator``, the CPU's, which the fork restores; ``torch.manual_seed``
    would reseed a GPU's generators too, and those the fork (``devices=[]``) does not restore.
    """
    @functools.wraps(check)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return check(*args, **kwargs)

    return wrapper


def _line(ok, text):
    print(f"{'✔' if ok else '✘'} {text}")


def _why(err):
    """A short reason for a ✘ line: unwritten task code, or the exception and where it was raised."""
    if isinstance(err, NotImplementedError):
        return f"not written yet ({err})" if str(err) else "not written yet"
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).name != "checks.py"]
    where = f" at {Path(frames[-1].filename).parent.name}/{Path(frames[-1].filename).name}:{frames[-1].lineno}" \
        if frames else ""
    return f"{type(err).__name__}: {err}{where}"


def _report(text, test):
    """Print the line for one property. ``test()`` returns a bool or (hits, total); it may run task code."""
    try:
        result = test()
    except Exception as err:  # task code that fails is a ✘ for this property, not the end of the check
        _line(False, f"{text}: {_why(err)}")
        return False
    if isinstance(result, tuple):
        hits, total = result
        _line(hits == total, f"{text} ({hits}/{total})")
        return hits == total
    _line(bool(result), text)
    return bool(result)


def _once(compute):
    """Run ``compute()`` now; return a function giving its value, or raising what it raised."""
    try:
        value = compute()
    except Exception as err:
        error = err  # ``err`` itself is unbound when the except block ends

        def fail():
            raise error
        return fail
    return lambda: value


def fixed_digits(class_sizes=CLASS_SIZES):
    """The Task 1 checks' dataset: uint8 images (N, 28, 28) where image i is filled with i + 1, and
    targets with ``class_sizes[c]`` images of class c, interleaved (a class's indices are not contiguous)."""
    targets = torch.cat([torch.full((n,), c) for c, n in enumerate(class_sizes)])
    n = len(targets)
    order = torch.tensor([(7 * i) % n for i in range(n)])  # a fixed permutation (7 and n are coprime)
    assert n % 7 and n < 255, "class sizes must give a number of images coprime to 7 and below 255"
    images = (torch.arange(n, dtype=torch.uint8) + 1).view(n, 1, 1).expand(n, 28, 28).contiguous()
    return images, targets[order]


def _index_of(image):
    """The index of a fixed_digits image from its pixels (image i holds (i + 1) / 255)."""
    return round(image.flatten()[0].item() * 255) - 1


@_own_rng
def check_triplets(dataset, draws=DRAWS, seed=0):
    """Task 1: positives from the anchor's class (never the anchor), negatives from the others.

    The samplers of ``type(dataset)`` run on the fixed dataset (two to ten images per class),
    ``draws`` times for every anchor: a sampler that returns the anchor with probability 1/n fails
    here with certainty, on the sample and on full MNIST alike.
    """
    torch.default_generator.manual_seed(seed)
    ds = _once(lambda: type(dataset).from_tensors(*fixed_digits(), split="train"))
    targets = fixed_digits()[1]
    n = len(targets)
    members = {c: {i for i in range(n) if targets[i] == c} for c in range(10)}
    pos = _once(lambda: [[ds()._sample_positive(a) for _ in range(draws)] for a in range(n)])
    neg = _once(lambda: [[ds()._sample_negative(a) for _ in range(draws)] for a in range(n)])

    def pairs(picks):
        return [(a, int(p)) for a in range(n) for p in picks()[a]]

    _report("positives share the anchor's class",
            lambda: (sum(targets[p] == targets[a] for a, p in pairs(pos)), n * draws))
    _report("positives are never the anchor itself", lambda: (sum(p != a for a, p in pairs(pos)), n * draws))
    _report("positives reach every other image of the anchor's class",
            lambda: all(set(map(int, pos()[a])) == members[targets[a].item()] - {a} for a in range(n)))
    _report("negatives come from another class",
            lambda: (sum(targets[m] != targets[a] for a, m in pairs(neg)), n * draws))

    def uniform_classes():
        # every other class for every anchor; class 8 (10 of 32 images) about 1/9 of the time, not 10/30
        big = [targets[m].item() == 8 for a, m in pairs(neg) if targets[a] != 8]
        reach = all({targets[m].item() for m in neg()[a]} == set(range(10)) - {targets[a].item()} for a in range(n))
        return reach and 0.07 < sum(big) / len(big) < 0.16 and {m for _, m in pairs(neg)} == set(range(n))

    _report("negatives: another class uniformly at random, then any of its images", uniform_classes)

    def item_ok():
        item = ds()[3]
        shapes = (len(item) == 4 and all(torch.is_tensor(x) and x.shape == (1, 28, 28) for x in item[:3])
                  and isinstance(item[3], int))
        a, p, m = (_index_of(x) for x in item[:3])
        return shapes and a == 3 and item[3] == targets[3] and targets[p] == targets[3] != targets[m]

    _report("an item is (anchor, positive, negative) of shape (1, 28, 28) and an int target", item_ok)


def check_images(dataset):
    """Task 1: shape, type and scaling of the dataset's own images (any MNIST-format data passes)."""
    x, y = dataset.images, dataset.targets
    _report("images have shape (N, 28, 28)", lambda: x.dim() == 3 and tuple(x.shape[1:]) == (28, 28))
    _report("images are float32 in [0, 1], the raw bytes divided by 255",
            lambda: x.dtype == torch.float32 and x.min() == 0 and x.max() == 1
            and bool(((x * 255) - (x * 255).round()).abs().max() < 1e-3))
    _report("one target per image, each a digit 0-9",
            lambda: y.dtype == torch.int64 and y.shape == (len(x),) and bool(((y >= 0) & (y <= 9)).all()))


@_own_rng
def check_remove_class(dataset_cls, removed=0, draws=DRAWS, seed=0):
    """Task 1: ``remove_class`` drops every image of that digit and nothing else (on the fixed dataset)."""
    torch.default_generator.manual_seed(seed)
    images, targets = fixed_digits()
    ds = _once(lambda: dataset_cls.from_tensors(images, targets, split="train", remove_class=removed))
    kept = [i for i in range(len(targets)) if targets[i] != removed]

    def removes():
        d = ds()
        same = len(d) == len(kept) and d.targets.tolist() == targets[kept].tolist()
        return same and [_index_of(im) for im in d.images] == kept  # images and targets still aligned

    _report(f"remove_class={removed} removes every {removed} and keeps all other digits", removes)
    _report(f"classes no longer list {removed}", lambda: sorted(ds().classes) == [c for c in range(10) if c != removed])
    _report(f"no negative is ever a {removed}",
            lambda: all(ds().targets[ds()._sample_negative(a)] != removed for a in range(len(kept)) for _ in range(draws)))


def check_block(block_cls):
    """Task 2: _BNReluConv is GroupNorm -> ReLU -> Conv2d keeping the spatial size."""
    block = _once(lambda: block_cls(4, 8, k=3))
    _report("_BNReluConv is GroupNorm → ReLU → Conv2d",
            lambda: [type(m) for m in block()] == [nn.GroupNorm, nn.ReLU, nn.Conv2d])
    _report("a block maps (2, 4, 13, 13) to (2, 8, 13, 13)",
            lambda: block()(torch.randn(2, 4, 13, 13)).shape == (2, 8, 13, 13))


@_own_rng
def check_embedding(model_cls, emb_size=32, seed=0):
    """Task 2: the layers of SimpleMetricEmbedding, the shapes of get_features, its loss against torch's."""
    torch.default_generator.manual_seed(seed)
    model = _once(lambda: model_cls(1, emb_size))
    x = torch.rand(64, 1, 28, 28)

    def layers():
        kinds = [type(m).__name__.lstrip("_") for m in model().net]
        pools = [m for m in model().net if isinstance(m, nn.MaxPool2d)]
        return (kinds == ["BNReluConv", "MaxPool2d", "BNReluConv", "MaxPool2d", "BNReluConv", "AdaptiveAvgPool2d"]
                and all(p.kernel_size == 3 and p.stride == 2 for p in pools))

    _report("net: block → max-pool(3, 2) → block → max-pool(3, 2) → block → global average pool", layers)
    _report(f"get_features: (64, 1, 28, 28) → (64, {emb_size})", lambda: model().get_features(x).shape == (64, emb_size))
    _report(f"get_features: (1, 1, 28, 28) → (1, {emb_size})", lambda: model().get_features(x[:1]).shape == (1, emb_size))
    a, p, n = torch.rand(3, 64, 1, 28, 28)

    def matches(margin):
        m = model_cls(1, emb_size, margin=margin)
        m.load_state_dict(model().state_dict())
        fa, fp, fn = m.get_features(a), m.get_features(p), m.get_features(n)
        if margin > 0:
            reference = nn.TripletMarginLoss(margin=margin, p=2)(fa, fp, fn)
        else:  # torch's loss refuses margin 0: the same formula from its pairwise distance
            pd = nn.functional.pairwise_distance
            reference = torch.relu(pd(fa, fp) - pd(fa, fn) + margin).mean()
        loss = m.loss(a, p, n)
        return loss.dim() == 0 and bool(torch.allclose(loss, reference, rtol=1e-4, atol=1e-5))

    _report("loss equals torch.nn.TripletMarginLoss(margin=1.0, p=2)", lambda: matches(1.0))
    # with margin 0 about half of these random triplets cost nothing: max(0, ·) must be there
    _report("with margin=0.0 only triplets whose negative is nearer than the positive cost", lambda: matches(0.0))

    def gradients():
        model().zero_grad()
        model().loss(a[:16], p[:16], n[:16]).backward()
        return all(q.grad is not None for q in model().parameters())

    _report("the loss sends gradients to every parameter", gradients)


def check_identity(model_cls):
    """Task 2: IdentityModel returns flattened images."""
    x = torch.rand(8, 1, 28, 28)
    _report("IdentityModel: (8, 1, 28, 28) → (8, 784), the pixels themselves",
            lambda: torch.equal(model_cls().get_features(x), x.reshape(8, -1)))


def check_classify(means_from_sums, mean_distances, nearest_mean):
    """Task 3a, before any training: class means, distances and the nearest-mean rule on tiny fixed tensors."""
    sums, counts = torch.tensor([[2.0, 0.0], [3.0, 4.0], [0.0, 0.0]]), torch.tensor([2.0, 1.0, 0.0])

    def means_ok():
        unit, plain = means_from_sums(sums.clone(), counts.clone()), means_from_sums(sums.clone(), counts.clone(), False)
        return (unit.shape == plain.shape == (3, 2) and bool(unit[2].isnan().all() and plain[2].isnan().all())
                and torch.allclose(unit[:2], torch.tensor([[1.0, 0.0], [0.6, 0.8]]), atol=1e-6)
                and torch.allclose(plain[:2], torch.tensor([[1.0, 0.0], [3.0, 4.0]]), atol=1e-6))

    _report("class means are the per-class averages, scaled to unit length unless normalize=False", means_ok)
    unit = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queries = torch.tensor([[10.0, 0.0], [0.0, 0.5], [3.0, 4.0]])  # very different lengths
    cos = torch.nn.functional.normalize(queries, dim=1) @ unit.T
    dist = _once(lambda: mean_distances(unit, queries))
    _report("each query is scaled to unit length: distances are sqrt(2 - 2 cos), between 0 and 2",
            lambda: dist().shape == (3, 2) and torch.allclose(dist(), (2 - 2 * cos).clamp(min=0).sqrt(), atol=1e-5))
    _report("a query's distances do not depend on the other queries in its batch",
            lambda: torch.allclose(torch.cat([mean_distances(unit, q.unsqueeze(0)) for q in queries]), dist(), atol=1e-6))
    with_nan = torch.tensor([[math.nan, math.nan], [0.0, 1.0], [1.0, 0.0]])
    _report("nearest_mean picks the nearest class mean and never a class without images",
            lambda: nearest_mean(with_nan, queries).tolist() == [2, 1, 1])


def check_representations(representations):
    """Task 3a: one unit-length class mean per class that has images."""
    seen = ~representations.isnan().any(dim=1)
    norms = representations[seen].norm(dim=1)
    _line(representations.dim() == 2 and representations.shape[0] == 10, "one representation per class, (10, D)")
    _line(bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-5)), "class means are unit vectors")


def check_batch_invariance(model, representations, dataset, n=300):
    """Task 3a: the accuracy must not depend on the evaluation batch size.

    Decided on the CPU (a copy of a model that is elsewhere), where labkit embeds image by image and
    only the code under test can make the batch size matter. On a GPU, cuDNN picks other convolution
    algorithms (with TF32) for other batch sizes, and their last-bit differences could flip a near
    tie in a correct solution.
    """
    subset = type(dataset).from_tensors(dataset.images[:n], dataset.targets[:n], split="test")
    if model_device(model).type != "cpu":
        model = copy.deepcopy(model).cpu()  # the student's model stays where it is
    reps = representations.cpu()
    accs = _once(lambda: [evaluate(model, reps, image_loader(subset, b, device="cpu"), "cpu", progress=False)
                          for b in (1, 512)])
    _report("evaluate gives the same accuracy with batch size 1 and 512", lambda: accs()[0] == accs()[1])


def check_better(accuracy, baseline, what, than):
    _line(accuracy > baseline, f"{what} classifies better than {than}")


def check_reload(accuracy, reloaded_accuracy):
    """Task 3d: a checkpoint reproduces the model exactly."""
    _line(accuracy == reloaded_accuracy, "the reloaded model gives the same accuracy")


def check_unseen(class_accuracy, digit=0, chance=0.1):
    """Task 3e: a digit never trained on is still recognised far above chance."""
    _line(class_accuracy > 3 * chance, f"digit {digit}, never seen in training, is recognised far above chance "
                                       f"(more than {3 * chance:.0%} of its test images)")


@_own_rng
def check_pca(pca_2d, seed=0):
    """Task 4: pca_2d projects centred data on the two directions of largest variance, widest first."""
    torch.default_generator.manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(5, 5))[0]  # a random rotation
    x = (torch.randn(400, 5) * torch.tensor([5.0, 2.0, 0.5, 0.2, 0.1])) @ basis.T + 3.0
    points = _once(lambda: pca_2d(x))
    centred = x - x.mean(0)
    reference = centred @ torch.linalg.svd(centred, full_matrices=False)[2][:2].T  # exact PCA, up to sign
    _report("pca_2d: (400, 5) → (400, 2), the centred data on the two widest directions, widest first",
            lambda: points().shape == (400, 2) and all(
                torch.allclose(points()[:, i].abs(), reference[:, i].abs(), atol=1e-2) for i in range(2)))
    _report("the projected points are centred",
            lambda: points().shape == (400, 2) and bool(points().mean(0).abs().max() < 1e-3))


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
