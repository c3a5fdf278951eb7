"""``clip4str bench``: inference speed of the package's decoding against the official computation.

Random weights of a real architecture (the speed does not depend on the values, only on how many steps the
autoregressive loops run: random weights rarely emit EOS, so every loop runs its full 26 steps, the worst
case). Every run times the package's ``CLIP4STR.decode`` and, with ``--reference``, the straightforward
re-implementation of the official computation in ``benchmarks/reference_official.py`` on the same weights
and inputs, interleaving the two so that both see the same machine load, and prints their ratio.

    clip4str bench --arch vit-b16 --batch-sizes 1,32 --modes default,visual-only,nar \\
        --precision fp32,bf16 --device cpu --repeats 3 --reference --out docs/bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

MODES = {
    "default": {"mode": "ar", "refine_iters": 1, "visual_only": False},
    "visual-only": {"mode": "ar", "refine_iters": 1, "visual_only": True},
    "nar": {"mode": "nar", "refine_iters": 1, "visual_only": False},
    "ar-refine0": {"mode": "ar", "refine_iters": 0, "visual_only": False},
}
ABLATIONS = ("kv_cache", "reuse_memory_kv", "reuse_text")


def _csv(kind):
    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}: {err}") from err

    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="measure inference speed (images/s, latency, peak memory) against the official computation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--arch", default="vit-b16", help="comma-separated presets, e.g. vit-b16,vit-l14")
    p.add_argument(
        "--model",
        default=None,
        help="time a real model (release name or path, e.g. clip4str-base) instead of random --arch weights",
    )
    p.add_argument(
        "--images",
        nargs="+",
        default=None,
        metavar="PATH",
        help="real word images (files, folders, globs), cycled to fill each batch; default: random pixels",
    )
    p.add_argument(
        "--peer",
        choices=["rapidocr"],
        default=None,
        help="also time another reader on the same --images in the same run, and our whole read() "
        "(decoding + preprocessing) beside it: RapidOCR 3.x's recognizer (pip install 'clip4str[detect]')",
    )
    p.add_argument("--batch-sizes", type=_csv(int), default=[1, 32], help="default: 1,32")
    p.add_argument("--modes", type=_csv(str), default=["default"], help=f"any of {', '.join(MODES)}")
    p.add_argument(
        "--precision",
        type=_csv(str),
        default=["fp32", "bf16"],
        help="fp32,bf16,fp16 (fp16: CUDA only; default fp32,bf16, with the choice of --precision auto logged)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per setting")
    p.add_argument("--reference", action="store_true", help="also time the official computation")
    p.add_argument(
        "--reference-file",
        default=None,
        help="path of reference_official.py (executed; default: the one of this package's source checkout)",
    )
    p.add_argument(
        "--ablate",
        action="store_true",
        help=f"also time the package with each of {', '.join(ABLATIONS)} switched off",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the encoder and decoding step")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--max-reference-batch", type=int, default=None, help="skip the reference above this")
    p.add_argument("--out", default=None, help="write results as JSON here (and a .md next to it)")
    p.add_argument("--overwrite", action="store_true", help="let --out replace existing files")
    p.set_defaults(handler=_handler)


# ---------------------------------------------------------------------------------------------- helpers
def find_reference_file(explicit: str | None = None) -> Path:
    """Locate ``benchmarks/reference_official.py`` (kept outside the package on purpose).

    Only the file the user names (``--reference-file``) or the one in the checkout this package was
    installed from is run: never one found in the current folder, which anyone could have put there.
    """
    import clip4str

    if explicit:
        candidates = [Path(explicit)]
    else:
        candidates = [Path(clip4str.__file__).resolve().parents[2] / "benchmarks" / "reference_official.py"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        "the reference implementation benchmarks/reference_official.py was not found (looked at "
        + ", ".join(str(c) for c in candidates)
        + "); use a source checkout installed with `pip install -e .`, or pass --reference-file PATH "
        "(it is executed: name only a file you trust)"
    )


def load_reference_class(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("clip4str_reference_official", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.OfficialReference


class PeakMemory:
    """Peak memory of the block: CUDA allocator peak, or on CPU the peak resident set size above the
    starting one, sampled every 2 ms from /proc (0 where unavailable)."""

    def __init__(self, device) -> None:
        self.device = device
        self.peak_bytes = 0

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return 0

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = self._rss()
        self._peak = self._base
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.002):
                self._peak = max(self._peak, self._rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
            return
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(0, max(self._peak, self._rss()) - self._base)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device, precision: str):
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype)


def time_call(fn, device, precision: str) -> tuple[float, int]:
    """Seconds and peak memory of one ``fn()`` under inference mode and the precision's autocast."""
    import torch

    with torch.inference_mode(), _autocast(device, precision), PeakMemory(device) as mem:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        elapsed = time.perf_counter() - start
    return elapsed, mem.peak_bytes


