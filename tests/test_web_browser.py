"""The live page in a real browser: three daemons, ``satgw web``, and headless Chromium driven by Selenium.

Pictures sent while the page is open must appear on it without a reload, and
every number on a card must match the picture's ``<id>.json`` in the outbox
(and the sender's count of retransmissions). Needs Debian's ``chromium`` and
``chromium-driver`` (README); without them the test is skipped with the
reason, and under CI that skip fails the run (``tests/conftest.py``).

Screenshots of the run go to the test's temporary folder, and also to
``$SATGW_SCREENSHOT_DIR`` when set (``docs/`` holds the ones in the README).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from gateway.eval.launcher import wait_for
from test_daemons import Rig, make_images

pytestmark = [pytest.mark.browser, pytest.mark.timeout(400)]

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1440,1350", "--hide-scrollbars")
WAIT_S = 180  # a loaded 2-core machine: generous, and every wait ends as soon as its condition holds


def _find(*names: str) -> str | None:
    for n in names:
        path = shutil.which(n) or (f"/usr/bin/{n}" if Path(f"/usr/bin/{n}").exists() else None)
        if path:
            return path
    return None


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium under Selenium, or a skip that says what to install."""
    chromium, driver_path = _find("chromium", "chromium-browser"), _find("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("headless Chromium not found: apt-get install -y chromium chromium-driver (see README)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: pip install -e '.[test]'")
    profile = tempfile.mkdtemp(prefix="satgw-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # An explicit driver path: Selenium must never try to download one.
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _screenshot(driver: Any, tmp: Path, name: str) -> Path:
    """Save what the browser shows once its pictures have loaded (to ``tmp``, and to $SATGW_SCREENSHOT_DIR)."""
    wait_for(lambda: driver.execute_script(
        "return [...document.images].every(i => !i.getAttribute('src') || (i.complete && i.naturalWidth > 0))"),
        30, what="the pictures on the page to load")
    path = tmp / name
    driver.save_screenshot(str(path))
    if os.environ.get("SATGW_SCREENSHOT_DIR"):
        out = Path(os.environ["SATGW_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / name)
    return path


_CARDS_JS = """
    const out = {};
    for (const card of document.querySelectorAll('#images article.card')) {
      const f = {};
      for (const e of card.querySelectorAll('[data-field]')) f[e.dataset.field] = e.textContent;
      out[card.dataset.id] = f;
    }
    return out;"""


def _cards(driver: Any) -> dict[int, dict[str, str]]:
    """Each card on the page: its id -> {data-field: text shown}."""
    return {int(k): v for k, v in driver.execute_script(_CARDS_JS).items()}


def _number(text: str, unit: str) -> float:
    assert text.endswith(unit), f"{text!r} should end with {unit!r}"
    return float(text[: -len(unit)].replace(",", "").strip())


def _check_card(shown: dict[str, str], rec: dict[str, Any], retx: int) -> None:
    """The card's numbers are the record's, formatted with their units."""
    t = rec["timings"]
    assert shown["source_name"] == rec["source_name"]
    assert shown["codec"] == rec["codec"]
    assert int(shown["frames_total"]) == rec["frames_total"]
    assert _number(shown["bytes_on_air"], " B") == rec["bytes_on_air"]
    assert _number(shown["bitstream_bytes"], " B") == rec["bitstream_bytes"]
    assert _number(shown["bpp"], " bpp") == pytest.approx(rec["bpp"], abs=0.0005)
    assert _number(shown["latency_s"], " s") == pytest.approx(t["latency_s"], abs=0.051)
    assert _number(shown["decode_s"], " ms") == pytest.approx(t["decode_s"] * 1000, abs=0.51)
    assert shown["size"] == f"{rec['width']}×{rec['height']} px"
    assert int(shown["retransmissions"]) == retx


def test_pictures_appear_live_with_the_numbers_of_their_records(browser, tmp_path):
    rig = Rig(tmp_path / "rig", preset="harsh", time_scale=20.0, metrics=True)
    try:
        rig.start(("link", "receiver", "sender", "web"))
        browser.get(rig.web_url)
        wait_for(lambda: browser.execute_script("return document.body.dataset.version"), WAIT_S,
                 what="the page's first live update")
        assert browser.find_element("id", "empty").is_displayed()
        # Anything a reload would wipe out: it must survive every update below.
        browser.execute_script("window.satgwNoReload = 'still here'")

        images = make_images(6, size=192, width=256)
        codecs = ["webp", "avif", "jpeg"]
        first = rig.submit(images[0][0], images[0][1], packets=6, codec="webp")
        wait_for(lambda: first in _cards(browser), WAIT_S, what="the first picture on the page")
        sent = {first: images[0][0]}
        for i, (name, data) in enumerate(images[1:], 1):
            sent[rig.submit(name, data, packets=4 + i % 3, codec=codecs[i % 3])] = name
        # While the rest are on the air: the arriving strip and the sender's queue (not asserted: timing).
        wait_for(lambda: len(_cards(browser)) >= 2, WAIT_S, what="a second picture")
        _screenshot(browser, tmp_path, "web-live-transfer.png")

        wait_for(lambda: set(_cards(browser)) == set(sent), WAIT_S, what="all six pictures on the page")
        assert browser.execute_script("return window.satgwNoReload") == "still here", "the page reloaded"

        # The sender records each delivery once it hears the final ACK; then the page shows its retransmissions.
        status = wait_for(lambda: (s := rig.sender_status())["counts"]["delivered"] == 6 and s, WAIT_S,
                          what="the sender to record six deliveries")
        retx = {m["id"]: m["retransmitted"] for m in status["messages"]}
        wait_for(lambda: all(c["retransmissions"] != "–" for c in _cards(browser).values()), WAIT_S,
                 what="retransmission counts on every card")
        outputs = rig.outputs()
        cards = _cards(browser)
        for mid, shown in cards.items():
            _check_card(shown, outputs[mid], retx[mid])
        # Newest first: the cards' order is the records' decode order, latest on top.
        order = browser.execute_script(
            "return [...document.querySelectorAll('#images article.card')].map(c => Number(c.dataset.id))")
        assert order == sorted(outputs, key=lambda m: outputs[m]["timings"]["decoded_at"], reverse=True)

        # The panels: counts as the daemons keep them.
        def text(element_id: str) -> str:
            return browser.find_element("id", element_id).text

        wait_for(lambda: text("s-delivered") == "6" and text("g-done") == "6", WAIT_S, what="the panels' counts")
        assert text("link-state") == "UP"  # CSS upper-cases the pill
        assert text("link-util").endswith(" %") and text("link-loss").endswith(")")
        assert text("ground-reach") == "RUNNING" and text("sender-reach") == "REACHABLE"
        assert int(text("g-frames").replace(",", "")) == rig.receiver_status()["counters"]["frames_in"]
        _screenshot(browser, tmp_path, "web-pictures.png")

        # The full view: a click on the newest thumbnail opens it, with the same facts.
        browser.find_element("css selector", "#images article.card a.thumb").click()
        wait_for(lambda: browser.execute_script("return document.getElementById('viewer').open"), 30,
                 what="the full view")
        wait_for(lambda: browser.execute_script(
            "const i = document.getElementById('viewer-img'); return i.complete && i.naturalWidth"), 30,
            what="the full picture to load")
        newest = outputs[order[0]]
        assert browser.execute_script("return document.getElementById('viewer-img').naturalWidth") == newest["width"]
        _screenshot(browser, tmp_path, "web-full-view.png")
        assert json.loads(browser.execute_script("return JSON.stringify(window.satgwNoReload)")) == "still here"
    finally:
        rig.stop()


def test_a_preview_is_marked_then_replaced_by_each_revision(browser, tmp_path):
    """A picture still arriving: its card says preview and how much of it was decoded, its thumbnail is fetched
    again for each revision, and the list of revisions grows until the complete picture."""
    import dataclasses

    import numpy as np

    from gateway.codec.image_io import png_bytes
    from gateway.store.framestore import FrameStore
    from gateway.store.revisions import Revision
    from test_web import Web, _record

    outbox, store_path = tmp_path / "outbox", tmp_path / "frames.db"
    outbox.mkdir()
    FrameStore(store_path).close()

    def write(revision: int, frames: int, complete: bool, grey: int) -> None:
        rec = dataclasses.replace(_record(11, "pass.png", 1000.0 + revision), complete=complete, revision=revision,
                                  frames_used=frames, frames_data=4, layers_decoded=frames + complete,
                                  layers_total=5)
        (outbox / "11.png").write_bytes(png_bytes(np.full((48, 64, 3), grey, dtype=np.uint8)))
        (outbox / "11.json").write_bytes(rec.to_json())
        store = FrameStore(store_path)
        store.record_preview(Revision(11, revision, complete, frames, 4, frames + complete, 5, 1000.0 + revision))
        store.close()

    def card() -> dict[str, Any]:
        return browser.execute_script("""
            const c = document.querySelector('#images article.card[data-id="11"]');
            if (!c) return null;
            const b = c.querySelector('[data-field="preview"]');
            return {badge: b.hidden ? null : b.textContent, src: c.querySelector('a.thumb img').getAttribute('src'),
                    revisions: [...c.querySelectorAll('ol.revisions li')].map(li => li.textContent)};""")

    write(1, 1, False, 40)
    web = Web({"outbox": outbox, "store": store_path, "tmp": tmp_path})
    try:
        browser.get(f"http://127.0.0.1:{web.port}/")
        first = wait_for(lambda: (c := card()) and c, WAIT_S, what="the preview's card")
        assert first["badge"] == "preview 1 · 1 of 4 frames · 1/5 layers" and first["src"].endswith("?r=1")
        write(2, 3, False, 120)
        second = wait_for(lambda: (c := card()) and c["src"].endswith("?r=2") and c, WAIT_S, what="revision 2")
        assert second["badge"] == "preview 2 · 3 of 4 frames · 3/5 layers" and len(second["revisions"]) == 2
        write(3, 4, True, 200)
        done = wait_for(lambda: (c := card()) and c["src"].endswith("?r=3") and c, WAIT_S, what="the complete picture")
        assert done["badge"] is None
        assert [r.split(":")[0] for r in done["revisions"]] == ["preview 1", "preview 2", "complete 3"]
        _screenshot(browser, tmp_path, "web-preview.png")
    finally:
        web.stop()
