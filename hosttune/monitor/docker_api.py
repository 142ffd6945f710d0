"""Container names from the Docker Engine API (unix socket), cached.

A minimal HTTP client over AF_UNIX: two GET endpoints, a short timeout, no SDK import on the
watch/scrape path. Names and requested cpusets never change for a container id, so each id is
inspected once; the list is re-read only when an unknown id shows up (at most every
``min_interval_s``)."""

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hosttune.host import Host
    from hosttune.monitor.snapshot import Unavailable

SOCKET = "/var/run/docker.sock"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def engine_get(sock_path: str, url: str, timeout: float = 2.0) -> Any:
    """GET ``url`` from the Engine API; raises OSError / ValueError on failure."""
    conn = _UnixHTTPConnection(sock_path, timeout)
    try:
        conn.request("GET", url, headers={"Host": "docker"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"docker API {url}: HTTP {resp.status}")
        return json.loads(body)
    finally:
        conn.close()


class DockerNames:
    def __init__(self, min_interval_s: float = 5.0, timeout_s: float = 2.0) -> None:
        self.min_interval_s = min_interval_s
        self.timeout_s = timeout_s
        self._known: dict[str, tuple[str, str | None]] = {}
        self._last_list = -1e9
        self._last_error: str | None = None
        self.calls = 0

    def lookup(self, host: Host, ids: set[str]) -> dict[str, tuple[str, str | None]] | Unavailable:
        """{id: (name, requested cpuset)} for the ids dockerd knows, or Unavailable."""
        from hosttune.monitor.snapshot import Unavailable

        if host.offline:
            return Unavailable("names from cgroup ids (--root: dockerd not asked)")
        missing = ids - set(self._known)
        if missing and time.monotonic() - self._last_list >= self.min_interval_s:
            self._last_list = time.monotonic()
            sock = str(host.path(SOCKET))
            try:
                self.calls += 1
                listing = engine_get(sock, "/containers/json?all=1", self.timeout_s)
                for c in listing:
                    cid = c.get("Id", "")
                    if cid in missing:
                        info = engine_get(sock, f"/containers/{cid}/json", self.timeout_s)
                        self.calls += 1
                        name = (info.get("Name") or cid[:12]).lstrip("/")
                        cs = (info.get("HostConfig") or {}).get("CpusetCpus", "")
                        self._known[cid] = (name, cs)
                self._last_error = None
            except (OSError, ValueError) as err:
                self._last_error = f"dockerd not reachable ({err}); names are cgroup ids"
        if self._last_error and not (ids & set(self._known)):
            return Unavailable(self._last_error)
        return {i: self._known[i] for i in ids if i in self._known}
