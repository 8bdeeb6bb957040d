"""Pictures for the notebooks: triplet grids, feature maps block by block, PCA of embeddings."""
import matplotlib.pyplot as plt
import numpy as np
import torch


def cityscapes_colormap():
    """The seed's colours for digits 0-9: the first ten Cityscapes class colours, (10, 3) uint8."""
    return np.array([
        [128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
        [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
    ], dtype=np.uint8)


def plot_triplets(dataset, indices):
    """One row per anchor index: anchor, a sampled positive and negative, each titled with its class."""
    fig, axes = plt.subplots(len(indices), 3, figsize=(3.6, 1.3 * len(indices)), squeeze=False)
    for row, anchor in zip(axes, indices):
        picks = (anchor, dataset._sample_positive(anchor), dataset._sample_negative(anchor))
        for ax, index, role in zip(row, picks, ("anchor", "positive", "negative")):
            ax.imshow(dataset.images[index], cmap="gray_r")
            ax.set_title(f"{role}: {dataset.targets[index].item()}", fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    return fig


def stage_outputs(model, image):
    """Run one (1, C, H, W) image through ``model.net`` layer by layer: [(layer name, output), ...]."""
    outputs, x = [], image
    with torch.inference_mode():
        for layer in model.net:
            x = layer(x)
            outputs.append((type(layer).__name__.lstrip("_"), x))
    return outputs


def plot_feature_maps(model, image, channels=6):
    """Input and the first ``channels`` maps after each block/pool, titled with the tensor shape."""
    stages = [("input", image)] + stage_outputs(model, image)
    fig, axes = plt.subplots(len(stages), channels, figsize=(1.1 * channels, 1.2 * len(stages)), squeeze=False)
    for row, (name, x) in zip(axes, stages):
        maps = x[0].float().cpu()
        for c, ax in enumerate(row):
            ax.set_xticks([]), ax.set_yticks([])
            if c < maps.shape[0] and maps.dim() == 3:
                ax.imshow(maps[c], cmap="viridis")
            else:
                ax.axis("off")
        row[0].set_ylabel(f"{name}\n{tuple(x.shape)}", fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig


def pca_2d(features):
    """Project (N, D) features on their first two principal components, (N, 2), the first the widest."""
    x = features.float().cpu()
    # points = the centred x projected on its two directions of largest variance (torch.pca_lowrank
    # with center=False on the centred data, or torch.linalg.svd)
    # BEGIN SOLUTION
    centred = x - x.mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(centred, q=2, center=False)
    points = centred @ v[:, :2]  # (N, 2)
    # END SOLUTION
    return points


def plot_pca_panels(panels, targets, unseen_class=None):
    """Side-by-side scatter plots; ``panels`` is [(title, (N, 2) points, marks_unseen), ...].

    Points are coloured by digit with the Cityscapes colours. In panels whose ``marks_unseen`` is
    true, ``unseen_class`` is drawn with black-edged crosses: the model never saw that digit.
    """
    colors = cityscapes_colormap() / 255.0
    targets = torch.as_tensor(targets).cpu().numpy()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, (title, points, marks_unseen) in zip(axes[0], panels):
        points = torch.as_tensor(points).cpu().numpy()
        for digit in range(10):
            sel = targets == digit
            unseen = marks_unseen and digit == unseen_class
            ax.scatter(points[sel, 0], points[sel, 1], s=40 if unseen else 6, color=colors[digit],
                       marker="X" if unseen else "o", edgecolors="black" if unseen else "none",
                       linewidths=0.4, label=f"{digit} (unseen)" if unseen else str(digit),
                       zorder=3 if unseen else 2)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
    axes[0][-1].legend(title="digit", loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=1.5)
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
