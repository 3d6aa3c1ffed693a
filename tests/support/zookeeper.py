"""A real standalone ZooKeeper (Debian's `zookeeper` package) for tests: own port, own data dir,
stopped by its PID. The server's configuration and command line are `pgwarden.local.zookeeper`'s,
the same `pgwarden local up --store zookeeper` runs."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

from pgwarden.local.zookeeper import MAX_SESSION_MS, MIN_SESSION_MS, TICK_MS, command, config_text, healthy
from pgwarden.local.zookeeper import zookeeper_available as zookeeper_available
from pgwarden.procinfo import stopped
from tests.support.ports import free_port
from tests.support.server_exit import raise_if_exited
from tests.support.wait import wait_for


class ZooKeeperServer:
    """`with ZooKeeperServer(tmp_path) as zk:` starts ZooKeeper on a free loopback port.

    A short tick (`tick_ms`) lets sessions as short as the 2 s minimum ttl be granted and expire
    on time (the server grants between `min_session_ms` and `max_session_ms`, and expires sessions
    on tick boundaries). `stop()`/`start()` restart it on the same port and data;
    `pause()`/`resume()` freeze it (SIGSTOP/SIGCONT) so calls to it stall instead of failing.
    """

    def __init__(
        self,
        base_dir: Path,
        name: str = "zookeeper",
        tick_ms: int = TICK_MS,
        min_session_ms: int = MIN_SESSION_MS,
        max_session_ms: int = MAX_SESSION_MS,
    ) -> None:
        if not zookeeper_available():
            raise RuntimeError("no ZooKeeper: install Debian's `zookeeper` package (and java)")
        self.dir = base_dir / name
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "server.log"
        self.config_path = self.dir / "zoo.cfg"
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.tick_ms = tick_ms
        self.min_session_ms = min_session_ms
        self.max_session_ms = max_session_ms
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("zookeeper is not running")
        return self._proc.pid

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            config_text(self.data_dir, self.port, self.tick_ms, self.min_session_ms, self.max_session_ms)
        )

    def command(self) -> list[str]:
        return command(self.config_path)

    def healthy(self) -> bool:
        return healthy(self.port)

    def start(self, timeout: float = 60.0) -> None:
        if self._proc is not None:
            raise RuntimeError("zookeeper already running")
        self._write_config()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a test's Ctrl-C must not reach it; we stop it ourselves
            )
        proc = self._proc
        try:
            # Poll, but fail at once if the JVM exits (bad config, port taken, ...).
            deadline = time.monotonic() + timeout
            while not self.healthy():
                if proc.poll() is not None:
                    tail = self.log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"zookeeper exited with {proc.returncode}:\n{tail}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"zookeeper on {self.endpoint} not up after {timeout:g}s")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def check_running(self) -> None:
        raise_if_exited(self._proc, self.log_path, f"zookeeper on {self.endpoint}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            if self._paused:
                os.kill(proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._paused = False

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        self._paused = False

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        # SIGSTOP is delivered asynchronously (every thread must stop): wait until it has.
        wait_for(lambda: stopped(self.pid), 10, "the server stopped by SIGSTOP")
        self._paused = True

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self._paused = False

    def __enter__(self) -> ZooKeeperServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
