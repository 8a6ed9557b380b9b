"""The code type-checks under mypy --strict and passes ruff's lint and import order."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_code_type_checks_strictly() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_code_passes_lint_and_keeps_its_imports_in_order() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "lannode", "plugins", "sim", "tests"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
