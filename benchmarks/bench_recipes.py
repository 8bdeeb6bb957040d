"""Recipe benchmark: each training recipe of notebook 05 on full Fashion-MNIST, mean ± sd over seeds.

    python benchmarks/bench_recipes.py [--data fashion|sample] [--recipes NAME ...] [--seeds 3] [--epochs 3]

Data: full Fashion-MNIST through labkit's data layer (``LABKIT_DATA=fashion``: ``$LABKIT_FASHION_DIR``,
Debian's ``dataset-fashion-mnist`` or torchvision's download), or the bundled sample for a smoke run.
Every recipe of ``labkit.recipes.RECIPES`` (or those named) trains the lab's network
(``SimpleMetricEmbedding(1, 32)``, Adam 1e-3, labkit's fast path) for the given epochs once per
seed, all in this one process on the same data; the table gives the nearest-class-mean test
accuracy (class means over all training images), PML's precision@1, R-precision and MAP@R on the
test set, and training seconds per epoch, each as mean ± sd over the seeds. The header names the
CPU, the thread count and whether the bf16 convolutions ran.
"""
import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labkit.data import load_digits  # noqa: E402
from labkit.device import bf16_fast, cpu_name, pick_device  # noqa: E402
from labkit.recipes import RECIPES, get_recipe, recipe_datasets, results_table, run_recipe  # noqa: E402

def load(kind, limit=None):
    """(train, traineval, test) datasets of ``kind`` (a labkit data source), optionally the first ``limit`` images."""
    train, test = (load_digits(train=train, source=kind) for train in (True, False))
    return recipe_datasets(train, test, (limit, limit) if limit else None)


_data = {}  # per process: the datasets, loaded once


def one_run(kind, limit, recipe_name, seed, epochs, device, threads):
    """Train and evaluate one recipe with one seed; the figures without the model."""
    if threads:
        torch.set_num_threads(threads)
    if (kind, limit) not in _data:
        _data[(kind, limit)] = load(kind, limit)
    train, traineval, test = _data[(kind, limit)]
    result = run_recipe(get_recipe(recipe_name), train, traineval, test, epochs, device, seed=seed, log=False)
    result.pop("model")
    result["seed"] = seed
    return result




def report(result):
    print(f"  {result['recipe']} seed {result['seed']}: accuracy {result['accuracy']:.2%}, "
          f"P@1 {result['precision_at_1']:.2%}, MAP@R {result['mean_average_precision_at_r']:.2%}, "
          f"{result['seconds_per_epoch']:.1f} s/epoch", flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("fashion", "sample"), default="fashion")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), metavar="NAME",
                        help=f"recipes to run (default: all of {list(RECIPES)})")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images of each split")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at the same time, each in its own process (seconds per epoch then share the CPU)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    recipes = [get_recipe(name) for name in args.recipes]  # unknown names fail here, before any training
    if args.threads:
        torch.set_num_threads(args.threads)

    device = pick_device(args.device)
    _data[(args.data, args.limit)] = load(args.data, args.limit)  # labkit announces where the data came from
    train, _, test = _data[(args.data, args.limit)]
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"machine: {os.cpu_count()} CPUs ({cpu_name()}){gpu}; device {device}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.epochs} epochs, seeds 0..{args.seeds - 1}; "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"bf16 convolutions: {'native here, used' if bf16_fast(device) else 'not native here, off (float32)'}",
          flush=True)

    jobs = [(args.data, args.limit, recipe.name, seed, args.epochs, args.device, args.threads)
            for recipe in recipes for seed in range(args.seeds)]
    if args.jobs > 1:
        print(f"{args.jobs} runs at a time, each in its own process: seconds per epoch include that sharing")
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(one_run, *job) for job in jobs]
            results = [report(f.result()) for f in as_completed(futures)]  # each run printed when it ends
        order = {recipe.name: i for i, recipe in enumerate(recipes)}
        results.sort(key=lambda r: (order[r["recipe"]], r["seed"]))
    else:
        results = [report(one_run(*job)) for job in jobs]
    print(f"\n{args.epochs} epochs, mean ± sd over {args.seeds} seed(s), figures in %:")
    print(results_table(results))


if __name__ == "__main__":
    main()
