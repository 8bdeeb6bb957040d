"""What the student's Task 1 sampler costs in the fast path: per training step, side by side.

    python benchmarks/bench_sampler.py [--steps 60] [--batch-size 64]

``TripletBatches(sampler="dataset")`` (the notebooks' default) calls the dataset's per-item
``_sample_positive`` / ``_sample_negative`` for every anchor; ``sampler="vectorised"`` draws the same
distribution with tensor operations. Printed: milliseconds per batch for sampling alone, and per
training step (sampling + forward + backward + Adam, with the fast path's default precision), on
the bundled sample, in this one process.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import cpu_name  # noqa: E402
from labkit import training  # noqa: E402
from labkit.dataset import MNISTMetricDataset  # noqa: E402
from labkit.device import bf16_fast, pick_device, prepare_model  # noqa: E402
from labkit.loaders import SAMPLERS, TripletBatches  # noqa: E402
from labkit.model import SimpleMetricEmbedding  # noqa: E402


def per_batch_ms(fn, repeats):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1000 * (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    device = pick_device()
    ds = MNISTMetricDataset(split="train", source="sample")
    print(f"device: {device}" + (f" ({cpu_name()}, {torch.get_num_threads()} threads)" if device.type == "cpu"
                                  else f" ({torch.cuda.get_device_name(device)})"))
    print(f"bf16 convolutions in training: {'native here, on' if bf16_fast(device) else 'not native here, off'}")
    print(f"batch {args.batch_size}, {args.steps} steps, bundled sample ({len(ds)} training digits)\n")
    sample_ms, step_ms = {}, {}
    for sampler in SAMPLERS:
        batches = TripletBatches(ds, args.batch_size, device=device, seed=0, sampler=sampler)
        anchors = torch.randint(len(ds), (args.batch_size,), device=device)
        sample_ms[sampler] = per_batch_ms(lambda: batches.sample(anchors), 20 * args.steps)
        torch.manual_seed(0)
        model = prepare_model(SimpleMetricEmbedding(1, 32), device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        limited = _first(batches, args.steps)
        training.train(model, optimizer, limited, device, progress=False, log=False)  # warm-up epoch
        start = time.perf_counter()
        training.train(model, optimizer, limited, device, progress=False, log=False)
        step_ms[sampler] = 1000 * (time.perf_counter() - start) / args.steps
    d, v = "dataset", "vectorised"
    print(f"{'ms per batch':<28}{'dataset (Task 1)':>18}{'vectorised':>12}{'difference':>12}")
    print(f"{'sampling only':<28}{sample_ms[d]:>18.2f}{sample_ms[v]:>12.2f}{sample_ms[d] - sample_ms[v]:>12.2f}")
    print(f"{'training step (all of it)':<28}{step_ms[d]:>18.2f}{step_ms[v]:>12.2f}{step_ms[d] - step_ms[v]:>12.2f}")
    print(f"\nthe student's sampler adds {100 * (step_ms[d] / step_ms[v] - 1):.0f}% to a training step")


class _first:
    """The first ``n`` batches of each pass over ``batches``."""

    def __init__(self, batches, n):
        self.batches, self.n = batches, n

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            if i == self.n:
                return
            yield batch


if __name__ == "__main__":
    main()
