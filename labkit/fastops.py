"""Faster CPU kernels for the lab's layers in training: the same modules, weights and gradients.

``fast_layers(model)`` is a context manager: inside it, the layers it has a faster way to run on a
CPU run that way (the module's ``forward`` is replaced on the instance and restored on exit; the
parameters, ``state_dict`` and class of every module stay untouched). Everything it does not
handle (other layer types or settings, CUDA, other dtypes, hooks a user added) runs the plain module.

* **The image's block**, GroupNorm(1 channel) -> ReLU -> Conv2d(1 -> C), in float32 training: oneDNN
  computes the 1-input-channel convolution's gradients slowly. Here the normalised image is
  unfolded once into its 3x3 patches, the convolution is one matrix product over them, and its
  backward pass is one more product that yields the weight gradient and, by the same sums, the
  GroupNorm's two parameter gradients (``_FirstBlock`` shows how); the image needs no gradient.
* **The image's block followed by a max-pool** (``net[0]``, ``net[1]`` of the lab's network) in
  float32 training: the same products, taken a few images at a time, each chunk's full-size
  convolution output pooled at once while it is still in the cache; in the backward pass the
  pool's gradient and the weight gradients likewise per chunk (``_FirstBlockPool``). The
  (B, C, 28, 28) output and its gradient, 19 MB each for 192 images, never go to memory whole.
* Any other **1-input-channel convolution** (and the image's block under bf16 autocast): a 1x1
  convolution over the unfolded patches, whose weight gradient oneDNN computes fast.
* **GroupNorm followed by ReLU** (adjacent in an ``nn.Sequential``) on channels_last maps: the CPU's
  GroupNorm is slow in that layout; here the statistics are reductions over the contiguous pixel
  axis, normalisation and ReLU one pass, and the backward pass never writes out x - mean.

Where ``labkit.native`` has its compiled kernels (a C compiler was found; maps with a multiple of 16
channels), the image's block + max-pool and GroupNorm + ReLU run there instead, image by image while
the image is in the cache: the convolution and its pool in one loop, and in the backward pass only
the pool's maxima visited. The PyTorch code below computes the same and is what runs everywhere else.

* **3x3 convolutions from 32 to 32 channels** ('same' padding, stride 1; the lab's second and third
  blocks) in float32 on channels_last maps, outside autocast, only with the compiled kernels (built for
  8 or more floats per vector): forward pass and input gradient by Winograd's F(2x2, 3x3), 2.25x
  fewer multiply-adds than the direct convolution, float32 rounding of the same size (checked
  against float64), or on maps where it takes fewer products (13x13) by F(4x4, 3x3), 4x fewer,
  rounding about 1e-6 relative; the weight gradient by F(2x2, 3x3) (``_Conv3x3``). In inference too
  (class means, evaluation): each 2x2 block of outputs depends on its own patch only, so the
  features do not depend on the batch.
* **A max-pool alone** (the lab's second) on channels_last float32 maps, only with the compiled
  kernels: the same maxima as ATen, and a backward pass that zeroes and fills the input's gradient
  image by image instead of zero-filling all of it first (``_MaxPool``).
"""
import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import nn

from labkit import native


@contextlib.contextmanager
def fast_layers(model, enabled=True):
    """Run the layers of ``model`` this module has a faster CPU path for through it, inside the block."""
    patched = []
    if enabled:
        for module in model.modules():
            fast = _fast_forward(module)
            if fast is not None and "forward" not in vars(module):
                module.forward = fast
                patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def _fast_forward(module):
    """The faster forward for this module, or None where there is none."""
    if type(module) is nn.Conv2d and _single_channel_conv_applies(module):
        return lambda x: _single_channel_conv(module, x)
    if type(module) is nn.Conv2d and _conv3x3_applies(module):
        return lambda x: _conv3x3(module, x)
    if type(module) is nn.MaxPool2d and not module.return_indices:
        return lambda x: _max_pool(module, x)
    if (isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward
            and any(_is_norm_relu(a, b) or _is_block_pool(a, b) for a, b in zip(list(module), list(module)[1:]))):
        return lambda x: _sequential_fused(module, x)
    return None


