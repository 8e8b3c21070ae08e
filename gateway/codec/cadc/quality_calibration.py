"""A bundle's quality calibration: features of a coded picture -> the ground's MS-SSIM and PSNR.

A small ridge regression per target on standardised terms (a term is a
feature of :mod:`gateway.codec.cadc.quality_features` or a product of
features, ``"aux_ms_ssim*log2_bpp"``), fitted by
``tools/fit_quality_calibration.py`` on training pictures, whose targets come
from the real ground decode.  It lives in the bundle folder as
:data:`CALIBRATION_FILE`, JSON, next to the weights it was fitted for:

* the model id it was fitted for (a calibration of other weights is stale
  and is not used: refit it whenever the model is retrained);
* the terms, their centres and scales, and per target the intercept, the
  coefficients, the ridge strength and the range predictions are clipped to;
* the held-out error (images the fit never saw): MAE, RMSE and Spearman's
  rank correlation per target, per budget, and the same MAE of x̂_aux's own
  quality (the fallback's error) for comparison;
* how it was made (images, budgets, the command).

Only files ending in ``.safetensors`` / ``.bin`` make up the model id
(:func:`gateway.codec.cadc.bundle.model_id_of`), so writing or refitting
the calibration never changes the id that bitstreams carry.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from gateway.codec.cadc.bundle import CALIBRATION_FILE
from gateway.errors import BundleError

FORMAT = 1
KIND = "satgw-cadc-quality-calibration"
#: Metrics a calibration predicts, and the range a prediction is clipped to.
TARGET_RANGES: dict[str, tuple[float, float]] = {"ms_ssim": (0.0, 1.0), "psnr": (0.0, 99.0)}


def term_value(term: str, features: Mapping[str, float]) -> float:
    """The value of ``term`` (a feature name, or names joined by ``*``) for ``features``."""
    value = 1.0
    for name in term.split("*"):
        value *= float(features[name])
    return value


def term_matrix(terms: Sequence[str], rows: Sequence[Mapping[str, float]]) -> np.ndarray:
    """[len(rows), len(terms)] float64 values of every term for every row of features."""
    return np.array([[term_value(t, r) for t in terms] for r in rows], dtype=np.float64).reshape(len(rows), len(terms))


@dataclass(frozen=True)
class TargetModel:
    """One target's ridge regression on the standardised terms."""

    intercept: float
    coef: tuple[float, ...]
    alpha: float
    low: float
    high: float

    def predict(self, z: np.ndarray) -> np.ndarray:
        """Predictions for standardised term rows ``z`` [n, terms], clipped to [low, high]."""
        return np.clip(self.intercept + z @ np.asarray(self.coef), self.low, self.high)


def fit_ridge(z: np.ndarray, y: np.ndarray, alpha: float) -> tuple[float, np.ndarray]:
    """(intercept, coefficients) of ridge regression of ``y`` on standardised ``z`` (intercept not penalised)."""
    mean_y = float(y.mean())
    a = z.T @ z + alpha * np.eye(z.shape[1])
    coef = np.linalg.solve(a, z.T @ (y - mean_y))
    return mean_y - float(z.mean(axis=0) @ coef), coef


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation of two equally long sequences (None for fewer than 3 values or no spread)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # ties share their mean rank
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


