"""matplotlib as every plot of labeler's needs it: headless, and names drawn as text."""

from __future__ import annotations


def headless_matplotlib() -> None:
    """matplotlib on the Agg backend (no display), with ``$...$`` in text drawn as is, not as TeX: class,
    project and annotator names come from users and the network ("$5 note", "a$b$@x")."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