# ---------------------------------------------------------------- GroupNorm + ReLU
def _is_norm_relu(norm, relu):
    """GroupNorm then ReLU, with no hooks but mixed_precision's float32 cast (which the fused path does)."""
    from labkit.device import _inputs_to_float32

    return (type(norm) is nn.GroupNorm and type(relu) is nn.ReLU and norm.affine and norm.weight.dtype == torch.float32
            and all(h is _inputs_to_float32 for h in norm._forward_pre_hooks.values())
            and not (norm._forward_hooks or relu._forward_hooks or relu._forward_pre_hooks))


def _sequential_fused(seq, x):
    """``nn.Sequential.forward``, with the image's block (+ its max-pool) and each GroupNorm + ReLU pair
    run as one fused step where they apply."""
    modules, i = list(seq), 0
    while i < len(modules):
        if (i + 1 < len(modules) and _is_block_pool(modules[i], modules[i + 1])
                and _first_block_applies(modules[i], x, modules[i + 1])):
            (norm, _, conv), pool = modules[i], modules[i + 1]
            x = _FirstBlockPool.apply(x, norm.weight, norm.bias, conv.weight, conv.bias, norm.eps, conv.padding,
                                      _pool_geometry(pool))
            i += 2
        elif i + 2 < len(modules) and _first_block_applies(modules[i:i + 3], x):
            norm, conv = modules[i], modules[i + 2]
            x = _FirstBlock.apply(x, norm.weight, norm.bias, conv.weight, conv.bias, norm.eps, conv.padding)
            i += 3
        elif i + 1 < len(modules) and _is_norm_relu(modules[i], modules[i + 1]) and _norm_relu_applies(x, modules[i]):
            norm = modules[i]
            x = _GroupNormReLU.apply(x.float(), norm.weight, norm.bias, norm.num_groups, norm.eps)
            i += 2
        else:
            x = modules[i](x)
            i += 1
    return x


def _norm_relu_applies(x, norm):
    """A channels_last float32 map on the CPU, or a bf16 one that mixed_precision casts to float32 for ``norm``."""
    from labkit.device import _inputs_to_float32

    cast = any(h is _inputs_to_float32 for h in norm._forward_pre_hooks.values())
    return (torch.is_tensor(x) and x.device.type == "cpu" and x.dim() == 4
            and (x.dtype == torch.float32 or (cast and x.is_floating_point()))
            and x.permute(0, 2, 3, 1).is_contiguous())


class _GroupNormReLU(torch.autograd.Function):
    """relu(group_norm(x)) on a channels_last (B, C, H, W) map, viewed as (B, H * W, C)."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps):
        b, c, h, w = x.shape
        flat = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        ctx.native = _native_channels(c)
        if ctx.native:  # the same, compiled: each image's statistics and output in one go, in the cache
            out = torch.empty_like(flat)
            mean, rstd = flat.new_empty(b, groups), flat.new_empty(b, groups)
            native.call("norm_relu_forward", b, h * w, c, groups, flat, weight.contiguous(), bias.contiguous(), eps,
                        out, mean, rstd)
            ctx.save_for_backward(x, out, mean, rstd, weight)
            ctx.groups = groups
            return out.reshape(b, h, w, c).permute(0, 3, 1, 2)
        n = h * w * (c // groups)
        mean = _group_sum(flat.sum(1), groups) / n  # (B, C): each channel gets its group's mean
        centred = flat - mean.unsqueeze(1)
        var = _group_sum((centred * centred).sum(1), groups) / n
        rstd = (var + eps).rsqrt()
        scale = rstd * weight  # (B, C)
        out = torch.addcmul(bias, centred, scale.unsqueeze(1)).relu_()
        ctx.save_for_backward(x, out, mean, rstd, weight)
        ctx.groups = groups
        return out.reshape(b, h, w, c).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad_out):
        x, out, mean, rstd, weight = ctx.saved_tensors
        b, c, h, w = x.shape
        groups, n = ctx.groups, h * w * (c // ctx.groups)
        grad_out = grad_out.permute(0, 2, 3, 1)
        if not grad_out.is_contiguous():
            grad_out = grad_out.contiguous()
        if ctx.native:
            flat = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
            grad_x, sum_g, sum_gc = torch.empty_like(flat), flat.new_empty(b, c), flat.new_empty(b, c)
            native.call("norm_relu_backward", b, h * w, c, groups, grad_out.reshape(b, h * w, c), out, flat, mean,
                        rstd, weight.contiguous(), grad_x, sum_g, sum_gc)
            rstd_c = rstd.repeat_interleave(c // groups, dim=1)  # (B, C): each channel its group's
            return (grad_x.reshape(b, h, w, c).permute(0, 3, 1, 2), (sum_gc * rstd_c).sum(0), sum_g.sum(0),
                    None, None)
        g = torch.ops.aten.threshold_backward(grad_out.reshape(b, h * w, c), out, 0)
        flat = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        # Sums over (x - mean) from sums over x, so x - mean is never written out: one pass fewer
        # (float64 agrees to ~1e-6 even where the mean is 30 standard deviations from zero).
        sum_g = g.sum(1)  # (B, C)
        sum_gc = (g * flat).sum(1) - mean * sum_g  # (B, C): sum of g * (x - mean)
        grad_weight = (sum_gc * rstd).sum(0)
        grad_bias = sum_g.sum(0)
        # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) per group, dxhat = g * weight,
        # i.e. g * a + x * k + const per (image, channel)
        m1 = _group_sum(sum_g * weight, groups) / n
        m2 = _group_sum(sum_gc * weight, groups) * rstd / n
        k = -rstd * rstd * m2
        grad_x = torch.addcmul((-rstd * m1 - k * mean).unsqueeze(1), g, (rstd * weight).unsqueeze(1))
        grad_x.addcmul_(flat, k.unsqueeze(1))
        return grad_x.reshape(b, h, w, c).permute(0, 3, 1, 2), grad_weight, grad_bias, None, None


# ---------------------------------------------------------------- the image's block: GroupNorm(1) + ReLU + Conv
def _first_block_applies(modules, x, pool=None):
    """The image's block on a float32 image: in float32 training; with its ``pool`` (an nn.MaxPool2d) and
    the compiled kernels also in inference and under bf16 autocast (that path is float32 throughout)."""
    norm, relu, conv = modules
    if not (_is_norm_relu(norm, relu) and norm.num_channels == 1 and type(conv) is nn.Conv2d
            and _single_channel_conv_applies(conv) and not conv._forward_hooks
            and not conv._forward_pre_hooks and _norm_relu_applies(x, norm) and not x.requires_grad
            and x.dtype == conv.weight.dtype == torch.float32 and x.shape[1] == 1):
        return False
    if torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"):
        return True
    return pool is not None and _native_block_pool(conv.out_channels, _pool_geometry(pool))


def _native_block_pool(channels, pool):
    """Whether the compiled kernels run the image's block + this pool: whole vectors of channels, and a
    window of at most 256 elements (each maximum's place in it is kept in one byte)."""
    (pkh, pkw), *_ = pool
    return _native_channels(channels) and pkh * pkw <= 256


class _FirstBlock(torch.autograd.Function):
    """conv(relu(group_norm(x))) for a 1-channel image x that needs no gradient.

    The GroupNorm's two parameters get their gradients without the convolution's input gradient:
    with z = relu(u), u = gamma * xhat + beta, dL/dgamma = sum over pixels of dL/dz * [u > 0] * xhat,
    and dL/dz is the transposed convolution of the output gradient g, so
    dL/dgamma = sum_{c,k} W[c, k] * (g^T unfold([u > 0] * xhat))[c, k], likewise dL/dbeta with
    unfold([u > 0]). Both come out of the same product as the weight gradient, g^T unfold(z):
    one 1x1-convolution weight gradient over 27 unfolded channels instead of a 32 -> 1 convolution.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, weight, bias, eps, padding):
        b = x.shape[0]
        maps = _first_block_maps(x, gamma, beta, eps)
        cols = planar_patches(maps, tuple(weight.shape[2:]), padding)  # (3, K, B, Ho, Wo)
        _, k, _, ho, wo = cols.shape
        flat_w = weight.reshape(-1, k).t()
        cols_z = cols[0].reshape(k, -1).t()
        out = torch.addmm(bias, cols_z, flat_w) if bias is not None else torch.mm(cols_z, flat_w)  # (B*Ho*Wo, O)
        ctx.save_for_backward(cols, weight)
        ctx.has_bias = bias is not None
        return out.reshape(b, ho, wo, -1).permute(0, 3, 1, 2)  # (B, O, Ho, Wo), channels_last

    @staticmethod
    def backward(ctx, grad_out):
        cols, weight = ctx.saved_tensors
        o, k = weight.shape[0], cols.shape[1]
        grad_flat = grad_out.permute(0, 2, 3, 1).reshape(-1, o)  # (B*Ho*Wo, O)
        grad_gamma, grad_beta, grad_w = _first_block_grads(torch.mm(cols.reshape(3 * k, -1), grad_flat), weight)
        grad_b = grad_flat.sum(0) if ctx.has_bias else None
        return None, grad_gamma, grad_beta, grad_w, grad_b, None, None


# ---------------------------------------------------------------- the image's block + max-pool, chunk by chunk
CHUNK = 24  # images per chunk: a (24, 32, 28, 28) float32 map is 2.4 MB, within a slice of the L3 (16-48 measured alike)


def _is_block_pool(block, pool):
    """An un-hooked GroupNorm -> ReLU -> Conv2d ``nn.Sequential`` followed by a plain MaxPool2d with no hooks
    but mixed_precision's float32 cast of its output (the fused pair's output is float32)."""
    from labkit.device import _output_to_float32

    return (isinstance(block, nn.Sequential) and type(block).forward is nn.Sequential.forward and len(block) == 3
            and not (block._forward_hooks or block._forward_pre_hooks)
            and type(pool) is nn.MaxPool2d and not pool.return_indices
            and all(h is _output_to_float32 for h in pool._forward_hooks.values()) and not pool._forward_pre_hooks)


def _pool_geometry(pool):
    def pair(v):
        return list(v) if isinstance(v, (tuple, list)) else [v, v]

    stride = pool.stride if pool.stride is not None and pool.stride != [] else pool.kernel_size
    return pair(pool.kernel_size), pair(stride), pair(pool.padding), pair(pool.dilation), bool(pool.ceil_mode)


def _first_block_maps(x, gamma, beta, eps):
    """(3, B, H, W): relu(u), [u > 0] * xhat and [u > 0] for u = gamma * xhat + beta, xhat the image normalised."""
    b, _, h, w = x.shape
    flat = x.reshape(b, h * w)
    centred = flat - flat.mean(1, keepdim=True)
    rstd = (centred.square().mean(1, keepdim=True) + eps).rsqrt()
    xhat = centred * rstd
    u = torch.addcmul(beta, xhat, gamma)
    active = (u > 0).to(x.dtype)
    return torch.stack([u.relu_(), active.mul(xhat), active]).reshape(3, b, h, w)


def _first_block_grads(products, weight):
    """GroupNorm gamma, beta and convolution weight gradients from the (3K, O) products of the three
    maps' patches with the output gradient (see ``_FirstBlock``)."""
    o, k = weight.shape[0], weight[0].numel()
    per_map = products.t().reshape(o, 3, k)
    w = weight.reshape(o, k)
    grad_gamma = (w * per_map[:, 1]).sum().reshape(1)
    grad_beta = (w * per_map[:, 2]).sum().reshape(1)
    return grad_gamma, grad_beta, per_map[:, 0].reshape(weight.shape)


