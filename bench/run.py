"""Run the benchmarks in bench/ (``python3 dev.py bench``): for now, the authentication benchmark of issue 2.

It needs the local PostgreSQL (127.0.0.1:5432, user postgres) and Redis (127.0.0.1:6379). Options are passed
on to the benchmark: ``python3 dev.py bench --help`` lists them. Figures are printed and written as JSON to
bench/results/ (git-ignored).
"""

from __future__ import annotations

import sys

import auth

if __name__ == "__main__":
    sys.exit(auth.main(sys.argv[1:]))
