"""ONNX export beside PyTorch (issue 20): accuracy on the real test crops and reading speed, in one run.

    # accuracy of torch fp32, ONNX fp32 and ONNX int8 on IIIT5K, SVT and IC15 (36-character protocol)
    python benchmarks/bench_onnx.py accuracy --out onnx_accuracy.json
    # speed: torch fp32, torch bf16, ONNX fp32, ONNX int8 and RapidOCR's recognizer, whole read() calls
    OMP_NUM_THREADS=1 python benchmarks/bench_onnx.py speed --images svt64/ --batch-sizes 1,32 --threads 1 \
        --repeats 7 --out onnx_speed.json

Both export ``--model`` (default: the shipped clip4str-small) to fp32 and int8 ONNX in a temporary folder
first. Speed rounds are interleaved (each round times every reader once) so that a load change on the
machine hits all of them alike; the table gives medians and ratios within the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REAL_SETS = {"IIIT5K": "iiit5k_test", "SVT": "svt_test", "IC15": "ic15_word_test"}


def export_both(model_name: str, folder: Path) -> tuple[object, Path, Path]:
    from clip4str.deploy.onnx_export import build_manifest, export_graphs, write_export
    from clip4str.deploy.quantize import quantize_int8
    from clip4str.factory import create_model

    model = create_model(model_name)
    graphs = export_graphs(model)
    out = {}
    for precision, g in (("fp32", graphs), ("int8", quantize_int8(graphs))):
        target = folder / precision
        target.mkdir()
        write_export(
            target, g, build_manifest(model, g, model_name, None, precision), lambda p, d: p.write_bytes(d)
        )
        out[precision] = target
    return model, out["fp32"], out["int8"]


def _normalize(label: str) -> str:
    return "".join(c for c in label.lower() if c.isascii() and c.isalnum())


def accuracy(args: argparse.Namespace) -> dict:
    import torch

    import clip4str
    from clip4str.deploy import OnnxRecognizer

    if args.threads:
        torch.set_num_threads(args.threads)
    shared = Path(args.shared)
    with tempfile.TemporaryDirectory() as tmp:
        model, fp32, int8 = export_both(args.model, Path(tmp))
        readers = {
            "torch fp32": clip4str.Recognizer(model, precision="fp32", batch_size=args.batch_size),
            "onnx fp32": OnnxRecognizer(fp32, threads=args.threads, batch_size=args.batch_size),
            "onnx int8": OnnxRecognizer(int8, threads=args.threads, batch_size=args.batch_size),
        }
        sizes = {
            k: sum(f.stat().st_size for f in p.glob("*.onnx")) for k, p in (("fp32", fp32), ("int8", int8))
        }
        results: dict = {"model": args.model, "onnx_bytes": sizes, "accuracy": {}, "agreement_with_torch": {}}
        for name, folder in REAL_SETS.items():
            table = shared / "realdata" / folder / "labels.tsv"
            rows = [line.split("\t")[:2] for line in table.read_text(encoding="utf-8").splitlines()[1:]]
            paths = [table.parent / f for f, _ in rows]
            labels = [_normalize(label) for _, label in rows]
            texts = {}
            for reader_name, reader in readers.items():
                texts[reader_name] = [p.text for _, p in reader.read_files(paths)]
                acc = 100.0 * sum(t == gt for t, gt in zip(texts[reader_name], labels)) / len(labels)
                results["accuracy"].setdefault(reader_name, {})[name] = round(acc, 2)
                same = sum(a == b for a, b in zip(texts[reader_name], texts["torch fp32"]))
                results["agreement_with_torch"].setdefault(reader_name, {})[name] = f"{same}/{len(labels)}"
                print(
                    f"{name:7s} {reader_name:11s} {acc:6.2f} %  same as torch fp32: {same}/{len(labels)}",
                    flush=True,
                )
        for accs in results["accuracy"].values():
            total = sum(
                len((shared / "realdata" / f / "labels.tsv").read_text().splitlines()) - 1
                for f in REAL_SETS.values()
            )
            weighted = sum(
                accs[n] * (len((shared / "realdata" / f / "labels.tsv").read_text().splitlines()) - 1)
                for n, f in REAL_SETS.items()
            )
            accs["all 5,724"] = round(weighted / total, 2)
    return results


def speed(args: argparse.Namespace) -> dict:
    import torch

    import clip4str
    from clip4str.cli.bench import rapidocr_recognizer
    from clip4str.cli.read import expand_paths
    from clip4str.data.transforms import load_image
    from clip4str.deploy import OnnxRecognizer

    torch.set_num_threads(args.threads)
    paths, _ = expand_paths(args.images)
    pictures = [load_image(p) for p in paths]
    peer = rapidocr_recognizer(args.threads)
    results: dict = {"model": args.model, "threads": args.threads, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        model, fp32, int8 = export_both(args.model, Path(tmp))
        for batch in args.batch_sizes:
            readers = {
                "torch fp32": clip4str.Recognizer(model, precision="fp32", batch_size=batch),
                "torch bf16": clip4str.Recognizer(model, precision="bf16", batch_size=batch),
                "onnx fp32": OnnxRecognizer(fp32, threads=args.threads, batch_size=batch),
                "onnx int8": OnnxRecognizer(int8, threads=args.threads, batch_size=batch),
            }
            times: dict[str, list[float]] = {name: [] for name in [*readers, "RapidOCR rec"]}
            rounds = max(args.repeats, -(-len(pictures) // batch))  # every crop at least once
            for round_ in range(-args.warmup, rounds):  # each round: the next `batch` crops, cycled
                chosen = [pictures[(max(round_, 0) * batch + i) % len(pictures)] for i in range(batch)]
                bgr = [np.ascontiguousarray(np.asarray(im)[:, :, ::-1]) for im in chosen]
                runners = {name: (lambda r=r, c=chosen: r.read(c)) for name, r in readers.items()}
                runners["RapidOCR rec"] = lambda b=bgr: [peer(x) for x in b]
                for name, run in runners.items():
                    start = time.perf_counter()
                    run()
                    if round_ >= 0:
                        times[name].append(time.perf_counter() - start)
            medians = {name: statistics.median(t) for name, t in times.items()}
            row = {
                "batch": batch,
                "images_per_s": {name: batch / m for name, m in medians.items()},
                "vs_torch_bf16": {name: medians["torch bf16"] / m for name, m in medians.items()},
                "vs_rapidocr": {name: medians["RapidOCR rec"] / m for name, m in medians.items()},
            }
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("accuracy", "speed"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="clip4str-small")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--out", default=None)
        if name == "accuracy":
            p.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
            p.add_argument("--batch-size", type=int, default=128)
        else:
            p.add_argument("--images", nargs="+", required=True)
            p.add_argument("--batch-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[1, 32])
            p.add_argument("--repeats", type=int, default=7)
            p.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    results = accuracy(args) if args.what == "accuracy" else speed(args)
    text = json.dumps(results, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
