"""Numeric-sequence input: the checks and the normalisation a sequence package declares, shared by the
service and the training module (so both feed the model the same numbers)."""

from __future__ import annotations

import numpy as np

from rnnserve.service.core.errors import InvalidInput
from rnnserve.service.core.package import Normalization


def normalize(x: np.ndarray, stats: Normalization | None) -> np.ndarray:
    """(x - mean) / std per feature, as trained; x unchanged (as float32) without statistics."""
    x = np.asarray(x, np.float32)
    if not stats:
        return x
    with np.errstate(over="ignore", invalid="ignore"):  # what overflows is refused by check_normalized
        return ((x - np.asarray(stats["mean"], np.float32)) / np.asarray(stats["std"], np.float32)).astype(np.float32)


def check_normalized(x: np.ndarray, stats: Normalization | None) -> None:
    """InvalidInput (422) naming the first value of x [N, T, F] that the package's normalisation takes beyond
    float32's range: finite as sent, infinite as the model would see it."""
    if not stats:
        return
    bad = np.argwhere(~np.isfinite(normalize(x, stats)))
    if len(bad):
        n, t, f = (int(i) for i in bad[0])
        mean, std = stats["mean"][f], stats["std"][f]
        raise InvalidInput(f"sequences[{n}][{t}][{f}] = {float(x[n, t, f]):g} is beyond float32's range after the "
                           f"package's normalisation (x - {mean:g}) / {std:g}: values of feature {f} must lie "
                           f"within about {mean:g} ± {3.4e38 * min(std, 1.0):.3g}")


def as_sequences(values, steps: int, features: int) -> np.ndarray:
    """A request's nested lists [N][T][F] (or [N][T] when F = 1) -> float32 [N, T, F]; InvalidInput (422)
    naming the expected shape otherwise."""
    try:
        with np.errstate(over="ignore"):  # numbers beyond float32 become infinity, refused below
            x = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError):
        raise InvalidInput(f"sequences must be numbers shaped [N, {steps}, {features}]") from None
    if x.ndim == 2 and features == 1:
        x = x[..., None]
    if x.ndim != 3 or x.shape[1:] != (steps, features) or len(x) == 0:
        raise InvalidInput(f"sequences must be shaped [N, {steps}, {features}] (N >= 1); got {list(x.shape)}")
    if not np.isfinite(x).all():
        raise InvalidInput("sequences must be finite numbers within float32's range (|x| < 3.4e38; no NaN or "
                           "infinity)")
    return x
