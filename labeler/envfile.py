"""The environment file ``labeler demo`` leaves behind, so the CLI reaches the demo with nothing typed.

One ``export NAME='value'`` per line: a shell can ``source`` it, and the CLI
reads it itself from ``./labeler-demo/labeler.env`` (or ``$LABELER_ENV_FILE``).
Variables already set in the environment win over the file.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

DEFAULT = Path("labeler-demo") / "labeler.env"


def write_env_file(path: Path, values: Mapping[str, object]) -> Path:
    """Write ``values`` as ``export`` lines, readable by the owner only (it holds the API token)."""
    lines = ["# written by `labeler demo`: the labeler CLI reads it when run from the folder that holds",
             f"# labeler-demo/ (or with LABELER_ENV_FILE={path}); in a shell: source {path}"]
    lines += [f"export {k}={shlex.quote(str(v))}" for k, v in values.items()]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return Path(path)


def read_env_file(path: Path) -> dict[str, str]:
    """The ``export NAME=value`` pairs of ``path`` (other lines are ignored)."""
    values = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line.startswith("export ") or "=" not in line:
            continue
        name, _, raw = line[len("export "):].partition("=")
        words = shlex.split(raw)
        values[name.strip()] = words[0] if words else ""
    return values


def load_env_file(path: Path | None = None) -> Path | None:
    """Put the file's variables into ``os.environ`` where they are not set; returns the file read, if any."""
    path = Path(path or os.environ.get("LABELER_ENV_FILE") or DEFAULT)
    if not path.is_file():
        return None
    for name, value in read_env_file(path).items():
        os.environ.setdefault(name, value)
    return path
