"""The figures: what they contain (axes, legends, bars, colours), drawn headless."""
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb

from labkit.explore import neighbour_view
from labkit.model import SimpleMetricEmbedding
from labkit.viz import digit_colors, plot_confusions, plot_feature_maps, plot_neighbours, plot_pca_panels
from tests.helpers import tiny_dataset

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_every_digit_gets_its_own_colour():
    for palette in ("tab10", "cityscapes"):
        colors = digit_colors(palette)
        assert colors.shape == (10, 3) and len({tuple(c) for c in colors.round(3)}) == 10
    assert np.allclose(digit_colors()[0], to_rgb("tab:blue"))
    with pytest.raises(ValueError, match="unknown palette 'jet'; choose"):
        digit_colors("jet")


def test_pca_panels_share_one_legend_and_label_their_axes():
    g = torch.Generator().manual_seed(0)
    targets = torch.arange(10).repeat(3)
    panels = [(f"panel {i}", torch.randn(30, 2, generator=g), i == 2) for i in range(3)]
    fig = plot_pca_panels(panels, targets, unseen_class=0)
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["0", "0 (unseen)"] + [str(d) for d in range(1, 10)]
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes] == [("PC1", "PC2")] * 3
    fig = plot_pca_panels(panels, targets, highlight=[3, 5], components=(2, 4))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["3", "5"]
    assert fig.axes[0].get_xlabel() == "PC2" and fig.axes[0].get_ylabel() == "PC4"


def test_the_embedding_is_drawn_as_bars_not_as_1x1_maps():
    model = SimpleMetricEmbedding(1, 32).eval()
    fig = plot_feature_maps(model, tiny_dataset("test").images[:1].unsqueeze(1))
    bars = [ax for ax in fig.axes if ax.patches]
    assert len(bars) == 1 and len(bars[0].patches) == 32
    heights = np.array([p.get_height() for p in bars[0].patches])
    assert np.allclose(heights, model.get_features(tiny_dataset("test").images[:1].unsqueeze(1))[0].detach().numpy(),
                       atol=1e-5)
    assert len([ax for ax in fig.axes if ax.images]) == 1 + 5 * 6  # the input, six maps of five stages


def test_confusion_matrices_show_every_nonzero_count():
    cm = torch.zeros(10, 10, dtype=torch.long)
    cm[0, 6], cm[0, 0], cm[3, 3] = 7, 40, 50
    fig = plot_confusions([("3b", cm), ("3e", cm.T)])
    assert len(fig.axes) == 2 and fig.axes[0].get_xlabel() == "predicted digit"
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["40", "50", "7"]


def test_neighbour_figure():
    train, test = tiny_dataset("traineval"), tiny_dataset("test", seed=1)
    x, q = train.images.flatten(1), test.images.flatten(1)
    reps = torch.nn.functional.normalize(torch.stack([x[train.targets == c].mean(0) for c in range(10)]), dim=1)
    view = neighbour_view(0, {"pixels": (x, q, True)}, train.targets, test.targets, reps, k=4)
    fig = plot_neighbours(view, train.images, test.images)
    assert len([ax for ax in fig.axes if ax.images]) == 1 + 4
    assert len([ax for ax in fig.axes if ax.patches][0].patches) == 10


def test_grouped_bars():
    from labkit.viz import plot_bars

    fig = plot_bars({"a": [1, 2, 3], "b": [0.5, -1, 0]}, ["x", "y", "z"], "digit", "share")
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == [1, 2, 3, 0.5, -1, 0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
