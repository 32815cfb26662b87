"""Summarise `mutmut results --all=true` (stdin): the score per module and the survivors per function."""

from __future__ import annotations

import collections
import re
import sys

LINE = re.compile(r"\s*(jobkit\.\w+)\.(\S+?)__mutmut_\d+: (.*)$")
KIND = {"killed": "killed", "timeout": "killed", "survived": "survived"}


def score(c: collections.Counter[str]) -> str:
    tested = c["killed"] + c["survived"]
    return f"{c['killed']}/{tested} killed ({100 * c['killed'] / tested:.0f}%)" if tested else "no tested mutant"


def main() -> None:
    per_fn: dict[tuple[str, str], collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in sys.stdin:
        m = LINE.match(line)
        if m:
            fn = m.group(2).replace("\u01c1", ".").removeprefix("x_").removeprefix("x.").strip(".")
            per_fn[(m.group(1), fn)][KIND.get(m.group(3), "untested")] += 1
    per_mod: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for (module, _), c in per_fn.items():
        per_mod[module].update(c)
    total: collections.Counter[str] = collections.Counter()
    for c in per_mod.values():
        total.update(c)
    print(f"mutation score: {score(total)}; {total['untested']} mutant(s) in code no selected test runs")
    for module, c in sorted(per_mod.items()):
        print(f"  {module:<16} {score(c)}")
    print("survivors by function:")
    for (module, fn), c in sorted(per_fn.items()):
        if c["survived"]:
            print(f"  {module}.{fn}: {c['survived']} survived of {c['killed'] + c['survived']}")


if __name__ == "__main__":
    main()
