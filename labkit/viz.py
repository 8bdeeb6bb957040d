"""Pictures for the notebooks: triplet grids, feature maps and the embedding, PCA of embeddings,
confusion matrices, a test digit's nearest neighbours.

Digits are coloured with matplotlib's ``tab10`` (ten distinct colours); the seed's Cityscapes colours
stay available as ``palette="cityscapes"`` (in them 0 and 3, 2 and 5 are hard to tell apart)."""
import matplotlib.pyplot as plt
import numpy as np
import torch


def cityscapes_colormap():
    """The seed's colours for digits 0-9: the first ten Cityscapes class colours, (10, 3) uint8."""
    return np.array([
        [128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
        [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
    ], dtype=np.uint8)


def digit_colors(palette="tab10"):
    """(10, 3) RGB floats in [0, 1], one colour per digit: ``"tab10"`` or the seed's ``"cityscapes"``."""
    if palette == "cityscapes":
        return cityscapes_colormap() / 255.0
    if palette == "tab10":
        return np.array(plt.get_cmap("tab10").colors[:10])
    raise ValueError(f"unknown palette {palette!r}; choose 'tab10' or 'cityscapes'")


def plot_triplets(dataset, indices):
    """One row per anchor index: anchor, a sampled positive and negative, each titled with its class."""
    return plot_triplet_rows(dataset, [(a, dataset._sample_positive(a), dataset._sample_negative(a)) for a in indices])


def plot_triplet_rows(dataset, rows):
    """One row per (anchor, positive, negative) index triple, each image titled with its role and class."""
    fig, axes = plt.subplots(len(rows), 3, figsize=(3.6, 1.3 * len(rows)), squeeze=False)
    for row, picks in zip(axes, rows):
        for ax, index, role in zip(row, picks, ("anchor", "positive", "negative")):
            ax.imshow(dataset.images[index].cpu().numpy(), cmap="gray_r")
            ax.set_title(f"{role}: {dataset.targets[index].item()}", fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    return fig


def stage_outputs(model, image):
    """Run one (1, C, H, W) image through ``model.net`` layer by layer: [(layer name, output), ...]."""
    outputs, x = [], image.to(next(model.parameters()).device)
    with torch.inference_mode():
        for layer in model.net:
            x = layer(x)
            outputs.append((type(layer).__name__.lstrip("_"), x))
    return outputs


def plot_feature_maps(model, image, channels=6):
    """Input and the first ``channels`` maps after each block/pool, titled with the tensor shape; the
    last stage, 1×1 maps, is the embedding itself: drawn as one bar per dimension."""
    stages = [("input", image)] + stage_outputs(model, image)
    fig = plt.figure(figsize=(1.1 * channels, 1.2 * len(stages) + 0.4))
    grid = fig.add_gridspec(len(stages), channels)
    for r, (name, x) in enumerate(stages):
        maps = x[0].float().cpu()
        label = f"{name}\n{tuple(x.shape)}"
        if maps.dim() == 3 and maps.shape[1:] == (1, 1):  # the embedding: every map is one number
            ax = fig.add_subplot(grid[r, :])
            values = maps.flatten().numpy()
            ax.bar(np.arange(len(values)), values, color=np.where(values >= 0, "tab:blue", "tab:red"))
            ax.axhline(0, color="black", linewidth=0.5)
            ax.set_xlabel("embedding dimension", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
            continue
        for c in range(channels):
            ax = fig.add_subplot(grid[r, c])
            ax.set_xticks([]), ax.set_yticks([])
            if c < maps.shape[0] and maps.dim() == 3:
                ax.imshow(maps[c].numpy(), cmap="viridis")
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig


def pca(features, q=2):
    """Project (N, D) features on their first ``q`` principal components, (N, q), the widest first."""
    x = features.float().cpu()
    # points = the centred x projected on its q directions of largest variance (torch.pca_lowrank
    # with center=False on the centred data, or torch.linalg.svd)
    # BEGIN SOLUTION
    centred = x - x.mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(centred, q=q, center=False)
    points = centred @ v[:, :q]  # (N, q)
    # END SOLUTION
    return points


def pca_2d(features):
    """The first two principal components of (N, D) features, (N, 2): the pictures of Task 4."""
    return pca(features, 2)


def plot_pca_panels(panels, targets, unseen_class=None, palette="tab10", highlight=None, components=(1, 2)):
    """Side-by-side scatter plots; ``panels`` is [(title, (N, 2) points, marks_unseen), ...].

    Points are coloured by digit; one legend serves all panels. In panels whose ``marks_unseen`` is
    true, ``unseen_class`` is drawn with black-edged crosses: the model never saw that digit.
    ``highlight``: digits to show in colour, the others in light grey. ``components`` name the axes
    (the points' two columns are principal components number ``components``, counted from 1).
    """
    colors = digit_colors(palette)
    targets = torch.as_tensor(targets).cpu().numpy()
    shown = set(range(10) if highlight is None else highlight)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), squeeze=False)
    handles = {}
    for ax, (title, points, marks_unseen) in zip(axes[0], panels):
        points = torch.as_tensor(points).cpu().numpy()
        for digit in range(10):
            sel = targets == digit
            unseen = marks_unseen and digit == unseen_class
            on = digit in shown
            h = ax.scatter(points[sel, 0], points[sel, 1], s=40 if unseen else 6,
                           color=colors[digit] if on else (0.85, 0.85, 0.85), marker="X" if unseen else "o",
                           edgecolors="black" if unseen and on else "none", linewidths=0.4,
                           zorder=(3 if unseen else 2) if on else 1)
            key = f"{digit} (unseen)" if unseen else str(digit)
            if on and key not in handles:
                handles[key] = h
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"PC{components[0]}"), ax.set_ylabel(f"PC{components[1]}")
        ax.set_xticks([]), ax.set_yticks([])
    labels = sorted(handles, key=lambda k: (int(k[0]), k))
    fig.legend([handles[k] for k in labels], labels, title="digit", loc="lower center", ncol=min(len(labels), 11),
               fontsize=8, markerscale=1.5, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def plot_confusions(matrices, labels=range(10)):
    """Confusion matrices side by side; ``matrices`` is [(title, (K, K) counts: true rows, predicted columns)]."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.3 * len(matrices), 4.2), squeeze=False)
    for ax, (title, cm) in zip(axes[0], matrices):
        cm = torch.as_tensor(cm).cpu().numpy()
        ax.imshow(cm, cmap="Blues")
        for (i, j), n in np.ndenumerate(cm):
            if n:
                ax.text(j, i, str(n), ha="center", va="center", fontsize=6,
                        color="white" if n > cm.max() / 2 else "black")
        ticks = list(labels)
        ax.set_xticks(range(len(ticks)), ticks), ax.set_yticks(range(len(ticks)), ticks)
        ax.set_xlabel("predicted digit"), ax.set_ylabel("true digit")
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_neighbours(view, train_images, test_images):
    """One test digit (a ``labkit.explore.neighbour_view``): its nearest training images per space,
    titled with their class and distance, and its distance to every class mean as bars."""
    spaces = view["neighbours"]
    k = max(len(n["indices"]) for n in spaces.values())
    fig = plt.figure(figsize=(1.2 * (k + 1) + 3.2, 1.5 * len(spaces) + 0.3))
    grid = fig.add_gridspec(len(spaces), k + 3)
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(test_images[view["index"]].cpu().numpy(), cmap="gray_r"), ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(f"test #{view['index']}\ntrue {view['target']}, predicted {view['prediction']}", fontsize=8,
                 color="black" if view["target"] == view["prediction"] else "tab:red")
    for r, (space, n) in enumerate(spaces.items()):
        for c, (i, d, y) in enumerate(zip(n["indices"], n["distances"], n["targets"])):
            ax = fig.add_subplot(grid[r, c + 1])
            ax.imshow(train_images[i].cpu().numpy(), cmap="gray_r"), ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{y}  d={d:.2f}", fontsize=7, color="black" if y == view["target"] else "tab:red")
            if c == 0:
                ax.set_ylabel(space, fontsize=8)
    ax = fig.add_subplot(grid[:, k + 1:])
    dist = view["mean_distances"]
    ax.barh(range(len(dist)), dist, color=["tab:green" if c == view["prediction"] else "tab:gray"
                                           for c in range(len(dist))])
    ax.set_yticks(range(len(dist))), ax.invert_yaxis()
    ax.set_xlabel("distance to class mean", fontsize=8), ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def separation(points, targets):
    """How well classes separate in a projection: between-class over within-class variance (Fisher ratio)."""
    x = torch.as_tensor(points).float().cpu()
    y = torch.as_tensor(targets).cpu()
    overall = x.mean(0)
    between = within = 0.0
    for c in y.unique():
        xc = x[y == c]
        between += len(xc) * (xc.mean(0) - overall).pow(2).sum().item()
        within += (xc - xc.mean(0)).pow(2).sum().item()
    return between / within


def plot_bars(series, labels, xlabel="", ylabel="", title=""):
    """Grouped bars: ``series`` is {name: values}, one value per entry of ``labels``."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.28 * len(labels) * len(series) + 1.5), 2.8))
    width = 0.8 / len(series)
    for s, (name, values) in enumerate(series.items()):
        values = torch.as_tensor(values).float().cpu().numpy()
        ax.bar(np.arange(len(labels)) + (s - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xticks(range(len(labels)), [str(label) for label in labels], fontsize=7 if len(labels) > 12 else 9)
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel), ax.set_title(title, fontsize=10)
    if len(series) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig
