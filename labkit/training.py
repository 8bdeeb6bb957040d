"""Task 3: training with the triplet loss, class-mean representations and nearest-mean evaluation.

Every function takes any iterable of batches: the course's ``DataLoader`` or labkit's on-device
``TripletBatches`` / ``ImageBatches`` (see ``labkit.loaders``). Image batches may be (images, target)
or (anchor, positive, negative, target); the first and last entries are used.
"""
import os
import time

import torch
from tqdm.auto import tqdm

from labkit.classify import class_sums, means_from_sums, nearest_mean
from labkit.device import mixed_precision, model_device
from labkit.fastops import fast_layers

PROGRESS_ENV = "LABKIT_PROGRESS"
PROGRESS_VALUES = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
                   "off": False, "": True}


def progress_enabled(progress=None):
    """Progress bars on unless switched off by the argument or ``LABKIT_PROGRESS=0``."""
    if progress is not None:
        return bool(progress)
    value = os.environ.get(PROGRESS_ENV, "1")
    if value.strip().lower() not in PROGRESS_VALUES:
        raise ValueError(f"{PROGRESS_ENV}={value!r} is not understood; use one of "
                         f"{', '.join(v for v in PROGRESS_VALUES if v)} (0/false/no/off switch the bars off)")
    return PROGRESS_VALUES[value.strip().lower()]


