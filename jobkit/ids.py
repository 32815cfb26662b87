"""Job ids: the wrapper's rule, in one place for the library."""

from __future__ import annotations

import re
import secrets
import time

from jobkit.errors import InvalidJobId

ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def validate_id(job_id: str) -> str:
    """Return ``job_id`` if it matches ``^[A-Za-z0-9_-]{1,64}$``, else raise InvalidJobId."""
    if not isinstance(job_id, str) or ID_RE.fullmatch(job_id) is None:
        raise InvalidJobId(f"invalid job id {job_id!r}: use 1-64 of A-Z a-z 0-9 _ -")
    return job_id


def new_id(prefix: str = "j") -> str:
    """A fresh, safe, roughly time-ordered id: ``j-20261123T011800-3f9a1c2b``."""
    validate_id(prefix)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return validate_id(f"{prefix}-{stamp}-{secrets.token_hex(4)}")
