"""Interactive explorers for the notebooks (ipywidgets 7 or 8): controls around ``labkit.explore``
and ``labkit.viz``. Each function returns the widget; the notebook displays it."""
import ipywidgets as widgets
import matplotlib.pyplot as plt

from labkit.explore import misclassified, neighbour_view, principal_components, sample_triplets
from labkit.viz import plot_neighbours, plot_pca_panels, plot_triplet_rows


def _redraw(out, draw):
    """Run ``draw()`` (which makes a figure) inside the output area, replacing what was there."""
    with out:
        out.clear_output(wait=True)
        draw()
        plt.show()


def triplet_explorer(dataset, rows=5):
    """Notebook 01: resample triplets, choose ``remove_class`` (None or a digit) and watch it vanish
    from anchors and negatives. ``dataset`` is a split='train' dataset; its class builds the others."""
    remove = widgets.Dropdown(options=[("none", None)] + [(str(c), c) for c in range(10)], description="remove_class")
    again = widgets.Button(description="resample")
    out, state = widgets.Output(), {"seed": 0}
    cache = {}

    def draw():
        rc = remove.value
        if rc not in cache:  # the student's remove_class code builds it
            cache[rc] = type(dataset).from_tensors(dataset.images, dataset.targets, split="train", remove_class=rc)
        ds = cache[rc]
        triplets = sample_triplets(ds, rows, seed=state["seed"])
        plot_triplet_rows(ds, triplets.tolist())

    def resample(_):
        state["seed"] += 1
        _redraw(out, draw)

    remove.observe(lambda change: _redraw(out, draw), names="value")
    again.on_click(resample)
    _redraw(out, draw)
    return widgets.VBox([widgets.HBox([remove, again]), out])


def neighbour_explorer(spaces, train_targets, test_targets, representations, train_images, test_images, preds, k=5):
    """Notebook 03: pick a test image (or step through the misclassified ones); its k nearest training
    images in each space of ``spaces`` and its distance to every class mean (see ``neighbour_view``)."""
    wrong = misclassified(preds, test_targets)
    only_wrong = widgets.Checkbox(value=bool(wrong), description=f"misclassified only ({len(wrong)})")
    pick = widgets.IntSlider(min=0, description="test image")
    out = widgets.Output()

    def index():
        return wrong[pick.value] if only_wrong.value and wrong else pick.value

    def limits(_=None):
        pick.max = (len(wrong) if only_wrong.value and wrong else len(test_targets)) - 1
        pick.value = min(pick.value, pick.max)
        show()

    def show(_=None):
        view = neighbour_view(index(), spaces, train_targets, test_targets, representations, k)
        _redraw(out, lambda: plot_neighbours(view, train_images, test_images))

    only_wrong.observe(limits, names="value")
    pick.observe(show, names="value")
    limits()
    return widgets.VBox([widgets.HBox([only_wrong, pick]), out])


def pca_explorer(panels, targets, unseen_class=None, q=5):
    """Notebook 04: highlight chosen digits and choose which principal components to show.
    ``panels``: [(title, features (N, D), marks_unseen)]."""
    comps = [(title, principal_components(x, q), marks) for title, x, marks in panels]
    digits = widgets.SelectMultiple(options=list(range(10)), value=tuple(range(10)), rows=10, description="digits")
    axes = [widgets.Dropdown(options=[(f"PC{i + 1}", i) for i in range(q)], value=v, description=d)
            for v, d in ((0, "x"), (1, "y"))]
    out = widgets.Output()

    def show(_=None):
        i, j = axes[0].value, axes[1].value
        shown = [(title, p[:, [i, j]], marks) for title, p, marks in comps]
        _redraw(out, lambda: plot_pca_panels(shown, targets, unseen_class, highlight=list(digits.value),
                                             components=(i + 1, j + 1)))

    for w in (digits, *axes):
        w.observe(show, names="value")
    show()
    return widgets.VBox([widgets.HBox([digits, widgets.VBox(axes)]), out])
