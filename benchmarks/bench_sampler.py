"""What the student's Task 1 sampler costs in the fast path: per training step, side by side.

    python benchmarks/bench_sampler.py [--steps 20] [--blocks 5] [--batch-size 64]

``TripletBatches(sampler="dataset")`` (the notebooks' default) calls the dataset's per-item
``_sample_positive`` / ``_sample_negative`` for every anchor; ``sampler="vectorised"`` draws the same
distribution with tensor operations. Printed: milliseconds per batch for sampling alone, and per
training step (sampling + forward + backward + Adam, with the fast path's default precision), on
the bundled sample, in this one process.
"""
import argparse
import statistics
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


def per_batch_ms(fn, repeats, clock=time.perf_counter):
    fn()  # warm-up
    start = clock()
    for _ in range(repeats):
        fn()
    return 1000 * (clock() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per block")
    parser.add_argument("--blocks", type=int, default=5, help="blocks per sampler, interleaved")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    device = pick_device()
    ds = MNISTMetricDataset(split="train", source="sample")
    print(f"device: {device}" + (f" ({cpu_name()}, {torch.get_num_threads()} threads)" if device.type == "cpu"
                                  else f" ({torch.cuda.get_device_name(device)})"))
    print(f"bf16 convolutions in training: {'native here, on' if bf16_fast(device) else 'not native here, off'}")
    print(f"batch {args.batch_size}; training: {args.blocks} blocks of {args.steps} steps per sampler, "
          f"interleaved, median block; bundled sample ({len(ds)} training digits)\n")
    wall, cpu, steps, runs = {}, {}, {}, {}
    for sampler in SAMPLERS:
        batches = TripletBatches(ds, args.batch_size, device=device, seed=0, sampler=sampler)
        anchors = torch.randint(len(ds), (args.batch_size,), device=device)
        wall[sampler] = per_batch_ms(lambda: batches.sample(anchors), 300)
        cpu[sampler] = per_batch_ms(lambda: batches.sample(anchors), 300, time.process_time)
        torch.manual_seed(0)
        model = prepare_model(SimpleMetricEmbedding(1, 32), device)
        runs[sampler] = (model, torch.optim.Adam(model.parameters(), lr=1e-3), _first(batches, args.steps))
        training.train(*runs[sampler], device, progress=False, log=False)  # warm-up
        steps[sampler] = []
    for _ in range(args.blocks):  # interleaved, so that a change in the machine's load hits both
        for sampler in SAMPLERS:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            training.train(*runs[sampler], device, progress=False, log=False)  # ends with .item(): synchronised
            steps[sampler].append(1000 * (time.perf_counter() - start) / args.steps)
    step = {k: statistics.median(v) for k, v in steps.items()}
    d, v = "dataset", "vectorised"
    print(f"{'ms per batch':<34}{'dataset (Task 1)':>18}{'vectorised':>12}{'difference':>12}")
    for name, t in (("sampling only, wall clock", wall), ("sampling only, CPU time", cpu),
                    ("training step (all of it), wall", step)):
        print(f"{name:<34}{t[d]:>18.2f}{t[v]:>12.2f}{t[d] - t[v]:>12.2f}")
    print(f"\nthe student's sampler changes a training step by {100 * (step[d] / step[v] - 1):+.0f}% "
          f"(its sampling alone costs {cpu[d] - cpu[v]:.2f} ms of CPU time per batch more)")
    print("per-block step times (ms):", {k: [round(x, 1) for x in v] for k, v in steps.items()})


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
