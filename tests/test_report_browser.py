"""The HTML report in a real headless Chromium (Debian's ``chromium``, installed by scripts/test): the page loads
with no console error, no request leaves the file (data: URLs only), every figure renders with a non-zero size,
and a screenshot is kept (``bench/out/report_screenshot*.png``, and printed).

Chromium is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``: JSON messages
separated by NUL bytes on file descriptors 3 and 4), with the standard library only: no driver to download,
no port opened. Run as a script to screenshot any page: ``python tests/test_report_browser.py PAGE.html OUT.png``.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

STDERR = subprocess.DEVNULL
ARTIFACTS = Path(__file__).parents[1] / "bench" / "out"
#: The flags that keep Chromium off the network of a closed machine (and out of its sandbox, as root).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
         "--remote-debugging-pipe")


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """A headless Chromium and one page, spoken to over the DevTools pipe."""

    def __init__(self, executable: str, *, width: int = 1400, height: int = 1000) -> None:
        self.profile = tempfile.mkdtemp(prefix="nsysan-chromium-")
        low_r, self._to_child = os.pipe()
        self._from_child, low_w = os.pipe()
        # numbers above 4, so that moving them to 3 and 4 below cannot overwrite one with the other
        to_child_r, from_child_w = fcntl.fcntl(low_r, fcntl.F_DUPFD, 10), fcntl.fcntl(low_w, fcntl.F_DUPFD, 10)
        os.close(low_r)
        os.close(low_w)

        # The child reads commands on fd 3 and writes answers on fd 4: bash moves the pipe ends there
        # (dash takes one-digit descriptors only).
        move = f'exec "$0" "$@" 3<&{to_child_r} 4>&{from_child_w} {to_child_r}<&- {from_child_w}>&-'
        self.proc = subprocess.Popen([shutil.which("bash") or "/bin/bash", "-c", move, executable, *FLAGS, f"--user-data-dir={self.profile}",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=STDERR,
                                     pass_fds=(to_child_r, from_child_w))
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._id = 0
        self.events: list[dict] = []
        self.width, self.height = width, height
        target = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    # -- the protocol ----------------------------------------------------------------------------------------------
    def _send(self, message: dict) -> None:
        os.write(self._to_child, json.dumps(message).encode() + b"\0")

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, *, session: bool = False, timeout: float = 60, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self._send(message)
        deadline = time.monotonic() + timeout
        while True:
            answer = self._receive(deadline)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._receive(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    # -- what the tests use -----------------------------------------------------------------------------------------
    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        self.wait_for("Page.loadEventFired")
        self.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(str(params.get("exceptionDetails", {}).get("text")))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                out.append(f"{params['entry'].get('text')} ({params['entry'].get('url', '')})")
            elif method == "Network.loadingFailed":
                out.append(f"request failed: {params.get('errorText')}")
        return out

    def screenshot(self, path: Path, *, full_page: bool = False) -> Path:
        if full_page:
            size = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
            self.call("Emulation.setDeviceMetricsOverride", session=True, width=self.width,
                      height=int(min(size["height"], 30000)), deviceScaleFactor=1, mobile=False)
        shot = self.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=full_page)
        if full_page:
            self.call("Emulation.setDeviceMetricsOverride", session=True, width=self.width, height=self.height,
                      deviceScaleFactor=1, mobile=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


FIGURE_SIZES = """Array.from(document.querySelectorAll('figure img, svg')).map(e => {
  const r = e.getBoundingClientRect();
  return {id: e.closest('figure') ? e.closest('figure').id : e.tagName, tag: e.tagName, width: r.width,
          height: r.height, complete: e.complete === undefined ? true : e.complete,
          natural: e.naturalWidth === undefined ? 1 : e.naturalWidth};
})"""


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    if executable is None:
        message = "chromium not installed: run scripts/test (apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    b = Browser(executable)
    yield b
    b.close()


def check_page(browser: Browser, page: Path, shot: Path) -> list[dict]:
    """Open ``page``; assert no console error, no request but the file and data: URLs, every figure drawn;
    keep a screenshot. Returns the figures' rendered sizes."""
    url = page.resolve().as_uri()
    browser.open(url)
    assert browser.errors() == []
    outside = [u for u in browser.requests() if u != url and not u.startswith("data:")]
    assert outside == [], f"the page fetched {outside}"
    figures = browser.evaluate(FIGURE_SIZES)
    assert figures, "no figure on the page"
    for f in figures:
        assert f["width"] > 0 and f["height"] > 0, f"figure {f['id']} renders with no size: {f}"
        assert f["complete"] and f["natural"] > 0, f"figure {f['id']} did not decode: {f}"
    browser.screenshot(shot)
    browser.screenshot(shot.with_name(shot.stem + "_full.png"), full_page=True)
    print(f"screenshot: {shot}")
    return figures


def _report(tmp_path: Path, args: list[str], name: str) -> Path:
    out = tmp_path / name
    done = subprocess.run([sys.executable, "-m", "nsysan", "report", *args, "-o", str(out)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return out


def test_sample_report_renders_offline_in_chromium(browser, tmp_path):
    page = _report(tmp_path, ["--sample"], "report.html")
    figures = check_page(browser, page, ARTIFACTS / "report_screenshot.png")
    assert {f["id"] for f in figures} >= {"fig-stages", "fig-bandwidth", "fig-busy", "fig-forest", "fig-timeline"}
    # the table of contents leads somewhere: every link's target exists
    missing = browser.evaluate("Array.from(document.querySelectorAll('a[href^=\"#\"]')).map(a => a.getAttribute('href'))"
                               ".filter(h => !document.getElementById(h.slice(1)))")
    assert missing == []


def test_distributed_report_renders_in_chromium(browser, tmp_path):
    ddp = Path(__file__).parent / "fixtures" / "h200x2" / "ddp_resnet18_2gpu.sqlite"
    page = _report(tmp_path, [str(ddp)], "ddp.html")
    figures = check_page(browser, page, ARTIFACTS / "report_screenshot_ddp.png")
    assert {"fig-comm", "fig-skew", "fig-timeline"} <= {f["id"] for f in figures}


if __name__ == "__main__":  # python tests/test_report_browser.py PAGE.html OUT.png [--full]
    b = Browser(chromium() or "chromium")
    try:
        b.open(Path(sys.argv[1]).resolve().as_uri())
        print("errors:", b.errors(), "requests:", [u[:80] for u in b.requests()])
        print(b.evaluate(FIGURE_SIZES))
        print(b.screenshot(Path(sys.argv[2]), full_page="--full" in sys.argv))
    finally:
        b.close()