@dataclass(frozen=True)
class QualityCalibration:
    """A fitted calibration (see the module docstring); :meth:`predict` maps features to target values."""

    model_id: int
    terms: tuple[str, ...]
    center: tuple[float, ...]
    scale: tuple[float, ...]
    targets: dict[str, TargetModel]
    held_out: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def _standardised(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        return (term_matrix(self.terms, rows) - np.asarray(self.center)) / np.asarray(self.scale)

    def predict(self, features: Mapping[str, float]) -> dict[str, float]:
        """Predicted value of every target for one picture's ``features``."""
        z = self._standardised([features])
        return {name: float(model.predict(z)[0]) for name, model in self.targets.items()}

    def predict_many(self, rows: Sequence[Mapping[str, float]]) -> dict[str, np.ndarray]:
        """Predicted values of every target for many pictures' features."""
        z = self._standardised(rows)
        return {name: model.predict(z) for name, model in self.targets.items()}

    def error(self, target: str) -> float | None:
        """The held-out mean absolute error of ``target`` (None when the file does not say)."""
        value = (self.held_out.get(target) or {}).get("mae")
        return float(value) if isinstance(value, (int, float)) else None

    # -- fitting -----------------------------------------------------------------------------------
    @classmethod
    def fit(cls, model_id: int, terms: Sequence[str], rows: Sequence[Mapping[str, float]],
            targets: Mapping[str, Sequence[float]], groups: Sequence[Any],
            alphas: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0)) -> "QualityCalibration":
        """Fit every target on ``rows`` of features; the ridge strength per target by grouped cross-validation.

        ``groups`` names the picture each row comes from: the folds keep a
        picture's rows together, so the chosen strength is the one that
        predicts pictures the fit has not seen.
        """
        x = term_matrix(terms, rows)
        center, scale = x.mean(axis=0), x.std(axis=0)
        scale[scale == 0] = 1.0  # a constant term (e.g. scale 1 everywhere) contributes nothing
        z = (x - center) / scale
        folds = _folds(groups, 5)
        models = {}
        for name, values in targets.items():
            y = np.asarray(values, dtype=np.float64)
            low, high = TARGET_RANGES[name]

            def cv_error(alpha: float) -> float:
                errs = []
                for test in folds:
                    train = ~test
                    b0, b = fit_ridge(z[train], y[train], alpha)
                    errs.append(np.abs(np.clip(b0 + z[test] @ b, low, high) - y[test]))
                return float(np.mean(np.concatenate(errs)))

            alpha = min(alphas, key=cv_error) if len(folds) > 1 else alphas[len(alphas) // 2]
            b0, b = fit_ridge(z, y, alpha)
            models[name] = TargetModel(float(b0), tuple(float(v) for v in b), float(alpha), low, high)
        return cls(model_id, tuple(terms), tuple(float(v) for v in center), tuple(float(v) for v in scale), models)

    # -- the file ----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The file's content."""
        return {
            "kind": KIND,
            "format": FORMAT,
            "model_id": f"{self.model_id:04x}",
            "terms": list(self.terms),
            "center": list(self.center),
            "scale": list(self.scale),
            "targets": {
                name: {"intercept": m.intercept, "coef": list(m.coef), "alpha": m.alpha, "range": [m.low, m.high]}
                for name, m in self.targets.items()
            },
            "held_out": self.held_out,
            "provenance": self.provenance,
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "the calibration") -> "QualityCalibration":
        """Read :meth:`to_json`'s content; :class:`BundleError` saying what is wrong with it."""
        from gateway.codec.cadc.quality_features import FEATURES

        def bad(why: str) -> BundleError:
            return BundleError(f"{source} is not a usable quality calibration: {why}; refit it with "
                               "tools/fit_quality_calibration.py")

        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise bad(f"it is not a {KIND} file")
        if data.get("format") != FORMAT:
            raise bad(f"format {data.get('format')!r}; this build reads format {FORMAT}")
        try:
            model_id = int(str(data["model_id"]), 16)
            terms = tuple(str(t) for t in data["terms"])
            center = tuple(float(v) for v in data["center"])
            scale = tuple(float(v) for v in data["scale"])
            targets = {}
            for name, m in dict(data["targets"]).items():
                if name not in TARGET_RANGES:
                    raise bad(f"unknown target {name!r}")
                low, high = (float(v) for v in m["range"])
                targets[name] = TargetModel(float(m["intercept"]), tuple(float(v) for v in m["coef"]),
                                            float(m["alpha"]), low, high)
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"a field is missing or malformed ({type(exc).__name__}: {exc})") from exc
        unknown = sorted({f for t in terms for f in t.split("*")} - set(FEATURES))
        if unknown:
            raise bad(f"it uses features this build does not compute: {', '.join(unknown)}")
        if not (len(center) == len(scale) == len(terms)) or any(len(m.coef) != len(terms) for m in targets.values()):
            raise bad("its coefficient lists do not match its terms")
        numbers = [*center, *scale, *(v for m in targets.values() for v in (m.intercept, *m.coef))]
        if not all(math.isfinite(v) for v in numbers) or any(s <= 0 for s in scale):
            raise bad("it holds non-finite numbers or non-positive scales")
        if not targets:
            raise bad("it predicts nothing")
        return cls(model_id, terms, center, scale, targets, dict(data.get("held_out") or {}),
                   dict(data.get("provenance") or {}))


def _folds(groups: Sequence[Any], k: int) -> list[np.ndarray]:
    """Boolean test masks of ``k`` folds that keep each group's rows together (fewer when there are fewer groups)."""
    names = sorted(set(groups), key=str)
    k = min(k, len(names))
    if k < 2:
        return [np.ones(len(groups), dtype=bool)]
    # Groups to folds by a hash of their name: deterministic, and independent of the order rows came in.
    fold_of = {g: int(hashlib.blake2b(str(g).encode(), digest_size=4).hexdigest(), 16) % k for g in names}
    masks = [np.array([fold_of[g] == i for g in groups]) for i in range(k)]
    return [m for m in masks if m.any() and not m.all()]


def calibration_path(bundle: str | Path) -> Path:
    """Where a bundle keeps its calibration."""
    return Path(bundle) / CALIBRATION_FILE


def read_calibration(bundle: str | Path) -> QualityCalibration | None:
    """The calibration in ``bundle`` (None when it has none); :class:`BundleError` when the file is unusable."""
    path = calibration_path(bundle)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} cannot be read as JSON ({exc}); refit it with "
                          "tools/fit_quality_calibration.py") from exc
    return QualityCalibration.from_json(data, str(path))


def load_calibration(bundle: str | Path | None, model_id: int) -> tuple[QualityCalibration | None, str | None]:
    """The calibration of ``bundle`` if it is usable for weights ``model_id``, else None and the reason why.

    Never raises: a missing, unreadable or stale file only means the caller
    falls back to its documented rule (and logs the reason).
    """
    if bundle is None:
        return None, "the codec was not loaded from a bundle folder, so it has no quality calibration"
    try:
        cal = read_calibration(bundle)
    except BundleError as exc:
        return None, str(exc)
    if cal is None:
        return None, f"bundle {bundle} has no {CALIBRATION_FILE}"
    if cal.model_id != model_id:
        return None, (f"{calibration_path(bundle)} was fitted for model {cal.model_id:04x}, but the bundle's weights "
                      f"are model {model_id:04x} (retrained since): refit it")
    return cal, None


def write_calibration(bundle: str | Path, calibration: QualityCalibration) -> Path:
    """Write ``calibration`` into ``bundle`` (atomically) and list it in the bundle's manifest, if it has one."""
    from gateway.codec.cadc.bundle import record_extra_file
    from gateway.codec.image_io import write_atomic

    path = calibration_path(bundle)
    write_atomic(path, (json.dumps(calibration.to_json(), indent=1) + "\n").encode())
    record_extra_file(Path(bundle), CALIBRATION_FILE)
    return path
