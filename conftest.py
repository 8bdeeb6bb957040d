"""Test-wide settings: the bundled sample, no progress bars, outputs in a temporary folder.

Set here (not in a test) so that the kernels nbval starts for the notebooks inherit them too.
"""
import os
import tempfile

_scratch = tempfile.mkdtemp(prefix="labkit-tests-")
os.environ["LABKIT_DATA"] = "sample"  # tests and CI always use the bundled sample
os.environ["LABKIT_PROGRESS"] = "0"
os.environ["LABKIT_DEVICE"] = os.environ.get("LABKIT_TEST_DEVICE", "cpu")
os.environ["LABKIT_OUTPUT"] = os.path.join(_scratch, "out")
os.environ["LABKIT_CHECKPOINTS"] = os.path.join(_scratch, "checkpoints")
