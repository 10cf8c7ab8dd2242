"""Image decoding, per-format encoding and the quality search behind ResourceOptimizer.

The search finds the highest integer quality whose encoding fits a byte budget. Encoded
size rises monotonically with quality, and in a per-format coordinate ``x(quality)`` the
log of the size is close to a straight line (for JPEG, ``x`` is the log of libjpeg's
quantisation scale, and size ~ scale**-0.4 across the whole range). So the first encode is
at the top quality, and each next guess is interpolated from the encodes already made:
extrapolated along a secant (or a slope measured on browser screenshots) while only one
side is known, then regula falsi on the bracket with the Illinois correction. Guesses are
rounded down, and the search ends when the bracket [highest quality that fits, lowest that
does not] is one quality wide: about 3-5 encodes. Plateaus gallop, and past a few encodes
the search bisects, so odd curves stay cheap. When even the lowest acceptable quality is
too big, the image is scaled down by a factor estimated from the size ratio, and the
search runs again with its guesses predicted from the full-size encodes.
"""

from __future__ import annotations

import io
import math
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from .._util import require
from ..errors import ConfigError, ImageError

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = [
    "FORMATS",
    "FormatSpec",
    "SearchOutcome",
    "decode",
    "encode",
    "ensure_pil",
    "fit_to_budget",
    "normalize_format",
    "prepare",
    "search_quality",
]

#: Default decompression-bomb limit (pixels) when Pillow's own limit is disabled; equal to
#: Pillow's default ``Image.MAX_IMAGE_PIXELS``.
DEFAULT_MAX_PIXELS = 89_478_485
#: Smallest side a scaled-down image may have before we give up on the budget.
MIN_SIDE = 16
# Headroom when estimating a scale: aim a little under the budget so one scale suffices.
_SCALE_HEADROOM = 0.95
# Bytes grow with area to a power a little under 1 (text gets denser when shrunk).
_ASSUMED_BETA = 0.95
_MAX_SCALE_ROUNDS = 8
# Interpolation normally closes the bracket in 3-5 encodes; past this many, bisect.
_BISECT_AFTER = 8


# -- formats ---------------------------------------------------------------------------------


def _jpeg_x(q: float) -> float:
    # libjpeg's quality -> quantisation table scale (jpeg_quality_scaling), in percent.
    scale = 5000.0 / q if q < 50 else 200.0 - 2.0 * q
    return math.log(max(scale, 1.0))


