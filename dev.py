#!/usr/bin/env python3
"""Developer entry point that needs nothing but Python 3.11+: it creates .venv and installs sehat into it.

python3 dev.py run     start the demo server on SQLite (http://127.0.0.1:8000)
python3 dev.py test    lint and run the whole test suite
python3 dev.py bench   run the benchmarks in bench/ (needs PostgreSQL and Redis)
python3 dev.py sehat … any sehat command inside the virtual environment
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".sehat-installed"


def _ensure_environment() -> None:
    """Create the virtual environment and (re)install when pyproject.toml changed since the last install."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this file is what an older python3 runs first
        sys.exit(f"sehat needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        print("creating virtual environment in .venv", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    print("installing sehat and its dependencies into .venv", flush=True)
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(wanted)


def _run(*command: str) -> int:
    return subprocess.run(command, cwd=ROOT).returncode


def main(arguments: list[str]) -> int:
    if not arguments or arguments[0] in {"-h", "--help", "help"}:
        print(__doc__)
        return 0
    task, rest = arguments[0], arguments[1:]
    _ensure_environment()
    if task == "run":
        return _run(str(BIN / "sehat"), "demo", *rest)
    if task == "test":
        targets = [name for name in ("src", "tests", "bench", "dev.py") if (ROOT / name).exists()]
        lint = _run(str(BIN / "ruff"), "check", *targets)
        if lint != 0:
            return lint
        return _run(str(PYTHON), "-m", "pytest", *rest)
    if task == "bench":
        return _run(str(PYTHON), "bench/run.py", *rest)
    if task == "sehat":
        return _run(str(BIN / "sehat"), *rest)
    print(f"unknown task {task!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