def train(model, optimizer, loader, device=None, *, progress=None, log=True, amp=True, desc="train"):
    """One epoch of triplet training; returns the mean loss over its batches.

    ``amp``: convolutions in bfloat16 where the hardware has it (``labkit.device.mixed_precision``).
    On a CPU the layers run through ``labkit.fastops.fast_layers`` (same modules, same gradients).
    """
    device = model_device(model, device)
    model.train()
    total, batches, start = torch.zeros((), device=device), 0, time.perf_counter()
    losses = []  # each batch's loss, kept on the device: names the first non-finite one without a sync per step
    bar = tqdm(loader, desc=desc, disable=not progress_enabled(progress), leave=False)
    with fast_layers(model):  # patched once per epoch, restored on exit (also after an error)
        for anchor, positive, negative, _ in bar:
            with mixed_precision(model, device, amp):
                loss = model.loss(anchor.to(device), positive.to(device), negative.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().float()  # stays on the device: no synchronisation per step
            losses.append(loss.detach())
            batches += 1
            if device.type == "cpu" or batches % 50 == 0:  # on a GPU each check is a synchronisation
                _check_finite(total, losses, desc)
            if batches % 50 == 0:
                bar.set_postfix(loss=f"{total.item() / batches:.4f}")
    if batches == 0:
        raise ValueError("the loader gave no batches: is the dataset smaller than one batch (drop_last)?")
    _check_finite(total, losses, desc)
    mean_loss = total.item() / batches
    if log:
        print(f"{desc}: mean loss {mean_loss:.4f} over {batches} batches ({time.perf_counter() - start:.1f} s)")
    return mean_loss


def _check_finite(total, losses, desc):
    """Stop training at a NaN or inf loss, naming the first batch that had one."""
    if torch.isfinite(total):
        return
    finite = torch.isfinite(torch.stack(losses).float())
    first = int((~finite).nonzero()[0])
    raise FloatingPointError(
        f"{desc}, batch {first + 1}: the loss is {losses[first].item()}; training stopped (every later step "
        f"would only spread it through the weights, which are no longer usable). Check the images for NaN/inf "
        f"(torch.isfinite(dataset.images).all()) or lower the learning rate, then train a fresh model.")


@torch.no_grad()  # not inference_mode: callers may use the features in autograd later
def embed(model, loader, device=None, *, progress=None, desc="embed"):
    """Features of every image in the loader, batch by batch: (N, D) float32 and (N,) targets, on the device."""
    device = model_device(model, device)
    model.eval()
    feats = targets = None
    n = 0
    for batch in tqdm(loader, desc=desc, disable=not progress_enabled(progress), leave=False):
        rows = _features(model, batch[0], device)
        feats = _put(feats, n, rows)
        targets = _put(targets, n, torch.as_tensor(batch[-1]).to(device))
        n += len(rows)
    if feats is None:
        raise ValueError("the loader gave no batches")
    return feats[:n].clone(), targets[:n].clone()


def _put(buffer, n, rows):
    """``rows`` written to ``buffer[n:]``, the buffer doubled first where they do not fit.

    One growing buffer rather than a list of per-batch tensors joined at the end: small tensors kept
    between each batch's large, short-lived maps fragment glibc's heap, which then holds on to what
    was freed (embedding 70,000 images once kept 0.2-1 GB of freed memory that way)."""
    if buffer is None or n + len(rows) > len(buffer):
        grown = rows.new_empty((max(2 * (0 if buffer is None else len(buffer)), n + len(rows)), *rows.shape[1:]))
        if buffer is not None:
            grown[:n] = buffer[:n]
        buffer = grown
    buffer[n:n + len(rows)] = rows
    return buffer


@torch.no_grad()
def compute_representations(model, loader, num_classes=10, emb_size=None, device=None, *, progress=None):
    """Class means of the embeddings, each scaled to unit L2 norm: (num_classes, emb_size).

    A class without any image in the loader gets a row of NaN: no query is ever assigned to it.
    """
    device = model_device(model, device)
    model.eval()
    sums, counts = None, torch.zeros(num_classes, device=device)
    bar = tqdm(loader, desc="class means", disable=not progress_enabled(progress), leave=False)
    for batch in bar:
        feats = _features(model, batch[0], device)  # (B, D)
        targets = torch.as_tensor(batch[-1]).to(device)
        if sums is None:
            if emb_size is not None and feats.shape[1] != emb_size:
                raise ValueError(f"the model gives {feats.shape[1]}-dim features but emb_size={emb_size}; "
                                 f"pass emb_size={feats.shape[1]} (IdentityModel: 28 * 28 = 784)")
            sums = torch.zeros(num_classes, feats.shape[1], device=device)
        if targets.min() < 0 or targets.max() >= num_classes:
            raise ValueError(f"targets must lie in 0..{num_classes - 1}, got {targets.min()}..{targets.max()}")
        batch_sums, batch_counts = class_sums(feats, targets, num_classes)
        sums += batch_sums
        counts += batch_counts
    if sums is None:
        raise ValueError("the loader gave no batches")
    return means_from_sums(sums, counts)


@torch.inference_mode()
def evaluate(model, representations, loader, device=None, *, progress=None):
    """Top-1 accuracy of the nearest-class-mean rule over the loader."""
    device = model_device(model, device)
    model.eval()
    correct, total = 0, 0
    for batch in tqdm(loader, desc="evaluate", disable=not progress_enabled(progress), leave=False):
        preds = nearest_mean(representations, _features(model, batch[0], device))
        targets = torch.as_tensor(batch[-1]).to(device)
        correct += (preds == targets).sum().item()
        total += len(targets)
    if total == 0:
        raise ValueError("the loader gave no batches")
    return correct / total


def _features(model, images, device):
    # float32, not bf16: class means and distances decide ties, and must match across batch sizes
    # (fast_layers runs image by image in inference, so it keeps that on the CPU; on Ampere and later
    # GPUs cuDNN's convolutions round their inputs to TF32 unless torch.backends.cudnn.allow_tf32 is off)
    # non-blocking only towards a GPU: a non-blocking copy from a GPU to the CPU returns before the
    # data has arrived, and the CPU would read whatever the buffer held (a CPU model, CUDA batches)
    images = images.to(device, non_blocking=device.type == "cuda")
    with fast_layers(model):
        return model.get_features(images).float()


def fit(model, optimizer, train_batches, mean_batches, test_batches, epochs, device=None, *, num_classes=10,
        progress=None, log=True, amp=True):
    """Train for ``epochs``; after each, class means over ``mean_batches`` and accuracy on ``test_batches``.

    Returns one dict per epoch with keys "epoch", "loss", "accuracy" and "representations" (the
    class means that accuracy was measured with).
    """
    history = []
    for epoch in range(1, epochs + 1):
        loss = train(model, optimizer, train_batches, device, progress=progress, log=log, amp=amp,
                     desc=f"epoch {epoch}/{epochs}")
        reps = compute_representations(model, mean_batches, num_classes, device=device, progress=progress)
        acc = evaluate(model, reps, test_batches, device, progress=progress)
        history.append({"epoch": epoch, "loss": loss, "accuracy": acc, "representations": reps})
    return history