class _FirstBlockPool(torch.autograd.Function):
    """max_pool(conv(relu(group_norm(x)))) for a 1-channel image x that needs no gradient, ``CHUNK`` images
    at a time (or image by image in ``native.c``). Gradients as in ``_FirstBlock``; the pool's maxima are
    ATen's (the compiled kernel picks the same), so ties go where autograd sends them."""

    @staticmethod
    def forward(ctx, x, gamma, beta, weight, bias, eps, padding, pool):
        # (compiled, the maps would save 0.2 ms a step but round otherwise than here; the tests' images,
        # with near-ties in the second max-pool, flip a gradient by ~1 % on 1e-6 changes, plain autograd's too)
        maps = _first_block_maps(x, gamma, beta, eps)
        kernel_size = tuple(weight.shape[2:])
        o, k = weight.shape[0], weight[0].numel()
        ctx.native = _native_block_pool(o, pool)
        if ctx.native:  # the same, compiled: convolution and pool per image, in the cache
            geometry = _native_geometry(maps, weight, padding, pool)
            out = maps.new_empty(geometry.n, geometry.hp, geometry.wp, o)
            index = torch.empty(out.shape, dtype=torch.uint8)  # the maximum's place in its window
            taps_first = weight.reshape(o, k).t().contiguous()  # (K, O)
            bias_c = bias.contiguous() if bias is not None else None
            native.call("block_pool_forward", geometry, maps[0], taps_first, bias_c, out, index)
            ctx.save_for_backward(maps, weight, index)
            ctx.geometry = (geometry, bias is not None)
            ctx.affine = (gamma.item(), beta.item())
            return out.permute(0, 3, 1, 2)  # (B, O, Hp, Wp), channels_last
        flat_w = weight.reshape(o, k).t()
        cols_z = planar_patches(maps[:1], kernel_size, padding)[0]  # (K, B, Ho, Wo): relu(u)'s patches
        ho, wo = cols_z.shape[2:]
        outs, indices = [], []
        for cols in cols_z.reshape(k, -1).split(CHUNK * ho * wo, dim=1):  # (K, n*Ho*Wo) views
            cols = cols.t()
            conv = torch.addmm(bias, cols, flat_w) if bias is not None else torch.mm(cols, flat_w)
            conv = conv.reshape(-1, ho, wo, o).permute(0, 3, 1, 2)  # (n, O, Ho, Wo), channels_last
            pooled, index = torch.ops.aten.max_pool2d_with_indices(conv, *pool)
            outs.append(pooled)
            indices.append(index)
        ctx.save_for_backward(maps, weight, *indices)
        ctx.geometry = (kernel_size, padding, pool, (ho, wo), bias is not None)
        return torch.cat(outs).contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.native:
            return _first_block_pool_native_backward(ctx, grad_out)
        maps, weight, *indices = ctx.saved_tensors
        kernel_size, padding, pool, (ho, wo), has_bias = ctx.geometry
        o, k = weight.shape[0], weight[0].numel()
        grad_w3 = grad_out.new_zeros(3 * k, o)
        grad_b = grad_out.new_zeros(o)
        shapes = {}  # the pool's backward reads only the size and layout of its input
        for chunk, index, grad in zip(maps.split(CHUNK, dim=1), indices, grad_out.split(CHUNK)):
            n = chunk.shape[1]
            if n not in shapes:
                shapes[n] = torch.empty((n, o, ho, wo), dtype=grad_out.dtype, memory_format=torch.channels_last)
            grad_conv = torch.ops.aten.max_pool2d_with_indices_backward(grad, shapes[n], *pool, index)
            grad_flat = grad_conv.permute(0, 2, 3, 1).reshape(-1, o)  # (n*Ho*Wo, O)
            cols = strided_patches(chunk, kernel_size, padding)  # (3 * K, n*Ho*Wo)
            grad_w3.addmm_(cols, grad_flat)
            if has_bias:
                grad_b += grad_flat.sum(0)
        grad_gamma, grad_beta, grad_w = _first_block_grads(grad_w3, weight)
        return None, grad_gamma, grad_beta, grad_w, grad_b if has_bias else None, None, None, None


