"""Where a training step's time goes: forward and backward of each block of the lab's network.

    python benchmarks/profile_step.py [--threads 1] [--amp]

192 images (64 triplets), one row per block of ``SimpleMetricEmbedding.net``, three ways: plain
modules in NCHW (the course's layout), plain modules in channels_last, and labkit's fast path
(``labkit.fastops.fast_layers``, channels_last). With one thread (the default) the figures are the
thread's CPU time, which other processes on a shared machine disturb much less than wall-clock
time; with more threads they are wall-clock. Median of the fastest half of 20 runs.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labkit.device import mixed_precision, prepare_model  # noqa: E402
from labkit.fastops import fast_layers  # noqa: E402
from labkit.model import SimpleMetricEmbedding  # noqa: E402


def timed(fn, clock, runs=20):
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        start = clock()
        fn()
        times.append(clock() - start)
    return 1000 * sorted(times)[runs // 4]


def profile(model, channels_last, fast, amp, clock):
    """[(block name, forward ms, backward ms)] for one pass of 192 images through ``model.net``."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    x, rows = torch.rand(192, 1, 28, 28).contiguous(memory_format=layout), []
    with fast_layers(model, fast), mixed_precision(model, "cpu", amp):
        for i, block in enumerate(model.net):
            inp = x.detach().requires_grad_(i > 0)
            out = block(inp)
            grad = torch.randn_like(out)
            forward = timed(lambda: block(inp), clock)
            both = timed(lambda: block(inp).backward(grad), clock)
            rows.append((f"{i} {type(block).__name__}", forward, both - forward))
            x = out.detach()
        # the image's block and its pool together: the fast path runs them as one in float32
        pair, inp = model.net[:2], torch.rand(192, 1, 28, 28).contiguous(memory_format=layout)
        with fast_layers(pair, fast):
            grad = torch.randn_like(pair(inp))
            forward = timed(lambda: pair(inp), clock)
            both = timed(lambda: pair(inp).backward(grad), clock)
        rows.append(("0+1 block and pool together", forward, both - forward))
        step = torch.optim.Adam(model.parameters(), lr=1e-3)

        def train_step():
            loss = model.loss(*torch.rand(192, 1, 28, 28).chunk(3))
            step.zero_grad()
            loss.backward()
            step.step()

        rows.append(("whole step (loss, Adam)", timed(train_step, clock), 0.0))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--amp", action="store_true", help="bf16 convolutions (labkit's default where native)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    torch.manual_seed(0)
    model = prepare_model(SimpleMetricEmbedding(1, 32), "cpu")
    ways = {"NCHW": (False, False), "channels_last": (True, False), "fast path": (True, True)}
    results = {name: profile(model, cl, fast, args.amp, clock) for name, (cl, fast) in ways.items()}
    kind = "CPU ms of the thread" if args.threads == 1 else "wall ms"
    print(f"{args.threads} thread(s), {'bf16 convolutions' if args.amp else 'float32'}, 192 images; {kind} "
          f"(forward / backward)")
    print(f"{'block':<28}" + "".join(f"{name:>22}" for name in ways))
    for r, (label, *_) in enumerate(results["NCHW"]):
        cells = [results[name][r] for name in ways]
        print(f"{label:<28}" + "".join(f"{f:>11.2f}{'' if label.startswith('whole') else f' / {b:<6.2f}':>11}"
                                       for _, f, b in cells))


if __name__ == "__main__":
    main()
