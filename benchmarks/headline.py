"""Copy the headline table of benchmarks/RESULTS.md into README.md, so that the README quotes the
results page rather than retyping it. README keeps the figure, value and goal columns and the log
link; links are made relative to the repository root.

    python benchmarks/headline.py           # rewrite README.md's table (between the headline markers)
    python benchmarks/headline.py --check   # exit 1 if README.md's table is not the generated one
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS, README = ROOT / "benchmarks" / "RESULTS.md", ROOT / "README.md"
BEGIN, END = "<!-- headline:begin -->", "<!-- headline:end -->"
COLUMNS = ("figure", "goal", "value", "command", "log", "commit", "machine")
KEPT = ("figure", "value", "goal", "log")


def between(text: str, path: Path) -> tuple[int, int]:
    begin, end = text.find(BEGIN), text.find(END)
    if not 0 <= begin < end:
        raise SystemExit(f"{path}: the markers {BEGIN} ... {END} are missing or out of order")
    return begin + len(BEGIN), end


def cells(line: str) -> list[str]:
    # cells hold no "|" of their own (checked: every row must have exactly len(COLUMNS) cells)
    return [c.strip() for c in line.strip().strip("|").split("|")]


def rooted(cell: str) -> str:
    """Links relative to benchmarks/ made relative to the repository root."""
    return re.sub(r"\]\((?!https?:|#|/)([^)]+)\)", r"](benchmarks/\1)", cell)


def readme_table(results_text: str) -> str:
    a, b = between(results_text, RESULTS)
    rows = [line for line in results_text[a:b].splitlines() if line.strip().startswith("|")]
    header = cells(rows[0])
    if tuple(header) != COLUMNS:
        raise SystemExit(f"{RESULTS}: the headline table's columns are {header}, expected {list(COLUMNS)}")
    out = ["| " + " | ".join(KEPT) + " |", "|" + "---|" * len(KEPT)]
    for line in rows[2:]:
        row = cells(line)
        if len(row) != len(COLUMNS):
            raise SystemExit(f"{RESULTS}: a headline row has {len(row)} cells, expected {len(COLUMNS)}: {line}")
        named = dict(zip(COLUMNS, row))
        out.append("| " + " | ".join(rooted(named[k]) for k in KEPT) + " |")
    return "\n" + "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if README.md's table is out of date; write nothing")
    args = p.parse_args(argv)
    readme = README.read_text()
    a, b = between(readme, README)
    table = readme_table(RESULTS.read_text())
    if args.check:
        if readme[a:b] != table:
            print("README.md: the headline table differs from benchmarks/RESULTS.md's; run "
                  "`python benchmarks/headline.py`", file=sys.stderr)
            return 1
        return 0
    README.write_text(readme[:a] + table + readme[b:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
