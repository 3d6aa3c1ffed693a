"""pg_basebackup's `--progress` output on stderr, read as it comes: the `DONE/TOTAL kB (P%), ...`
lines (ended by \\r on a terminal, \\n otherwise) become (done_bytes, total_bytes) updates, and
everything else stays the error text it was without `--progress`. Pure functions, no I/O."""

from __future__ import annotations

import re
from collections.abc import Callable

# "  2048/22893 kB (8%), 0/1 tablespace (...)": what every PostgreSQL since 9.x prints.
_PROGRESS = re.compile(r"^\s*(\d+)/(\d+) kB \((\d+)%\)")
_SEGMENT = re.compile(r"[\r\n]")

Progress = Callable[[int, int], None]  # (done_bytes, total_bytes)


def parse_progress_line(line: str) -> tuple[int, int] | None:
    """(done_bytes, total_bytes) from one progress line, None for any other line."""
    m = _PROGRESS.match(line)
    if m is None:
        return None
    return int(m.group(1)) * 1024, int(m.group(2)) * 1024


def strip_progress(stderr: str) -> str:
    """pg_basebackup's stderr without its progress lines: the error text for messages."""
    kept = [seg for seg in _SEGMENT.split(stderr) if seg.strip() and parse_progress_line(seg) is None]
    return "\n".join(kept).strip()


class ProgressReader:
    """Fed stderr in chunks as they arrive (a line may be split across chunks); calls `report`
    once per complete progress line, never with a smaller done than before."""

    def __init__(self, report: Progress) -> None:
        self._report = report
        self._partial = ""
        self._done = 0

    def feed(self, chunk: str) -> None:
        parts = _SEGMENT.split(self._partial + chunk)
        self._partial = parts.pop()  # text after the last \r or \n: not a complete line yet
        for part in parts:
            got = parse_progress_line(part)
            if got is None:
                continue
            done, total = got
            # The server's total is an estimate that pg_basebackup raises when done passes it.
            done = max(done, self._done)
            self._done = done
            self._report(done, max(total, done))

    def close(self) -> None:
        """End of output: a last line without its line end still counts."""
        if self._partial:
            self.feed("\n")
