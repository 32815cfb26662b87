"""python -m tests.broken_wrappers [DIR]: write every broken wrapper to DIR (default ./broken-wrappers)."""

import argparse
from pathlib import Path

from tests.broken_wrappers import BUGS, write

ap = argparse.ArgumentParser(prog="python -m tests.broken_wrappers", description=__doc__)
ap.add_argument("dir", nargs="?", type=Path, default=Path("broken-wrappers"),
                help="where to write them (created if missing)")
args = ap.parse_args()
args.dir.mkdir(parents=True, exist_ok=True)
for bug in BUGS:
    print(write(bug, args.dir))
