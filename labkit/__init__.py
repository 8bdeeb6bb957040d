"""labkit: the code behind the metric-lab notebooks (metric embeddings on MNIST).

Modules, one job each: ``data`` (where digits come from), ``dataset`` (Task 1), ``model`` (Task 2),
``classify`` (Task 3: rules from embeddings to classes), ``loaders`` (fast and course batching),
``training`` (train / class means / evaluate), ``experiment`` (a whole run, train or load),
``checkpoint``, ``viz``, ``explore`` and ``widgets`` (the interactive explorers), ``colab``
(Colab setup in Google Drive), ``outputs``, ``checks`` (the notebooks' check cells), ``device``, ``recipes``
(notebook 05: pytorch-metric-learning's losses and miners on class-balanced batches).
"""

__version__ = "0.1.0"
