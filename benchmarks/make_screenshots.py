"""Make the screenshot corpus: real headless-Chromium 1920x1080 PNGs of local pages.

The pages live in ``benchmarks/pages/`` (text tables, image-heavy gallery, gradients,
article, dashboard, search results, dark code, photo landing page). Their photos are
generated here with Pillow (multi-octave noise, gradients, grain), never downloaded. The
pages are served by ``http.server`` on 127.0.0.1 in a thread; Chromium and chromedriver come
from Debian's packages (override with LEADPERF_TEST_CHROME / LEADPERF_TEST_CHROMEDRIVER).

    python3 benchmarks/make_screenshots.py            # writes benchmarks/screenshots/*.png
    python3 benchmarks/make_screenshots.py --force    # re-take existing screenshots
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import io
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
PAGES_DIR = HERE / "pages"
SCREENSHOT_DIR = HERE / "screenshots"
WIDTH, HEIGHT = 1920, 1080


def page_names() -> list[str]:
    """Stems of the HTML pages to screenshot, sorted."""
    return sorted(p.stem for p in PAGES_DIR.glob("*.html"))


# -- generated photo-like images -----------------------------------------------------------


def photo_like(size: tuple[int, int], seed: int) -> Image.Image:
    """A photo-like RGB image: smooth multi-octave colour noise, a sky gradient, blobs, grain."""
    rnd = random.Random(seed)
    w, h = size
    img = Image.new("RGB", size, (0, 0, 0))
    weight_sum = 0.0
    for octave, weight in ((3, 1.0), (6, 0.7), (12, 0.45), (24, 0.3), (48, 0.2), (96, 0.12)):
        small = Image.frombytes(
            "RGB",
            (octave, max(2, octave * h // w)),
            rnd.randbytes(3 * octave * max(2, octave * h // w)),
        )
        layer = small.resize(size, Image.Resampling.BICUBIC)
        weight_sum += weight
        img = Image.blend(img, layer, weight / weight_sum)
    # A vertical "sky to ground" gradient tinted with a random colour.
    sky = Image.linear_gradient("L").resize(size)
    tint = Image.new(
        "RGB", size, (rnd.randrange(60, 200), rnd.randrange(80, 220), rnd.randrange(120, 255))
    )
    img = Image.composite(img, tint, sky.point(lambda v: 90 + v * 165 // 255))
    # Soft blobs (objects out of focus) and a few sharp edges (buildings, horizon).
    draw = ImageDraw.Draw(img)
    for _ in range(rnd.randrange(4, 9)):
        x, y, r = rnd.randrange(w), rnd.randrange(h), rnd.randrange(min(w, h) // 12, min(w, h) // 3)
        colour = (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(radius=max(1, min(w, h) // 90)))
    draw = ImageDraw.Draw(img)
    base = h * rnd.randrange(55, 80) // 100
    x = 0
    while x < w:
        bw, bh = rnd.randrange(w // 30 + 1, w // 8 + 2), rnd.randrange(h // 10, h // 2)
        shade = rnd.randrange(30, 120)
        draw.rectangle((x, base - bh, x + bw, h), fill=(shade, shade + 10, shade + 20))
        for wy in range(base - bh + 6, h - 6, 14):  # lit windows
            for wx in range(x + 4, x + bw - 6, 12):
                if rnd.random() < 0.4:
                    draw.rectangle(
                        (wx, wy, wx + 5, wy + 7), fill=(230, 210, rnd.randrange(100, 180))
                    )
        x += bw + rnd.randrange(0, w // 40 + 1)
    # Sensor grain.
    grain = Image.frombytes("L", size, rnd.randbytes(w * h)).convert("RGB")
    return Image.blend(img, grain, 0.05)


def write_assets(img_dir: Path) -> None:
    """Generate the photos, avatars and hero image the pages reference."""
    img_dir.mkdir(parents=True, exist_ok=True)
    for i in range(12):
        photo_like((640, 420), seed=100 + i).save(img_dir / f"photo_{i}.jpg", quality=90)
        photo_like((160, 160), seed=200 + i).save(img_dir / f"avatar_{i}.jpg", quality=90)
    photo_like((1920, 1080), seed=300).save(img_dir / "hero.jpg", quality=90)


# -- local server and browser --------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP on 127.0.0.1 (random port) in a thread; yield the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="pages-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def chrome_paths() -> tuple[str, str]:
    binary = (
        os.environ.get("LEADPERF_TEST_CHROME")
        or shutil.which("chromium")
        or shutil.which("google-chrome")
    )
    driver = os.environ.get("LEADPERF_TEST_CHROMEDRIVER") or shutil.which("chromedriver")
    if not binary or not driver:
        raise SystemExit(
            "chromium and chromedriver are needed: apt-get install chromium chromium-driver"
        )
    return binary, driver


@contextlib.contextmanager
def headless_chrome(user_data_dir: Path) -> Iterator[object]:
    """A headless Chromium driven by selenium, with a 1920x1080 viewport; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from leadperf._chrome.options import build_options

    binary, driver_path = chrome_paths()
    # The pool's own launch flags, so screenshots come from the browser the pool runs.
    options = build_options(
        None,
        headless=True,
        binary=binary,
        extra=(
            "--hide-scrollbars",
            f"--window-size={WIDTH},{HEIGHT}",
            f"--user-data-dir={user_data_dir}",
        ),
    )
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
        )
        yield driver
    finally:
        driver.quit()


def _wait_loaded(driver: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    script = (
        "return document.readyState === 'complete' && "
        "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0);"
    )
    while time.monotonic() < deadline:
        if driver.execute_script(script):  # type: ignore[attr-defined]
            return
        time.sleep(0.05)
    raise TimeoutError("page did not finish loading its images")


def make_corpus(out_dir: Path = SCREENSHOT_DIR, *, force: bool = False) -> list[Path]:
    """Screenshot every page into ``out_dir`` (skipping existing PNGs unless ``force``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = page_names()
    targets = [out_dir / f"{name}.png" for name in names]
    missing = [(n, t) for n, t in zip(names, targets, strict=True) if force or not t.exists()]
    if not missing:
        return targets
    with tempfile.TemporaryDirectory(prefix="leadperf-pages-") as tmp:
        site = Path(tmp) / "site"
        shutil.copytree(PAGES_DIR, site)
        write_assets(site / "img")
        with serve_directory(site) as base, headless_chrome(Path(tmp) / "profile") as driver:
            for name, target in missing:
                driver.get(f"{base}/{name}.html")  # type: ignore[attr-defined]
                _wait_loaded(driver)
                png: bytes = driver.get_screenshot_as_png()  # type: ignore[attr-defined]
                with Image.open(io.BytesIO(png)) as im:
                    if im.size != (WIDTH, HEIGHT):
                        raise RuntimeError(
                            f"{name}: screenshot is {im.size}, expected {(WIDTH, HEIGHT)}"
                        )
                target.write_bytes(png)
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="re-take existing screenshots")
    parser.add_argument("--out", type=Path, default=SCREENSHOT_DIR)
    args = parser.parse_args()
    for path in make_corpus(args.out, force=args.force):
        print(f"{path}  {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
