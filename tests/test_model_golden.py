"""The model reproduces the official code's outputs on the tiny golden CLIP4STR (../shared/golden)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from clip4str.checkpoints import load_model
from clip4str.model.clip4str import DecodeTrace
from clip4str.model.permutations import attention_masks, generate_permutations

CHARSET_36 = "0123456789abcdefghijklmnopqrstuvwxyz"
OPENAI_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
OPENAI_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


@pytest.fixture(scope="module", autouse=True)
def _bpe(bpe_path, monkeypatch_module):
    monkeypatch_module.setenv("CLIP4STR_BPE_PATH", str(bpe_path))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def golden(golden_dir):
    return {
        "infer": torch.load(golden_dir / "golden_infer.pt", weights_only=True),
        "train": torch.load(golden_dir / "golden_train.pt", weights_only=True),
        "inputs": torch.load(golden_dir / "inputs" / "inputs.pt", weights_only=True),
    }


@pytest.fixture(scope="module")
def model(golden_dir):
    return load_model(golden_dir / "clip4str_tiny.ckpt")


def first_eos_lengths(logits: torch.Tensor) -> list[int]:
    """Per row: number of positions up to and including the first EOS (id 0) of the argmax."""
    ids = logits.argmax(-1)
    out = []
    for row in ids:
        hits = (row == 0).nonzero()
        out.append(int(hits[0]) + 1 if len(hits) else row.numel())
    return out


def assert_close_up_to_eos(ours: torch.Tensor, golden: torch.Tensor, atol: float = 2e-4) -> None:
    """The golden README's comparison rule for final logits: each row up to its first end-of-sequence."""
    for row, end in enumerate(first_eos_lengths(golden)):
        assert ours.shape[1] >= end, f"row {row}: only {ours.shape[1]} positions, golden EOS at {end}"
        torch.testing.assert_close(ours[row, :end], golden[row, :end], rtol=1e-4, atol=atol)


def decode(model, images, **kwargs):
    trace = DecodeTrace()
    with torch.no_grad():
        logits = model.decode(images, trace=trace, **kwargs)
    texts, probs = model.tokenizer.decode(logits.softmax(-1))
    return logits, trace, texts, [float(p.prod()) for p in probs], probs


