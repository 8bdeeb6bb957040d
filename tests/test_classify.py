import math

import torch

from labkit.classify import accuracy, class_means, knn, nearest_mean, per_class_accuracy


def test_nearest_mean_normalises_each_query_alone():
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queries = torch.tensor([[10.0, 1.0], [0.1, 0.2]])  # very different lengths
    assert nearest_mean(means, queries).tolist() == [0, 1]
    assert nearest_mean(means, queries[1:]).tolist() == [1]


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
