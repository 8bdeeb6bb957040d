"""Task 2: the embedding network, its triplet loss, and the pixel-space baseline."""
import torch
from torch import nn


def _num_groups(num_channels, max_groups=8):
    """The largest group count <= max_groups that divides num_channels (1 for a single channel)."""
    return max(g for g in range(1, max_groups + 1) if num_channels % g == 0)


class _BNReluConv(nn.Sequential):
    """GroupNorm -> ReLU -> Conv2d ('same' padding), the pre-activation block of the lab."""

    def __init__(self, num_maps_in, num_maps_out, k=3, bias=True):
        super().__init__()
        # Append three layers with self.append(...): nn.GroupNorm (groups: _num_groups(num_maps_in)),
        # nn.ReLU, and an nn.Conv2d of kernel k whose padding keeps the spatial size.
        # BEGIN SOLUTION
        self.append(nn.GroupNorm(_num_groups(num_maps_in), num_maps_in))
        self.append(nn.ReLU(inplace=True))
        self.append(nn.Conv2d(num_maps_in, num_maps_out, kernel_size=k, padding=k // 2, bias=bias))
        # END SOLUTION


class SimpleMetricEmbedding(nn.Module):
    """Three GroupNorm-ReLU-Conv blocks with 3/2 max-pooling between them, then global average pooling."""

    def __init__(self, input_channels, emb_size=32, margin=1.0):
        super().__init__()
        if isinstance(input_channels, bool) or not isinstance(input_channels, int) or input_channels < 1:
            raise ValueError(f"input_channels must be a positive int (1 for MNIST), got {input_channels!r}")
        if isinstance(emb_size, bool) or not isinstance(emb_size, int) or emb_size < 1:
            raise ValueError(f"emb_size must be a positive int, got {emb_size!r}")
        self.input_channels = input_channels
        self.emb_size = emb_size
        self.margin = margin
        # self.net = nn.Sequential(block, pool, block, pool, block, global average pool), in this
        # order (the notebooks walk through self.net layer by layer).
        # BEGIN SOLUTION
        self.net = nn.Sequential(
            _BNReluConv(input_channels, emb_size, k=3),  # (B, E, 28, 28)
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, E, 13, 13)
            _BNReluConv(emb_size, emb_size, k=3),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, E, 6, 6)
            _BNReluConv(emb_size, emb_size, k=3),
            nn.AdaptiveAvgPool2d(1),  # (B, E, 1, 1)
        )
        # END SOLUTION

    def get_features(self, img):
        """(B, C, H, W) images -> (B, emb_size) embeddings; uint8 images count 0..255 as 0..1."""
        img = _check_images(img, self.input_channels, next(self.parameters()).dtype)
        # x = the (B, emb_size) features of img
        # BEGIN SOLUTION
        x = self.net(img).flatten(1)  # (B, E); flatten keeps B = 1 where squeeze() would not
        # END SOLUTION
        return x

    def loss(self, anchor, positive, negative):
        """Triplet margin loss, mean over the batch: max(0, ||a - p|| - ||a - n|| + margin)."""
        for name, x in (("positive", positive), ("negative", negative)):
            if x.shape != anchor.shape:
                raise ValueError(f"{name} has shape {tuple(x.shape)}, anchor {tuple(anchor.shape)}; they must match")
        # One forward pass over all three: GroupNorm normalises each image on its own, so this is
        # the same as three passes, and faster.
        a_x, p_x, n_x = self.get_features(torch.cat([anchor, positive, negative])).chunk(3)
        # loss = the batch mean of max(0, ||a_x - p_x|| - ||a_x - n_x|| + self.margin), a scalar
        # BEGIN SOLUTION
        eps = 1e-6  # as in torch.nn.PairwiseDistance: keeps the gradient finite when a == p
        d_pos = torch.linalg.vector_norm(a_x - p_x + eps, dim=1)
        d_neg = torch.linalg.vector_norm(a_x - n_x + eps, dim=1)
        loss = torch.relu(d_pos - d_neg + self.margin).mean()
        # END SOLUTION
        return loss


class IdentityModel(nn.Module):
    """Pixel space as an 'embedding': the flattened image, (B, H * W * C)."""

    def get_features(self, img):
        img = _check_images(img, None, torch.float32)
        # feats = the images flattened to (B, C * H * W)
        # BEGIN SOLUTION
        feats = img.flatten(1)
        # END SOLUTION
        return feats


def _check_images(img, channels, dtype):
    """The images as ``dtype`` (the model's): uint8 scaled to [0, 1] as the datasets do, other floats cast."""
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"expected a tensor of images, got {type(img).__name__}")
    if img.dim() != 4 or (channels is not None and img.shape[1] != channels):
        c = "C" if channels is None else channels
        hint = " (add the channel axis with img.unsqueeze(1))" if img.dim() == 3 else ""
        raise ValueError(f"expected images of shape (B, {c}, H, W), got {tuple(img.shape)}{hint}")
    if img.dtype == torch.uint8:
        return img.to(dtype) / 255
    if not img.is_floating_point():
        raise TypeError(f"expected float images in [0, 1] (or uint8 0..255), got {img.dtype}")
    return img.to(dtype)  # no copy when it already is
