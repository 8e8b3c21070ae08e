"""The short soak (bounded: at most 3 minutes): the brutal link, kill -9s and disk episodes, nothing lost or doubled.

``tools/soak.py`` at a small size: a dozen images through ``satgw send`` and
the inbox over a link losing about half its frames, six ``kill -9`` of random
daemons, the ground's outbox and the sender's spool filling up and the outbox
going read-only (on tmpfs mounts in a private mount namespace; without one the
disk episodes are skipped and the script says so). Every image must be
delivered exactly once, pixel-identical to a local decode, with no job left
on its way. The 200-image figure in the README comes from the same script.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOAK_LIMIT_S = 180


@pytest.mark.timeout(SOAK_LIMIT_S + 20)
def test_short_soak_delivers_everything_exactly_once(tmp_path: Path) -> None:
    out = tmp_path / "soak"
    cmd = [sys.executable, str(ROOT / "tools" / "soak.py"), "--images", "12", "--kills", "6", "--duration", "50",
           "--settle", "90", "--time-scale", "40", "--seed", "3", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=SOAK_LIMIT_S, cwd=ROOT)
    result = json.loads((out / "soak.json").read_text()) if (out / "soak.json").exists() else {}
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr[-3000:]}"
    assert (result["submitted"], result["delivered"]) == (12, 12)
    assert result["duplicates"] == result["lost"] == result["mismatches"] == result["stuck"] == 0
    assert sum(result["kills"].values()) == 6 and not result["chaos_errors"]
