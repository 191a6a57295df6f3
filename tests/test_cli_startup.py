"""`climateml --help` and `climateml synth` start without Lightning or torch (issue 12, point 5): importing Lightning
alone takes seconds, and only the subcommands that train or predict need it. Checked on the modules a fresh
interpreter has imported, not on a time (which would test the machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("lightning", "torch", "jsonargparse")


def _fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter (this checkout first on the path); it prints a JSON object."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_climateml_and_its_command_does_not_import_lightning():
    got = _fresh("import sys, json, climateml, climateml.cli, climateml.data, climateml.data.synthetic\n"
                 f"print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))")
    assert got == {m: False for m in HEAVY}


def test_help_and_synth_run_without_lightning_or_torch(tmp_path):
    """The top-level help lists every command; `synth` writes its files; neither imports the training stack."""
    out = tmp_path / "radar"
    got = _fresh(
        "import sys, io, json, contextlib\n"
        "from climateml.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    rc_help = main(['--help'])\n"
        f"    rc_synth = main(['synth', 'nowcasting', '--out', {str(out)!r}, '--n-frames', '3', '--ny', '4', '--nx', '4'])\n"
        f"print(json.dumps({{'help': buf.getvalue(), 'rc': [rc_help, rc_synth],"
        f" 'heavy': {{m: m in sys.modules for m in {HEAVY!r}}}}}))")
    assert got["rc"] == [0, 0]
    assert got["heavy"] == {m: False for m in HEAVY}
    for command in ("fit", "validate", "test", "predict", "attribute", "demo", "synth"):
        assert f"\n  {command} " in got["help"], command
    assert len(list(out.glob("RAD_*.nc"))) == 3

