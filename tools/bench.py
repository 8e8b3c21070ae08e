"""Run every benchmark and print one table of figures against their targets, plus JSON.

Each ``tools/bench_*.py`` script prints a last line ``BENCH_JSON {...}``; this
runner starts them one after another (so they don't compete for the 2 cores),
collects those lines and turns them into rows: figure, target, met or not.
Usage::

    python tools/bench.py [--quick] [--only packetizer,link,...] [--json bench-out/bench.json]

``--quick`` uses fewer frames/images (a smoke run, minutes); the default run
takes tens of minutes on a 2-core CPU, mostly the Kodak rate-control sweep.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

TOOLS = Path(__file__).resolve().parent


@dataclass
class Row:
    """One figure with its target."""

    bench: str
    figure: str
    value: Any
    target: str
    met: bool | None


def _packetizer(j: dict) -> list[Row]:
    fps, targets = j["frames_per_s"], j["targets"]
    return [
        Row("packetizer", f"ground path: CRC + frame store ({j['synchronous']}, {j['batch']}/commit) + assemble, "
            "frames/s", fps["batched"], f">= {targets['batched']}", fps["batched"] >= targets["batched"]),
        Row("packetizer", "ground path, one commit per frame, frames/s", fps["per_frame"], "report", None),
    ]


def _link(j: dict) -> list[Row]:
    v = j["end_to_end_frames_per_s"]
    return [Row("link", "link daemon on loopback, frames/s end to end", v, ">= 20000", v >= 20_000)]


def _arq(j: dict) -> list[Row]:
    return [
        Row("arq", "link utilization with no loss", j["utilization"], ">= 0.95", j["utilization"] >= 0.95),
        Row("arq", f"goodput under 10% loss ({j['loss_drawn']:.3f} drawn) / ((1-drawn) x capacity)", j["goodput"],
            ">= 0.9", j["goodput"] >= 0.9),
    ]


def _ratecontrol(j: dict) -> list[Row]:
    rows = []
    codecs = j["codecs"]
    avif = codecs.get("avif", {})
    for name, s in codecs.items():
        if "skipped" in s:
            rows.append(Row("ratecontrol", f"{name}: skipped", s["skipped"], "", None))
            continue
        rows.append(Row("ratecontrol", f"{name}: utilization median (1,2,4,8 frames)", round(s["util_median"], 3),
                        ">= 0.95", s["util_median"] >= 0.95))
        rows.append(Row("ratecontrol", f"{name}: utilization min", round(s["util_min"], 3), ">= 0.85",
                        s["util_min"] >= 0.85))
        if name == "cadc":
            rows.append(Row("ratecontrol", "cadc: rate-controlled encode s, median", round(s["sec_median"], 3),
                            "< 0.5", s["sec_median"] < 0.5))
            if "sec_median" in avif:
                ratio = s["sec_median"] / avif["sec_median"]
                rows.append(Row("ratecontrol", "cadc / avif rate-controlled encode time (median)", round(ratio, 2),
                                "<= 1", ratio <= 1.0))
    return rows


def _codec(j: dict) -> list[Row]:
    rows = []
    if "decode_s_median" in j:
        v = j["decode_s_median"]
        rows.append(Row("codec", "cadc-tiny decode s per Kodak image (median)", round(v, 3), "<= 1.5", v <= 1.5))
    if "encode_s_median" in j:
        rows.append(Row("codec", "cadc-tiny encode s at one setting (median)", round(j["encode_s_median"], 3), "", None))
    return rows


def _sender(j: dict) -> list[Row]:
    runs = {r["mode"]: r for r in j["runs"]}
    full, enc = runs.get("full"), runs.get("encoder")
    rows = []
    if enc is not None:
        rows.append(Row("sender", "cadc-tiny sender (encoder only): parameters", enc["parameters"], "report", None))
        heavy = enc["diffusers_imported"] or enc["transformers_imported"]
        rows.append(Row("sender", "cadc-tiny sender imports diffusers/transformers", heavy, "no", not heavy))
    if full is not None and enc is not None:
        for key, what in (("startup_s", "start-up"), ("peak_rss_mb", "peak RSS")):
            ratio = full[key] / enc[key]
            rows.append(Row("sender", f"cadc-tiny sender {what}: whole model / encoder only "
                            f"({full[key]:.2f} / {enc[key]:.2f})", round(ratio, 1), ">= 3", ratio >= 3))
    return rows


def _e2e(j: dict) -> list[Row]:
    return [Row("e2e", f"{r['preset']} images/hour ({r['codec']}, {r['packets']} frames)", r["images_per_hour"],
                "report", None) for r in j["rows"]]


def _scaling(j: dict) -> list[Row]:
    rows = []
    for s in j["summary"]:
        name, frames = s["codec"], s["frames"]
        per_mp = s["decode_s_per_mp"]
        if not per_mp:
            continue
        largest = max(per_mp, key=float)
        mp = f"{float(largest):.1f}"  # the summary keys are exact pixel counts (1152x864 is 0.995 MP)
        ratio = s.get("decode_ratio_largest_to_1mp")
        if name == "cadc":
            rows.append(Row("scaling", f"cadc {frames} fr: decode s/MP at {mp} MP", per_mp[largest], "<= 1.0",
                            per_mp[largest] <= 1.0))
            if ratio is not None:
                rows.append(Row("scaling", f"cadc {frames} fr: decode s/MP at {mp} MP / at 1 MP", ratio,
                                "<= 1.5", ratio <= 1.5))
            rss = s["decode_rss_mb"].get("24")
            if rss is not None:
                rows.append(Row("scaling", f"cadc {frames} fr: peak decode RSS at 24 MP, MB", rss, "< 2500",
                                rss < 2500))
            enc12 = s["encode_s_per_mp"].get("12")
            if enc12 is not None:
                rows.append(Row("scaling", f"cadc {frames} fr: rate-controlled encode of 12 MP, s",
                                round(enc12 * 12, 2), "< 1.5", enc12 * 12 < 1.5))
        else:
            rows.append(Row("scaling", f"{name} {frames} fr: decode s/MP at {mp} MP", per_mp[largest],
                            "report", None))
    return rows


def _seams(j: dict) -> list[Row]:
    m = j["mean"]
    return [Row("seams", "tiled vs untiled decode on Kodak: mean |PSNR difference|, dB", round(m["abs_diff_db"], 3),
                "< 0.1", m["abs_diff_db"] < 0.1)]


def _progressive(j: dict) -> list[Row]:
    k, cost = j["frames"], j["progressive_cost_ms_ssim"]
    rows = [Row("progressive", f"cost of progressiveness at {k} of {k} frames, MS-SSIM", round(cost, 4),
                ">= -0.005", cost >= -0.005)]
    for frames, means in sorted(j["by_frames"].items(), key=lambda kv: int(kv[0])):
        if "prefix_ms_ssim" in means:
            rows.append(Row("progressive", f"MS-SSIM from first {frames} of {k} frames (complete {frames}-frame "
                            f"encode {means.get('complete_ms_ssim', float('nan')):.3f})",
                            round(means["prefix_ms_ssim"], 3), "report", None))
    return rows


def _previews(j: dict) -> list[Row]:
    rows = []
    n = j["images"]
    for mode, r in j["leo_cut"].items():
        rows.append(Row("previews", f"LEO pass cut early: images of {n} with a picture ({mode})",
                        round(r["pictures_mean"], 1), "report", None))
    for mode, r in j["leo_time_to_first_picture"].items():
        rows.append(Row("previews", f"LEO: mean link s to an image's first picture ({mode})", round(r["mean"], 1),
                        "report", None))
    for mode, r in j["harsh"].items():
        rows.append(Row("previews", f"harsh: share of retransmitted images previewed first ({mode})",
                        round(r["share"], 2), "report", None))
    return rows


BENCHES: dict[str, tuple[list[str], list[str], Callable[[dict], list[Row]]]] = {
    # name: (full args, quick args, extractor)
    "packetizer": (["bench_packetizer.py"], ["bench_packetizer.py", "--repeat", "1", "--messages", "60"], _packetizer),
    "link": (["bench_link.py"], ["bench_link.py", "--frames", "40000", "--model-frames", "20000"], _link),
    "arq": (["bench_arq.py", "--images", "30"], ["bench_arq.py", "--images", "10"], _arq),
    "ratecontrol": (["bench_ratecontrol.py", "--codecs", "avif,cadc,jxl,webp,jpeg", "--no-decode"],
                    ["bench_ratecontrol.py", "--codecs", "avif,cadc", "--limit", "3", "--no-decode"], _ratecontrol),
    "codec": (["bench_codec.py", "--all"], ["bench_codec.py", "--images", "2"], _codec),
    "e2e": (["bench_e2e.py", "--images", "8"], ["bench_e2e.py", "--images", "3", "--packets", "2"], _e2e),
    "sender": (["bench_sender.py", "--repeat", "3"], ["bench_sender.py", "--repeat", "1"], _sender),
    # The scaling sweep at full size takes about an hour on 2 cores (24 MP pictures, fresh processes).
    "scaling": (["bench_scaling.py"], ["bench_scaling.py", "--sizes", "0.4,1", "--frames", "4", "--codecs", "cadc,jpeg",
                                       "--repeat", "1"], _scaling),
    "seams": (["bench_seams.py"], ["bench_seams.py", "--limit", "2"], _seams),
    "progressive": (["bench_progressive.py"], ["bench_progressive.py", "--limit", "1", "--frames", "4",
                                               "--no-slow-metrics"], _progressive),
    "previews": (["bench_previews.py"], ["bench_previews.py", "--images", "6", "--seeds", "2", "--quiet-s", "10",
                                         "--no-quality"], _previews),
}


def run_one(name: str, quick: bool) -> tuple[list[Row], str]:
    """Run one benchmark script; its rows and the tail of its output."""
    full, short, extract = BENCHES[name]
    args = short if quick else full
    proc = subprocess.run([sys.executable, str(TOOLS / args[0]), *args[1:]], capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")]
    if not lines:
        return [Row(name, "no figures (script failed)", f"exit {proc.returncode}", "", False)], out[-2000:]
    return extract(json.loads(lines[-1][len("BENCH_JSON "):])), out[-2000:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller runs (a smoke test of every benchmark)")
    p.add_argument("--only", help=f"comma list from {','.join(BENCHES)}")
    p.add_argument("--json", default="bench-out/bench.json", help="where to write all rows as JSON")
    a = p.parse_args(argv)
    names = a.only.split(",") if a.only else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")
    rows: list[Row] = []
    for name in names:
        t0 = time.perf_counter()
        got, tail = run_one(name, a.quick)
        rows += got
        print(f"[{name}] {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        if any(r.met is False and r.figure.startswith("no figures") for r in got):
            print(tail, file=sys.stderr)
    width = max(len(r.figure) for r in rows)
    print(f"{'bench':<12} {'figure':<{width}} {'value':>12} {'target':>10}  met")
    for r in rows:
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        print(f"{r.bench:<12} {r.figure:<{width}} {str(r.value):>12} {r.target:>10}  {met}")
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": a.quick, "when": time.strftime("%Y-%m-%d %H:%M"),
                               "rows": [asdict(r) for r in rows]}, indent=2))
    print(f"JSON: {out}")
    return 0 if all(r.met is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
