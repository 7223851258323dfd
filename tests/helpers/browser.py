"""Open a page in headless Chromium (the Debian package; `make chromium` installs it) and report what a
reader would see: images loaded, feature cards, console errors, page exceptions, resources fetched,
and a screenshot. Talks the Chrome DevTools Protocol directly over `websockets` (no browser download,
no extra dependency)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

# What the page reports about itself once loaded (run in the page).
PAGE_PROBE = """JSON.stringify({
  images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, naturalWidth: i.naturalWidth,
                                                   scheme: i.src.split(':', 1)[0]})),
  cards: document.querySelectorAll('section[data-latent]').length,
  tocLinks: Array.from(document.querySelectorAll('nav a[href^="#"]')).map(a => a.getAttribute('href')),
  missingTargets: Array.from(document.querySelectorAll('nav a[href^="#"]'))
                       .filter(a => !document.getElementById(a.getAttribute('href').slice(1))).length,
  resources: performance.getEntriesByType('resource').map(r => r.name),
  title: document.title,
})"""


def chromium_path() -> str | None:
    for candidate in (os.environ.get("SAE_TRANSFER_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


def inspect_page(path: Path, screenshot: Path | None = None, width: int = 1280, height: int = 1000, timeout: float = 60.0,
                 anchor: str | None = None) -> dict:
    """Load ``path`` (a local HTML file) as file:// in headless Chromium; return the probe's findings plus
    ``console_errors`` and ``exceptions`` (lists of str). Writes a viewport PNG to ``screenshot`` if given,
    scrolled to the element with id ``anchor`` when one is named (e.g. ``feature-cards``)."""
    binary = chromium_path()
    if binary is None:
        raise RuntimeError("no chromium found: `make chromium` installs Debian's package")
    with tempfile.TemporaryDirectory(prefix="sae-chromium-") as profile:
        process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port = _devtools_port(Path(profile), process, timeout)
            return asyncio.run(asyncio.wait_for(_inspect(port, Path(path).resolve().as_uri(), screenshot, width, height, anchor), timeout))
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _devtools_port(profile: Path, process: subprocess.Popen, timeout: float) -> int:
    marker, deadline = profile / "DevToolsActivePort", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode} before DevTools started")
        if marker.exists() and (lines := marker.read_text().split()):
            return int(lines[0])
        time.sleep(0.1)
    raise TimeoutError("chromium did not open its DevTools port")


def _page_socket(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
        targets = json.load(response)
    return next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")


async def _inspect(port: int, url: str, screenshot: Path | None, width: int, height: int, anchor: str | None = None) -> dict:
    import websockets

    console_errors: list[str] = []
    exceptions: list[str] = []
    loaded = asyncio.Event()
    pending: dict[int, asyncio.Future] = {}
    counter = iter(range(1, 1_000_000))

    async with websockets.connect(_page_socket(port), max_size=None) as socket:
        async def reader():
            async for raw in socket:
                message = json.loads(raw)
                if "id" in message and message["id"] in pending:
                    pending.pop(message["id"]).set_result(message)
                    continue
                method, params = message.get("method"), message.get("params", {})
                if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                    console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
                elif method == "Runtime.exceptionThrown":
                    details = params.get("exceptionDetails", {})
                    exceptions.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
                elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                    entry = params["entry"]
                    console_errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
                elif method == "Page.loadEventFired":
                    loaded.set()

        async def call(method: str, **params) -> dict:
            number = next(counter)
            future = asyncio.get_running_loop().create_future()
            pending[number] = future
            await socket.send(json.dumps({"id": number, "method": method, "params": params}))
            reply = await future
            if "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            return reply.get("result", {})

        listener = asyncio.create_task(reader())
        try:
            for domain in ("Page", "Runtime", "Log"):
                await call(f"{domain}.enable")
            await call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
            await call("Page.navigate", url=url)
            await loaded.wait()
            await asyncio.sleep(0.3)  # late console messages
            probe = await call("Runtime.evaluate", expression=PAGE_PROBE, returnByValue=True)
            found = json.loads(probe["result"]["value"])
            if screenshot is not None:
                if anchor:
                    await call("Runtime.evaluate", expression=f"document.getElementById({json.dumps(anchor)}).scrollIntoView()")
                    await asyncio.sleep(0.2)
                shot = await call("Page.captureScreenshot", format="png")
                Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
        finally:
            listener.cancel()
    return {**found, "console_errors": console_errors, "exceptions": exceptions}
