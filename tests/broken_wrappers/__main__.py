"""python -m tests.broken_wrappers [DIR]: write every broken wrapper to DIR."""

import sys
from pathlib import Path

from tests.broken_wrappers import BUGS, write

out = Path(sys.argv[1] if len(sys.argv) > 1 else "broken-wrappers")
out.mkdir(parents=True, exist_ok=True)
for bug in BUGS:
    print(write(bug, out))
