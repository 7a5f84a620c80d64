"""The layering rules of DESIGN.md: harness imports neither analysis nor slurm, the grid loads without torch,
and the command-line layer loads Ray, submitit and matplotlib only when a command runs."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "harness"


def imported(path: Path) -> set[str]:
    """Top-level package of every import statement in a module, wherever in the module it sits."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(HARNESS.glob("*.py")), ids=lambda p: p.name)
def test_harness_imports_neither_analysis_nor_slurm_nor_the_cli(path):
    assert not imported(path) & {"analysis", "slurm", "heurbench"}


@pytest.mark.parametrize("module, absent", [
    ("harness.grid", ["torch", "ray"]),
    ("harness.config", ["torch"]),
    ("heurbench.cli", ["ray", "submitit", "matplotlib"]),
])
def test_importing_loads_no_heavy_dependency(module, absent):
    code = f"import sys, {module}; print([m for m in {absent!r} if m in sys.modules])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr[-2000:] or r.stdout
