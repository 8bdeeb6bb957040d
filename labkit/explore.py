"""The computations behind the notebooks' interactive explorers, as plain functions (testable headless).

``labkit.widgets`` wires them to ipywidgets; the notebooks' static figures call them directly.
"""
import torch
import torch.nn.functional as F

from labkit.classify import mean_distances
from labkit.device import cpu_rng
from labkit.viz import pca


def sample_triplets(dataset, count, seed=0):
    """``count`` (anchor, positive, negative) index triples, (count, 3), drawn with the dataset's own
    ``_sample_positive`` / ``_sample_negative``; seeded without touching torch's global random state."""
    with cpu_rng(seed):
        anchors = torch.randint(len(dataset), (count,)).tolist()
        rows = [(a, dataset._sample_positive(a), dataset._sample_negative(a)) for a in anchors]
    return torch.tensor(rows, dtype=torch.long).reshape(count, 3)


def nearest(bank, queries, k=5):
    """The k rows of ``bank`` (N, D) nearest in L2 to each query (B, D): distances and indices, (B, k) each."""
    dist = torch.cdist(queries.float(), bank.float().to(queries.device))
    d, i = dist.topk(min(k, len(bank)), dim=1, largest=False)
    return d, i


def neighbour_view(index, spaces, train_targets, test_targets, representations, k=5):
    """Everything the nearest-neighbour explorer shows for test image ``index``.

    ``spaces``: {name: (train features (N, D), test features (M, D), normalize)}; the first one is the
    embedding the class means ``representations`` (K, D) belong to. With ``normalize`` the features
    are scaled to unit length first (the lab's rule for the embedding); pixels compare as they are.
    Returns a dict: index, target, prediction (nearest class mean), mean_distances (K floats), and
    neighbours: {name: {"indices", "distances", "targets"}} (lists, nearest first).
    """
    neighbours = {}
    for name, (train_feats, test_feats, normalize) in spaces.items():
        bank, query = train_feats.float(), test_feats[index:index + 1].float()
        if normalize:
            bank, query = F.normalize(bank, dim=1), F.normalize(query, dim=1)
        d, i = nearest(bank, query, k)
        neighbours[name] = {"indices": i[0].tolist(), "distances": d[0].tolist(),
                            "targets": train_targets.cpu()[i[0].cpu()].tolist()}
    _, test_feats, _ = next(iter(spaces.values()))
    dist = mean_distances(representations, test_feats[index:index + 1])[0].nan_to_num(nan=float("inf"))
    return {"index": index, "target": int(test_targets[index]), "prediction": int(dist.argmin()),
            "mean_distances": dist.tolist(), "neighbours": neighbours}


def misclassified(preds, targets):
    """Indices of the wrong predictions, in order, as a list."""
    return torch.nonzero(preds.cpu() != targets.cpu()).flatten().tolist()


def principal_components(features, q=5):
    """The centred features on their first ``q`` principal components, (N, q), widest first: Task 4's
    ``labkit.viz.pca`` with more components, for choosing which ones to look at."""
    return pca(features, q)


def negative_shares(dataset, draws=5000, seed=0, num_classes=10):
    """How often each class is the negative of a random anchor, (num_classes,) summing to 1, with the
    dataset's own ``_sample_negative``. Uniform over the other classes gives each of K balanced
    classes 1/K; a removed class gets 0."""
    negatives = sample_triplets(dataset, draws, seed)[:, 2]
    return torch.bincount(dataset.targets[negatives], minlength=num_classes).float() / draws
