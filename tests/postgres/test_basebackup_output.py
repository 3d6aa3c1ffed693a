"""pg_basebackup's --progress output read in chunks: progress lines become byte counts, the rest
stays the error text."""

from __future__ import annotations

import sys

from pgwarden.postgres import osuser
from pgwarden.postgres.basebackup_output import ProgressReader, parse_progress_line, strip_progress


def test_a_progress_line_gives_bytes() -> None:
    assert parse_progress_line("    0/22893 kB (0%), 0/1 tablespace") == (0, 22893 * 1024)
    assert parse_progress_line("22901/22901 kB (100%), 1/1 tablespace (/d/base/1/1259)") == \
        (22901 * 1024, 22901 * 1024)
    assert parse_progress_line("pg_basebackup: error: could not connect") is None
    assert parse_progress_line("") is None


def test_chunks_split_anywhere_report_each_complete_line_once() -> None:
    got: list[tuple[int, int]] = []
    reader = ProgressReader(lambda d, t: got.append((d, t)))
    text = ("    0/100 kB (0%), 0/1 tablespace\r  50/100 kB (50%), 0/1 tablespace\r"
            "100/100 kB (100%), 1/1 tablespace\n")
    for i in range(0, len(text), 7):  # a line arrives in several reads
        reader.feed(text[i:i + 7])
    reader.close()
    assert got == [(0, 102400), (51200, 102400), (102400, 102400)]


def test_counts_never_go_back_and_the_total_grows_past_done() -> None:
    got: list[tuple[int, int]] = []
    reader = ProgressReader(lambda d, t: got.append((d, t)))
    reader.feed("60/100 kB (60%)\n40/100 kB (40%)\n130/100 kB (100%)\n")
    assert got == [(61440, 102400), (61440, 102400), (133120, 133120)]


def test_an_unterminated_last_line_counts_at_close() -> None:
    got: list[tuple[int, int]] = []
    reader = ProgressReader(lambda d, t: got.append((d, t)))
    reader.feed("10/10 kB (100%), 1/1 tablespace")
    assert got == []
    reader.close()
    assert got == [(10240, 10240)]


def test_the_error_text_keeps_everything_but_progress() -> None:
    err = ("    0/22893 kB (0%), 0/1 tablespace\r"
           "pg_basebackup: error: could not read COPY data: server closed the connection\n"
           "pg_basebackup: removing data directory \"/d\"\n")
    assert strip_progress(err) == (
        "pg_basebackup: error: could not read COPY data: server closed the connection\n"
        "pg_basebackup: removing data directory \"/d\"")
    assert strip_progress("") == ""


def test_stderr_is_handed_over_as_it_arrives() -> None:
    # A real child: stderr pieces reach the callback before the child ends, stdout is kept.
    pieces: list[str] = []
    script = ("import sys, time\n"
              "sys.stderr.write('1/2 kB (50%)\\n'); sys.stderr.flush(); time.sleep(0.2)\n"
              "sys.stdout.write('out'); sys.stderr.write('2/2 kB (100%)\\n')\n")
    res = osuser.run_as_reading_stderr(None, [sys.executable, "-c", script], 10.0, pieces.append)
    assert res.returncode == 0 and res.stdout == "out"
    assert res.stderr == "1/2 kB (50%)\n2/2 kB (100%)\n"
    assert len(pieces) >= 2 and pieces[0] == "1/2 kB (50%)\n"


def test_a_child_past_its_timeout_is_killed() -> None:
    import subprocess
    import time

    started = time.monotonic()
    try:
        osuser.run_as_reading_stderr(None, [sys.executable, "-c", "import time; time.sleep(30)"], 0.5,
                                     lambda _: None)
    except subprocess.TimeoutExpired:
        pass
    else:
        raise AssertionError("no TimeoutExpired")
    assert time.monotonic() - started < 5
