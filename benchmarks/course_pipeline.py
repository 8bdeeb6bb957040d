"""The course's original pipeline, reimplemented as the benchmark's baseline.

What makes it slow, kept on purpose: items built one at a time by the Dataset in DataLoader worker
processes, three forward passes per triplet in the default NCHW layout, a synchronising
``loss.item()`` every step, class means gathered image by image from the *triplet* loader (so
positives and negatives are sampled for nothing), and evaluation one image at a time.
"""
from collections import defaultdict

import torch
from torch.utils.data import DataLoader


def loaders(ds_train, ds_test, workers=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(ds_train, batch_size=64, shuffle=True, num_workers=workers, drop_last=True,
                              generator=g, persistent_workers=workers > 0)
    test_loader = DataLoader(ds_test, batch_size=1, shuffle=False, num_workers=min(workers, 1))
    return train_loader, test_loader


def loss(model, anchor, positive, negative, margin=1.0):
    a, p, n = model.get_features(anchor), model.get_features(positive), model.get_features(negative)
    d_pos = torch.linalg.vector_norm(a - p + 1e-6, dim=1)
    d_neg = torch.linalg.vector_norm(a - n + 1e-6, dim=1)
    return torch.relu(d_pos - d_neg + margin).mean()


def train(model, optimizer, loader, device):
    losses = []
    model.train()
    for anchor, positive, negative, _ in loader:
        optimizer.zero_grad()
        value = loss(model, anchor.to(device), positive.to(device), negative.to(device))
        value.backward()
        optimizer.step()
        losses.append(value.item())
    return sum(losses) / len(losses)


def compute_representations(model, loader, num_classes, emb_size, device):
    model.eval()
    per_class = defaultdict(list)
    with torch.no_grad():
        for batch in loader:
            feats = model.get_features(batch[0].to(device)).view(-1, emb_size)
            for i in range(len(batch[-1])):
                per_class[batch[-1][i].item()].append(feats[i])
    reps = torch.zeros(num_classes, emb_size, device=device)
    for c, items in per_class.items():
        mean = torch.stack(items).mean(0)
        reps[c] = mean / torch.linalg.vector_norm(mean)
    return reps


def evaluate(model, reps, loader, device):
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for image, target in loader:  # batch size 1
            r = model.get_features(image.to(device))
            r = r / torch.linalg.vector_norm(r)
            correct += int(((reps - r) ** 2).sum(1).argmin().item() == target.item())
            total += 1
    return correct / total