def run_setting(
    runners: dict[str, Any], device, precision: str, repeats: int, warmup: int
) -> dict[str, dict[str, float]]:
    """Time every runner ``repeats`` times, interleaved (a, b, c, a, b, c, ...), after ``warmup`` rounds.

    Returns per runner: median/min seconds and peak memory (MiB)."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    peaks: dict[str, int] = dict.fromkeys(runners, 0)
    for r in range(warmup + repeats):
        for name, fn in runners.items():
            elapsed, peak = time_call(fn, device, precision)
            if r >= warmup:
                times[name].append(elapsed)
                peaks[name] = max(peaks[name], peak)
    return {
        name: {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "peak_mib": peaks[name] / 2**20,
        }
        for name, ts in times.items()
    }


def _check_precision(device, precision: str) -> str | None:
    """Why ``precision`` cannot run on ``device`` (None if it can)."""
    import torch

    if precision not in ("fp32", "bf16", "fp16"):
        return f"unknown precision {precision!r}; use fp32, bf16 or fp16"
    if precision == "fp16" and device.type != "cuda":
        return "fp16 autocast needs CUDA"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU does not support bf16"
    return None


def rapidocr_recognizer(threads: int):
    """RapidOCR 3.x's recognizer alone (no detection, no angle classifier): BGR array → result."""
    try:
        from rapidocr import RapidOCR
    except ImportError as err:
        raise ValueError("--peer rapidocr needs RapidOCR: pip install 'clip4str[detect]'") from err
    engine = RapidOCR(
        params={
            "Global.use_det": False,
            "Global.use_cls": False,
            "Global.log_level": "error",
            "EngineConfig.onnxruntime.intra_op_num_threads": threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
    )
    return lambda bgr: engine(bgr, use_det=False, use_cls=False, use_rec=True)


def make_runners(model, reference, images, kw: dict[str, Any], ablate: bool) -> dict[str, Any]:
    """The callables timed for one setting: the package, optionally its ablations and the reference."""
    from clip4str.model.clip4str import SpeedOptions

    runners: dict[str, Any] = {"clip4str": lambda: model.decode(images, **kw)}
    if ablate:
        for name in ABLATIONS:

            def ablated(name: str = name):
                model.speed = SpeedOptions(**{name: False})
                try:
                    return model.decode(images, **kw)
                finally:
                    model.speed = SpeedOptions()

            runners[f"no_{name}"] = ablated
    if reference is not None:
        runners["reference"] = lambda: reference(images, **kw)
    return runners


def run_benchmark(args: argparse.Namespace, log=print) -> list[dict[str, Any]]:
    """Run every (arch, batch size, mode, precision) setting; one result dict per setting."""
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from clip4str.api import check_device

    device = check_device(args.device)  # e.g. cuda on a CPU-only torch: one clear error, before any work
    for mode in args.modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    for precision in args.precision:
        why = _check_precision(device, precision)
        if why is not None and precision not in ("bf16", "fp16"):
            raise ValueError(why)
    reference_cls = load_reference_class(find_reference_file(args.reference_file)) if args.reference else None
    pictures = _load_pictures(args.images) if args.images else None
    if args.peer and pictures is None:
        raise ValueError("--peer needs --images: the readers are compared on the same real crops")
    peer = rapidocr_recognizer(torch.get_num_threads()) if args.peer else None
    results = []
    for arch, build in _models(args):
        torch.manual_seed(0)
        model = build().to(device).eval()
        if args.compile:
            model.enable_compile()
        reference = reference_cls(model).eval() if reference_cls is not None else None
        height, width = model.config.clip.vision.image_hw
        for batch in args.batch_sizes:
            if pictures is not None:
                from clip4str.api import Recognizer
                from clip4str.data.transforms import preprocess

                chosen = [pictures[i % len(pictures)] for i in range(batch)]
                images = preprocess(chosen, model.config.preprocess).to(device)
            else:
                gen = torch.Generator().manual_seed(batch)
                images = torch.randn(batch, 3, height, width, generator=gen).clamp(-1, 1).to(device)
            for mode in args.modes:
                kw = MODES[mode]
                for precision in args.precision:
                    why = _check_precision(device, precision)
                    if why is not None:
                        log(f"skip {arch} batch {batch} {mode} {precision}: {why}")
                        continue
                    use_ref = reference is not None and (
                        args.max_reference_batch is None or batch <= args.max_reference_batch
                    )
                    runners = make_runners(model, reference if use_ref else None, images, kw, args.ablate)
                    if peer is not None:
                        reader = Recognizer(model, device, batch_size=batch, precision=precision, **kw)
                        bgr = [np.ascontiguousarray(np.asarray(im)[:, :, ::-1]) for im in chosen]
                        runners["clip4str_read"] = lambda reader=reader, chosen=chosen: reader.read(chosen)
                        runners[args.peer] = lambda bgr=bgr: [peer(x) for x in bgr]
                    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
                    timing = run_setting(runners, device, precision, args.repeats, args.warmup)
                    row = {
                        "arch": arch,
                        "batch": batch,
                        "mode": mode,
                        "precision": precision,
                        "device": device_name(device),
                        "threads": torch.get_num_threads(),
                        "loadavg_1min": load_before,
                        "timing": timing,
                    }
                    ours = timing["clip4str"]["median_s"]
                    row["images_per_s"] = batch / ours
                    row["latency_ms"] = ours * 1000
                    if "reference" in timing:
                        row["speedup_vs_reference"] = timing["reference"]["median_s"] / ours
                    if peer is not None:
                        ours_read = timing["clip4str_read"]["median_s"]
                        row["peer"] = args.peer
                        row["read_images_per_s"] = batch / ours_read
                        row["peer_images_per_s"] = batch / timing[args.peer]["median_s"]
                        row["speed_vs_peer"] = timing[args.peer]["median_s"] / ours_read
                    results.append(row)
                    log(format_row(row))
    return results


def _models(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """(label, builder) of each model to time: the real --model, or random weights of each --arch."""
    from clip4str.model.clip4str import CLIP4STR
    from clip4str.presets import model_preset

    if args.model:
        from clip4str.checkpoints import load_model
        from clip4str.hub import resolve_model

        path = resolve_model(args.model)
        return [(args.model, lambda: load_model(path))]
    return [(a, lambda a=a: CLIP4STR(model_preset(a))) for a in args.arch.split(",") if a]


def _load_pictures(specs: list[str]) -> list[Any]:
    """The RGB images named by files, folders and globs (at most 1,000)."""
    from clip4str.cli.read import expand_paths
    from clip4str.data.transforms import load_image

    paths, unmatched = expand_paths(specs)
    if unmatched or not paths:
        raise ValueError(f"--images: no image found at {', '.join(unmatched or specs)}")
    return [load_image(p) for p in paths[:1000]]


def device_name(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"


def format_row(row: dict[str, Any]) -> str:
    t = row["timing"]
    text = (
        f"{row['arch']:8s} bs={row['batch']:<4d} {row['mode']:11s} {row['precision']:4s} "
        f"{row['images_per_s']:9.2f} img/s  {row['latency_ms']:9.1f} ms  peak {t['clip4str']['peak_mib']:7.0f} MiB"
    )
    if "reference" in t:
        text += (
            f" | reference {row['batch'] / t['reference']['median_s']:8.2f} img/s "
            f"{t['reference']['median_s'] * 1000:9.1f} ms peak {t['reference']['peak_mib']:7.0f} MiB"
            f" | x{row['speedup_vs_reference']:.2f}"
        )
    for name in ABLATIONS:
        key = f"no_{name}"
        if key in t:
            text += f" | no {name}: x{t[key]['median_s'] / t['clip4str']['median_s']:.2f} slower"
    if "peer" in row:
        text += (
            f" | read() {row['read_images_per_s']:.2f} img/s vs {row['peer']} {row['peer_images_per_s']:.2f} "
            f"img/s: x{row['speed_vs_peer']:.2f}"
        )
    return text


def format_markdown(results: list[dict[str, Any]]) -> str:
    """A markdown table of the results."""
    lines = [
        "| arch | batch | mode | precision | clip4str img/s | latency ms | peak MiB | reference img/s "
        "| reference ms | speedup | load |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        t = r["timing"]
        ref = t.get("reference")
        lines.append(
            f"| {r['arch']} | {r['batch']} | {r['mode']} | {r['precision']} | {r['images_per_s']:.2f} | "
            f"{r['latency_ms']:.1f} | {t['clip4str']['peak_mib']:.0f} | "
            + (f"{r['batch'] / ref['median_s']:.2f} | {ref['median_s'] * 1000:.1f} | " if ref else "– | – | ")
            + (f"{r['speedup_vs_reference']:.2f}× | " if ref else "– | ")
            + f"{r['loadavg_1min']:.1f} |"
        )
    peers = [r for r in results if "peer" in r]
    if peers:
        lines += [
            "",
            "| model | batch | mode | precision | clip4str read() img/s | peer | peer img/s | clip4str ÷ peer |",
            "|---|---:|---|---|---:|---|---:|---:|",
        ]
        for r in peers:
            lines.append(
                f"| {r['arch']} | {r['batch']} | {r['mode']} | {r['precision']} | {r['read_images_per_s']:.2f} | "
                f"{r['peer']} | {r['peer_images_per_s']:.2f} | {r['speed_vs_peer']:.2f}× |"
            )
    return "\n".join(lines) + "\n"


def command_line(args: argparse.Namespace) -> str:
    """The ``clip4str bench`` command that reproduces ``args``."""
    parts = [
        f"clip4str bench --model {args.model}" if args.model else f"clip4str bench --arch {args.arch}",
        "--batch-sizes " + ",".join(map(str, args.batch_sizes)),
        "--modes " + ",".join(args.modes),
        "--precision " + ",".join(args.precision),
        f"--device {args.device} --repeats {args.repeats} --warmup {args.warmup}",
    ]
    for flag in ("reference", "ablate", "compile"):
        if getattr(args, flag):
            parts.append(f"--{flag}")
    if args.threads:
        parts.append(f"--threads {args.threads}")
    if args.max_reference_batch is not None:
        parts.append(f"--max-reference-batch {args.max_reference_batch}")
    if args.images:
        parts.append("--images " + " ".join(args.images))
    if args.peer:
        parts.append(f"--peer {args.peer}")
    return " ".join(parts)


def _handler(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError("--repeats must be >= 1 and --warmup >= 0")
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    import torch

    from clip4str.precision import choose_precision

    if not (args.device.startswith("cuda") and not torch.cuda.is_available()):  # else run_benchmark says why
        auto = choose_precision(args.device)
        log(f"precision auto would choose {auto.precision} on {args.device}: {auto.reason}")
    from clip4str.files import OutputGuard

    guard = OutputGuard("clip4str bench", overwrite=args.overwrite)
    if (
        args.out
    ):  # checked before the (long) run: never over an input or the model, existing only with --overwrite
        guard.protect_model(getattr(args, "model", None))
        guard.protect_all(getattr(args, "images", None) or [], "an input image")
        guard.claim(args.out, "--out", parents=True)
        guard.claim(Path(args.out).with_suffix(".md"), "--out (.md)", parents=True)
    results = run_benchmark(args, log=log)
    md = format_markdown(results)
    print(md)
    if args.out:
        out = Path(args.out)
        payload = {"command": command_line(args), "results": results}
        guard.write_text(out, json.dumps(payload, indent=1))
        guard.write_text(out.with_suffix(".md"), md)
        log(f"wrote {out} and {out.with_suffix('.md')}")
    return 0
