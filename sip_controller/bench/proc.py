"""The processes under measurement: the real controller (``sipctl serve``) and the floor responder.

Each runs as its own child process on loopback, so the load peer's CPU is never charged to them; psutil reads
their CPU time and resident memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass
class Child:
    """A running child process listening on ``127.0.0.1:port``."""

    name: str
    proc: asyncio.subprocess.Process
    port: int
    ps: psutil.Process

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye (an OOM kill, a lost node); ``await proc.wait()`` to reap it."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until ``GET /readyz`` answers 200 (the store open, the lease registered), bounded by ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        request = f"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nConnection: close\r\n\r\n".encode()
        while True:
            if self.proc.returncode is not None:
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode} before it was ready")
            status = b""
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(2):
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    try:
                        writer.write(request)
                        status = await reader.readline()
                    finally:
                        writer.close()
                        with contextlib.suppress(OSError):
                            await writer.wait_closed()
            if status.split(b" ")[1:2] == [b"200"]:
                return
            if loop.time() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:g} s (last status line {status!r})")
            await asyncio.sleep(0.05)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """The environment without anything that would configure the controller from outside the bench."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SIPCTL_", "OPENAI_"))}


async def _wait_listening(proc: asyncio.subprocess.Process, port: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"exited with code {proc.returncode} during start-up")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                raise RuntimeError(f"not listening on port {port} after {timeout:.0f}s") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


async def _stop(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


PROFILE_ENV = "SIPCTL_BENCH_PYSPY"


@contextlib.asynccontextmanager
async def _profiled(pid: int) -> AsyncIterator[None]:
    """With ``SIPCTL_BENCH_PYSPY=<dir>`` (and py-spy installed), sample the controller into collapsed stacks."""
    out_dir = os.environ.get(PROFILE_ENV)
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not out_dir or spy is None:
        yield
        return
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, f"controller-{pid}.txt")
    profiler = await asyncio.create_subprocess_exec(
        spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250", "--output", out,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        await _stop(profiler, signal.SIGINT)


@contextlib.asynccontextmanager
async def controller(
    *,
    api_base: str,
    api_key: str,
    webhook_secret: str,
    max_calls: int,
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[Child]:
    """``sipctl serve`` as a child process with built-in default settings (no config file), logging errors."""
    port = free_port()
    env = _clean_env()
    env.update(
        {
            "OPENAI_BASE_URL": api_base,
            "OPENAI_API_KEY": api_key,
            "OPENAI_WEBHOOK_SECRET": webhook_secret,
            "SIPCTL_LOG_LEVEL": "error",
            "SIPCTL_LOG_FORMAT": "json",
            "SIPCTL_LIMITS__MAX_CONCURRENT_CALLS": str(max_calls),
            **(extra_env or {}),
        }
    )
    with tempfile.TemporaryDirectory(prefix="sipctl-bench-") as workdir:
        log_path = Path(workdir) / "controller.log"
        with log_path.open("wb") as log:
            # cwd: an empty directory, so a developer's config/sipctl.yaml does not change what is measured
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sip_controller", "serve", "--host", "127.0.0.1", "--port", str(port),
                cwd=workdir, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )
        try:
            try:
                await _wait_listening(proc, port, timeout=30)
            except RuntimeError as exc:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"controller {exc}; its output:\n{tail}") from None
            async with _profiled(proc.pid):
                yield Child("controller", proc, port, psutil.Process(proc.pid))
        finally:
            await _stop(proc)
            errors = log_path.read_text(errors="replace").strip()
            if errors:
                print(f"bench: the controller logged:\n{errors[-3000:]}", file=sys.stderr)


@contextlib.asynccontextmanager
async def floor(*, api_base: str, api_key: str, webhook_secret: str, attach: bool = False) -> AsyncIterator[Child]:
    """The minimal responder (``sip_controller.bench.floor``) as a child process; ``attach``: with the sideband."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sip_controller.bench.floor", "--secret", webhook_secret, "--api-base", api_base,
        "--api-key", api_key, *(["--attach"] if attach else []),
        env=_clean_env(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode().split()
        if len(line) != 2 or line[0] != "READY":
            raise RuntimeError(f"floor responder did not start (said {line!r})")
        yield Child("floor", proc, int(line[1]), psutil.Process(proc.pid))
    finally:
        await _stop(proc)
        await proc.stdout.read()
