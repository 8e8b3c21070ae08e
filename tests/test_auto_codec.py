"""``codec: auto``: the choice among candidates, CADC's predicted quality and its calibration, the sender's record.

The CADC candidate is a tiny random cadc-tiny (``cadc_fixtures``): its
auxiliary reconstruction is noise, so without a calibration its quality is
far below any classical codec's, and a calibration that predicts a high
MS-SSIM makes it win. Both outcomes are known in advance.
"""

from __future__ import annotations

import io
import json
import queue
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cadc_fixtures import textured_image, widen_gains
from gateway.cli import main
from gateway.codec import bitstream
from gateway.codec.cadc.aux_preview import AuxPreviewNets, aux_picture
from gateway.codec.cadc.bundle import MANIFEST, bundle_model_id, create_bundle, load_encoder, load_model, model_id_of
from gateway.codec.cadc.codec import CADCCodec
from gateway.codec.cadc.quality_calibration import (
    CALIBRATION_FILE,
    QualityCalibration,
    TargetModel,
    load_calibration,
    read_calibration,
    write_calibration,
)
from gateway.codec.cadc.quality_features import FEATURES
from gateway.codec.cadc.tiled_synthesis import to_uint8
from gateway.codec.registry import available_codecs, make_codec
from gateway.daemon.config import load_sender_config
from gateway.daemon.faults import FaultBoard
from gateway.errors import BudgetError, BundleError, ConfigError
from gateway.ground.output import DecodeJob, decode_message
from gateway.protocol.meta import CandidateQuality, CodecChoice, MessageMeta
from gateway.ratecontrol import Budget, Fitting, fit
from gateway.ratecontrol.auto import AutoSettings, check_candidates, choose_codec, default_candidates
from gateway.sender.auto_codecs import auto_settings, job_codecs
from gateway.sender.encoder import Encoder
from gateway.store.framestore import StoredMessage
from gateway.store.spool import Spool
from gateway.transport.eventlog import EventLog
from packetizer.frame import FrameCodec

