"""The guarantees table: every loss/duplication scenario reports its counts (conftest prints them)."""

from typing import Any

GUARANTEE_ROWS: list[dict[str, Any]] = []
GUARANTEE_COLUMNS = ("scenario", "sent", "answered_2xx", "applied", "duplicates_suppressed", "lost")


class Guarantees:
    """Record one row per scenario: what was sent, acknowledged, applied, deduplicated, lost."""

    def record(self, scenario: str, *, sent: int, answered_2xx: int, applied: int, duplicates_suppressed: int,
               lost: int) -> None:
        GUARANTEE_ROWS.append({"scenario": scenario, "sent": sent, "answered_2xx": answered_2xx,
                                "applied": applied, "duplicates_suppressed": duplicates_suppressed, "lost": lost})
