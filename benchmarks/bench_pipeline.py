"""Course pipeline vs labkit's fast path: the whole lab (3b + 3c + 3e), timed stage by stage.

    python benchmarks/bench_pipeline.py [--data auto|fashion|sample | --data-dir DIR] [--seeds 3] [--epochs 3]
                                        [--fraction 0.25] [--no-memory] [--clock-ghz GHZ]

Both pipelines run in this one process on the same data and settings (batch 64, emb 32, Adam 1e-3,
class means and test accuracy after every epoch, as the course's script does) and are printed side
by side: seconds per stage (mean over seeds), the ratio, peak memory and accuracies (mean ± sd),
and the time of one training step against the FLOP limit: the step's floating-point operations
(counted from the model's layer shapes) at the CPU's peak rate (``flop_limit`` says how).
Default data: full Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package when installed
(MNIST's format and size; MNIST itself cannot be downloaded everywhere), else the bundled sample.
"""
import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import course_pipeline as course  # noqa: E402
from labkit import native as labkit_native  # noqa: E402
from labkit import training  # noqa: E402
from labkit.data import load_digits, load_idx_digits  # noqa: E402
from labkit.dataset import MNISTMetricDataset  # noqa: E402
from labkit.device import bf16_fast, cpu_name, pick_device, prepare_model  # noqa: E402
from labkit.loaders import image_loader, triplet_loader  # noqa: E402
from labkit.model import IdentityModel, SimpleMetricEmbedding  # noqa: E402

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
STAGES = ("train", "class means", "evaluate")


