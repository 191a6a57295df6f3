"""Helpers shared by the notebook tests: check a committed notebook, run it in a kernel of this interpreter,
read what its tagged cells printed.

Import it after ``pytest.importorskip("nbformat")``, ``("nbclient")`` and ``("ipykernel")``, so a test module
without them is skipped rather than failing here.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import nbclient
import nbformat
import pandas as pd
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel


def kernel_python() -> str | None:
    """The interpreter the 'python3' kernelspec starts (jupyter_client runs a bare 'python' as sys.executable)."""
    try:
        argv = KernelSpecManager().get_kernel_spec("python3").argv
    except NoSuchKernel:
        return None
    bare = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    return sys.executable if argv[0] in bare else argv[0]


def runs_this_environment(python: str | None) -> bool:
    """Whether ``python`` has this interpreter's sys.prefix (a venv's python is a symlink, so paths would not tell)."""
    if python is None:
        return False
    try:
        out = subprocess.run([python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == sys.prefix


def use_this_python_as_kernel(tmp_path: Path, monkeypatch) -> None:
    """Make 'python3' start this interpreter (which has climateml): a private kernelspec first on JUPYTER_PATH."""
    if runs_this_environment(kernel_python()):
        return
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (climateml tests)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    assert runs_this_environment(kernel_python()), "could not point the python3 kernel at this interpreter"


def committed_code_cells(path: Path) -> list:
    """The code cells of the notebook at ``path``, after checking that it is valid and was committed without
    outputs (asserts both)."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"cell {cell.id} was committed with outputs"
    return code


def run_notebook(path: Path, env: dict, tmp_path: Path, monkeypatch, timeout: int = 300):
    """Run every cell of the notebook at ``path`` in a 'python3' kernel of this interpreter, in the notebook's
    folder, with the environment variables ``env`` set; returns the executed notebook.

    Asserts that no cell failed (nbclient raises CellExecutionError, with the traceback, at the first one) and
    that every code cell ran.
    """
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    use_this_python_as_kernel(tmp_path, monkeypatch)

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout,
                                     resources={"metadata": {"path": str(Path(path).parent)}})
    client.execute()

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code"), "a code cell did not run"
    return nb


def tagged_text(nb, tag: str) -> str:
    """What the one cell tagged ``tag`` printed to stdout (asserts there is exactly one such cell)."""
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}"
    return "".join(o.get("text", "") for o in cells[0].outputs if o.output_type == "stream" and o.name == "stdout")


def printed_table(text: str, labels: list[str] | None = None) -> pd.DataFrame:
    """Parse a DataFrame printed with ``to_string()``. ``labels``: its row labels when they may contain spaces
    (the table must then be all of ``text``); without them, labels have no spaces and the table may follow
    lines of prose (its header line is the first indented one)."""
    lines = text.strip("\n").splitlines()
    if labels is None:
        start = next(i for i, line in enumerate(lines) if line.startswith(" "))
        return pd.read_csv(io.StringIO("\n".join(lines[start:])), sep=r"\s+")
    assert len(lines) == len(labels) + 1, text
    rows = {}
    for label, line in zip(labels, lines[1:]):
        assert line.startswith(label), f"expected a row {label!r} in\n{text}"
        rows[label] = [float(v) for v in line[len(label):].split()]
    return pd.DataFrame.from_dict(rows, orient="index", columns=lines[0].split())

