"""A private Prometheus server (Debian's ``prometheus``) on loopback, scraping the
controller's ``/metrics`` the way an operator configures it: HTTPS with the
deployment CA as the only trust anchor and a metrics token as the bearer
credential, read from a 0600 file. Tests query its HTTP API for the series.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from zerogate.netops.command import spawn
from zerogate.testbed.ports import free_port

_LOG_TAIL = 40


class PrometheusError(RuntimeError):
    pass


def render_config(target: str, ca_file: Path | None, token_file: Path | None, interval: float) -> str:
    """prometheus.yml for one job (JSON is valid YAML): the controller over HTTPS pinned to
    ``ca_file`` with the token in ``token_file``; without them a daemon's plain-HTTP /metrics."""
    job: dict[str, object] = {
        "job_name": "zerogate-controller" if ca_file else "zerogate-daemon",
        "scheme": "https" if ca_file else "http",
        "metrics_path": "/metrics",
        "scrape_interval": f"{int(interval * 1000)}ms",
        "scrape_timeout": f"{int(interval * 1000)}ms",
        "static_configs": [{"targets": [target]}],
    }
    if ca_file and token_file:
        job["tls_config"] = {"ca_file": str(ca_file)}
        job["authorization"] = {"type": "Bearer", "credentials_file": str(token_file)}
    return json.dumps({"global": {"evaluation_interval": "1s"}, "scrape_configs": [job]}, indent=1) + "\n"


@dataclass
class Prometheus:
    base: Path
    target: str  # host:port of the controller (or of a daemon: ca_pem b"" scrapes plain HTTP)
    ca_pem: bytes
    token: str
    interval: float = 1.0
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Self:
        binary = shutil.which("prometheus")
        if binary is None:
            raise PrometheusError(
                "prometheus is not installed (Debian package 'prometheus'; scripts/bootstrap)"
            )
        self.base.mkdir(parents=True, exist_ok=True)
        ca: Path | None = None
        token: Path | None = None
        if self.ca_pem:
            ca, token = self.base / "ca.pem", self.base / "token"
            ca.write_bytes(self.ca_pem)
            token.touch(mode=0o600)
            token.write_text(self.token + "\n")
        config = self.base / "prometheus.yml"
        config.write_text(render_config(self.target, ca, token, self.interval))
        self.port = free_port()
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.base / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=info",
        ]
        with open(self.base / "prometheus.out", "ab") as out:
            self.process = spawn(argv, stdout=out)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with status {self.process.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise PrometheusError(f"prometheus not ready within {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.1)  # polling interval
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:  # noqa: S310 - loopback http
                return bool(r.status == 200)
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector for ``expr``: [{"metric": {...}, "value": [t, "v"]}, ...]."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback http
            doc = json.load(r)
        if doc.get("status") != "success":
            raise PrometheusError(f"query {expr!r} failed: {doc}")
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as r:  # noqa: S310
            active: list[dict[str, Any]] = json.load(r)["data"]["activeTargets"]
        return active

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def log_tail(self) -> str:
        try:
            lines = (self.base / "prometheus.out").read_text(errors="replace").splitlines()[-_LOG_TAIL:]
        except FileNotFoundError:
            return "(prometheus wrote no log)"
        return "\n".join(lines)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
