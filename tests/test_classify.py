import math

import pytest
import torch

from labkit import checks
from labkit.classify import (accuracy, class_means, knn, mean_distances, means_from_sums, nearest_mean,
                             per_class_accuracy)


def test_mean_distances_use_unit_queries_each_on_its_own():
    torch.manual_seed(0)
    means = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)
    queries = torch.randn(6, 3) * torch.tensor([[100.0], [0.01], [1.0], [5.0], [0.5], [20.0]])
    dist = mean_distances(means, queries)
    for q, row in zip(queries, dist):  # hand-computed, one query at a time
        u = q / q.norm()
        assert torch.allclose(row, torch.stack([(u - m).pow(2).sum().sqrt() for m in means]), atol=1e-5)
    # each row alone gives the same row: fails for normalising over the batch (per feature)
    assert torch.allclose(torch.cat([mean_distances(means, q[None]) for q in queries]), dist, atol=1e-6)


def test_nearest_mean_ignores_query_length_with_unit_means():
    # with unit means, ||s q - m||^2 = s^2 |q|^2 - 2 s q.m + 1: the nearest class does not depend on s > 0
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queries = torch.tensor([[10.0, 1.0], [0.1, 0.2]])
    assert nearest_mean(means, queries).tolist() == [0, 1]
    assert nearest_mean(means, queries, normalize=False).tolist() == [0, 1]
    assert nearest_mean(means, queries[1:]).tolist() == [1]


@pytest.mark.parametrize("wrong", ["unnormalised", "per-feature"])
def test_check_classify_flags_wrong_query_normalisation(wrong, capsys):
    def distances(representations, features, normalize=True):
        q = features.float() if wrong == "unnormalised" else torch.nn.functional.normalize(features.float(), dim=0)
        return torch.cdist(q, representations)

    checks.check_classify(means_from_sums, distances, nearest_mean)
    out = capsys.readouterr().out
    assert "✘ each query is scaled to unit length" in out


def test_check_classify_passes_the_reference(capsys):
    checks.check_classify(means_from_sums, mean_distances, nearest_mean)
    out = capsys.readouterr().out
    assert out.count("✔") == 4 and "✘" not in out


def test_nearest_mean_never_picks_a_nan_class():
    means = torch.tensor([[math.nan, math.nan], [0.0, 1.0]])
    assert nearest_mean(means, torch.tensor([[1.0, 0.0]])).tolist() == [1]


def test_class_means_against_a_loop():
    torch.manual_seed(0)
    feats, targets = torch.randn(50, 4), torch.randint(0, 3, (50,))
    raw = class_means(feats, targets, num_classes=4, normalize=False)
    for c in range(3):
        assert torch.allclose(raw[c], feats[targets == c].mean(0), atol=1e-6)
    assert raw[3].isnan().all()
    unit = class_means(feats, targets, num_classes=3)
    assert torch.allclose(unit.norm(dim=1), torch.ones(3))


def test_knn_against_brute_force():
    torch.manual_seed(1)
    bank, bank_y = torch.randn(60, 5), torch.randint(0, 4, (60,))
    queries = torch.randn(25, 5)
    for k in (1, 3):
        preds = knn(bank, bank_y, queries, k=k, chunk=7)
        for q, p in zip(queries, preds):
            sims = torch.nn.functional.cosine_similarity(bank, q.unsqueeze(0))
            top = bank_y[sims.argsort(descending=True)[:k]].tolist()
            best = max(set(top), key=lambda c: (top.count(c), -top.index(c)))
            assert p.item() == best


def test_accuracies():
    preds, targets = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2])
    assert accuracy(preds, targets) == 0.75
    per = per_class_accuracy(preds, targets, num_classes=4)
    assert per[:3] == [1.0, 1.0, 0.5] and math.isnan(per[3])


def test_confusion_matrix_against_a_loop():
    from labkit.classify import confusion_matrix

    preds, targets = torch.tensor([0, 1, 1, 2, 0, 2]), torch.tensor([0, 1, 2, 2, 1, 2])
    cm = confusion_matrix(preds, targets, num_classes=3)
    ref = torch.zeros(3, 3, dtype=torch.long)
    for p, t in zip(preds, targets):
        ref[t, p] += 1
    assert torch.equal(cm, ref) and cm.sum() == 6
