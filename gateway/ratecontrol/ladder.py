"""A model ladder: which CADC bundle encodes a picture, by how many bits per pixel its budget gives.

No one CADC model is best at every rate.  A model with y at 1/32 of the
side spends its few bits well on a 1-frame budget; one with y at 1/16 has
four times the positions and wins once the budget can pay for them (Kodak,
MS-SSIM at 1 / 2 / 4 / 8 frames: 0.685 / 0.745 / 0.789 / 0.811 against
0.660 / 0.744 / 0.806 / 0.843; cadc-tiny's model card, runs 21 and 22).  Each
model can then be trained for its own rates (``lam_train_range``).  A ladder lists the
models (``rungs``), each with the budget, in bits per pixel of the original
picture, from which it takes over: the rung whose ``from_bpp`` is the largest
not above the budget's bits per pixel encodes.

Bits per pixel, not frames, because the same 4 frames are a generous budget
for a thumbnail and a starved one for a 12-megapixel frame.  The choice is
made before the rate controller runs, from the budget and the picture's
size alone: it costs nothing, and the same picture at the same budget always
goes to the same model.  The ground decodes with whichever model the
bitstream's header names (:func:`gateway.codec.registry.decoder_for`), so it
needs every rung's bundle, and has the embedded ones already.

The embedded models' ladder is ``gateway/bundles/ladder.yaml``; a sender
config may give its own (``ladder:``) or one ``bundle`` (a ladder of one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.ratecontrol.budget import Budget

#: The embedded ladder's file, beside the embedded bundles.
LADDER_FILE = "ladder.yaml"


@dataclass(frozen=True)
class Rung:
    """One model of a ladder: its bundle folder (None: the embedded cadc-tiny) and where it takes over."""

    bundle: str | None
    from_bpp: float


def budget_bpp(budget: Budget, width: int, height: int) -> float:
    """Bits per pixel of the original picture that ``budget`` carries at most."""
    if width < 1 or height < 1:
        raise ConfigError(f"a picture of {width}x{height} pixels has no bits per pixel")
    return budget.bytes * 8 / (width * height)


@dataclass(frozen=True)
class ModelLadder:
    """CADC bundles by the budget's bits per pixel (see the module docstring).

    ``rungs`` are in increasing ``from_bpp``, the first from 0, every bundle
    once; :class:`ConfigError` says what is wrong otherwise.  ``source`` says
    where the ladder came from (for messages and records).
    """

    rungs: tuple[Rung, ...]
    source: str = "<given>"

    def __post_init__(self) -> None:
        if not self.rungs:
            raise ConfigError(f"{self.source}: a model ladder needs at least one rung, e.g. "
                              "[{bundle: null, from_bpp: 0}]")
        if self.rungs[0].from_bpp != 0:
            raise ConfigError(f"{self.source}: the first rung must start at from_bpp 0 (it serves the smallest "
                              f"budgets), not {self.rungs[0].from_bpp:g}")
        for lower, upper in zip(self.rungs, self.rungs[1:]):
            if not upper.from_bpp > lower.from_bpp:
                raise ConfigError(f"{self.source}: rungs must be in increasing from_bpp; "
                                  f"{upper.from_bpp:g} follows {lower.from_bpp:g}")
        folders = [_key(r.bundle) for r in self.rungs]
        if len(set(folders)) != len(folders):
            raise ConfigError(f"{self.source}: a bundle appears on two rungs; each model belongs on one")

    @classmethod
    def single(cls, bundle: str | None) -> "ModelLadder":
        """The ladder of one model: ``bundle`` at every budget."""
        return cls((Rung(bundle, 0.0),), source=f"bundle {bundle or 'cadc-tiny (embedded)'}")

    @classmethod
    def from_list(cls, items: Any, base: Path | None = None, source: str = "<given>") -> "ModelLadder":
        """A ladder from its config form: a list of ``{bundle: FOLDER, from_bpp: X}``.

        A relative ``bundle`` is taken relative to ``base`` (when given); a
        ``null`` bundle is the embedded cadc-tiny.
        """
        if not isinstance(items, list):
            raise ConfigError(f"{source}: a model ladder is a list of {{bundle: FOLDER, from_bpp: X}}, "
                              f"got {type(items).__name__}")
        rungs = []
        for i, item in enumerate(items):
            where = f"{source}: rung {i}"
            if not isinstance(item, dict) or set(item) - {"bundle", "from_bpp"} or "from_bpp" not in item:
                raise ConfigError(f"{where} must be {{bundle: FOLDER, from_bpp: X}}, got {item!r}")
            bundle, bpp = item.get("bundle"), item["from_bpp"]
            if bundle is not None and (not isinstance(bundle, str) or not bundle):
                raise ConfigError(f"{where}: bundle must be a folder (or null for the embedded cadc-tiny), "
                                  f"got {bundle!r}")
            if isinstance(bpp, bool) or not isinstance(bpp, (int, float)) or not 0 <= bpp < 1000:
                raise ConfigError(f"{where}: from_bpp must be a number of bits per pixel >= 0, got {bpp!r}")
            if bundle is not None and base is not None and not Path(bundle).is_absolute():
                bundle = str(base / bundle)
            rungs.append(Rung(bundle, float(bpp)))
        return cls(tuple(rungs), source=source)

    @classmethod
    def embedded(cls) -> "ModelLadder":
        """The ladder of the models that ship inside the package (``gateway/bundles/ladder.yaml``)."""
        import yaml

        from gateway.paths import bundle_dir

        path = bundle_dir(LADDER_FILE)
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"the embedded model ladder {path} cannot be read ({e}); reinstall satgw") from e
        if not isinstance(raw, dict) or "rungs" not in raw:
            raise ConfigError(f"the embedded model ladder {path} has no 'rungs' list; reinstall satgw")
        return cls.from_list(raw["rungs"], base=path.parent, source=str(path))

    @property
    def bundles(self) -> tuple[str | None, ...]:
        """Every rung's bundle, smallest budgets first."""
        return tuple(r.bundle for r in self.rungs)

    def rung_for(self, budget: Budget, width: int, height: int) -> Rung:
        """The rung that encodes a ``width`` x ``height`` picture at ``budget``."""
        bpp = budget_bpp(budget, width, height)
        return [r for r in self.rungs if r.from_bpp <= bpp][-1]

    def bundle_for(self, budget: Budget, width: int, height: int) -> str | None:
        """The bundle that encodes a ``width`` x ``height`` picture at ``budget``."""
        return self.rung_for(budget, width, height).bundle

    def describe(self) -> list[dict[str, Any]]:
        """The rungs as plain data (records, logs)."""
        return [{"bundle": r.bundle, "from_bpp": r.from_bpp} for r in self.rungs]