# ---------------------------------------------------------------- data
def fashion_dir():
    """Where Debian's dataset-fashion-mnist put its idx files, or None."""
    try:
        files = subprocess.run(["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True,
                               timeout=10).stdout.split()
        found = [Path(f).parent for f in files if f.endswith("train-images-idx3-ubyte.gz")]
        if found:
            return found[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return FASHION_DIR if FASHION_DIR.exists() else None


def load_data(kind, limit=None, fraction=None, folder=None):
    """The benchmark's train and test digits: from ``folder`` (idx files, MNIST's format) if given,
    else by ``kind``."""
    source, label = "idx", "idx files"
    if not folder and kind in ("auto", "fashion"):
        folder, source, label = fashion_dir(), "fashion-mnist", "Fashion-MNIST"
    if folder:
        train, test = (load_idx_digits(folder, split, source) for split in (True, False))
        name = f"{label} from {folder}"
    elif kind == "fashion":
        sys.exit("Fashion-MNIST not found: install it with `apt-get install dataset-fashion-mnist`, or use --data sample")
    else:
        train, test = load_digits(train=True, source="sample"), load_digits(train=False, source="sample")
        name = "bundled MNIST sample"
    if limit:  # a smaller run for smoke tests: the first images (both files are in random class order)
        train, test = [type(d)(d.images[:limit], d.targets[:limit], d.source) for d in (train, test)]
    if fraction:  # a shorter run with the lab's proportions: the first part of each split
        train, test = [type(d)(d.images[:round(fraction * len(d.targets))], d.targets[:round(fraction * len(d.targets))],
                               d.source) for d in (train, test)]
    return name, train, test


def datasets(train, test, remove_class=None):
    ds_train = MNISTMetricDataset.from_tensors(train.images, train.targets, "train", remove_class, train.source)
    ds_test = MNISTMetricDataset.from_tensors(test.images, test.targets, "test", None, test.source)
    return ds_train, ds_test


# ---------------------------------------------------------------- measuring
class Timer:
    """Accumulates seconds per stage; synchronises CUDA so a stage's time is its own."""

    def __init__(self, device):
        self.device, self.seconds, self.steps = device, defaultdict(float), 0

    @contextmanager
    def __call__(self, stage):
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.seconds[stage] += time.perf_counter() - start

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def rss_bytes():
    """Resident memory of this process and its children (DataLoader workers), from /proc."""
    def rss(pid):
        try:
            with open(f"/proc/{pid}/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            return 0

    pids = [os.getpid()]
    for task in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        pids += [int(p) for p in task.read_text().split()]
    return sum(rss(p) for p in pids)


@contextmanager
def peak_memory(device, out):
    """Peak memory above the starting point while the block runs: host RSS sampled every 20 ms, and
    on CUDA the allocator's peak. Stores MB in out["host"] and out["cuda"]."""
    start, peak, done = rss_bytes(), [0], threading.Event()

    def sample():
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda_start = torch.cuda.memory_allocated(device)
    try:
        yield
    finally:
        done.set()
        thread.join()
        out["host"] = max(0, max(peak[0], rss_bytes()) - start) / 2**20
        if device.type == "cuda":
            out["cuda"] = (torch.cuda.max_memory_allocated(device) - cuda_start) / 2**20


# ---------------------------------------------------------------- the two pipelines
def lab_course(train, test, seed, epochs, device, timer, workers):
    """3b, 3c, 3e the course's way; returns the three accuracies."""
    acc = {}
    ds_all, ds_test = datasets(train, test)
    all_loader, test_loader = course.loaders(ds_all, ds_test, workers, seed)
    for task, remove in (("3b", None), ("3e", 0)):
        torch.manual_seed(seed)
        ds_train, _ = datasets(train, test, remove)
        train_loader = all_loader if remove is None else course.loaders(ds_train, ds_test, workers, seed)[0]
        model = SimpleMetricEmbedding(1, 32).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(epochs):
            timer.steps += len(train_loader)
            with timer("train"):
                course.train(model, optimizer, train_loader, device)
            with timer("class means"):  # from a triplet loader over all digits, as the course does
                reps = course.compute_representations(model, all_loader, 10, 32, device)
            with timer("evaluate"):
                acc[task] = course.evaluate(model, reps, test_loader, device)
    identity = IdentityModel().to(device)
    with timer("class means"):
        reps = course.compute_representations(identity, all_loader, 10, 784, device)
    with timer("evaluate"):
        acc["3c"] = course.evaluate(identity, reps, test_loader, device)
    return acc


def lab_fast(train, test, seed, epochs, device, timer, amp=True):
    """3b, 3c, 3e with labkit's defaults: on-device batches, channels_last, batched evaluation, and
    (``amp``) bfloat16 convolutions in training where the hardware has them."""
    acc = {}
    ds_all, ds_test = datasets(train, test)
    mean_batches, test_batches = image_loader(ds_all, device=device), image_loader(ds_test, device=device)
    quiet = dict(progress=False)
    for task, remove in (("3b", None), ("3e", 0)):
        torch.manual_seed(seed)
        ds_train, _ = datasets(train, test, remove)
        batches = triplet_loader(ds_train, 64, device=device, seed=seed)
        model = prepare_model(SimpleMetricEmbedding(1, 32), device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(epochs):
            timer.steps += len(batches)
            with timer("train"):
                training.train(model, optimizer, batches, device, log=False, amp=amp, **quiet)
            with timer("class means"):
                reps = training.compute_representations(model, mean_batches, 10, 32, device, **quiet)
            with timer("evaluate"):
                acc[task] = training.evaluate(model, reps, test_batches, device, **quiet)
    identity = IdentityModel()
    with timer("class means"):
        reps = training.compute_representations(identity, mean_batches, 10, 784, device, **quiet)
    with timer("evaluate"):
        acc["3c"] = training.evaluate(identity, reps, test_batches, device, **quiet)
    return acc


def without_compiled(pipeline, *args, **kwargs):
    """``pipeline`` with fastops on its PyTorch code only: what runs where no C compiler is."""
    with labkit_native.disabled():
        return pipeline(*args, **kwargs)


def _embed_peak(n, data, folder, device_name, queue):
    """In a fresh process: extra peak RSS (MB) to embed n images of ``data`` in batches, and the
    features' shape; or (None, why) when it cannot be measured."""
    try:
        queue.put(_measure_embed_peak(n, data, folder, torch.device(device_name)))
    except Exception as exc:  # report it: the parent waits on the queue
        queue.put((None, f"{type(exc).__name__}: {exc}"))


def _measure_embed_peak(n, data, folder, device):
    from labkit.data import resolve_source

    resolve_source(source="sample", verbose=False)
    name, train, _ = load_data(data, folder=folder)
    model = prepare_model(SimpleMetricEmbedding(1, 32), device)
    images = train.images.float().div(255)
    reps = -(-n // len(images))
    ds = MNISTMetricDataset.from_tensors(images.repeat(reps, 1, 1)[:n], train.targets.repeat(reps)[:n], "test")
    batches = image_loader(ds, device=device)
    del images
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak (VmHWM) to the current RSS
    before = _status_kb("VmRSS")
    feats, _ = training.embed(model, batches, device, progress=False)
    return (_status_kb("VmHWM") - before) / 1024, tuple(feats.shape)


def _status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def embedding_memory(data, folder, device, sizes=(10_000, 35_000, 70_000)):
    """Extra peak memory to embed N images in batches, each N in its own process (the images
    themselves are loaded before the measurement starts)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    rows = []
    for n in sizes:
        queue = ctx.Queue()
        proc = ctx.Process(target=_embed_peak, args=(n, data, folder, str(device), queue))
        proc.start()
        rows.append((n, *queue.get(timeout=600)))
        proc.join()
    return rows


# ---------------------------------------------------------------- the FLOP limit of a training step
def step_flops(batch=192):
    """Floating-point operations of one training step of 64 triplets (192 images), from the layer
    shapes: each convolution's multiply-adds are (output elements) x (input channels / groups) x
    (kernel area), counted on a forward pass through hooks; a multiply-add is 2 FLOPs; the backward
    pass costs twice the forward (input gradient + weight gradient), so a step is 3x the forward.
    Normalisation, pooling, ReLU, the loss and Adam are not counted (a few FLOPs per byte moved)."""
    model, macs = SimpleMetricEmbedding(1, 32), [0]

    def count(module, inputs, output):
        kh, kw = module.kernel_size
        macs[0] += output.numel() * module.in_channels // module.groups * kh * kw

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(count)
    with torch.no_grad():
        model.get_features(torch.zeros(batch, 1, 28, 28))
    return 3 * 2 * macs[0]


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return "", set(), 0, 0.0
    field = lambda name: next((line.split(":", 1)[1].strip() for line in info.splitlines()
                               if line.startswith(name)), "")
    mhz = float(field("cpu MHz") or 0)
    return field("vendor_id"), set(field("flags").split()), int(field("cpu family") or 0), mhz


def fma_lanes():
    """float32 multiply-adds per cycle and core, and how that was decided: two FMA pipes on every
    x86 core since Haswell/Zen; 512 bits wide on Intel's AVX-512 cores, 256 bits on AMD's Zen 2-4
    (Zen 4 runs AVX-512 as two 256-bit halves), 512 on Zen 5."""
    vendor, flags, family, _ = cpu_flags()
    if "avx512f" in flags and (vendor == "GenuineIntel" or family >= 26):
        return 2 * 16, "2 FMA pipes x 16 float32 lanes (512-bit)"
    if "avx512f" in flags or "fma" in flags:
        note = ", AVX-512 as two 256-bit halves" if "avx512f" in flags else ""
        return 2 * 8, f"2 FMA pipes x 8 float32 lanes (256-bit{note})"
    return 4, "1 FMA pipe x 4 float32 lanes (128-bit; no FMA flag)"


def measured_gemm_gflops(threads):
    """Best rate of a large float32 1x1 convolution (a plain matrix product through oneDNN) on
    ``threads`` threads: what the CPU sustains on the most compute-bound work there is."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.randn(32, 512, 32, 32).contiguous(memory_format=torch.channels_last)
    w = torch.randn(512, 512, 1, 1).contiguous(memory_format=torch.channels_last)
    flops, best = 2 * 32 * 32 * 32 * 512 * 512, 0.0
    with torch.no_grad():
        for _ in range(8):
            start = time.perf_counter()
            torch.conv2d(x, w)
            best = max(best, flops / (time.perf_counter() - start) / 1e9)
    torch.set_num_threads(previous)
    return best


def flop_limit(clock_ghz=None):
    """Peak float32 rate (GFLOP/s) of the cores torch uses and a description of how it was found:
    cores x FMA pipes x lanes x 2 FLOPs x clock. The clock is ``clock_ghz`` if given, else the larger
    of /proc/cpuinfo's "cpu MHz" (the base or, in a VM, the TSC rate) and the clock a measured
    one-thread matrix product implies at 100 % of the FMA rate (a lower bound of the boost clock)."""
    cores = torch.get_num_threads()
    lanes, how = fma_lanes()
    _, _, _, mhz = cpu_flags()
    one_thread = measured_gemm_gflops(1)
    implied = one_thread / (2 * lanes)
    if clock_ghz:
        clock, source = clock_ghz, "given"
    elif implied > mhz / 1000:
        clock, source = implied, f"implied by a 1-thread GEMM at {one_thread:.0f} GFLOP/s (cpuinfo says {mhz / 1000:.2f})"
    else:
        clock, source = mhz / 1000, "cpuinfo's cpu MHz"
    peak = cores * lanes * 2 * clock
    return peak, (f"{cores} cores x {how} x 2 FLOPs x {clock:.2f} GHz ({source}) = {peak:.0f} GFLOP/s; "
                  f"measured GEMM on {cores} threads: {measured_gemm_gflops(cores):.0f} GFLOP/s")


# ---------------------------------------------------------------- report


def mean_sd(values, scale=1.0, digits=1):
    m = statistics.mean(values) * scale
    sd = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("auto", "fashion", "sample"), default="auto")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="a folder of MNIST-format idx files (train-*/t10k-*, gzipped or not), e.g. Fashion-MNIST "
                             "copied where the Debian package is not installed; overrides --data")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of the course pipeline")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images of each split")
    parser.add_argument("--fraction", type=float, default=None,
                        help="use only this fraction of each split (keeps the train/test proportion)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-memory", action="store_true", help="skip the embedding-memory measurement")
    parser.add_argument("--clock-ghz", type=float, default=None,
                        help="the CPU's clock under load for the FLOP limit (default: estimated, see flop_limit)")
    args = parser.parse_args()
    # the course's 4 workers on a 2-core machine draw a warning per loader; it is the point of the baseline
    warnings.filterwarnings("ignore", message=".*worker processes in total.*")

    if args.data_dir and not args.data_dir.is_dir():
        parser.error(f"--data-dir {args.data_dir}: no such folder (it should hold train-images-idx3-ubyte[.gz] "
                     f"and the three other idx files)")
    device = pick_device(args.device)
    try:
        name, train, test = load_data(args.data, args.limit, args.fraction, args.data_dir)
    except (OSError, ValueError) as exc:  # a missing or damaged idx file: labkit's message names the fix
        sys.exit(f"bench_pipeline.py: {exc}")
    print(f"data: {name} ({len(train.targets)} train / {len(test.targets)} test images)")
    cpu = cpu_name()
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"machine: {os.cpu_count()} CPUs ({cpu}){gpu}; device {device}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; settings: {args.epochs} epochs, batch 64, emb 32, Adam 1e-3; "
          f"seeds 0..{args.seeds - 1}", flush=True)
    native = bf16_fast(device)
    print(f"bf16 convolutions (fast path's default): {'native here, used' if native else 'not native here, off'}")
    if device.type == "cpu":
        why = labkit_native.why_not()
        print("compiled kernels (labkit.native): " + ("built and used" if why is None else f"not used: {why}"))
    print("load average at start: %.2f %.2f %.2f" % os.getloadavg(), flush=True)
    flops = step_flops()
    if device.type == "cpu":
        peak, how = flop_limit(args.clock_ghz)
        print(f"FLOP limit: a training step (64 triplets = 192 images) is {flops / 1e9:.2f} GFLOP "
              f"(3 x forward multiply-adds x 2); peak {how}", flush=True)

    pipelines = {"course": lambda s, t: lab_course(train, test, s, args.epochs, device, t, args.workers),
                 "fp32 no C": lambda s, t: without_compiled(lab_fast, train, test, s, args.epochs, device, t, amp=False),
                 "fast fp32": lambda s, t: lab_fast(train, test, s, args.epochs, device, t, amp=False),
                 "fast": lambda s, t: lab_fast(train, test, s, args.epochs, device, t)}
    if not native:  # "fast" would be float32 too
        del pipelines["fast fp32"]
    if device.type != "cpu" or labkit_native.kernels() is None:  # the compiled kernels are CPU-only
        del pipelines["fp32 no C"]
    results = {}
    for label, run in pipelines.items():
        runs = []
        for seed in range(args.seeds):
            timer, mem = Timer(device), {}
            start = time.perf_counter()
            with peak_memory(device, mem):
                acc = run(seed, timer)
            runs.append(dict(seconds=dict(timer.seconds), total=time.perf_counter() - start, acc=acc, mem=mem,
                             steps=timer.steps))
            print(f"  {label} seed {seed}: {runs[-1]['total']:.1f} s, "
                  + ", ".join(f"{k} {v:.2%}" for k, v in sorted(acc.items())), flush=True)
        results[label] = runs

    def avg(label, key):
        return statistics.mean(r["seconds"].get(key, 0.0) if key != "total" else r["total"] for r in results[label])

    others = [label for label in results if label != "course"]
    print(f"\n{'per seed (mean)':<30}{'course':>16}" + "".join(f"{label:>16}{'speed-up':>10}" for label in others))
    for stage in STAGES + ("total",):
        c = avg("course", stage)
        title = "whole lab (3b+3c+3e)" if stage == "total" else f"{stage} (s)"
        print(f"{title:<30}{c:>16.1f}" + "".join(f"{avg(label, stage):>16.1f}{c / avg(label, stage):>9.1f}x"
                                                for label in others))
    step_ms = {label: 1000 * sum(r["seconds"]["train"] for r in results[label]) / sum(r["steps"] for r in results[label])
               for label in results}
    c = step_ms["course"]
    print(f"{'train step (ms, 192 images)':<30}{c:>16.1f}" + "".join(f"{step_ms[label]:>16.1f}{c / step_ms[label]:>9.1f}x"
                                                                 for label in others))
    if device.type == "cpu":
        limit = 1000 * flops / (peak * 1e9)
        print(f"{'  x FLOP limit (' + f'{limit:.1f} ms)':<30}{c / limit:>15.1f}x"
              + "".join(f"{step_ms[label] / limit:>15.1f}x{'':>10}" for label in others))
    for kind in ("host", "cuda"):
        if kind in results["course"][0]["mem"]:
            peaks = [max(r["mem"][kind] for r in results[label]) for label in results]
            print(f"{'peak ' + kind + ' memory (MB, +start)':<30}" + f"{peaks[0]:>16.0f}"
                  + "".join(f"{p:>16.0f}{'':>10}" for p in peaks[1:]))
    for task in ("3b", "3c", "3e"):
        cells = [mean_sd([r["acc"][task] for r in results[label]], 100, 2) for label in results]
        print(f"{'accuracy ' + task + ' (%)':<30}{cells[0]:>16}" + "".join(f"{c:>16}{'':>10}" for c in cells[1:]))

    print("load average at end: %.2f %.2f %.2f" % os.getloadavg())
    if args.no_memory:
        return
    print("\nembedding N images in batches of 256, each in a fresh process (peak RSS above the loaded data):")
    for n, extra_mb, shape in embedding_memory(args.data, args.data_dir, device):
        print(f"  N = {n:>6}: " + (f"{extra_mb:6.0f} MB  (features {shape})" if extra_mb is not None
                                   else f"not measured ({shape})"))


if __name__ == "__main__":
    main()
