"""ResourceOptimizer: screenshots to a size budget, brotli/gzip text.

Run: python3 examples/resources.py   (needs the images extra for the screenshot part)
"""

from __future__ import annotations

import io

from leadperf.optimize import ResourceOptimizer


def main() -> None:
    res = ResourceOptimizer()
    html = ("<tr><td>lead</td><td>ada@example.com</td></tr>" * 2000).encode()
    packed = res.compress_text(html, algorithm="br")
    print(f"text: {len(html)} -> {len(packed)} bytes (brotli)")
    assert res.decompress_text(packed, algorithm="br") == html.decode()
    try:
        from PIL import Image
    except ImportError:
        print("screenshots: pip install 'leadperf[images]'")
        return
    img = Image.effect_noise((1280, 800), 40).convert("RGB")
    png = io.BytesIO()
    img.save(png, format="PNG")
    small = res.optimize_screenshot(png.getvalue(), target_size_kb=200)
    print(f"screenshot: {len(png.getvalue()) // 1024} KB -> {len(small) // 1024} KB")


if __name__ == "__main__":
    main()
