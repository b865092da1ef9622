"""Child processes of the local stack and the tests: started, waited for, and always stopped.

Every child gets ``PR_SET_PDEATHSIG`` so it dies with its parent, even when the parent is
SIGKILLed, and `ManagedProcess.stop` is idempotent, so fixtures and the launcher can always call it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def parent_death_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die with SIGKILL when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    prctl = libc.prctl
    parent_pid = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        # If the parent died before prctl took effect, the signal will never come.
        if os.getppid() != parent_pid:
            os._exit(1)

    return hook


class ManagedProcess:
    """One child process with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(os.environ) | dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Self:
        """Start the process (its stdout and stderr go to ``log_path``)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            preexec_fn=parent_death_hook(),
        )
        log.info("started name=%s pid=%s", self.name, self.process.pid)
        return self

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    @property
    def alive(self) -> bool:
        """Whether the process is running."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The end of the process's output, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_http(self, url: str, *, timeout: float = 20.0, status: int = 200) -> None:
        """Wait until ``url`` answers ``status``; raise with the log tail if the process dies."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                answer = httpx.get(url, timeout=1.0)
                if answer.status_code == status:
                    return
                last = f"status {answer.status_code}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.05)
        tail = self.log_tail()
        raise TimeoutError(f"{self.name}: {url} not answering {status} ({last}):\n{tail}")

    def send(self, sig: int) -> None:
        """Send a signal to the process (if it runs)."""
        if self.alive:
            assert self.process is not None
            self.process.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, *, timeout: float = 10.0) -> int | None:
        """Stop the process (``sig``, then SIGKILL after ``timeout``); returns its exit code."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("killing name=%s after %ss", self.name, timeout)
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