def _native_channels(channels):
    """Whether the compiled kernels are here and take maps with this many channels (whole vectors of 16)."""
    return channels % 16 == 0 and native.kernels() is not None


@functools.lru_cache(maxsize=64)
def _pooled_size(h, w, pool):
    """The max-pool's output (height, width) for an (h, w) map, from ATen on the meta device (which also
    checks the settings), once per shape."""
    return tuple(torch.ops.aten.max_pool2d(torch.empty(1, 1, h, w, device="meta"), *pool).shape[2:])


def _native_geometry(maps, weight, padding, pool):
    """``native.Geometry`` for the (3, B, H, W) maps, the convolution and the pool (whose output shape,
    and the check of its settings, come from ATen on the meta device)."""
    _, b, h, w = maps.shape
    (kh, kw), (ph, pw) = weight.shape[2:], padding
    hc, wc = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    (pkh, pkw), (psh, psw), (pph, ppw), (pdh, pdw), ceil_mode = pool
    hp, wp = _pooled_size(hc, wc, tuple(tuple(v) if isinstance(v, list) else v for v in pool))  # hashable
    return native.Geometry(b, h, w, weight.shape[0], kh, kw, ph, pw, hc, wc,
                           pkh, pkw, psh, psw, pph, ppw, pdh, pdw, hp, wp)


def _first_block_pool_native_backward(ctx, grad_out):
    maps, weight, index = ctx.saved_tensors
    geometry, has_bias = ctx.geometry
    o, k = weight.shape[0], weight[0].numel()
    grad = grad_out.permute(0, 2, 3, 1).contiguous()  # (B, Hp, Wp, O): no copy when channels_last
    # relu(u) = gamma * ([u > 0] * xhat) + beta * [u > 0], so its products follow from the other two maps'
    products = grad.new_zeros(o, 2, k)
    grad_b = grad.new_zeros(o)
    native.call("block_pool_backward", geometry, 2, maps[1:], grad, index, products, grad_b)
    gamma, beta = ctx.affine
    products = torch.cat([gamma * products[:, :1] + beta * products[:, 1:], products], dim=1)  # (O, 3, K)
    grad_gamma, grad_beta, grad_w = _first_block_grads(products.reshape(o, 3 * k).t(), weight)
    return None, grad_gamma, grad_beta, grad_w, grad_b if has_bias else None, None, None, None


def strided_patches(maps, kernel_size, padding):
    """(M, B, H, W) -> (M * kh * kw, B * Ho * Wo): the rows of ``planar_patches``, gathered by one copy
    from a strided window view (faster than its kh * kw copies for a few images, slower for many)."""
    (kh, kw), (ph, pw) = kernel_size, padding
    windows = F.pad(maps, (pw, pw, ph, ph)).unfold(2, kh, 1).unfold(3, kw, 1)  # (M, B, Ho, Wo, kh, kw)
    return windows.permute(0, 4, 5, 1, 2, 3).reshape(maps.shape[0] * kh * kw, -1)


def planar_patches(maps, kernel_size, padding):
    """(M, B, H, W) -> (M, kh * kw, B, Ho, Wo): for each patch offset, the zero-padded maps shifted by it."""
    (kh, kw), (ph, pw) = kernel_size, padding
    m, b, h, w = maps.shape
    ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    padded = F.pad(maps, (pw, pw, ph, ph))
    cols = torch.empty(m, kh * kw, b, ho, wo, dtype=maps.dtype, device=maps.device)
    for i in range(kh):
        for j in range(kw):
            cols[:, i * kw + j].copy_(padded[:, :, i:i + ho, j:j + wo])
    return cols


