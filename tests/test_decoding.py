"""The decoding core, pinned on a tiny random model: each test fails for one known way of getting it wrong.

* refinement must read the caption of the *refined* visual prediction, not keep the first one;
* captions pass through the test-charset adapter (the model's own, or the call's ``charset_test``);
* a confidence is the product of the read characters' probabilities *and* the end-of-sequence one;
* a refinement pass ignores every position from the first end-of-sequence on.

Also: :class:`DecodeOptions` is checked in one place, and ``read_stream`` streams.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from PIL import Image

from clip4str.api import Recognizer
from clip4str.charset import CHARSET_36, CharsetAdapter
from clip4str.decoding import DecodeOptions
from clip4str.model.clip4str import CLIP4STR, DecodeTrace
from clip4str.presets import model_preset


@pytest.fixture(scope="module")
def model() -> CLIP4STR:
    """A random tiny model with peaked heads (no near-ties) and an EOS bias, so rows end at varied steps."""
    torch.manual_seed(0)
    model = CLIP4STR(model_preset("tiny")).eval()
    with torch.no_grad():
        for decoder in (model.visual_decoder, model.cross_decoder):
            decoder.head.weight.mul_(20)
            decoder.head.bias[model.tokenizer.eos_id] += 3.8
    return model


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(6, 3, 224, 224, generator=torch.Generator().manual_seed(7)).clamp(-1, 1)


def greedy_captions(model: CLIP4STR, logits: torch.Tensor, charset: str) -> list[str]:
    """The captions of (N, k, C) logits as the official code forms them: cut at '[E]', then adapted."""
    adapter = CharsetAdapter(charset)
    return [adapter(c) for c in model.tokenizer.decode_caption(logits.argmax(-1))]


def test_refinement_reads_the_caption_of_the_refined_visual_prediction(model, images):
    trace = DecodeTrace()
    with torch.inference_mode():
        final = model.decode(images, refine_iters=1, trace=trace)
        refined = greedy_captions(model, trace.refine_visual[0], model.config.resolved_charset_test)
        assert refined != trace.captions[0], "refinement changed no caption: the test would see nothing"
        expected = model._refine(
            model.cross_decoder,
            model.cross_memory(model.encode(images), trace.refine_visual[0], refined),
            trace.cross_initial,
            final.shape[1],
        )
    assert trace.captions[1] == refined
    torch.testing.assert_close(final, expected, rtol=0, atol=1e-5)


def test_captions_pass_through_the_test_charset_adapter(model, images):
    no_vowels = "".join(c for c in CHARSET_36 if c not in "aeiou")
    trace = DecodeTrace()
    with torch.inference_mode():
        final = model.decode(images, refine_iters=1, charset_test=no_vowels, trace=trace)
        unadapted = model.decode(images, refine_iters=1)
    raw = model.tokenizer.decode_caption(trace.visual_initial.argmax(-1))
    assert any(set(c) - set(no_vowels) for c in raw), "every caption fits the charset: nothing to test"
    assert trace.captions[0] == greedy_captions(model, trace.visual_initial, no_vowels)
    assert trace.captions[1] == greedy_captions(model, trace.refine_visual[0], no_vowels)
    assert not torch.equal(final, unadapted)  # the adapter changes what the cross-modal branch reads
    assert model.charset_adapter("Ab-1") == "Ab-1"  # the call's charset left the model's own alone


def test_confidence_includes_the_end_of_sequence_probability(model):
    reader = Recognizer(model, visual_only=True)
    tok = model.tokenizer
    a, b = tok.encode(["a"])[0, 1].item(), tok.encode(["b"])[0, 1].item()
    probs = torch.empty(2, 3, tok.num_classes)
    readings = [[(a, 0.8), (tok.eos_id, 0.6), (b, 0.9)], [(b, 0.7), (a, 0.5), (b, 0.9)]]  # row 1: no EOS
    for row, reading in enumerate(readings):
        for pos, (token, p) in enumerate(reading):
            probs[row, pos] = (1 - p) / (tok.num_classes - 1)
            probs[row, pos, token] = p
    first, second = reader.predictions_from_logits(probs.log())
    assert first.text == "a" and first.char_probs == pytest.approx([0.8, 0.6], abs=1e-5)
    assert first.confidence == pytest.approx(0.8 * 0.6, abs=1e-5)
    assert second.text == "bab" and second.confidence == pytest.approx(0.7 * 0.5 * 0.9, abs=1e-5)


def test_refinement_ignores_every_position_from_the_first_end_of_sequence_on(model, images):
    with torch.inference_mode():
        memory = model.encode(images)
        previous = model.decode(images, visual_only=True, refine_iters=0, max_length=8).clone()
        steps = previous.shape[1]
        first_eos = torch.arange(len(images)) % (steps - 2) + 1  # rows end at different positions
        previous[torch.arange(len(images)), first_eos, model.tokenizer.eos_id] = 1e4
        after_eos = torch.arange(steps)[None, :] > first_eos[:, None]
        garbage = torch.randn(previous.shape, generator=torch.Generator().manual_seed(1)) * 50
        scrambled = torch.where(after_eos[..., None], garbage, previous)
        assert not torch.equal(scrambled[:, :-1].argmax(-1), previous[:, :-1].argmax(-1))
        one = model._refine(model.visual_decoder, memory, previous, steps)
        other = model._refine(model.visual_decoder, memory, scrambled, steps)
    torch.testing.assert_close(one, other, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------ options
def test_options_are_checked_when_built_and_changed():
    options = DecodeOptions()
    assert options.replace(refine_iters=None, mode=None) is options
    assert options.replace(mode="nar").mode == "nar" and options.mode == "ar"
    for changes, message in [
        ({"mode": "fast"}, "mode must be 'ar' or 'nar'"),
        ({"refine_iters": -1}, r"refine_iters must be in \[0, 100\]"),
        ({"refine_iters": 1.5}, "refine_iters"),
        ({"charset_test": ""}, "charset_test must not be empty"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            options.replace(**changes)
    with pytest.raises(TypeError, match="refine_iter"):
        options.replace(refine_iter=2)
    with pytest.raises(AttributeError):
        options.mode = "nar"  # type: ignore[misc]


def test_a_recognizer_takes_the_models_decoding_and_leaves_the_model_alone(model):
    reader = Recognizer(model, refine_iters=2, charset_test=CHARSET_36)
    assert reader.options.precision in ("fp32", "bf16")  # 'auto' resolved for this machine
    assert reader.options == DecodeOptions(
        refine_iters=2, charset_test=CHARSET_36, precision=reader.options.precision
    )
    other = reader.with_options(mode="nar", charset_test="abc")
    assert other.model is reader.model and reader.options.mode == "ar" and other.test_charset == "abc"
    assert model.config.charset_test is None and model.charset_adapter("A") == "A"
    with pytest.raises(ValueError, match="fp16"):
        reader.with_options(precision="fp16")


def test_read_stream_consumes_its_items_as_it_goes(model):
    reader = Recognizer(model, visual_only=True, refine_iters=0, batch_size=2)
    pulled: list[int] = []

    def endless():
        for i in itertools.count():
            pulled.append(i)
            yield i

    image = Image.new("RGB", (64, 16), "white")
    stream = reader.read_stream(endless(), load=lambda _: image, workers=1)
    results = list(itertools.islice(stream, 3))
    assert [i for i, _ in results] == [0, 1, 2]
    assert len(pulled) <= 3 * 2 + 2  # the prefetch window: about two batches ahead
    assert all(isinstance(p.confidence, float) and not math.isnan(p.confidence) for _, p in results)
