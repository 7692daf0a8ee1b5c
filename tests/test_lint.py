"""The code passes ruff's pyflakes rules (undefined names, unused imports and variables, redefinitions) and has no
syntax errors: an undefined name in an error path otherwise surfaces only when that error happens, as exit 70."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
