"""A real headless-Chromium screenshot of a page served on 127.0.0.1, fitted to a budget."""

from __future__ import annotations

import functools
import http.server
import io
import os
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from leadperf import Settings
from leadperf.optimize.resources import ResourceOptimizer

pytestmark = pytest.mark.chrome

KB = 1024

PAGE = """<!doctype html><html><head><meta charset="utf-8"><style>
body { margin: 0; font: 13px sans-serif; }
.hero { height: 180px; color: #fff; font-size: 34px; padding: 30px;
        background: linear-gradient(120deg, #0f2027, #2c5364 60%, #e96443); }
td { padding: 3px 8px; border-bottom: 1px solid #e3e8ef; }
tr:nth-child(even) td { background: #f6f8fa; }
</style></head><body><div class="hero">Leads this week</div><table id="t"></table>
<script>
let s = 7, rows = [];
function r() { s = (s * 1664525 + 1013904223) >>> 0; return s / 4294967296; }
for (let i = 0; i < 60; i++) {
  const hue = Math.floor(r() * 360), email = `lead${Math.floor(r() * 1e6)}@example.com`;
  rows.push(`<tr><td>${i}</td><td>${email}</td><td>${(r() * 900).toFixed(1)}M</td>` +
            `<td style="color:hsl(${hue},70%,40%)">score ${Math.floor(r() * 100)}</td></tr>`);
}
document.getElementById("t").innerHTML = rows.join("");
</script></body></html>"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as root:
        with open(os.path.join(root, "index.html"), "w", encoding="utf-8") as f:
            f.write(PAGE)
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(_Quiet, directory=root)
        )
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)


@pytest.fixture(scope="module")
def screenshot(chrome_paths: tuple[str, str], page_url: str) -> Iterator[bytes]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from leadperf._chrome.options import build_options

    binary, driver_path = chrome_paths
    with tempfile.TemporaryDirectory() as profile:
        options = build_options(
            None,
            headless=True,
            binary=binary,
            extra=("--hide-scrollbars", "--window-size=1280,720", f"--user-data-dir={profile}"),
        )
        driver: Any = webdriver.Chrome(
            options=options, service=Service(executable_path=driver_path)
        )
        try:
            driver.get(page_url)
            assert driver.execute_script("return document.querySelectorAll('tr').length") == 60
            yield driver.get_screenshot_as_png()
        finally:
            driver.quit()


def test_real_screenshot_fits_at_the_exact_highest_quality(screenshot: bytes) -> None:
    source = Image.open(io.BytesIO(screenshot))
    assert source.format == "PNG"
    rgb = source.convert("RGB")

    def jpeg(q: int) -> bytes:
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=q, optimize=True)
        return buf.getvalue()

    opt = ResourceOptimizer(settings=Settings(), quality=95, min_quality=30)
    low, high = len(jpeg(30)), len(jpeg(95))
    assert high > low
    encodes = []
    for position in (0.2, 0.5, 0.8):
        target = round(low * (high / low) ** position)
        info = opt.optimize_screenshot_info(screenshot, target / KB)
        assert info.final_size <= target
        assert (info.width, info.height) == source.size
        assert info.scale == 1.0
        assert jpeg(info.quality) == info.data
        assert len(jpeg(info.quality + 1)) > target
        encodes.append(info.encodes)
    assert max(encodes) <= 6, encodes
    # Too small for quality 30 at full size: scaled down, still within the budget.
    small = opt.optimize_screenshot_info(screenshot, low / 3 / KB)
    assert small.scaled
    assert small.final_size <= low / 3
    assert small.quality >= 30
    webp = opt.optimize_screenshot_info(screenshot, 60, "WEBP")
    assert webp.final_size <= 60 * KB
    assert Image.open(io.BytesIO(webp.data)).format == "WEBP"
