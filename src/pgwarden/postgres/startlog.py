"""Why PostgreSQL refused to start, in one line, from the tail of its log: the FATAL (or PANIC)
line and the lines the same process wrote just before it, which carry the cause (a bad parameter
is a LOG line `invalid value for parameter "max_connections": "lots"` followed by `FATAL:
configuration file ... contains errors`). The agent logs this line and shows it in /status, so an
operator sees the cause without reading the server log."""

from __future__ import annotations

import re

_LEVEL = re.compile(r"\b(LOG|FATAL|PANIC|ERROR|WARNING|DETAIL|HINT|CONTEXT):\s+")
_PID = re.compile(r"\[(\d+)\]")
_CAUSES = 4  # lines of the failing process kept before its FATAL line


def _strip(line: str) -> str:
    """The message without the log_line_prefix; levels other than LOG kept ("FATAL: ...")."""
    m = _LEVEL.search(line)
    if m is None:
        return line.strip()
    rest = line[m.end():].strip()
    return rest if m.group(1) == "LOG" else f"{m.group(1)}: {rest}"


def startup_failure(log_tail: str) -> str | None:
    """The last FATAL/PANIC of the log tail with its cause, or None when there is none."""
    lines = log_tail.splitlines()
    fatal = next((i for i in range(len(lines) - 1, -1, -1)
                  if re.search(r"\b(FATAL|PANIC):\s", lines[i])), None)
    if fatal is None:
        return None
    pid = _PID.search(lines[fatal].split("FATAL:")[0].split("PANIC:")[0])
    picked = [lines[fatal]]
    if pid is not None:
        for line in reversed(lines[max(0, fatal - 20):fatal]):
            m = _PID.search(line)
            if m is None or m.group(1) != pid.group(1) or len(picked) > _CAUSES:
                break
            picked.insert(0, line)
    # The lines after the FATAL line from the same process (HINT, DETAIL) help too.
    for line in lines[fatal + 1:fatal + 3]:
        if pid is not None and (m := _PID.search(line)) and m.group(1) == pid.group(1) \
                and re.search(r"\b(DETAIL|HINT):", line):
            picked.append(line)
    return "; ".join(_strip(line) for line in picked)
