"""Lab timings: image build (cold: `--force`, base image and debootstrap tarball cached; or
cached: inputs unchanged) and warm start-to-SSH-ready (container start + real SSH login +
wrapper deployed), per target.

    python bench/lab_times.py [--cold] [--starts 5] [TARGET...]
"""

from __future__ import annotations

import argparse
import statistics
import time

from jobkit.lab import Lab, offline_targets
from jobkit.lab.build import build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*")
    ap.add_argument("--cold", action="store_true", help="force a rebuild of every image")
    ap.add_argument("--starts", type=int, default=5)
    args = ap.parse_args()
    targets = args.targets or ["local", *offline_targets()]
    rows = []
    for t in targets:
        build_s = "-"
        if t != "local":
            r = build(t, force=args.cold, progress=lambda _m: None)
            build_s = f"{r.seconds:.1f}s {'built' if r.built else 'cached'}"
        ready = []
        for _ in range(args.starts):
            with Lab() as lab:
                start = time.monotonic()
                lab.start(t)
                ready.append(time.monotonic() - start)
        rows.append((t, build_s, statistics.median(ready), max(ready)))
    print(f"{'target':<16} {'image build':<16} {'start-to-ready median':>22} {'max':>8}")
    for t, b, med, mx in rows:
        print(f"{t:<16} {b:<16} {med:21.2f}s {mx:7.2f}s")


if __name__ == "__main__":
    main()