def _group_sum(per_channel, groups):
    """(B, C) -> (B, C): each channel's value replaced by the sum over its group."""
    b, c = per_channel.shape
    return per_channel.reshape(b, groups, c // groups).sum(2, keepdim=True).expand(b, groups, c // groups).reshape(b, c)


# ---------------------------------------------------------------- 1-input-channel convolution
def _single_channel_conv_applies(conv):
    return (conv.in_channels == 1 and conv.groups == 1 and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def _single_channel_conv(conv, x):
    weight, bias = conv.weight, conv.bias
    if not (x.device.type == "cpu" and x.dim() == 4 and x.shape[1] == 1 and weight.device.type == "cpu"
            and torch.is_grad_enabled()):  # its gain is in the backward pass
        return conv._conv_forward(x, weight, bias)
    dtype = x.dtype
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
    if dtype not in (torch.float32, torch.bfloat16):
        return conv._conv_forward(x, weight, bias)
    with torch.autocast("cpu", enabled=False):
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
        return _PatchConv.apply(x, weight, bias, conv.padding)


def unfold_patches(x, kernel_size, padding):
    """(B, 1, H, W) -> (B, kh * kw, Ho, Wo) in channels_last: the zero-padded kh x kw patch of each
    output pixel, patch offsets as channels (the order of a flattened kernel)."""
    (kh, kw), (ph, pw) = kernel_size, padding
    b, _, h, w = x.shape
    ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    padded = F.pad(x.reshape(b, h, w), (pw, pw, ph, ph))
    cols = torch.empty(b, ho, wo, kh * kw, dtype=x.dtype, device=x.device)
    for i in range(kh):
        for j in range(kw):
            cols[..., i * kw + j].copy_(padded[:, i:i + ho, j:j + wo])
    return cols.permute(0, 3, 1, 2)


def fold_patches(cols, kernel_size, padding, size):
    """The adjoint of ``unfold_patches``: (B, kh * kw, Ho, Wo) -> (B, 1, H, W), each patch value
    added back onto the pixel it came from."""
    (kh, kw), (ph, pw), (h, w) = kernel_size, padding, size
    b, _, ho, wo = cols.shape
    out = torch.zeros(b, h + 2 * ph, w + 2 * pw, dtype=torch.float32, device=cols.device)
    for i in range(kh):
        for j in range(kw):
            out[:, i:i + ho, j:j + wo] += cols[:, i * kw + j]
    return out[:, ph:ph + h, pw:pw + w].unsqueeze(1)


class _PatchConv(torch.autograd.Function):
    """A 1-input-channel convolution as a 1x1 convolution over the unfolded patches."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        kernel_size = tuple(weight.shape[2:])
        cols = unfold_patches(x, kernel_size, padding)
        weight1 = weight.reshape(weight.shape[0], -1, 1, 1)
        ctx.save_for_backward(cols, weight1)
        ctx.geometry = (kernel_size, tuple(padding), tuple(x.shape[2:]), weight.shape, bias is not None)
        return F.conv2d(cols, weight1, bias)

    @staticmethod
    def backward(ctx, grad_out):
        cols, weight1 = ctx.saved_tensors
        kernel_size, padding, size, weight_shape, has_bias = ctx.geometry
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        grad_cols, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out, cols, weight1, [weight_shape[0]] if has_bias else None, [1, 1], [0, 0], [1, 1], False,
            [0, 0], 1, [need_x, need_w, need_b and has_bias])
        grad_x = fold_patches(grad_cols, kernel_size, padding, size).to(cols.dtype) if need_x else None
        grad_w = grad_w.reshape(weight_shape) if need_w else None
        return grad_x, grad_w, grad_b if need_b and has_bias else None, None


# ---------------------------------------------------------------- max-pool alone
def _max_pool(pool, x):
    """A max-pool on a channels_last float32 map with whole vectors of channels, compiled: ATen's pool
    there, in the backward pass, zero-fills the whole input-sized gradient before it adds to it (4 MB
    for the lab's second pool over 192 maps); the kernel does it image by image, in the cache."""
    geometry = _pool_geometry(pool)
    (pkh, pkw), *_ = geometry
    if not (torch.is_tensor(x) and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and x.permute(0, 2, 3, 1).is_contiguous() and _native_channels(x.shape[1]) and pkh * pkw <= 256):
        return nn.MaxPool2d.forward(pool, x)
    return _MaxPool.apply(x, geometry)


class _MaxPool(torch.autograd.Function):
    """max_pool2d on a channels_last (B, C, H, W) map by ``native.c``; the same maxima and places as ATen
    (the first in scan order, NaN winning), and the same gradient sums in the same order."""

    @staticmethod
    def forward(ctx, x, pool):
        b, c, h, w = x.shape
        (pkh, pkw), (psh, psw), (pph, ppw), (pdh, pdw), _ = pool
        hp, wp = _pooled_size(h, w, tuple(tuple(v) if isinstance(v, list) else v for v in pool))
        geometry = native.Geometry(b, h, w, c, 1, 1, 0, 0, h, w, pkh, pkw, psh, psw, pph, ppw, pdh, pdw, hp, wp)
        out = x.new_empty(b, hp, wp, c)
        index = torch.empty(out.shape, dtype=torch.uint8)
        native.call("max_pool_forward", geometry, x.permute(0, 2, 3, 1), out, index)
        ctx.save_for_backward(index)
        ctx.geometry = geometry
        return out.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad_out):
        (index,), geometry = ctx.saved_tensors, ctx.geometry
        grad = grad_out.permute(0, 2, 3, 1).contiguous()  # no copy when channels_last
        grad_x = grad.new_empty(geometry.n, geometry.hc, geometry.wc, geometry.c)
        native.call("max_pool_backward", geometry, grad, index, grad_x)
        return grad_x.permute(0, 3, 1, 2), None


# ---------------------------------------------------------------- 3x3 convolution, 32 -> 32 channels
def _conv3x3_applies(conv):
    return (conv.in_channels == conv.out_channels == 32 and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def _winograd_ready():
    """The compiled kernels, built for 8 or more floats per vector (with SSE's 4, oneDNN is faster)."""
    lib = native.kernels()
    return lib is not None and lib.vector_floats() >= 8


def _conv3x3(conv, x):
    weight, bias = conv.weight, conv.bias
    if not (torch.is_tensor(x) and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and x.dim() == 4 and x.shape[1] == 32 and x.permute(0, 2, 3, 1).is_contiguous()
            and not torch.is_autocast_enabled("cpu") and _winograd_ready()):
        return conv._conv_forward(x, weight, bias)
    return _Conv3x3.apply(x, weight, bias)


def winograd_tile(h, w):
    """4 (F(4x4, 3x3)) where its 36 products per 4x4 tile are fewer than F(2x2, 3x3)'s 16 per 2x2
    tile, counting the tiles that straddle the edge (13x13 maps: 576 against 784), else 2 (6x6: 144 both)."""
    return 4 if 36 * -(-h // 4) * -(-w // 4) < 16 * -(-h // 2) * -(-w // 2) else 2


def winograd_weight(weight, tile):
    """(32, 32, 3, 3) -> (E, 32 in, 32 out): each kernel g as G g G^T, the (tile + 2)^2 = E elements
    that Winograd's F(tile x tile, 3x3) multiplies with (``conv3x3_weight`` in native.c)."""
    u = weight.new_empty((tile + 2) ** 2, weight.shape[1], weight.shape[0])
    native.call("conv3x3_weight", weight.contiguous(), u, tile)
    return u


def _winograd_conv(maps, weight, bias):
    """(B, H, W, 32) contiguous -> (B, H, W, 32): the 3x3 convolution with ``weight``."""
    b, h, w, _ = maps.shape
    tile = winograd_tile(h, w)
    out = torch.empty_like(maps)
    native.call("conv3x3_forward", b, h, w, maps, winograd_weight(weight, tile), bias, out, tile)
    return out


class _Conv3x3(torch.autograd.Function):
    """A 3x3, stride 1, 'same' convolution from 32 to 32 channels on a channels_last map by Winograd's
    F(2x2, 3x3) (native.c: 16 multiply-adds per 4 output pixels and channel pair where the direct way
    takes 36) or F(4x4, 3x3) (36 per 16, ``winograd_tile``): the forward pass, the input gradient (the
    same convolution of the output gradient with the kernel flipped and its channels swapped) and the
    weight gradient (``conv3x3_weight_grad``, F(2x2, 3x3))."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        out = _winograd_conv(x.permute(0, 2, 3, 1), weight, bias)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        need_b = need_b and ctx.has_bias
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = grad_b = None
        if need_x:  # the same convolution of the gradient, with the kernel flipped and its channels swapped
            flipped = weight.flip(2, 3).transpose(0, 1)
            grad_x = _winograd_conv(grad_out.permute(0, 2, 3, 1), flipped, None).permute(0, 3, 1, 2)
        if need_w:
            b, _, h, w = x.shape
            grad_w = weight.new_empty(weight.shape)
            native.call("conv3x3_weight_grad", b, h, w, x.permute(0, 2, 3, 1), grad_out.permute(0, 2, 3, 1), grad_w)
        if need_b:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b
