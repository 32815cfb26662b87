"""jobkit: run jobs on remote Linux hosts and know, always, how each job really ended."""

from __future__ import annotations

import warnings
from pathlib import Path

# asyncssh's import names cryptography's DSA classes, which cryptography >= 47 deprecates with a
# warning at every start; jobkit never uses DSA keys, and a user should not see that noise.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh(\..*)?$")

__version__ = "0.1.0"

#: The repository's wrapper directory when running from a checkout, else the packaged copy.
_HERE = Path(__file__).resolve().parent


def wrapper_dir() -> Path:
    """Directory holding ``job_wrapper.sh`` and ``server_schema.sql`` (checkout or installed)."""
    checkout = _HERE.parent / "wrapper"
    if (checkout / "job_wrapper.sh").is_file():
        return checkout
    return _HERE / "data"