SETTINGS = {
    "ar_refine1": {},
    "ar_refine0": {"refine_iters": 0},
    "ar_refine2": {"refine_iters": 2},
    "ar_refine1_maxlen25": {"max_length": 25},
    "ar_refine1_charset36": {},
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_decoding_settings_match_golden(model, golden, setting):
    g = golden["infer"]["settings"][setting]
    model.set_charset_test(CHARSET_36 if setting.endswith("charset36") else None)
    try:
        logits, trace, texts, conf, probs = decode(
            model, golden["inputs"]["images_norm05"], **SETTINGS[setting]
        )
    finally:
        model.set_charset_test(None)
    assert texts == g["decoded"]
    assert conf == pytest.approx(g["confidence"], rel=1e-4, abs=1e-5)
    for ours, theirs in zip(probs, g["decoded_probs"]):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert_close_up_to_eos(logits, g["final_logits"])
    # Intermediates: the visual AR pass, the first caption, the cross-modal AR pass, every refinement.
    torch.testing.assert_close(trace.visual_initial, g["vis_logits_initial"], rtol=1e-4, atol=2e-4)
    assert trace.captions[0] == g["cross_init"]["captions"]
    assert_close_up_to_eos(trace.cross_initial, g["cross_ar_logits"])
    assert len(trace.refine_cross) == len(g["refine"])
    for it, ref in enumerate(g["refine"]):
        torch.testing.assert_close(trace.refine_visual[it], ref["vis_logits"], rtol=1e-4, atol=2e-4)
        assert trace.captions[it + 1] == ref["cross_mem"]["captions"]
        assert_close_up_to_eos(trace.refine_cross[it], ref["cross_logits"])


def test_memory_and_caption_ids_match_golden(model, golden):
    g = golden["infer"]
    with torch.no_grad():
        memory = model.encode(golden["inputs"]["images_norm05"])
    torch.testing.assert_close(memory, g["memory"], rtol=1e-4, atol=1e-4)
    init = g["settings"]["ar_refine1"]["cross_init"]
    ids = model.caption_ids(init["captions"])
    assert torch.equal(ids.to(torch.int32), init["text_ids"])
    with torch.no_grad():
        text = model.clip_model.encode_text_tokens(ids)
    torch.testing.assert_close(text, init["cross_text_features"], rtol=1e-4, atol=1e-4)


def test_harness_accepts_our_outputs(model, golden, golden_dir, tmp_path):
    """Run the official checker on a candidate holding memory and the default decode's outputs."""
    g = golden["infer"]["settings"]["ar_refine1"]
    logits, trace, texts, conf, probs = decode(model, golden["inputs"]["images_norm05"])
    with torch.no_grad():
        memory = model.encode(golden["inputs"]["images_norm05"])
    candidate = {
        "golden_infer": {
            "memory": memory,
            "settings": {
                "ar_refine1": {
                    "final_logits": logits,
                    "decoded": texts,
                    "confidence": conf,
                    "decoded_probs": probs,
                    "vis_logits_initial": trace.visual_initial,
                    "refine": [{"vis_logits": trace.refine_visual[0], "cross_logits": trace.refine_cross[0]}],
                }
            },
        }
    }
    assert logits.shape == g["final_logits"].shape
    path = tmp_path / "cand.pt"
    torch.save(candidate, path)
    result = subprocess.run(
        [
            sys.executable,
            str(golden_dir / "harness" / "check_golden.py"),
            str(path),
            "--golden",
            str(golden_dir),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_nar_decoding_runs_where_the_official_code_crashes(model, golden):
    g = golden["infer"]["settings"]["nar_refine2"]
    logits, trace, texts, conf, _ = decode(
        model, golden["inputs"]["images_norm05"], mode="nar", refine_iters=2
    )
    # What ran before the official crash matches: the one-pass visual logits and the captions.
    torch.testing.assert_close(trace.visual_initial, g["vis_logits_initial"], rtol=1e-4, atol=2e-4)
    assert trace.captions[0] == g["cross_init"]["captions"]
    assert logits.shape == (8, 26, 95)
    # The overfit model reads the trained words non-autoregressively too.
    assert texts[:6] == ["Chicken", "STOP", "x7-Zq!", "a", "2024", "SceneText"]


def test_visual_only_returns_the_visual_branch(model, golden):
    x = golden["inputs"]["images_norm05"]
    g = golden["infer"]["settings"]["ar_refine1"]
    logits, trace, texts, _, _ = decode(model, x, visual_only=True)
    torch.testing.assert_close(logits, g["refine"][0]["vis_logits"], rtol=1e-4, atol=2e-4)
    assert texts == ["Chicken", "STOP", "x7-Zq!", "a", "2024", "SceneText", "", ""]
    assert trace.cross_initial is None


def test_rows_do_not_depend_on_their_batch(model, golden):
    """Image 7 alone: the official loop stops the cross branch after one step (conf 0.9986, no EOS); ours
    decodes each row to its own end, giving the full-batch answer."""
    x = golden["inputs"]["images_norm05"]
    full_logits, _, full_texts, full_conf, _ = decode(model, x, refine_iters=0)
    for idx in (2, 7):
        logits, _, texts, conf, _ = decode(model, x[idx : idx + 1], refine_iters=0)
        assert texts[0] == full_texts[idx]
        assert conf[0] == pytest.approx(full_conf[idx], rel=1e-5)
    assert full_conf[7] == pytest.approx(golden["infer"]["settings"]["ar_refine0"]["confidence"][7], rel=1e-4)
    # Shuffled batch order gives the same per-image results.
    perm = torch.tensor([5, 3, 7, 0, 1, 6, 2, 4])
    _, _, texts, conf, _ = decode(model, x[perm])
    _, _, base_texts, base_conf, _ = decode(model, x)
    assert texts == [base_texts[i] for i in perm]
    assert conf == pytest.approx([base_conf[i] for i in perm], rel=1e-5)


def test_batch_of_one_matches_golden(model, golden):
    g = golden["infer"]["settings"]["ar_refine1_bs1_img2"]
    logits, _, texts, conf, _ = decode(model, golden["inputs"]["images_norm05"][2:3])
    assert texts == g["decoded"]
    assert conf == pytest.approx(g["confidence"], rel=1e-4)
    assert_close_up_to_eos(logits, g["final_logits"])


def openai_normalised(inputs, indices):
    u8 = inputs["images_uint8_resized"][indices]
    return (u8.permute(0, 3, 1, 2).float().div(255) - OPENAI_MEAN) / OPENAI_STD


def dropout_free(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0
    return model


@pytest.mark.parametrize("batch", ["A", "B"])
def test_training_loss_masks_and_gradients_match_golden(golden_dir, golden, batch):
    model = dropout_free(load_model(golden_dir / "clip4str_tiny.ckpt")).train()
    b = golden["train"]["batches"][batch]
    t = b["train_dropout0"]
    images = openai_normalised(golden["inputs"], b["indices"])
    details: dict = {}
    loss = model.training_loss(images, t["labels"], perms=t["perms"], details=details)
    assert loss.item() == pytest.approx(t["loss"], rel=1e-4, abs=1e-6)
    assert details["numel"] == t["loss_numel"]
    assert torch.equal(details["tgt"], t["tgt"])
    for ours, theirs in zip(details["per_perm"], t["per_perm"]):
        assert torch.equal(ours["content_mask"], theirs["content_mask"])
        assert torch.equal(ours["query_mask"], theirs["query_mask"])
        assert torch.equal(ours["tgt_out_used"], theirs["tgt_out_used"])
        assert ours["n"] == theirs["n"]
        assert ours["captions"] == theirs["cross_captions"]
        torch.testing.assert_close(ours["visual_logits"], theirs["visual_logits"], rtol=1e-4, atol=2e-4)
        torch.testing.assert_close(ours["cross_logits"], theirs["cross_logits"], rtol=1e-4, atol=2e-4)
    loss.backward()
    params = dict(model.named_parameters())
    for key, grad in t["grads"].items():
        torch.testing.assert_close(params[key].grad, grad, rtol=1e-3, atol=1e-6, msg=key)
    for key, norm in t["grad_norms"].items():
        assert params[key].grad.norm().item() == pytest.approx(norm, rel=1e-3, abs=1e-6), key
    assert {k: p.requires_grad for k, p in params.items()} == t["requires_grad"]
    # The validation path: exactly longest-label + 1 positions, no early stop.
    v = b["val_forward_logits_loss"]
    model.eval()
    with torch.no_grad():
        logits, val_loss, numel = model.validation_logits_loss(images, t["labels"])
    torch.testing.assert_close(logits, v["logits"], rtol=1e-4, atol=2e-4)
    assert val_loss.item() == pytest.approx(v["loss"], rel=1e-4)
    assert numel == v["loss_numel"]


def test_permutation_draws_match_golden(golden):
    import numpy as np

    for entry in golden["train"]["gen_tgt_perms"]:
        seed = entry["seed_torch_and_numpy"]
        torch.manual_seed(seed)
        perms = generate_permutations(entry["max_num_chars"], 6, True, True, rng=np.random.default_rng(seed))
        assert torch.equal(perms, entry["perms"]), entry["max_num_chars"]
        masks = [attention_masks(p) for p in perms]
        assert torch.equal(torch.stack([c for c, _ in masks]), entry["content_masks"])
        assert torch.equal(torch.stack([q for _, q in masks]), entry["query_masks"])


def test_seeded_training_step_draws_the_golden_perms(golden_dir, golden):
    """Seeding torch and the model's numpy generator as the golden run did reproduces its random perms."""
    import numpy as np

    model = dropout_free(load_model(golden_dir / "clip4str_tiny.ckpt")).train()
    seed = golden["train"]["seed_step"]
    for name in ("A", "B"):
        b = golden["train"]["batches"][name]
        torch.manual_seed(seed)
        model.perm_rng = np.random.default_rng(seed)
        details: dict = {}
        with torch.no_grad():
            loss = model.training_loss(
                openai_normalised(golden["inputs"], b["indices"]),
                b["train_dropout0"]["labels"],
                details=details,
            )
        assert torch.equal(details["perms"], b["train_dropout0"]["perms"])
        assert loss.item() == pytest.approx(b["train_dropout0"]["loss"], rel=1e-4)
