"""Beyond the lab: training recipes (loss + miner + batches) from pytorch-metric-learning on labkit's fast path.

A ``Recipe`` names a PML loss, an optional PML miner and the batches it trains on: the lab's random
triplets (``labkit.loaders.TripletBatches``) or class-balanced batches drawn by PML's
``MPerClassSampler`` that index the dataset held as one tensor on the device. Every recipe trains
the lab's network ``SimpleMetricEmbedding(1, 32)`` with Adam, channels_last and the bf16
convolutions of ``labkit.device.mixed_precision``, and is evaluated by the lab's nearest class mean
and by PML's retrieval metrics (precision@1, R-precision, MAP@R; k-NN without faiss via ``CustomKNN``).
"""
import math
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.utils import common_functions as pml_common
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN

from labkit.classify import nearest_mean, per_class_accuracy
from labkit.data import load_digits, load_idx_digits, local_folder
from labkit.dataset import MNISTMetricDataset
from labkit.device import mixed_precision, pick_device, prepare_model
from labkit.loaders import TripletBatches, image_loader
from labkit.model import SimpleMetricEmbedding
from labkit.training import compute_representations, embed, evaluate

RETRIEVAL = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
SCHEDULES = (None, "cosine", "onecycle")


@dataclass(frozen=True)
class Recipe:
    """What a run trains with. ``loss`` None: the lab's random triplets and its triplet loss (``margin``).

    ``loss``/``miner`` build fresh PML objects; a proxy loss (``proxies=True``) is built with
    ``num_classes`` and ``embedding_size`` and its proxies get their own learning rate ``loss_lr``.
    ``schedule`` (see ``make_scheduler``) changes the learning rate step by step over the run.
    """

    name: str
    loss: object = None
    miner: object = None
    m_per_class: int = 8
    batch_size: int = 80  # class-balanced: images per batch (at most m_per_class of each class); triplets: anchors
    margin: float = 1.0  # random triplets only: the lab's margin
    lr: float = 1e-3
    proxies: bool = False
    loss_lr: float | None = None
    schedule: str | None = None

    @property
    def random_triplets(self):
        return self.loss is None

    def describe(self):
        """One line: loss, miner and batches, e.g. for the notebook's list of recipes."""
        if self.random_triplets:
            return f"the lab's triplet loss (margin {self.margin}) on random triplets, {self.batch_size} per batch"
        parts = " + ".join(_call_text(f) for f in (self.loss, self.miner) if f is not None)
        extra = f", proxies at lr {self.loss_lr or self.lr:g}" if self.proxies else ""
        extra += f", {self.schedule} learning rate" if self.schedule else ""
        return f"{parts}; {self.m_per_class} per class, batch {self.batch_size}, lr {self.lr:g}{extra}"


def _call_text(factory):
    if isinstance(factory, partial):
        args = ", ".join(f"{k}={v!r}" for k, v in factory.keywords.items())
        return f"{factory.func.__name__}({args})"
    return f"{factory.__name__}()"


_triplet = partial(losses.TripletMarginLoss, margin=0.2)
_semihard = partial(miners.TripletMarginMiner, margin=0.2, type_of_triplets="semihard")
RECIPES = {r.name: r for r in (
    Recipe("random triplets", batch_size=64),
    Recipe("batch-all", loss=_triplet),
    Recipe("semi-hard", loss=_triplet, miner=_semihard),
    Recipe("batch-hard", loss=_triplet, miner=miners.BatchHardMiner),
    Recipe("multi-similarity", loss=losses.MultiSimilarityLoss, miner=partial(miners.MultiSimilarityMiner, epsilon=0.1)),
    # batch-all with twice as many, smaller steps (4 per class, batch 40) and a one-cycle lr peaking at 2e-3:
    # the best of 12 variants tried on full Fashion-MNIST (seeds 10-12; README, "Beyond the lab")
    Recipe("batch-all 40 one-cycle", loss=_triplet, m_per_class=4, batch_size=40, lr=2e-3, schedule="onecycle"),
)}


def get_recipe(name):
    """The recipe called ``name`` (an error lists the valid names)."""
    if isinstance(name, Recipe):
        return name
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {list(RECIPES)}")
    return RECIPES[name]