def _key(bundle: str | None) -> str:
    """A bundle's folder as one comparable string (None: the embedded cadc-tiny)."""
    from gateway.paths import bundle_dir

    return str(Path(bundle).resolve() if bundle is not None else bundle_dir("cadc-tiny").resolve())


class LadderModels:
    """Every rung's CADC codec, loaded once, and the one that encodes a picture at a budget.

    ``options`` go to :func:`gateway.codec.registry.make_codec` (e.g.
    ``encoder_only=True`` for a sender, ``device=`` for an evaluation).
    """

    name = "cadc"  #: what a caller listing codecs by name sees

    def __init__(self, ladder: ModelLadder, **options: Any) -> None:
        from gateway.codec.registry import make_codec

        self.ladder = ladder
        self.models = {b: make_codec("cadc", bundle=b, **options) for b in ladder.bundles}

    def for_budget(self, budget: Budget, width: int, height: int) -> Any:
        """The codec of the rung that encodes a ``width`` x ``height`` picture at ``budget``."""
        return self.models[self.ladder.bundle_for(budget, width, height)]


def ladder_for(bundle: str | None, ladder: "ModelLadder | None") -> "ModelLadder":
    """The ladder a sender encodes with: ``ladder`` when given, else ``bundle`` alone, else the embedded one."""
    if ladder is not None:
        return ladder
    return ModelLadder.single(bundle) if bundle is not None else ModelLadder.embedded()