TINY_YAML = Path(__file__).resolve().parents[1] / "configs" / "models" / "cadc-tiny.yaml"
IMAGE = textured_image(128, 192)
LINK = {"link.endpoint": "ipc:///tmp/satgw-test-auto", "link.control": "ipc:///tmp/satgw-test-auto-control"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random cadc-tiny bundle folder (with its manifest)."""
    torch.manual_seed(0)
    return create_bundle(TINY_YAML, tmp_path_factory.mktemp("auto") / "tiny")


def sender_cadc(bundle: Path) -> CADCCodec:
    """The sender's view of the bundle (encoder only), its λ gains widened so that λ moves the rate."""
    codec = CADCCodec(load_encoder(bundle))
    widen_gains(codec.model, 7.0)
    codec.bundle_path = bundle
    return codec


def constant_calibration(model_id: int, ms_ssim: float, mae: float = 0.01) -> QualityCalibration:
    """A calibration that predicts ``ms_ssim`` (and 30 dB) whatever the features: a known outcome."""
    zero = tuple(0.0 for _ in FEATURES)
    return QualityCalibration(
        model_id, FEATURES, zero, tuple(1.0 for _ in FEATURES),
        {"ms_ssim": TargetModel(ms_ssim, zero, 1.0, 0.0, 1.0), "psnr": TargetModel(30.0, zero, 1.0, 0.0, 99.0)},
        {"ms_ssim": {"mae": mae}, "psnr": {"mae": 0.5}}, {"pictures": 3, "held_out_pictures": 1})


def classical(*names: str) -> list:
    return [make_codec(n) for n in names]


# --- the choice ---------------------------------------------------------------------------------------------


def test_without_calibration_cadc_falls_back_to_its_aux_quality_and_the_best_classical_wins(bundle: Path) -> None:
    cadc = sender_cadc(bundle)
    assert not (bundle / CALIBRATION_FILE).exists()
    told: list[tuple[str, str]] = []
    choice = choose_codec([cadc, *classical("webp", "jpeg")], IMAGE, Budget(2), AutoSettings(("cadc", "webp", "jpeg")),
                          on_fallback=lambda c, note: told.append((c, note)))
    rep = {c.codec: c for c in choice.candidates}
    assert rep["cadc"].kind == "predicted" and rep["cadc"].source == "aux"
    assert told and told[0][0] == "cadc" and "no quality calibration" in told[0][1] and "stand for" in told[0][1]
    assert rep["webp"].kind == "measured"
    # The random model's x̂_aux is noise: a classical codec wins, and the best measured one at that.
    known = {c.codec: c.quality["ms_ssim"] for c in choice.candidates if c.quality}
    assert choice.codec == max(known, key=known.get) != "cadc"
    assert rep[choice.codec].state == "chosen" and choice.result.bytes <= Budget(2).bytes
    assert bitstream.unpack(choice.result.bitstream)[0].codec_name == choice.codec


def test_a_calibration_predicting_high_quality_makes_cadc_win_and_its_error_is_reported(bundle: Path) -> None:
    cadc = sender_cadc(bundle)
    cadc._quality_predictor = None
    cadc.quality_predictor().calibration = constant_calibration(cadc.model_id, 0.995, mae=0.002)
    choice = choose_codec([cadc, *classical("webp")], IMAGE, Budget(2), AutoSettings(("cadc", "webp")))
    assert choice.codec == "cadc" and choice.chosen.source == "calibration"
    assert choice.chosen.quality["ms_ssim"] == pytest.approx(0.995) and choice.chosen.errors["ms_ssim"] == 0.002
    assert bitstream.unpack(choice.result.bitstream)[0].codec_name == "cadc"
    record = choice.as_dict()
    assert record["chosen"] == "cadc" and record["metric"] == "ms_ssim" and record["seconds"] > 0
    assert {c["codec"] for c in record["candidates"]} == {"cadc", "webp"}
    json.dumps(record)  # the spool stores it as JSON


def test_dominated_candidates_are_dropped_after_their_probe_and_never_beat_the_pick() -> None:
    settings = AutoSettings(("webp", "jpeg", "jxl"), "ms_ssim", drop_margin=0.0)
    choice = choose_codec(classical("webp", "jpeg", "jxl"), IMAGE, Budget(1), settings)
    best = choice.chosen.quality["ms_ssim"]
    finished = [c for c in choice.candidates if c.state in ("chosen", "finished")]
    dropped = [c for c in choice.candidates if c.state == "dropped"]
    assert dropped, "with no margin, a classical codec behind WebP's finished value is dropped after its probe"
    for c in dropped:
        assert c.quality["ms_ssim"] < max(f.quality["ms_ssim"] for f in finished) and "probe" in c.reason
    assert all(c.quality["ms_ssim"] <= best for c in choice.candidates if c.quality)


def test_psnr_metric_and_budget_errors() -> None:
    choice = choose_codec(classical("webp", "jpeg"), IMAGE, Budget(3), AutoSettings(("webp", "jpeg"), "psnr"))
    values = {c.codec: c.quality["psnr"] for c in choice.candidates if c.state in ("chosen", "finished")}
    assert choice.metric == "psnr" and choice.codec == max(values, key=values.get)
    with pytest.raises(BudgetError) as err:  # JPEG's tables alone overflow one frame of 120 B
        choose_codec(classical("jpeg"), IMAGE, Budget(1, 120), AutoSettings(("jpeg",)))
    assert "fits none of the auto candidates (jpeg) in 1 frames of 120 B; it needs at least" in str(err.value)
    assert err.value.frames_needed is not None and err.value.frames_needed > 1


def test_staged_fitting_finishes_where_fit_ends() -> None:
    codec = make_codec("webp")
    staged = Fitting(codec, IMAGE, Budget(1))
    probe = staged.probe()
    whole = staged.finish()
    direct = fit(codec, IMAGE, Budget(1))
    assert probe.knobs.scale_code <= whole.knobs.scale_code
    assert (whole.knobs, whole.bitstream) == (direct.knobs, direct.bitstream)


def test_candidate_lists_are_checked() -> None:
    known = available_codecs()
    assert check_candidates(["WebP", "jpeg"], known) == ("webp", "jpeg")
    for bad, words in ((["webp", "foo"], "unknown codec 'foo'; valid codecs:"), (["auto"], "auto itself"),
                       (["webp", "webp"], "listed twice"), ([], "empty"), ("webp", "must be a list")):
        with pytest.raises(ConfigError, match=words):
            check_candidates(bad, known)
    with pytest.raises(ConfigError, match="metric 'ssim' is unknown"):
        AutoSettings(("webp",), "ssim")
    assert set(default_candidates()) == set(known) and default_candidates()[0] in ("cadc", "webp")


def test_sender_config_auto_section_is_validated(tmp_path: Path) -> None:
    cfg = load_sender_config(None, {**LINK, "auto.candidates": ["webp", "foo"]})
    with pytest.raises(ConfigError, match=r"auto.candidates: .*unknown codec 'foo'"):
        auto_settings(cfg)
    with pytest.raises(ConfigError, match="auto.candidates: must be a list"):
        load_sender_config(None, {**LINK, "auto.candidates": "webp"})
    with pytest.raises(ConfigError, match="auto.drop_margin"):
        load_sender_config(None, {**LINK, "auto.drop_margin": -1})
    with pytest.raises(ConfigError, match="auto: auto metric"):
        auto_settings(load_sender_config(None, {**LINK, "auto.metric": "lpips"}))
    ok = auto_settings(load_sender_config(None, {**LINK, "auto.candidates": ["jpeg", "webp"], "auto.metric": "psnr"}))
    assert ok == AutoSettings(("jpeg", "webp"), "psnr", None)
    assert "auto" in job_codecs()


# --- the sender's record and the ground's JSON ----------------------------------------------------------------


def test_the_sender_records_the_choice_and_the_ground_writes_it(tmp_path: Path) -> None:
    cfg = load_sender_config(None, {**LINK, "spool": str(tmp_path / "spool.db"), "auto.candidates": ["webp", "jpeg"]})
    log_stream = io.StringIO()
    log = EventLog("sender", stream=log_stream)
    frame_codec = FrameCodec(450)
    encoder = Encoder(cfg, frame_codec, log, queue.Queue(), FaultBoard(log))
    spool = Spool(cfg.spool)
    buf = io.BytesIO()
    Image.fromarray(IMAGE).save(buf, "PNG")
    mid = spool.accept(buf.getvalue(), "tex.png", codec="auto", packets=2)
    encoder._encode(spool, spool.get(mid))
    row = spool.get(mid)
    assert row.state == "encoded" and row.codec == "auto"
    auto = row.knobs["auto"]
    assert row.knobs["codec"] == auto["chosen"] in ("webp", "jpeg") and auto["seconds"] > 0
    assert {c["codec"] for c in auto["candidates"]} == {"webp", "jpeg"}
    assert all(c["kind"] == "measured" for c in auto["candidates"] if c["state"] != "dropped" or c["quality"])
    encoded = [json.loads(line) for line in log_stream.getvalue().splitlines() if '"encoded"' in line]
    assert encoded and encoded[0]["codec"] == auto["chosen"] and encoded[0]["requested"] == "auto"
    meta = MessageMeta.unpack(spool.meta_frame(mid).payload)
    assert meta.codec == auto["chosen"] and meta.choice is not None and meta.choice.metric == "ms_ssim"
    chosen = next(c for c in meta.choice.candidates if c.state == "chosen")
    assert chosen.ms_ssim == pytest.approx(next(c for c in auto["candidates"] if c["state"] == "chosen")
                                           ["quality"]["ms_ssim"], abs=1e-4)
    # The ground's record carries it.
    msg = StoredMessage(mid, "assembled", row.k, row.n, 0.0, 0.0, 1.0, None, row.n, 0, row.n - 1,
                        spool.meta_frame(mid).payload, None, None, 1)
    record = decode_message(DecodeJob(msg, spool.bitstream(mid), str(tmp_path), 450))
    written = json.loads((tmp_path / f"{mid}.json").read_text())
    assert record.codec_choice == written["codec_choice"]
    assert written["codec_choice"]["chosen"] == written["codec"] == auto["chosen"]
    assert written["codec_choice"]["requested"] == "auto" and len(written["codec_choice"]["candidates"]) == 2
    spool.close()


def test_meta_with_a_choice_stays_readable_by_old_grounds_and_fits_small_frames() -> None:
    import msgpack

    choice = CodecChoice("ms_ssim", 1.5, tuple(CandidateQuality(n, "finished", "measured", 0.8, 25.0)
                                               for n in ("cadc", "webp", "avif", "jxl", "jpeg")))
    meta = MessageMeta("photo.png", 1234, "webp", 1.7e9, choice=choice)
    raw = meta.pack(416)
    old = msgpack.unpackb(raw, raw=False)
    assert (old["name"], old["size"], old["codec"], old["accepted_at"]) == ("photo.png", 1234, "webp", 1.7e9)
    assert MessageMeta.unpack(raw) == MessageMeta("photo.png", 1234, "webp", 1.7e9, choice=choice)
    small = MessageMeta.unpack(meta.pack(80))  # the candidates go first, then the name
    assert small.choice is not None and small.choice.candidates == () and small.codec == "webp"
    broken = msgpack.packb({"codec": "webp", "auto": {"m": "ms_ssim", "s": 1, "c": [["x"]]}})
    assert MessageMeta.unpack(broken) == MessageMeta(codec="webp")
    assert MessageMeta.unpack(MessageMeta("a", 1, "jpeg", 2.0).pack(416)).choice is None


# --- CADC's predictor and its calibration ---------------------------------------------------------------------


def test_aux_picture_in_tiles_equals_the_whole_picture_pass(bundle: Path) -> None:
    model = load_model(bundle)
    nets = AuxPreviewNets.of_model(model)
    torch.manual_seed(1)
    n = model.config.codec.y_channels
    y_hat = torch.randn(1, n, 3, 27) * 3  # 27 ŷ columns: wider than one 768-pixel tile
    _, inv_gain = model.gains(torch.tensor([4.0]))
    with torch.no_grad():
        whole = to_uint8(model.aux_reconstruction(model.synthesize_latent(y_hat, inv_gain))[0])[:90, :850]
    tiled = aux_picture(nets, y_hat, inv_gain, (850, 90))
    assert tiled.shape == whole.shape == (90, 850, 3)
    diff = np.abs(tiled.astype(int) - whole.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01


def test_calibration_round_trip_keeps_the_model_id_and_lists_the_file(bundle: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [{f: float(rng.normal()) for f in FEATURES} for _ in range(40)]
    truth = {"ms_ssim": [0.5 + 0.1 * r["aux_ms_ssim"] for r in rows], "psnr": [25 + r["log2_bpp"] for r in rows]}
    id_before, manifest_id = model_id_of(bundle), bundle_model_id(bundle)
    cal = QualityCalibration.fit(id_before, FEATURES, rows, truth, [i // 4 for i in range(40)])
    assert cal.predict(rows[0])["ms_ssim"] == pytest.approx(truth["ms_ssim"][0], abs=0.02)
    path = write_calibration(bundle, cal)
    try:
        assert model_id_of(bundle) == id_before and bundle_model_id(bundle) == manifest_id == id_before
        manifest = json.loads((bundle / MANIFEST).read_text())
        assert CALIBRATION_FILE in manifest["files"] and CALIBRATION_FILE not in manifest["weights"]
        back = read_calibration(bundle)
        assert back == cal and back.predict(rows[3]) == cal.predict(rows[3])
        assert load_calibration(bundle, id_before) == (back, None)
        stale, why = load_calibration(bundle, id_before ^ 1)
        assert stale is None and "refit it" in why
        from gateway.codec.cadc.bundle_cli import calibration_report

        assert calibration_report(bundle, id_before).startswith("found")
        assert calibration_report(bundle, id_before ^ 1).startswith("stale")
        path.write_text('{"kind": "satgw-cadc-quality-calibration", "format": 1, "model_id": "zz"}')
        with pytest.raises(BundleError, match="not a usable quality calibration.*refit it"):
            read_calibration(bundle)
        none, why = load_calibration(bundle, id_before)
        assert none is None and "malformed" in why
    finally:
        path.unlink()


def test_stale_calibration_is_not_used(bundle: Path) -> None:
    write_calibration(bundle, constant_calibration(model_id_of(bundle) ^ 1, 0.99))
    try:
        cadc = sender_cadc(bundle)
        est = cadc.predict_quality(IMAGE, fit(cadc, IMAGE, Budget(2)).bitstream)
        assert est.source == "aux" and "fitted for model" in est.note and "refit" in est.note
        assert 0.0 <= est.values["ms_ssim"] <= 1.0 and est.errors == {}
    finally:
        (bundle / CALIBRATION_FILE).unlink()


# --- the command line and the demo ----------------------------------------------------------------------------


def test_encode_cli_codec_auto(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png, sgw = tmp_path / "tex.png", tmp_path / "tex.sgw"
    Image.fromarray(IMAGE).save(png)
    assert main(["encode", str(png), "-n", "2", "--codec", "auto", "--candidates", "webp,jpeg", "-o", str(sgw),
                 "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["auto"]["chosen"] == info["codec"] == bitstream.unpack(sgw.read_bytes())[0].codec_name
    assert {c["codec"] for c in info["auto"]["candidates"]} == {"webp", "jpeg"}
    assert main(["encode", str(png), "-n", "2", "--codec", "auto", "--candidates", "webp", "-o", str(sgw)]) == 0
    assert "auto: chose webp by ms_ssim" in capsys.readouterr().out
    assert main(["encode", str(png), "-n", "2", "--codec", "auto", "--candidates", "webp,foo"]) == 1
    assert "unknown codec 'foo'" in capsys.readouterr().err


def test_demo_plans_with_the_auto_choice() -> None:
    from gateway.eval.demo import CLASSICAL, plan

    class Quiet:
        def print(self, *_: object) -> None:
            pass

    rows = plan([("tex", IMAGE)], [2], None, 450, Quiet())
    assert len(rows) == 1 and rows[0].codec in CLASSICAL and rows[0].bytes <= Budget(2).bytes


# --- the tools ------------------------------------------------------------------------------------------------


def test_refitting_the_calibration_is_one_command_and_keeps_the_model_id(bundle: Path, tmp_path: Path,
                                                                          load_tool, capsys) -> None:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    pictures = tmp_path / "train"
    pictures.mkdir()
    for seed in range(4):
        Image.fromarray(textured_image(64, 96, seed=seed)).save(pictures / f"p{seed}.png")
    before = model_id_of(copy)
    tool = load_tool("fit_quality_calibration")
    assert tool.main(["--bundle", str(copy), "--images", str(pictures), "--limit", "4", "--budgets", "1,2",
                      "--held-out", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "held-out MAE" in out and "id unchanged" in out
    cal = read_calibration(copy)
    assert cal.model_id == before == model_id_of(copy) == bundle_model_id(copy)
    assert cal.provenance["pictures"] == 4 and cal.provenance["held_out_pictures"] == 1
    assert cal.error("ms_ssim") is not None and "per_budget" in cal.held_out["ms_ssim"]
    assert tool.main(["--bundle", str(copy), "--images", str(tmp_path / "kodak")]) == 2
    assert "Kodak is for evaluation only" in capsys.readouterr().err


def test_bench_auto_runs_on_a_folder(bundle: Path, tmp_path: Path, load_tool, capsys) -> None:
    pictures = tmp_path / "eval"
    pictures.mkdir()
    Image.fromarray(IMAGE).save(pictures / "tex.png")
    assert load_tool("bench_auto").main(["--images", str(pictures), "--frames", "2", "--bundle", str(bundle),
                                         "--candidates", "cadc,webp,jpeg"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.split("BENCH_JSON ", 1)[1])
    entry = summary["budgets"]["2"]
    assert set(entry["single"]) == {"cadc", "webp", "jpeg"} and entry["auto"] <= entry["oracle"] + 1e-9
    assert entry["pred_ms_ssim"]["n"] == 1 and summary["cadc_prediction_sources"] == ["aux"]


def test_an_auto_job_through_the_daemons_lands_with_its_choice(tmp_path: Path) -> None:
    """sender -> link -> ground with ``codec: auto``: the ground's JSON names the choice; status shows it."""
    from gateway.eval.launcher import wait_for
    from test_daemons import Rig, make_images

    rig = Rig(tmp_path / "rig", preset="clean", time_scale=50.0).start()
    try:
        name, data = make_images(1, size=96)[0]
        mid = rig.submit(name, data, packets=3, codec="auto")
        out = wait_for(lambda: rig.outputs().get(mid), 120, what="the auto job's picture on the ground")
        choice = out["codec_choice"]
        assert choice["requested"] == "auto" and choice["chosen"] == out["codec"] and choice["metric"] == "ms_ssim"
        assert [c["codec"] for c in choice["candidates"]] == list(default_candidates())
        cadc = next(c for c in choice["candidates"] if c["codec"] == "cadc")
        assert cadc["kind"] == "predicted" and 0 < cadc["ms_ssim"] <= 1
        row = next(m for m in rig.sender_status()["messages"] if m["id"] == mid)
        assert row["codec"] == "auto" and row["chosen_codec"] == out["codec"]
    finally:
        rig.stop()