class ClassBalancedBatches:
    """(images (B, 1, 28, 28), targets) batches of ``m_per_class`` images from each of B / m classes.

    PML's ``MPerClassSampler`` draws the indices (one epoch: as many images as the dataset holds),
    which index the dataset held as one tensor on the device; ``seed`` makes the epochs reproducible.
    """

    def __init__(self, dataset, m_per_class=8, batch_size=80, device=None, seed=None):
        num_classes = len(set(dataset.targets.tolist()))
        if batch_size % m_per_class or batch_size // m_per_class > num_classes:
            raise ValueError(f"batch_size={batch_size} must be a multiple of m_per_class={m_per_class} and hold "
                             f"at most {num_classes} classes (the dataset's); e.g. batch_size={m_per_class * 2}")
        if len(dataset) < batch_size:
            raise ValueError(f"the dataset has {len(dataset)} images, fewer than one batch of {batch_size}")
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.images = dataset.images.to(self.device).unsqueeze(1)  # (N, 1, 28, 28)
        self.targets = dataset.targets.to(self.device)
        steps = len(dataset) // batch_size
        self.sampler = MPerClassSampler(dataset.targets.cpu(), m_per_class, batch_size,
                                        length_before_new_iter=steps * batch_size)
        self.rng = np.random.RandomState(seed)

    def __len__(self):
        return len(self.sampler) // self.batch_size

    def __iter__(self):
        saved, pml_common.NUMPY_RANDOM = pml_common.NUMPY_RANDOM, self.rng  # PML draws from this module global
        try:
            order = torch.as_tensor(np.asarray(list(iter(self.sampler))), device=self.device)
        finally:
            pml_common.NUMPY_RANDOM = saved
        for index in order.split(self.batch_size):
            yield self.images[index], self.targets[index]


def triplet_losses(model, anchor, positive, negative, device, amp=True):
    """The lab's triplet loss per triplet, (B,): max(0, |a - p| - |a - n| + margin) on one forward pass.

    A triplet with loss exactly zero sends no gradient at all.
    """
    with mixed_precision(model, device, amp):
        feats = model.get_features(torch.cat([anchor, positive, negative])).float()  # (3B, D)
    return F.triplet_margin_loss(*feats.chunk(3), margin=model.margin, reduction="none")


def make_optimizer(recipe, model, loss_fn=None):
    """Adam over the network at ``recipe.lr``; a proxy loss's parameters in a group of their own at ``loss_lr``."""
    groups = [{"params": list(model.parameters()), "lr": recipe.lr}]
    if loss_fn is not None and list(loss_fn.parameters()):
        groups.append({"params": list(loss_fn.parameters()), "lr": recipe.loss_lr or recipe.lr})
    return torch.optim.Adam(groups)


