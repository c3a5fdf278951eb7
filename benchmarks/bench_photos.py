"""Whole photos, end to end: detection and end-to-end P/R/H on an ICDAR 2015 folder, the recognition-only
comparison (readers on the very same detected boxes), and seconds per photo split into steps.

Every reader reads the same crops of the same detected boxes, so the difference between rows is the
recognizer alone. With ``--peer``, RapidOCR's own pipeline (its detector, word boxes and recognizer) and
its recognizer on our crops are measured in the same run. Speeds are wall seconds per photo on this
machine with ``--threads`` threads, and the process's CPU seconds (steadier on a busy machine): compare
rows of one run only.

    OMP_NUM_THREADS=1 python benchmarks/bench_photos.py --scenes ../shared/realdata/ic15_scenes_test \\
        --threads 1 --peer --tall-crops ../shared/realdata/ic15_word_test   # default model
    ... --model ../shared/golden/clip4str_tiny.ckpt          # any model clip4str.load accepts
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class _Read:
    text: str
    confidence: float


class RapidOCRReader:
    """RapidOCR's recognizer (PP-OCRv6 small, shipped in its wheel) behind the pipeline's reader interface."""

    def __init__(self, threads: int) -> None:
        from rapidocr import RapidOCR

        self.engine = RapidOCR(
            params={
                "Global.log_level": "error",
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
        )

    def read(self, images: list[Image.Image]) -> list[_Read]:
        out = []
        for im in images:
            bgr = np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1])
            res = self.engine(bgr, use_det=False, use_cls=False, use_rec=True)
            texts, scores = getattr(res, "txts", None) or ("",), getattr(res, "scores", None) or (0.0,)
            out.append(_Read(text="".join(texts).replace(" ", ""), confidence=float(scores[0])))
        return out


def rapidocr_pipeline(paths: list[Path], gts: list, threads: int) -> dict[str, Any]:
    """RapidOCR 3.x end to end (its detector, classifier, recognizer, word boxes), scored the same way."""
    from rapidocr import RapidOCR

    from clip4str.eval_scenes import SceneCounts, score_photo

    engine = RapidOCR(
        params={
            "Global.log_level": "error",
            "EngineConfig.onnxruntime.intra_op_num_threads": threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
    )
    engine(str(paths[0]), use_det=True, use_cls=True, use_rec=True, return_word_box=True)  # warm-up
    total, seconds, cpu = SceneCounts(), 0.0, 0.0
    for path, gt in zip(paths, gts):
        t, c = time.perf_counter(), time.process_time()
        out = engine(str(path), use_det=True, use_cls=True, use_rec=True, return_word_box=True)
        seconds += time.perf_counter() - t
        cpu += time.process_time() - c
        words = []
        if getattr(out, "txts", None) is not None:
            words = [(text, np.asarray(box, float)) for line in out.word_results for (text, _, box) in line]
        counts, _ = score_photo(gt, [b for _, b in words], [w for w, _ in words])
        total.add(counts)
    return {"counts": total, "seconds": {"total": seconds}, "cpu": cpu}


def tall_crops(readers: dict[str, Any], folder: str) -> list[dict[str, Any]]:
    """Each reader on the tall crops of a labelled word-crop folder, as boxed and with quarter turns
    (36-character protocol: lowercase, alphanumerics only)."""
    import csv
    import re

    from clip4str.detect import read_regions

    def norm(s: str) -> str:
        return re.sub("[^0-9a-z]", "", s.lower())

    root = Path(folder)
    with open(root / "labels.tsv", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    tall = []
    for name, label, *_ in rows:
        im = Image.open(root / name).convert("RGB")
        if im.height > 1.5 * im.width:
            tall.append((im, norm(label)))
    out = []
    for rname, rd in readers.items():
        right = {}
        for orientation in ("none", "auto"):
            right[orientation] = sum(
                norm(read_regions(rd, im, [[0, 0, im.width, im.height]], orientation=orientation)[0].text)
                == lab
                for im, lab in tall
            )
        out.append(
            {
                "reader": rname,
                "crops": len(rows),
                "tall": len(tall),
                "right_none": right["none"],
                "right_auto": right["auto"],
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenes", required=True, help="ICDAR 2015 folder: Imgs/img_N.jpg, Gts/gt_img_N.txt")
    parser.add_argument("--model", default=None, help="model name or path (default: clip4str.load()'s)")
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads (default 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="crops per recognizer batch")
    parser.add_argument(
        "--photos-per-batch", type=int, default=4, help="photos whose words are read together"
    )
    parser.add_argument("--orientations", default="auto,none", help="orientation policies to compare")
    parser.add_argument("--peer", action="store_true", help="also measure RapidOCR (pipeline and recognizer)")
    parser.add_argument("--limit", type=int, default=None, help="first N photos only")
    parser.add_argument(
        "--tall-crops",
        metavar="DIR",
        help="also read the tall crops (height > 1.5 x width) of a labelled word-crop folder (labels.tsv), "
        "e.g. ../shared/realdata/ic15_word_test, as boxed and with quarter turns",
    )
    parser.add_argument("--json", metavar="FILE", help="write all results here as JSON")
    args = parser.parse_args(argv)

    import torch

    import clip4str
    from clip4str.detect import detect_quads, read_quads
    from clip4str.detect.rapidocr import RapidOCRDetector
    from clip4str.eval_scenes import SceneCounts, find_scenes, load_gt, score_photo, transcription_match

    torch.set_num_threads(args.threads)
    pairs = find_scenes(args.scenes)[: args.limit]
    paths = [p for p, _ in pairs]
    gts = [load_gt(g) for _, g in pairs]
    reader = clip4str.load(args.model, batch_size=args.batch_size)
    model_name = args.model or "default (clip4str.load())"
    detector = RapidOCRDetector(threads=args.threads)
    readers: dict[str, Any] = {f"clip4str {Path(model_name).name}": reader}
    if args.peer:
        readers["RapidOCR 3.10 recognizer"] = RapidOCRReader(args.threads)

    # Detect once; every reader then reads the same boxes.
    images, boxes, det_s, load_s, det_cpu = [], [], 0.0, 0.0, 0.0
    detect_quads(detector, Image.open(paths[0]).convert("RGB"))  # warm-up (ONNX sessions)
    for path in paths:
        t = time.perf_counter()
        img = Image.open(path).convert("RGB")
        t1, c1 = time.perf_counter(), time.process_time()
        boxes.append(detect_quads(detector, img))
        det_s += time.perf_counter() - t1
        det_cpu += time.process_time() - c1
        load_s += t1 - t
        images.append(img)
    n = len(paths)

    rows: list[dict[str, Any]] = []
    for name, rd in readers.items():
        rd.read([images[0].crop((0, 0, 64, 32))])  # warm-up
        for orientation in [o.strip() for o in args.orientations.split(",") if o.strip()]:
            total, timer, hits, matched = SceneCounts(), {}, 0, 0
            read_cpu = time.process_time()
            for lo in range(0, n, args.photos_per_batch):
                chunk = range(lo, min(n, lo + args.photos_per_batch))
                jobs = [(images[i], q) for i in chunk for q in boxes[i]]
                words = read_quads(rd, jobs, orientation, timer)
                at = 0
                for i in chunk:
                    mine = words[at : at + len(boxes[i])]
                    at += len(boxes[i])
                    counts, match = score_photo(gts[i], [w.box for w in mine], [w.text for w in mine])
                    total.add(counts)
                    for w, g in zip(mine, match):
                        if g is not None:
                            matched += 1
                            hits += transcription_match(gts[i][g].text, w.text)
            read_cpu = time.process_time() - read_cpu
            rows.append(
                {
                    "system": f"{name}, orientation {orientation}",
                    "detection": total.detection,
                    "end_to_end": total.end_to_end,
                    "recognition_only": 100.0 * hits / matched if matched else 0.0,
                    "matched_boxes": matched,
                    "seconds_per_photo": {
                        "loading": load_s / n,
                        "detection": det_s / n,
                        "cropping": timer.get("cropping", 0.0) / n,
                        "recognition": timer.get("recognition", 0.0) / n,
                    },
                    "cpu_seconds_per_photo": {"detection": det_cpu / n, "reading": read_cpu / n},
                }
            )
            print(f"done: {rows[-1]['system']}", file=sys.stderr)
    if args.peer:
        peer = rapidocr_pipeline(paths, gts, args.threads)
        c = peer["counts"]
        rows.append(
            {
                "system": "RapidOCR 3.10 pipeline (its own word boxes and reading)",
                "detection": c.detection,
                "end_to_end": c.end_to_end,
                "recognition_only": 100.0 * c.correct / c.matched if c.matched else 0.0,
                "matched_boxes": c.matched,
                "seconds_per_photo": {"total": peer["seconds"]["total"] / n},
                "cpu_seconds_per_photo": {"total": peer["cpu"] / n},
            }
        )

    tall_rows = tall_crops(readers, args.tall_crops) if args.tall_crops else []

    print(f"\n{n} photos from {args.scenes}, {args.threads} thread(s), model {model_name}\n")
    print(
        "| system | det P / R / H | e2e P / R / H | read right (matched boxes) "
        "| wall s/photo: det + crop + rec = total | CPU s/photo |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        d, e, s = r["detection"], r["end_to_end"], r["seconds_per_photo"]
        if "total" in s:
            speed = f"{s['total']:.3f} (whole pipeline)"
        else:
            tot = s["detection"] + s["cropping"] + s["recognition"]
            speed = f"{s['detection']:.3f} + {s['cropping']:.3f} + {s['recognition']:.3f} = {tot:.3f}"
        print(
            f"| {r['system']} | {d['precision']:.1f} / {d['recall']:.1f} / **{d['hmean']:.1f}** "
            f"| {e['precision']:.1f} / {e['recall']:.1f} / **{e['hmean']:.1f}** "
            f"| {r['recognition_only']:.1f} % of {r['matched_boxes']} | {speed} "
            f"| {sum(r['cpu_seconds_per_photo'].values()):.3f} |"
        )
    for t in tall_rows:
        print(
            f"\n{t['reader']}: {t['tall']} tall crops of {t['crops']} in {args.tall_crops}: read right as "
            f"boxed {t['right_none']}, with quarter turns (orientation auto) {t['right_auto']}"
        )
    if args.json:
        out = {"photos": n, "model": model_name, "rows": rows, "tall_crops": tall_rows}
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
