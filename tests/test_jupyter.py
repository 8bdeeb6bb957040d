"""The project's environment as JupyterLab and Colab meet it: JupyterLab installed, widget progress
bars in a kernel, dependency ranges Colab's preinstalled packages already satisfy."""
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# what Colab has preinstalled (ipywidgets 7.7 with its own Jupyter front end), and ipywidgets 8 elsewhere
COLAB = {"torch": "2.6.0", "torchvision": "0.21.0", "matplotlib": "3.10.0", "tqdm": "4.67.1",
         "numpy": "2.0.2", "ipywidgets": "7.7.1"}


def test_jupyter_lab_runs_from_the_projects_environment():
    jupyter = Path(sys.executable).parent / "jupyter"
    result = subprocess.run([str(jupyter), "lab", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip().split(".")[0]) >= 4, result.stdout


def test_core_dependencies_accept_colabs_packages_and_leave_jupyter_to_the_lab_extra():
    requirements = {r.name: r for r in map(Requirement, PROJECT["dependencies"])}
    for name, version in COLAB.items():
        assert requirements[name].specifier.contains(version), f"{name} {version} would be upgraded on Colab"
    assert requirements["ipywidgets"].specifier.contains("8.1.5")
    assert not any(name.startswith("jupyter") or name == "notebook" for name in requirements)
    assert "jupyterlab" in {Requirement(r).name for r in PROJECT["optional-dependencies"]["lab"]}
    assert '".[dev,lab]"' in (REPO / "Makefile").read_text()
    assert '".[dev,lab]"' in (REPO / "environment.yml").read_text()


def test_progress_bars_are_widgets_in_a_kernel():
    cell = nbformat.v4.new_code_cell("import tqdm.notebook, labkit.training as t\n"
                                     "print(issubclass(t.tqdm, tqdm.notebook.tqdm))")
    nb = nbformat.v4.new_notebook(cells=[cell])
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    assert nb.cells[0].outputs[0]["text"].strip() == "True"