def make_scheduler(schedule, optimizer, steps):
    """None, or a per-step schedule: "cosine" anneals each group's lr to zero; "onecycle" warms up from
    lr / 25 to lr over the first 30 % of the steps, then anneals to nearly zero (``OneCycleLR``)."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, [g["lr"] for g in optimizer.param_groups], steps)
    return None


def train_recipe(recipe, dataset, epochs=3, device=None, *, emb_size=32, seed=0, amp=True, log=True):
    """Train ``SimpleMetricEmbedding(1, emb_size)`` with a recipe; returns (model, history).

    A class-balanced batch holds each class at most once: without a removed class it shrinks to fit.

    ``history`` has one dict per epoch: "epoch", "loss" (mean over batches), "seconds" (training
    only) and, for random triplets, "zero_loss_share" (share of that epoch's triplets with zero loss).
    """
    recipe, device = get_recipe(recipe), pick_device(device)
    if recipe.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {recipe.schedule!r}; choose one of {SCHEDULES}")
    torch.manual_seed(seed)
    model = prepare_model(SimpleMetricEmbedding(1, emb_size, margin=recipe.margin), device)
    loss_fn = miner = None
    if recipe.random_triplets:
        batches = TripletBatches(dataset, recipe.batch_size, device=device, seed=seed)
    else:
        num_classes = len(dataset.targets.unique())  # fewer without a removed class: smaller batches
        batch_size = min(recipe.batch_size, recipe.m_per_class * num_classes)
        batches = ClassBalancedBatches(dataset, recipe.m_per_class, batch_size, device=device, seed=seed)
        sizes = dict(num_classes=int(dataset.targets.max()) + 1, embedding_size=emb_size) if recipe.proxies else {}
        loss_fn = recipe.loss(**sizes).to(device)
        miner = recipe.miner() if recipe.miner else None
    optimizer = make_optimizer(recipe, model, loss_fn)
    scheduler = make_scheduler(recipe.schedule, optimizer, epochs * len(batches))
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        total, zeros, count, start = torch.zeros((), device=device), 0, 0, time.perf_counter()
        for batch in batches:
            if recipe.random_triplets:
                per_triplet = triplet_losses(model, *batch[:3], device, amp)
                loss = per_triplet.mean()
                zeros += (per_triplet.detach() == 0).sum()
                count += len(per_triplet)
            else:
                images, labels = batch
                with mixed_precision(model, device, amp):
                    feats = model.get_features(images).float()  # (B, D)
                loss = loss_fn(feats, labels, miner(feats, labels) if miner else None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.detach()
        mean_loss = total.item() / len(batches)  # .item() waits for the device: the time is honest
        entry = {"epoch": epoch, "loss": mean_loss, "seconds": time.perf_counter() - start}
        if recipe.random_triplets:
            entry["zero_loss_share"] = float(zeros) / count
        history.append(entry)
        if log:
            extra = f", zero-loss triplets {entry['zero_loss_share']:.1%}" if recipe.random_triplets else ""
            print(f"{recipe.name} epoch {epoch}/{epochs}: loss {mean_loss:.4f}{extra} ({entry['seconds']:.1f} s)")
    return model, history


def retrieval_metrics(features, targets, device=None):
    """PML's precision@1, R-precision and MAP@R of the features, each query against all others (cosine)."""
    device = pick_device(device) if device is None else torch.device(device)
    calculator = AccuracyCalculator(include=RETRIEVAL, k="max_bin_count", device=device,
                                    knn_func=CustomKNN(CosineSimilarity(), batch_size=1024))
    return calculator.get_accuracy(features.float(), targets)


def evaluate_recipe(model, train_set, test_set, device=None, unseen_class=None):
    """Nearest-class-mean accuracy (class means over ``train_set``) and retrieval metrics on ``test_set``.

    With ``unseen_class``, also "unseen_accuracy": the nearest-class-mean accuracy on that class.
    """
    device = pick_device(device)
    reps = compute_representations(model, image_loader(train_set, device=device), device=device, progress=False)
    result = {"accuracy": evaluate(model, reps, image_loader(test_set, device=device), device, progress=False)}
    feats, targets = embed(model, image_loader(test_set, device=device), device, progress=False)
    result.update(retrieval_metrics(feats, targets, device))
    if unseen_class is not None:
        result["unseen_accuracy"] = per_class_accuracy(nearest_mean(reps, feats), targets)[unseen_class]
    return result


def run_recipe(recipe, train_set, eval_set, test_set, epochs=3, device=None, *, seed=0, amp=True, log=True,
               unseen_class=None):
    """Train on ``train_set``, evaluate (class means over ``eval_set``); one dict of figures per run."""
    recipe = get_recipe(recipe)
    model, history = train_recipe(recipe, train_set, epochs, device, seed=seed, amp=amp, log=log)
    result = {"recipe": recipe.name, "seconds_per_epoch": sum(h["seconds"] for h in history) / len(history),
              "history": history, "model": model}
    result.update(evaluate_recipe(model, eval_set, test_set, device, unseen_class))
    return result


def recipe_datasets(train, test, size=None):
    """(train, traineval, test) datasets from two ``labkit.data.Digits`` splits; ``size`` = (n_train,
    n_test) keeps the first images of each (the idx files are in random class order)."""
    n_train, n_test = size if size else (None, None)
    return [MNISTMetricDataset.from_tensors(d.images[:n], d.targets[:n], split, source=d.source)
            for d, n, split in ((train, n_train, "train"), (train, n_train, "traineval"), (test, n_test, "test"))]


SAMPLE_SIZE = (4000, 1000)  # the bundled sample's training / test images


def other_dataset(source, root=None, size=SAMPLE_SIZE):
    """The second dataset beside ``source`` (the one a notebook runs on), if its files are on this machine.

    Beside digits ("mnist", "sample"): Fashion-MNIST. Beside "fashion": full MNIST where its files
    are here, else the bundled sample (always here). Returns (name, datasets): ``datasets`` from
    ``recipe_datasets`` with the first ``size`` images, the sample's size by default, so a comparison
    costs what the sample does; or (name, None) where the files are not here. Nothing is downloaded.
    """
    other = "fashion" if source != "fashion" else "mnist"
    folder = local_folder(other, root)
    if folder is not None:
        splits = [load_idx_digits(folder, train=train, source=other) for train in (True, False)]
    elif other == "mnist":
        other, splits = "sample", [load_digits(train=train, source="sample") for train in (True, False)]
    else:
        return other, None
    return other, recipe_datasets(*splits, size=size)


COLUMNS = (("accuracy", "accuracy"), ("P@1", "precision_at_1"), ("R-prec", "r_precision"),
           ("MAP@R", "mean_average_precision_at_r"))


def results_table(results, seconds=True):
    """The runs as a text table: one row per recipe, figures in %, mean ± sd when a recipe ran several times."""
    names = list(dict.fromkeys(r["recipe"] for r in results))
    width = max([24] + [len(name) + 2 for name in names])
    header = f"{'recipe':<{width}}" + "".join(f"{h:>16}" for h, _ in COLUMNS) + (f"{'s/epoch':>16}" if seconds else "")
    lines = [header, "-" * len(header)]
    for name in names:
        runs = [r for r in results if r["recipe"] == name]
        cells = [_mean_sd([100 * r[key] for r in runs]) for _, key in COLUMNS]
        if seconds:
            cells.append(_mean_sd([r["seconds_per_epoch"] for r in runs]))
        lines.append(f"{name:<{width}}" + "".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)


def _mean_sd(values):
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.2f} ± {sd:.2f}"
