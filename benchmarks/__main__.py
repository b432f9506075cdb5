"""``python -m benchmarks [--quick] [--out FILE] [NAME ...]``: every benchmark (or the named ones), one after the
other, each printing its section of RESULTS.md (and appending it to ``--out``). ``--quick`` runs each at a size
that finishes in a few minutes in all: CI runs it to check the benchmarks work, never to judge speed."""

from __future__ import annotations

import argparse
import importlib
import time

NAMES = ("data", "export", "overhead", "throughput", "search")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks")
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(NAMES)} (default: all)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    unknown = sorted(set(args.names) - set(NAMES))
    if unknown:
        ap.error(f"no benchmark {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    for name in args.names or NAMES:
        start = time.perf_counter()
        argv = [*(["--quick"] if args.quick else []), *(["--out", args.out] if args.out else [])]
        importlib.import_module(f"benchmarks.bench_{name}").main(argv)
        print(f"[benchmarks] {name}: {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
