import pytest
import torch
import torch.nn.functional as F

from labkit.classify import class_means
from labkit.explore import misclassified, nearest, neighbour_view, principal_components, sample_triplets
from tests.helpers import tiny_dataset


@pytest.mark.parametrize("removed", [None, 4])
def test_sampled_triplets_follow_task1_and_remove_class(removed):
    ds = tiny_dataset(remove_class=removed)
    state = torch.get_rng_state()
    t = sample_triplets(ds, 200, seed=1)
    assert torch.equal(state, torch.get_rng_state())
    assert t.shape == (200, 3) and torch.equal(t, sample_triplets(ds, 200, seed=1))
    a, p, n = (ds.targets[t[:, i]] for i in range(3))
    assert (a == p).all() and (t[:, 0] != t[:, 1]).all() and (a != n).all()
    if removed is not None:
        assert not (a == removed).any() and not (n == removed).any()


def test_nearest_matches_a_brute_force_loop():
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(30, 4, generator=g), torch.randn(3, 4, generator=g)
    d, i = nearest(bank, queries, k=4)
    for q in range(3):
        ref = sorted(range(30), key=lambda j: (bank[j] - queries[q]).norm().item())[:4]
        assert i[q].tolist() == ref
        assert torch.allclose(d[q], torch.stack([(bank[j] - queries[q]).norm() for j in ref]), atol=1e-5)


def test_neighbour_view_of_a_test_image():
    g = torch.Generator().manual_seed(0)
    train_y = torch.arange(3).repeat_interleave(5)  # 15 training points, classes 0..2
    centres = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    train_x = centres[train_y] * 3 + 0.1 * torch.randn(15, 3, generator=g)
    test_x, test_y = torch.tensor([[0.1, 2.0, 0.0], [2.0, 0.0, 0.1]]), torch.tensor([1, 2])
    pixels = (train_x * 100, test_x * 100, False)
    view = neighbour_view(0, {"embedding": (train_x, test_x, True), "pixels": pixels}, train_y, test_y,
                          class_means(train_x, train_y, 3), k=3)
    assert view["target"] == 1 and view["prediction"] == 1
    assert view["neighbours"]["embedding"]["targets"] == [1, 1, 1]
    d = view["neighbours"]["embedding"]["distances"]
    assert d == sorted(d) and max(d) <= 2  # unit vectors
    assert max(view["neighbours"]["pixels"]["distances"]) > 2  # raw pixels are not scaled
    expected = (F.normalize(test_x[:1], dim=1) - class_means(train_x, train_y, 3)).norm(dim=1)
    assert torch.allclose(torch.tensor(view["mean_distances"]), expected, atol=1e-5)
    assert neighbour_view(1, {"embedding": (train_x, test_x, True)}, train_y, test_y,
                          class_means(train_x, train_y, 3), k=3)["prediction"] == 0  # a misclassified one


def test_misclassified_and_principal_components():
    assert misclassified(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 0, 3, 0])) == [1, 3]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g) * torch.tensor([5.0, 3, 2, 1, 0.5, 0.1])
    torch.manual_seed(0)  # pca_lowrank is randomised: with 3 of 6 directions its variances are close, not exact
    z = principal_components(x, q=3)
    assert z.shape == (200, 3)
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=1e-4)
    var = z.var(0)
    assert var[0] > var[1] > var[2]
    ref = torch.linalg.eigvalsh(torch.cov(x.T)).flip(0)[:3]  # an independent route to the variances
    assert torch.allclose(var, ref, rtol=1e-3)


def test_negative_shares_are_uniform_over_the_remaining_classes():
    from labkit.explore import negative_shares

    ds = tiny_dataset(per_class=(20,) * 10, remove_class=0)
    shares = negative_shares(ds, draws=9000)
    assert shares[0] == 0 and abs(shares.sum() - 1) < 1e-6
    assert (shares[1:] - 1 / 9).abs().max() < 0.02  # binomial sd about 0.003
