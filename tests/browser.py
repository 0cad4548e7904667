"""Headless Chromium driven over the DevTools protocol (Debian's ``chromium``, ``websocket-client``).

``Browser`` starts ``chromium --headless`` with an empty profile and a DevTools port on loopback,
attaches to its page and offers what the Flower test needs: navigate (optionally sending an
``Authorization`` header with every request of the page, XHRs included), read the main document's
HTTP status, wait for text to appear, read the rendered text, take a PNG screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    def __init__(self, binary: str, width: int = 1600, height: int = 1000) -> None:
        import websocket  # websocket-client

        self.profile = Path(tempfile.mkdtemp(prefix="corral-chromium-"))
        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            pages = [t for t in json.loads(answer.read()) if t.get("type") == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self.call("Page.enable")
        self.call("Network.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        ident = next(self.ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params or {}}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            self.events.append(message)

    def navigate(self, url: str, auth: str | None = None, timeout_s: float = 30) -> int:
        """Load ``url`` (with basic auth ``user:password`` on every request when given); returns the
        HTTP status of the document."""
        headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
        self.call("Network.setExtraHTTPHeaders", {"headers": headers})
        self.events.clear()
        frame = self.call("Page.navigate", {"url": url})
        loader = frame.get("loaderId")
        status = 0
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in self.events:
                params = event.get("params", {})
                if (
                    event.get("method") == "Network.responseReceived"
                    and params.get("loaderId") == loader
                    and params.get("type") == "Document"
                ):
                    status = int(params["response"]["status"])
                if event.get("method") == "Page.loadEventFired" and status:
                    return status
            self.events.clear()
            self.call("Runtime.evaluate", {"expression": "1"})  # pumps events
            time.sleep(0.1)
        raise TimeoutError(f"{url} did not load")

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", {"expression": expression}).get("result", {}).get("value")

    def text(self) -> str:
        result = self.call("Runtime.evaluate", {"expression": "document.body ? document.body.innerText : ''"})
        return str(result.get("result", {}).get("value", ""))

    def wait_for(self, predicate: Any, timeout_s: float = 30) -> str:
        """Rendered text once ``predicate(text)`` holds."""
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.text()
            if predicate(text) or time.monotonic() > deadline:
                return text
            time.sleep(0.3)

    def rows(self) -> list[list[str]]:
        """Cells of every table body row on the page (text content, whitespace collapsed)."""
        script = (
            "JSON.stringify(Array.from(document.querySelectorAll('table tbody tr')).map("
            "r => Array.from(r.cells).map(c => c.textContent.replace(/\\s+/g, ' ').trim())))"
        )
        result = self.call("Runtime.evaluate", {"expression": script})
        return list(json.loads(result.get("result", {}).get("value", "[]")))

    def wait_for_rows(self, predicate: Any, timeout_s: float = 30) -> list[list[str]]:
        """Table rows once ``predicate(rows)`` holds (the page's own scripts fill tables by XHR)."""
        deadline = time.monotonic() + timeout_s
        while True:
            rows = self.rows()
            if predicate(rows) or time.monotonic() > deadline:
                return rows
            time.sleep(0.3)

    def screenshot(self, path: Path) -> None:
        shot = self.call("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.profile, ignore_errors=True)