def _jpeg_q(x: float) -> float:
    scale = math.exp(x)
    return (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale


def _webp_x(q: float) -> float:
    return math.log(101.0 - q)


def _webp_q(x: float) -> float:
    return 101.0 - math.exp(x)


def png_colors(quality: int) -> int:
    """Palette size used for PNG at ``quality`` < 100 (100 means lossless)."""
    return max(2, min(256, round(quality * 2.56)))


def _png_x(q: float) -> float:
    # More colours, larger file; lossless (100) sits one step beyond 256 colours.
    return -math.log(max(2.0, q * 2.56)) if q < 100 else -math.log(512.0)


def _png_q(x: float) -> float:
    return math.exp(-x) / 2.56


@attrs.frozen
class FormatSpec:
    """How one output format maps quality to a search coordinate, and its default slope."""

    name: str
    x: Callable[[float], float]
    q: Callable[[float], float]
    #: d ln(size) / dx measured on browser screenshots; used until two encodes exist.
    slope: float
    has_alpha: bool
    #: Quality the search starts from when the caller does not give one (None: settings).
    default_top: int | None = None


FORMATS: dict[str, FormatSpec] = {
    "JPEG": FormatSpec("JPEG", _jpeg_x, _jpeg_q, slope=-0.42, has_alpha=False),
    "WEBP": FormatSpec("WEBP", _webp_x, _webp_q, slope=-0.45, has_alpha=True),
    "PNG": FormatSpec("PNG", _png_x, _png_q, slope=-0.30, has_alpha=True, default_top=100),
}
_FORMAT_ALIASES = {"JPG": "JPEG", "JPEG": "JPEG", "PNG": "PNG", "WEBP": "WEBP"}


def normalize_format(fmt: str) -> FormatSpec:
    """The :class:`FormatSpec` for ``fmt`` (case-insensitive, ``jpg`` accepted) or ConfigError."""
    name = _FORMAT_ALIASES.get(fmt.upper().strip()) if isinstance(fmt, str) else None
    if name is None:
        raise ConfigError(
            f"format: unsupported image format {fmt!r}; use one of JPEG, PNG, WEBP", key="format"
        )
    return FORMATS[name]


# -- decoding --------------------------------------------------------------------------------

# catch_warnings() and MAX_IMAGE_PIXELS are process-wide: serialise our own opens so two
# threads never restore each other's values. Image.open only parses the header: short.
_OPEN_LOCK = threading.Lock()


def ensure_pil() -> None:
    """Import Pillow or raise MissingDependencyError naming the ``images`` extra."""
    require("PIL", "images", "pillow")


def decode(data: bytes, *, max_pixels: int | None) -> PILImage.Image:
    """Open and fully decode ``data``; every failure becomes :class:`ImageError`.

    ``max_pixels`` (None: Pillow's ``MAX_IMAGE_PIXELS``) bounds width x height before any
    pixel is decoded; it is Pillow's limit during the open, and Pillow's
    decompression-bomb warning is an error here too.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageError(f"image data must be bytes, got {type(data).__name__}")
    if not data:
        raise ImageError("image data is empty (0 bytes); pass the encoded PNG/JPEG/WEBP bytes")
    ensure_pil()
    from PIL import Image, UnidentifiedImageError

    limit = max_pixels or Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS
    with _OPEN_LOCK, warnings.catch_warnings():
        # Pillow checks its limit inside open(): give it ours for this call, and make its
        # warning (pixels between the limit and twice it) an error like its own error.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, limit
        try:
            img = Image.open(io.BytesIO(bytes(data)))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(
                f"image refused as a possible decompression bomb: {exc}; raise max_pixels "
                "only for images from a trusted source"
            ) from exc
        except UnidentifiedImageError as exc:
            raise ImageError(
                f"image data ({len(data)} bytes, starting {bytes(data[:8])!r}) is not a "
                "recognised image; pass PNG, JPEG, WEBP or GIF bytes"
            ) from exc
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ImageError(f"image header is corrupt: {exc}") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if width * height > limit:
        raise ImageError(
            f"image is {width}x{height} = {width * height} pixels, above the limit of {limit} "
            "(a decompression bomb?); raise max_pixels only for images from a trusted source"
        )
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(
            f"image data is truncated or corrupt ({exc}); check that the whole file was received"
        ) from exc
    return img


def _has_alpha(img: PILImage.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )


def prepare(
    img: PILImage.Image, spec: FormatSpec, *, background: tuple[int, int, int]
) -> PILImage.Image:
    """Convert ``img`` to a mode ``spec`` can encode: RGBA over ``background`` for JPEG."""
    ensure_pil()
    from PIL import Image, ImageOps

    transposed = ImageOps.exif_transpose(img)
    if transposed is not None:
        img = transposed
    alpha = _has_alpha(img)
    if spec.name == "JPEG":
        if alpha:
            rgba = img.convert("RGBA")
            base = Image.new("RGBA", rgba.size, (*background, 255))
            return Image.alpha_composite(base, rgba).convert("RGB")
        return img if img.mode in ("RGB", "L") else img.convert("RGB")
    if spec.name == "WEBP":
        want = "RGBA" if alpha else "RGB"
        return img if img.mode == want else img.convert(want)
    # PNG keeps palettes and grey as they are; anything exotic becomes RGB(A).
    if img.mode in ("RGB", "RGBA", "L", "LA", "P", "1"):
        return img
    return img.convert("RGBA" if alpha else "RGB")


# -- encoding --------------------------------------------------------------------------------


def encode(img: PILImage.Image, spec: FormatSpec, quality: int) -> bytes:
    """One encode of ``img`` (already prepared for ``spec``) at ``quality`` 1..100."""
    buf = io.BytesIO()
    if spec.name == "JPEG":
        # optimize: Huffman tables fitted to the image, 5-10% smaller for little time.
        img.save(buf, "JPEG", quality=quality, optimize=True)
    elif spec.name == "WEBP":
        img.save(buf, "WEBP", quality=quality, method=4)
    elif quality >= 100:
        img.save(buf, "PNG", compress_level=6)
    else:
        from PIL import Image

        source = (
            img
            if img.mode in ("RGB", "RGBA")
            else img.convert("RGBA" if _has_alpha(img) else "RGB")
        )
        # Fast octree handles alpha and is ~10x faster than median cut on large images; no
        # dithering keeps text crisp and the palette image small.
        quantized = source.quantize(
            colors=png_colors(quality),
            method=Image.Quantize.FASTOCTREE,
            dither=Image.Dither.NONE,
        )
        quantized.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


# -- search ----------------------------------------------------------------------------------


@attrs.define
class SearchOutcome:
    """Result of one quality search at one scale."""

    quality: int | None  # highest quality that fits; None if even the lowest is too big
    data: bytes | None
    sizes: dict[int, int]  # quality -> encoded bytes, for every encode made


def _predict(
    spec: FormatSpec,
    measured: dict[int, int],
    prior: dict[int, float],
    target: int,
    slope: float,
    bracket: tuple[int, float, int, float] | None = None,
    anchor: int | None = None,
) -> float:
    """Quality (real) at which ln(size) crosses ln(target).

    With a measured ``bracket`` (quality that fits, its ln-size deviation from the target,
    quality that does not, its deviation): interpolate between its ends (regula falsi).
    Otherwise extrapolate from ``anchor`` (the one end known) or else the prior point
    nearest the target, along the secant to a neighbouring point when it is steep enough,
    else along ``slope``.
    """
    y_t = math.log(target)
    if bracket is not None:
        qa, da, qb, db = bracket  # deviations ln(size) - ln(target): da <= 0 < db
        xa, xb = spec.x(qa), spec.x(qb)
        if db == da or xa == xb:
            return float(qa)
        return spec.q(xa - da * (xb - xa) / (db - da))
    merged: dict[int, float] = dict(prior)
    merged.update({q: math.log(s) for q, s in measured.items()})
    if anchor is not None:
        # One-sided: extrapolate from the bracket's only end, with the secant to the
        # measured point closest in quality (else the prior point nearest the target).
        q1, y1 = anchor, merged[anchor]
        others = sorted((q for q in measured if q != anchor), key=lambda q: abs(q - anchor))
        if others:
            near = [(q1, y1), (others[0], merged[others[0]])]
        else:
            rest = sorted(
                ((q, y) for q, y in prior.items() if q != anchor), key=lambda p: abs(p[1] - y_t)
            )
            near = [(q1, y1), *rest[:1]]
    else:
        near = sorted(merged.items(), key=lambda p: (abs(p[1] - y_t), -p[0]))
        q1, y1 = near[0]
    use = slope
    if len(near) > 1:
        q2, y2 = near[1]
        dx = spec.x(q1) - spec.x(q2)
        if dx != 0:
            secant = (y1 - y2) / dx
            # A flat or rising secant (a plateau, e.g. a palette that cannot shrink a
            # two-colour image) would crawl one quality per encode: keep the prior slope.
            if secant <= 0.25 * slope:
                use = secant
    return spec.q(spec.x(q1) + (y_t - y1) / use)


def search_quality(
    encode_at: Callable[[int], bytes],
    spec: FormatSpec,
    *,
    q_min: int,
    q_max: int,
    target: int,
    prior: dict[int, float] | None = None,
    slope: float | None = None,
    seed: dict[int, bytes] | None = None,
) -> SearchOutcome:
    """Highest integer quality in [q_min, q_max] whose encoding is <= ``target`` bytes.

    Every encode narrows the bracket ``(lo, hi)`` (lo fits, hi does not); the search ends
    when ``hi == lo + 1`` or ``lo == q_max``, so the answer is exact for the encoder's
    output, not an estimate. ``prior`` maps qualities to predicted ln(size) (from another
    scale) and only steers the guesses; ``seed`` maps qualities to encodes already made.
    After ``_BISECT_AFTER`` encodes the guesses bisect, which bounds the worst case (a
    curve that is far from the model) at about ``_BISECT_AFTER + log2(q_max - q_min)``.
    """
    sizes: dict[int, int] = {}
    lo: int | None = None
    hi: int | None = None
    best: bytes | None = None
    prior = dict(prior or {})
    base_slope = slope if slope is not None else spec.slope

    y_t = math.log(target)
    # Bracket ends' deviations from the target in ln(size). Illinois rule: when the same
    # end survives two encodes in a row, halve its deviation, so a bent curve cannot make
    # regula falsi creep towards the answer one quality at a time.
    d_lo = d_hi = 0.0
    last_fit: bool | None = None

    def record(q: int, data: bytes) -> bool:
        nonlocal lo, hi, best, d_lo, d_hi, last_fit
        sizes[q] = len(data)
        fits = len(data) <= target
        if fits and (lo is None or q > lo):
            lo, best, d_lo = q, data, math.log(len(data)) - y_t
            if last_fit is True:
                d_hi *= 0.5
        elif not fits and (hi is None or q < hi):
            hi, d_hi = q, math.log(len(data)) - y_t
            if last_fit is False:
                d_lo *= 0.5
        last_fit = fits
        return fits

    one_sided = 0
    for q, data in sorted((seed or {}).items()):
        record(q, data)
    last_fit = None
    q = q_max
    if sizes or prior:
        first = hi if lo is None else lo
        q = math.floor(_predict(spec, sizes, prior, target, base_slope, anchor=first) + 1e-9)
    while True:
        if lo is not None and (lo >= q_max or (hi is not None and hi == lo + 1)):
            return SearchOutcome(lo, best, sizes)
        if lo is None and hi is not None and hi <= q_min:
            return SearchOutcome(None, None, sizes)
        low = lo + 1 if lo is not None else q_min
        high = hi - 1 if hi is not None else q_max
        q = max(low, min(high, q))
        record(q, encode_at(q))
        bracket = (lo, d_lo, hi, d_hi) if lo is not None and hi is not None else None
        one_sided = 0 if bracket is not None else one_sided + 1
        if len(sizes) >= _BISECT_AFTER:
            # Far from the model: bisect the bracket, or settle the open end.
            if bracket is not None:
                q = (bracket[0] + bracket[2]) // 2
            else:
                q = q_min if lo is None else q_max
            continue
        anchor = hi if lo is None else lo
        guess = _predict(spec, sizes, prior, target, base_slope, bracket, anchor)
        # Round down: a guess that fits is then confirmed by one encode just above it.
        q = math.floor(guess + 1e-9) if math.isfinite(guess) else q
        if bracket is None and one_sided >= 3:
            # Still one-sided: gallop (steps of 2, 4, 8...) so a plateau costs log2 encodes.
            step = 2 ** (one_sided - 2)
            q = min(q, hi - step) if lo is None and hi is not None else max(q, (lo or 0) + step)


@attrs.frozen
class FitResult:
    """What :func:`fit_to_budget` did."""

    data: bytes
    quality: int
    scale: float
    width: int
    height: int
    encodes: int


def fit_to_budget(
    img: PILImage.Image,
    spec: FormatSpec,
    *,
    target: int,
    q_min: int,
    q_max: int,
) -> FitResult:
    """Encode ``img`` (prepared for ``spec``) at the highest quality within ``target`` bytes,
    scaling down only when ``q_min`` at full size is too big.

    Scaling: the area is cut by the size ratio at ``q_min`` (bytes ~ area**beta, beta
    re-measured after each try) until ``q_min`` fits; then the quality search runs at that
    size, its guesses predicted by the full-size curve shifted onto the measured point.
    Raises :class:`ImageError` when even a ``MIN_SIDE``-pixel image does not fit.
    """
    ensure_pil()
    from PIL import Image

    width, height = img.size
    full = search_quality(
        lambda q: encode(img, spec, q), spec, q_min=q_min, q_max=q_max, target=target
    )
    encodes = len(full.sizes)
    if full.quality is not None and full.data is not None:
        return FitResult(full.data, full.quality, 1.0, width, height, encodes)

    history = [(float(width * height), full.sizes[q_min])]  # (area, bytes at q_min)
    beta = _ASSUMED_BETA
    for _ in range(_MAX_SCALE_ROUNDS):
        area, size = history[-1]
        if len(history) >= 2:
            (a1, s1), (a2, s2) = history[-2], history[-1]
            if a1 != a2 and s1 != s2 and s1 > 0 and s2 > 0:
                beta = min(1.5, max(0.5, math.log(s1 / s2) / math.log(a1 / a2)))
        new_area = area * (target * _SCALE_HEADROOM / size) ** (1.0 / beta)
        scale = math.sqrt(new_area / (width * height))
        new_w, new_h = round(width * scale), round(height * scale)
        if min(new_w, new_h) < MIN_SIDE:
            raise ImageError(
                f"cannot fit a {width}x{height} image into {target} bytes as {spec.name}: even "
                f"quality {q_min} is {size} bytes at {math.isqrt(round(area * width / height))}"
                f"x{math.isqrt(round(area * height / width))}; raise the target size or lower "
                "min_quality"
            )
        # reducing_gap: a fast box reduction first, then Lanczos for the last 2x (sharp text).
        current = img.resize((new_w, new_h), Image.Resampling.LANCZOS, reducing_gap=2.0)
        data = encode(current, spec, q_min)
        encodes += 1
        history.append((float(new_w * new_h), len(data)))
        if len(data) <= target:
            break
    else:
        raise ImageError(
            f"could not fit the image into {target} bytes as {spec.name} after "
            f"{_MAX_SCALE_ROUNDS} rescales; raise the target size"
        )
    # The curve keeps its shape when the image shrinks: shift the full-size points onto
    # the one measured at this scale and let them predict the crossing.
    offset = math.log(len(data)) - math.log(full.sizes[q_min])
    prior = {q: math.log(s) + offset for q, s in full.sizes.items() if q != q_min}
    outcome = search_quality(
        lambda q: encode(current, spec, q),
        spec,
        q_min=q_min,
        q_max=q_max,
        target=target,
        prior=prior,
        seed={q_min: data},
    )
    encodes += len(outcome.sizes) - 1
    # q_min fits at this size, so the search always has an answer here.
    assert outcome.quality is not None
    assert outcome.data is not None
    return FitResult(outcome.data, outcome.quality, scale, new_w, new_h, encodes)


def elapsed_ms(start: float) -> float:
    """Milliseconds since ``start`` (a ``time.perf_counter()`` value)."""
    return (time.perf_counter() - start) * 1000.0
