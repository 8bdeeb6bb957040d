"""labkit: the code behind the metric-lab notebooks (metric embeddings on MNIST).

Modules, one job each: ``data`` (where digits come from), ``dataset`` (Task 1), ``model`` (Task 2),
``loaders`` (fast and course batching), ``training`` (Task 3), ``checkpoint``, ``viz``, ``outputs``,
``checks`` (the notebooks' check cells), ``device``.
"""

__version__ = "0.1.0"
