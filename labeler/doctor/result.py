"""One check's result: its name, whether it passed, what was found, and what fixes it."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False  # passed, but worth a look (low disk, slow imports, not checked); not a failure

    @property
    def status(self) -> str:
        return "FAIL" if not self.ok else "warn" if self.warning else "ok"

    def line(self) -> str:
        """``name: ok|warn|FAIL detail (fix: ...)`` on one line."""
        fix = f" -> fix: {self.fix}" if self.fix and (not self.ok or self.warning) else ""
        return f"{self.status:<4} {self.name}: {self.detail}{fix}"

    def as_dict(self) -> dict:
        return {**asdict(self), "status": self.status}


def passed(name: str, detail: str) -> Check:
    return Check(name, True, detail)


def failed(name: str, detail: str, fix: str) -> Check:
    return Check(name, False, detail, fix)


def warned(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, True, detail, fix, warning=True)
