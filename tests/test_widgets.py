"""The explorers built headless: widgets exist, react to their controls, draw with the student's code."""
import ipywidgets as widgets
import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch

from labkit.classify import class_means
from labkit.widgets import neighbour_explorer, pca_explorer, triplet_explorer
from tests.helpers import tiny_dataset

matplotlib.use("Agg")


def controls(box):
    """Every widget in ``box``, depth first."""
    found = [box]
    for child in getattr(box, "children", ()):
        found += controls(child)
    return found


def first(box, kind):
    return next(w for w in controls(box) if isinstance(w, kind))


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_triplet_explorer_builds_datasets_with_the_chosen_remove_class(monkeypatch):
    ds = tiny_dataset()
    drawn = []
    monkeypatch.setattr("labkit.widgets.plot_triplet_rows", lambda d, rows: drawn.append((d, rows)))
    box = triplet_explorer(ds, rows=4)
    first(box, widgets.Dropdown).value = 3
    first(box, widgets.Button).click()
    assert [d.remove_class for d, _ in drawn] == [None, 3, 3]
    for d, rows in drawn[1:]:
        classes = d.targets[torch.tensor(rows)]
        assert not (classes[:, [0, 2]] == 3).any() and (classes[:, 0] == classes[:, 1]).all()
    assert drawn[1][1] != drawn[2][1]  # resampled


def test_neighbour_explorer_steps_through_the_misclassified(monkeypatch):
    g = torch.Generator().manual_seed(0)
    train = tiny_dataset("traineval")
    test = tiny_dataset("test", seed=1)
    train_x, test_x = torch.randn(len(train), 8, generator=g), torch.randn(len(test), 8, generator=g)
    preds = test.targets.clone()
    preds[[2, 5]] = (preds[[2, 5]] + 1) % 10
    shown = []
    monkeypatch.setattr("labkit.widgets.plot_neighbours", lambda view, *_: shown.append(view["index"]))
    spaces = {"embedding": (train_x, test_x, True), "pixels": (train.images.flatten(1), test.images.flatten(1), False)}
    box = neighbour_explorer(spaces, train.targets, test.targets, class_means(train_x, train.targets), train.images,
                             test.images, preds, k=3)
    slider = first(box, widgets.IntSlider)
    assert slider.max == 1 and shown[-1] == 2  # starts on the misclassified ones
    slider.value = 1
    assert shown[-1] == 5
    first(box, widgets.Checkbox).value = False
    assert slider.max == len(test) - 1
    slider.value = 7
    assert shown[-1] == 7


def test_pca_explorer_highlights_digits_and_switches_components(monkeypatch):
    g = torch.Generator().manual_seed(0)
    feats, targets = torch.randn(50, 6, generator=g), torch.arange(10).repeat(5)
    calls = []
    monkeypatch.setattr("labkit.widgets.plot_pca_panels",
                        lambda panels, t, unseen, highlight, components: calls.append((panels, highlight, components)))
    box = pca_explorer([("a", feats, False), ("b", feats * 2, True)], targets, unseen_class=0, q=4)
    first(box, widgets.SelectMultiple).value = (0, 3)
    x_axis = first(box, widgets.Dropdown)
    x_axis.value = 2
    panels, highlight, components = calls[-1]
    assert highlight == [0, 3] and components == (3, 2)
    assert panels[0][1].shape == (50, 2) and len(panels) == 2


def test_the_real_figures_draw():
    ds = tiny_dataset()
    triplet_explorer(ds, rows=2)
    assert plt.get_fignums()  # drawn with the real plotting function
