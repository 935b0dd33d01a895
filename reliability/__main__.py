"""`python -m reliability [--quick] [suite ...]`: run suites, print and write RELIABILITY.md."""

from __future__ import annotations

import argparse
import importlib
import sys

from reliability import report

SUITES = ("chaos", "fuzz", "load", "security")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability", description=__doc__)
    parser.add_argument("suites", nargs="*", metavar="suite", help=f"any of {', '.join(SUITES)}")
    parser.add_argument("--quick", action="store_true", help="the short run CI uses")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.suites) - set(SUITES))
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    from bench.__main__ import machine

    results = []
    for name in args.suites or SUITES:
        print(f"reliability: running {name}{' (quick)' if args.quick else ''}…", flush=True)
        result = importlib.import_module(f"reliability.{name}").run(quick=args.quick)
        results.append(result)
        for f in result.figures:
            verdict = {True: "met", False: "MISSED", None: ""}[f.met]
            print(f"  {f.name}: {f.value} {f'(goal {f.goal}) ' if f.goal else ''}{verdict}")
    report.write(results, machine())
    print(f"wrote {report.REPORT_MD}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
