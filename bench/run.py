"""Run the benchmarks in bench/: ``python3 dev.py bench`` runs them all, ``python3 dev.py bench NAME [options]``
one of them (``python3 dev.py bench NAME --help`` lists its options).

They need the local PostgreSQL (127.0.0.1:5432, user postgres) and, for the HTTP ones, Redis (127.0.0.1:6379).
Each prints its figures and writes them as JSON to bench/results/ (git-ignored).
"""

from __future__ import annotations

import importlib
import sys

# Name on the command line: the module in bench/ with its main(arguments) -> exit status.
BENCHMARKS = {
    "auth": "auth",
    "audit-append": "audit_append",
    "audit-verify": "audit_verify",
    "patients": "patients",
    "scheduling": "scheduling",
    "queue": "opd_queue",
}


def main(arguments: list[str]) -> int:
    if arguments and arguments[0] in {"-h", "--help", "help"}:
        print(__doc__)
        print("benchmarks: " + ", ".join(BENCHMARKS))
        return 0
    if arguments and arguments[0] in BENCHMARKS:
        return int(importlib.import_module(BENCHMARKS[arguments[0]]).main(arguments[1:]))
    if arguments:
        print(f"unknown benchmark {arguments[0]!r}; one of: {', '.join(BENCHMARKS)} (or none for all)", file=sys.stderr)
        return 2
    failed = []
    for name, module in BENCHMARKS.items():
        print(f"[bench] === {name} ===", flush=True)
        try:
            status = int(importlib.import_module(module).main([]))
        except Exception as error:  # one benchmark's failure must not keep the others from running
            print(f"[bench] {name} failed: {type(error).__name__}: {error}", file=sys.stderr)
            status = 1
        if status != 0:
            failed.append(name)
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
