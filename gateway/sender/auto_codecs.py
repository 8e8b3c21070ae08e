"""The sender's ``codec: auto``: its checked settings, its candidate codecs, its log lines, its record.

The choice itself is :func:`gateway.ratecontrol.auto.choose_codec`; this
module gives it what the sender daemon has (the config's ``auto`` section,
the bundle, the process-wide codec instances, the event log) and turns its
outcome into what the spool and the META frame carry.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gateway.codec.registry import available_codecs, get_codec
from gateway.daemon.config import SenderConfig
from gateway.errors import ConfigError
from gateway.protocol.meta import CandidateQuality, CodecChoice
from gateway.ratecontrol import Budget
from gateway.ratecontrol.auto import (
    AUTO,
    AutoChoice,
    AutoSettings,
    check_candidates,
    choose_codec,
    default_candidates,
    load_candidates,
)
from gateway.ratecontrol.ladder import ModelLadder, ladder_for
from gateway.transport.eventlog import EventLog


def auto_settings(cfg: SenderConfig) -> AutoSettings:
    """The config's ``auto`` section checked against this host's codecs; ConfigError names the key and file."""
    a = cfg.auto
    try:
        names = default_candidates() if a.candidates is None else check_candidates(list(a.candidates),
                                                                                   available_codecs())
    except ConfigError as e:
        raise ConfigError(f"auto.candidates: {e} (in {cfg.source})") from e
    try:
        return AutoSettings(names, a.metric, a.drop_margin)
    except ConfigError as e:
        raise ConfigError(f"auto: {e} (in {cfg.source})") from e


def sender_ladder(cfg: SenderConfig) -> ModelLadder:
    """The CADC models this sender encodes with, by budget: the config's ``ladder``, else its ``bundle``
    alone, else the embedded models' ladder; ConfigError names what is wrong and the file."""
    if cfg.ladder is None:
        return ladder_for(cfg.bundle, None)
    return ModelLadder.from_list(list(cfg.ladder), source=f"ladder (in {cfg.source})")


def job_codecs() -> list[str]:
    """What a job may ask for: every codec this host has, and ``auto``."""
    return [*available_codecs(), AUTO]


class AutoCodecs:
    """The sender's codec choice: loads the candidates once, chooses per job, logs what an operator must know.

    The ``cadc`` candidate is the model its ladder gives for the job's budget
    (:func:`sender_ladder`), so auto weighs the same CADC model
    that ``codec: cadc`` would send.
    """

    def __init__(self, cfg: SenderConfig, log: EventLog) -> None:
        self.settings = auto_settings(cfg)
        self.ladder = sender_ladder(cfg)
        self.log = log
        self._codecs: dict[tuple[str, str | None], Any] = {}
        self._missing: set[tuple[str, str | None]] = set()  # (codec, bundle) that did not load: logged once
        self._told: set[tuple[str, str]] = set()  # (codec, what) already logged: each once per run

    def codecs(self, budget: Budget, width: int, height: int) -> list[Any]:
        """The candidates for a ``width`` x ``height`` picture at ``budget`` that load here (each loaded on
        first use; one that does not load is logged once and left out)."""
        out = []
        for name in self.settings.candidates:
            key = (name, self.ladder.bundle_for(budget, width, height) if name == "cadc" else None)
            if key not in self._codecs and key not in self._missing:
                codecs, missing = load_candidates([name], lambda n: get_codec(n, key[1], encoder_only=True))
                self._codecs.update({key: c for c in codecs})
                for reason in missing.values():
                    self._missing.add(key)
                    self.log.warning("auto_candidate_unavailable", codec=name, bundle=key[1], reason=reason,
                                     note="auto chooses among the other candidates")
            if key in self._codecs:
                out.append(self._codecs[key])
        return out

    def choose(self, image: np.ndarray, budget: Budget, label: str) -> AutoChoice:
        """The best candidate for ``image`` at ``budget`` (BudgetError when none fits)."""
        height, width = image.shape[:2]
        return choose_codec(self.codecs(budget, width, height), image, budget, self.settings, label=label,
                            on_fallback=self._fallback)

    def _fallback(self, codec: str, note: str) -> None:
        if (codec, note) not in self._told:
            self._told.add((codec, note))
            self.log.warning("auto_quality_fallback", codec=codec, note=note)


def meta_choice(choice: AutoChoice) -> CodecChoice:
    """What the META frame tells the ground of ``choice``."""
    return CodecChoice(choice.metric, choice.seconds, tuple(
        CandidateQuality(c.codec, c.state, c.kind, c.quality.get("ms_ssim"), c.quality.get("psnr"))
        for c in choice.candidates))
