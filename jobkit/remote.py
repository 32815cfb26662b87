"""Building shell command lines for a remote POSIX sh safely."""

from __future__ import annotations

import shlex


def base_dir_word(base_dir: str | None) -> str:
    """The remote base directory as one shell word: ``~`` is expanded by the remote shell
    (``"$HOME"``), everything else is quoted literally. None means the protocol's default."""
    if base_dir is None or base_dir in ("~/.jobkit", "$HOME/.jobkit"):
        return '"$HOME/.jobkit"'
    if base_dir == "~":
        return '"$HOME"'
    if base_dir.startswith("~/"):
        return '"$HOME"/' + shlex.quote(base_dir[2:])
    return shlex.quote(base_dir)

