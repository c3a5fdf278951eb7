"""The fast inference path gives the official computation's predictions (benchmarks/reference_official.py)."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import pytest
import torch

from clip4str.model.clip4str import CLIP4STR, SpeedOptions
from clip4str.model.decoder import Decoder
from clip4str.presets import model_preset

REFERENCE_FILE = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_official.py"


@pytest.fixture(scope="module", autouse=True)
def _bpe(bpe_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIP4STR_BPE_PATH", str(bpe_path))
        yield


@pytest.fixture(scope="module")
def OfficialReference():
    spec = importlib.util.spec_from_file_location("reference_official", REFERENCE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.OfficialReference


def tiny_model(seed: int, eos_bias: float = 3.8) -> CLIP4STR:
    """A random tiny model with peaked heads (no near-ties) and an EOS bias, so rows end at varied steps."""
    torch.manual_seed(seed)
    model = CLIP4STR(model_preset("tiny")).eval()
    with torch.no_grad():
        for dec in (model.visual_decoder, model.cross_decoder):
            dec.head.weight.mul_(20)
            dec.head.bias[model.tokenizer.eos_id] += eos_bias
    return model


def read(model: CLIP4STR, logits: torch.Tensor) -> tuple[list[str], list[float], list[int]]:
    """Texts, confidences and per-row lengths up to and including the first EOS."""
    texts, probs = model.tokenizer.decode(logits.float().softmax(-1))
    return texts, [float(p.prod()) for p in probs], [len(p) for p in probs]


def assert_same(model, ours: torch.Tensor, ref: torch.Tensor, rows: list[int] | None = None) -> None:
    t1, c1, n1 = read(model, ours)
    t2, c2, n2 = read(model, ref)
    rows = range(len(t1)) if rows is None else rows
    for r in rows:
        assert t1[r] == t2[r], f"row {r}: {t1[r]!r} != reference {t2[r]!r}"
        assert c1[r] == pytest.approx(c2[r], rel=1e-5, abs=1e-7), f"row {r}"
        torch.testing.assert_close(ours[r, : n2[r]], ref[r, : n2[r]], rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------------- the reference is honest
def test_reference_reproduces_the_official_goldens(golden_dir, OfficialReference):
    from clip4str.checkpoints import load_model

    golden = torch.load(golden_dir / "golden_infer.pt", weights_only=True)["settings"]
    images = torch.load(golden_dir / "inputs" / "inputs.pt", weights_only=True)["images_norm05"]
    model = load_model(golden_dir / "clip4str_tiny.ckpt").eval()
    model.set_charset_test(None)
    ref = OfficialReference(model).eval()
    for setting, kwargs in {"ar_refine1": {}, "ar_refine0": {"refine_iters": 0}}.items():
        logits = ref(images, **kwargs)
        g = golden[setting]
        # Whole tensors, positions after EOS included: the reference is the official computation.
        torch.testing.assert_close(logits, g["final_logits"], rtol=1e-4, atol=2e-4)
        texts, conf, _ = read(model, logits)
        assert texts == g["decoded"]
        assert conf == pytest.approx(g["confidence"], rel=1e-4, abs=1e-5)
    # The batch-wide quirk: image 7 alone stops after one step (no EOS, conf 0.9986).
    logits = ref(images[7:8], refine_iters=0)
    g = golden["ar_refine0_bs1_img7"]
    assert logits.shape == g["final_logits"].shape == (1, 1, 95)
    torch.testing.assert_close(logits, g["final_logits"], rtol=1e-4, atol=2e-4)


# ----------------------------------------------------------------------------------- fast == reference
CASES = list(itertools.product(["ar", "nar"], [0, 1, 2], [False, True]))


@pytest.mark.parametrize(("mode", "refine_iters", "visual_only"), CASES)
def test_fast_path_gives_the_reference_predictions(OfficialReference, mode, refine_iters, visual_only):
    model = tiny_model(seed=refine_iters)
    ref = OfficialReference(model).eval()
    images = torch.randn(5, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    kw = {"mode": mode, "refine_iters": refine_iters, "visual_only": visual_only}
    with torch.inference_mode():
        # Validation path (no early stop): every logit, after EOS too, is the reference's.
        ours, theirs = model.decode(images, max_length=25, **kw), ref(images, max_length=25, **kw)
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
        assert_same(model, ours, theirs)
        # Inference path (early stop).
        ours, theirs = model.decode(images, **kw), ref(images, **kw)
        rows = list(range(len(images)))
        if mode == "ar" and not visual_only:
            # The official cross-modal loop runs only as many steps as the batch's visual loop; a row whose
            # cross reading is longer is cut short there (ours reads on). Compare the rows it leaves alone.
            cross = ref(images, mode="ar", refine_iters=0)
            _, _, lengths = read(model, cross)
            ends = (cross.argmax(-1) == model.tokenizer.eos_id).any(-1)
            rows = [r for r in rows if cross.shape[1] == 26 or bool(ends[r])]
            assert len(rows) >= 3, f"only rows {rows} comparable (lengths {lengths})"
        assert_same(model, ours, theirs, rows)
    texts = read(model, ours)[0]
    assert len(set(map(len, texts))) > 1 or mode == "nar", texts  # rows end at different steps


def test_speed_options_change_no_output():
    model = tiny_model(seed=3)
    images = torch.randn(5, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        base = model.decode(images)
        for flags in [(False, True, True), (True, False, True), (True, True, False), (False, False, False)]:
            model.speed = SpeedOptions(*flags)
            out = model.decode(images)
            assert out.shape == base.shape, flags
            torch.testing.assert_close(out, base, rtol=0, atol=1e-5, msg=str(flags))
    model.speed = SpeedOptions()


def test_rows_keep_their_reading_in_any_batch():
    model = tiny_model(seed=4)
    images = torch.randn(6, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        full = read(model, model.decode(images))
        for i in (0, 3, 5):
            one = read(model, model.decode(images[i : i + 1]))
            assert one[0][0] == full[0][i]
            assert one[1][0] == pytest.approx(full[1][i], rel=1e-5)


def test_text_features_are_computed_once_per_distinct_caption(monkeypatch):
    model = tiny_model(seed=5)
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    encoded: list[str] = []
    original = model.text_features

    def counting(captions):
        encoded.extend(captions)
        return original(captions)

    monkeypatch.setattr(model, "text_features", counting)
    with torch.inference_mode():
        out = model.decode(image.expand(4, -1, -1, -1), refine_iters=2)
    # 4 identical rows, 3 caption rounds: each distinct caption is encoded exactly once.
    assert len(encoded) == len(set(encoded)) >= 1
    assert len(encoded) <= 3
    model.speed = SpeedOptions(reuse_text=False)
    encoded.clear()
    with torch.inference_mode():
        slow = model.decode(image.expand(4, -1, -1, -1), refine_iters=2)
    assert len(encoded) == 12
    torch.testing.assert_close(out, slow, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------- the incremental step
@pytest.mark.parametrize("depth", [1, 2])
def test_decoder_step_equals_the_full_prefix_forward(depth):
    torch.manual_seed(depth)
    dec = Decoder(
        width=32,
        depth=depth,
        num_heads=4,
        mlp_ratio=4,
        dropout=0.1,
        num_tokens=12,
        num_classes=10,
        max_positions=8,
    ).eval()
    memory = torch.randn(3, 20, 32)
    ids = torch.randint(0, 12, (3, 8))
    causal = torch.full((8, 8), float("-inf")).triu(1)
    with torch.no_grad():
        kv = dec.memory_kv(memory)
        cache = dec.init_cache(kv, 8)
        for i in range(8):
            step = dec.step(cache, ids[:, i], torch.tensor([i]))
            full = dec(
                ids[:, : i + 1],
                memory,
                query=dec.pos_queries[:, i : i + 1],
                content_mask=causal[: i + 1, : i + 1],
            )
            torch.testing.assert_close(step, full, rtol=0, atol=1e-5)


def test_compiled_path_matches_eager_and_keeps_state_dict_keys():
    model = tiny_model(seed=6)
    keys = list(model.state_dict())
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        eager = model.decode(images)
    # backend='eager' runs the same traced code path as the GPU build without a compiler.
    model.enable_compile(backend="eager")
    try:
        with torch.inference_mode():
            compiled = model.decode(images)
        assert list(model.state_dict()) == keys
    finally:
        model.disable_compile()
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)


def test_bf16_autocast_reads_the_golden_words(golden_dir):
    from clip4str.checkpoints import load_model

    model = load_model(golden_dir / "clip4str_tiny.ckpt").eval()
    model.set_charset_test(None)
    images = torch.load(golden_dir / "inputs" / "inputs.pt", weights_only=True)["images_norm05"]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.decode(images[:6])
    assert logits.dtype in (torch.bfloat16, torch.float32)
    assert read(model, logits)[0] == ["Chicken", "STOP", "x7-Zq!", "a", "2024", "SceneText"]


# ----------------------------------------------------------------------------------- the benchmark command
def test_bench_command_times_both_and_writes_results(tmp_path, capsys):
    from clip4str.cli import main

    out = tmp_path / "bench.json"
    argv = ["bench", "--arch", "tiny", "--batch-sizes", "2", "--modes", "default,nar", "--precision",
            "fp32", "--repeats", "1", "--warmup", "0", "--reference", "--reference-file", str(REFERENCE_FILE),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    payload = json.loads(out.read_text())
    assert payload["command"].startswith("clip4str bench")
    rows = payload["results"]
    assert [(r["mode"], r["batch"]) for r in rows] == [("default", 2), ("nar", 2)]
    for r in rows:
        assert r["images_per_s"] > 0 and r["speedup_vs_reference"] > 0
        assert set(r["timing"]) == {"clip4str", "reference"}
    assert "| tiny | 2 | default | fp32 |" in out.with_suffix(".md").read_text()
    assert "speedup" in capsys.readouterr().out


def test_bench_command_rejects_unknown_mode(capsys):
    from clip4str.cli import main

    assert main(["bench", "--arch", "tiny", "--modes", "beam", "--batch-sizes", "1"]) == 1
    assert "unknown mode 'beam'" in capsys.readouterr().err
