"""Other languages: Vietnamese charset end to end, a multilingual (transformers) text encoder in the
cross-modal branch, and fine-tuning an English checkpoint to a new charset."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from clip4str.charset import CHARSET_VIETNAMESE, resolve_charset
from clip4str.config import ConfigError
from clip4str.errors import ModelNotFoundError
from clip4str.model.clip4str import CLIP4STR
from clip4str.presets import model_preset

WORDS = ["Việt", "Nam", "tiếng", "đường", "phở", "ngữ"]
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


@pytest.fixture
def bpe_env(bpe_path, monkeypatch):
    monkeypatch.setenv("CLIP4STR_BPE_PATH", str(bpe_path))


def small_config(**overrides):
    """The tiny preset on 64x64 images (64 patches of 8 px + CLS), no dropout."""
    base = dict(
        clip={"vision": {"image_size": 64, "patch_size": 8}},
        preprocess={"image_size": [64, 64]},
        decoder={"dropout": 0.0},
        max_label_length=8,
    )
    base.update(overrides)
    return model_preset("tiny", **base)


# ------------------------------------------------------------------------------------------ Vietnamese
def test_vietnamese_variant_and_charset():
    cfg = model_preset("tiny", "vietnamese")
    assert cfg.charset_train == CHARSET_VIETNAMESE == resolve_charset("vietnamese")
    assert unicodedata.is_normalized("NFC", cfg.charset_train)
    for word in WORDS:
        assert set(word) <= set(cfg.charset_train), word
    # A charset given in decomposed form (NFD) is stored composed, so labels and predictions match it.
    assert resolve_charset(unicodedata.normalize("NFD", "ạàá")) == "ạàá"


def test_label_filter_keeps_vietnamese_under_nfc():
    from clip4str.data.labels import LabelFilter

    keep = LabelFilter(CHARSET_VIETNAMESE, max_label_length=25)
    for word in WORDS:
        assert keep(unicodedata.normalize("NFD", word)) == word  # decomposed input → NFC label, marks kept
    # The official rule (ASCII folding) still applies to an ASCII charset.
    assert LabelFilter("0123456789abcdefghijklmnopqrstuvwxyz")("Việt") == "viet"


def render(word: str):
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(FONT), 28)
    image = Image.new("RGB", (112, 48), "white")
    ImageDraw.Draw(image).text((4, 4), word, font=font, fill="black")
    return image


def test_vietnamese_model_learns_words_and_reads_them_with_diacritics(tmp_path, bpe_env):
    if not FONT.is_file():
        pytest.skip(f"{FONT} (DejaVu, which has Vietnamese glyphs) is not installed")
    import clip4str
    from clip4str.checkpoints import save_model
    from clip4str.data.transforms import preprocess

    torch.manual_seed(0)
    # CLIP's text tower frozen and 2 permutations keep this fast; the cross-modal branch still reads
    # Vietnamese captions through CLIP's byte-level BPE.
    cfg = small_config(charset_train=CHARSET_VIETNAMESE, text_freeze_layers=-1, perm_num=2)
    model = CLIP4STR(cfg).train()
    images = [render(w) for w in WORDS]
    pixels = preprocess(images, cfg.preprocess)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.perm_rng = np.random.default_rng(0)
    read = []
    for step in range(200):
        loss = model.training_loss(pixels, WORDS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 19:
            model.eval()
            with torch.no_grad():
                read, _ = model.tokenizer.decode(model(pixels).softmax(-1))
            model.train()
            if read == WORDS:
                break
    assert read == WORDS, f"after {step + 1} steps the model reads {read}"

    folder = save_model(model, tmp_path / "vi")
    saved = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert saved["charset_train"] == CHARSET_VIETNAMESE  # stored as UTF-8 text, not escaped or folded
    reader = clip4str.load(folder)
    predictions = reader.read(images)
    texts = [p.text for p in predictions]
    assert texts == WORDS
    assert all(unicodedata.is_normalized("NFC", t) for t in texts)
    assert all(len(p.char_probs) == len(t) + 1 for p, t in zip(predictions, texts))


# ------------------------------------------------------------------------------------------ text encoder
VOCAB_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def make_char_tokenizer(folder: Path, charset: str) -> Path:
    """A character-level fast tokenizer (XLM-R style specials: <s>=0, <pad>=1, </s>=2) saved in ``folder``."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(VOCAB_SPECIALS)}
    for ch in charset:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    specials = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    return folder


def tiny_xlmr_config(vocab_size: int) -> dict:
    return {
        "model_type": "xlm-roberta",
        "vocab_size": vocab_size,
        "hidden_size": 24,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 48,
        "max_position_embeddings": 40,
        "type_vocab_size": 1,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "hidden_dropout_prob": 0.1,
    }


def make_mclip_folder(root: Path, num_dims: int = 20):
    """An M-CLIP-format folder as on the hub (config with modelBase/numDims, ``transformer.*`` +
    ``LinearTransformation.*`` weights in pytorch_model.bin, tokenizer files) and the reference modules."""
    transformers = pytest.importorskip("transformers")
    folder = make_char_tokenizer(root / "mclip", CHARSET_VIETNAMESE)
    vocab_size = len(VOCAB_SPECIALS) + len(CHARSET_VIETNAMESE)
    base = root / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(tiny_xlmr_config(vocab_size)))
    (folder / "config.json").write_text(
        json.dumps(
            {"model_type": "M-CLIP", "modelBase": str(base), "numDims": num_dims, "transformerDimensions": 24}
        )
    )
    torch.manual_seed(1)
    ref = transformers.AutoModel.from_config(
        transformers.AutoConfig.for_model(**tiny_xlmr_config(vocab_size))
    ).eval()  # with its pooler, as the released files
    linear = torch.nn.Linear(24, num_dims)
    sd = {f"transformer.{k}": v for k, v in ref.state_dict().items()}
    sd.update({f"LinearTransformation.{k}": v for k, v in linear.state_dict().items()})
    torch.save(sd, folder / "pytorch_model.bin")
    return folder, ref, linear


def test_mclip_folder_loads_and_keeps_mclip_sentence_embedding(tmp_path):
    from clip4str.model.text_encoders import HFTextEncoder, build_text_encoder, mclip_sentence_embedding

    folder, ref, linear = make_mclip_folder(tmp_path)
    cfg = small_config(text_encoder="mclip", text_encoder_options={"model": str(folder)})
    enc = build_text_encoder(cfg)
    assert isinstance(enc, HFTextEncoder)
    for k, v in ref.state_dict().items():
        if not k.startswith("pooler."):
            assert torch.equal(enc.transformer.state_dict()[k], v), k
    assert torch.equal(enc.linear_transformation.weight, linear.weight)

    captions = ["Việt", "đường", "", "mà"]
    enc.train()
    assert not enc.transformer.training  # frozen: no dropout even in train mode
    feats = enc(captions)
    assert feats.shape == (4, cfg.caption_length, cfg.clip.embed_dim)  # proj 20 -> 32
    assert [n for n, p in enc.named_parameters() if p.requires_grad] == ["proj.weight", "proj.bias"]

    # M-CLIP's own sentence embedding: mean of the real tokens' states (no fixed-length padding), then the
    # linear map. The per-token features, padded to 16, give exactly the same vector.
    batch = enc.tokenizer(captions, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = ref(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).float()
        expected = linear((hidden * m).sum(1) / m.sum(1))
        got = mclip_sentence_embedding(enc, captions)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    ids, mask = enc.tokenize(["mà"])
    assert ids.shape == (1, cfg.caption_length) and mask.sum() == 4  # <s> m à </s>, then <pad> x 12
    assert ids[0, 0] == 0 and ids[0, 3] == 2 and (ids[0, 4:] == 1).all()


def test_multilingual_encoder_in_cross_branch_trains_and_round_trips(tmp_path, bpe_env):
    pytest.importorskip("transformers")
    from clip4str.checkpoints import load_model, save_model

    tok_dir = make_char_tokenizer(tmp_path / "tok", CHARSET_VIETNAMESE)
    options = {
        "config": tiny_xlmr_config(len(VOCAB_SPECIALS) + len(CHARSET_VIETNAMESE)),
        "tokenizer": str(tok_dir),
        "projection_dim": 20,
        "freeze_layers": 1,
    }
    torch.manual_seed(0)
    cfg = small_config(charset_train=CHARSET_VIETNAMESE, text_encoder="mclip", text_encoder_options=options)
    model = CLIP4STR(cfg).eval()  # eval: the partly trainable encoder has dropout
    assert model.text_encoder is not None
    x = torch.randn(2, 3, 64, 64)
    memory = model.encode(x)
    a = model.cross_memory(memory, None, captions=["Việt", "Nam"])
    b = model.cross_memory(memory, None, captions=["tiếng", "Nam"])
    assert a.shape == (2, memory.shape[1] + cfg.caption_length, cfg.clip.embed_dim)
    assert not torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # the caption reaches the features

    model.train()
    assert model.text_encoder.transformer.training  # partly trainable: dropout on
    loss = model.training_loss(x, ["Việt", "mà"])
    loss.backward()
    grads = {n: p.grad for n, p in model.text_encoder.named_parameters()}
    assert grads["proj.weight"] is not None and grads["proj.weight"].abs().sum() > 0
    assert grads["transformer.encoder.layer.1.output.dense.weight"].abs().sum() > 0  # layer 1 trains
    assert grads["transformer.encoder.layer.0.output.dense.weight"] is None  # layer 0 frozen
    assert grads["transformer.embeddings.word_embeddings.weight"] is None

    model.eval()
    with torch.no_grad():
        before = model(x)
    folder = save_model(model, tmp_path / "m")
    loaded = load_model(folder)
    assert loaded.config.text_encoder == "mclip"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), before)


def test_pretrained_false_builds_architecture_only(tmp_path):
    from clip4str.model.text_encoders import build_text_encoder

    folder, ref, _ = make_mclip_folder(tmp_path)
    cfg = small_config(text_encoder="mclip", text_encoder_options={"model": str(folder)})
    (folder / "pytorch_model.bin").rename(folder / "moved.bin")
    with pytest.raises(Exception, match="pytorch_model.bin"):
        build_text_encoder(cfg)
    shell = small_config(
        text_encoder="mclip", text_encoder_options={"model": str(folder), "pretrained": False}
    )
    enc = build_text_encoder(shell)  # a CLIP4STR checkpoint will supply the weights
    key = "embeddings.word_embeddings.weight"
    assert enc.transformer.state_dict()[key].shape == ref.state_dict()[key].shape


def test_text_encoder_errors(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from clip4str.model.text_encoders import build_text_encoder

    with pytest.raises(ConfigError, match="unknown text_encoder 'bert-ish'"):
        build_text_encoder(small_config(text_encoder="bert-ish"))
    with pytest.raises(ConfigError, match="needs text_encoder_options.model"):
        build_text_encoder(small_config(text_encoder="mclip"))
    with pytest.raises(ConfigError, match="unknown key.*modle"):
        build_text_encoder(small_config(text_encoder="mclip", text_encoder_options={"modle": "x"}))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        build_text_encoder(
            small_config(text_encoder="mclip", text_encoder_options={"model": str(tmp_path / "no")})
        )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mclip = model_preset(small_config(), "multilingual-mclip")
    mclip.text_encoder_options["cache_dir"] = str(tmp_path / "hf")  # an empty cache
    with pytest.raises(
        ModelNotFoundError, match="'M-CLIP/XLM-Roberta-Large-Vit-B-32' is not available: offline"
    ):
        build_text_encoder(mclip)
    tok_dir = make_char_tokenizer(tmp_path / "tok", "abc")
    bad = {"config": tiny_xlmr_config(5), "tokenizer": str(tok_dir)}  # 7 tokens, 5 embedding rows
    with pytest.raises(ConfigError, match="7 tokens but its embedding table has 5 rows"):
        build_text_encoder(small_config(text_encoder="hf", text_encoder_options=bad))
    wrong_width = {"config": tiny_xlmr_config(7), "tokenizer": str(tok_dir), "output_projection": False}
    with pytest.raises(ConfigError, match="24 wide but the decoders are 32 wide"):
        build_text_encoder(small_config(text_encoder="hf", text_encoder_options=wrong_width))


# ------------------------------------------------------------------------------------------ fine-tuning
def test_finetune_english_checkpoint_to_vietnamese_reinitialises_charset_tensors(tmp_path, bpe_env):
    init_model = pytest.importorskip("clip4str.train.init_model")
    from clip4str.checkpoints import read_checkpoint, save_model
    from clip4str.train.config import TrainConfig

    english = CLIP4STR(small_config(charset_train="0123456789abcdefghijklmnopqrstuvwxyz"))
    ckpt = save_model(english, tmp_path / "en")
    cfg = TrainConfig(model_preset="tiny", init=f"checkpoint:{ckpt}", charset_train="vietnamese")
    model, report = init_model.build_model(cfg)
    assert model.config.charset_train == CHARSET_VIETNAMESE
    expected = {
        f"{branch}_decoder.{name}"
        for branch in ("visual", "cross")
        for name in ("head.weight", "head.bias", "text_embed.embedding.weight")
    }
    assert set(report.reinitialized) == expected
    text = report.describe()
    assert all(name in text for name in expected)
    sd, _, _ = read_checkpoint(ckpt)
    for name, value in model.state_dict().items():
        if name not in expected:
            assert torch.equal(value, sd[name]), name  # backbone and shared decoder weights kept
    assert model.visual_decoder.head.weight.shape[0] == len(CHARSET_VIETNAMESE) + 1


def test_clip4str_train_fine_tunes_english_checkpoint_to_vietnamese(tmp_path, bpe_env, caplog):
    """`clip4str train` with init=checkpoint:<English model> and charset_train=vietnamese: trains on
    Vietnamese labels (kept under NFC) and names the re-initialised tensors."""
    pytest.importorskip("clip4str.train.trainer")
    import logging

    from test_train_support import make_word_lmdb, tiny_config_dict

    from clip4str.checkpoints import load_model, save_model
    from clip4str.cli import main
    from clip4str.train.config import load_train_config, resolve_model_config

    data = make_word_lmdb(tmp_path / "vi", [unicodedata.normalize("NFD", w) for w in WORDS])
    english = tiny_config_dict(tmp_path, data, None)
    ckpt = save_model(CLIP4STR(resolve_model_config(load_train_config(english))), tmp_path / "en")
    cfg = tiny_config_dict(
        tmp_path, data, data, init=f"checkpoint:{ckpt}", charset_train="vietnamese", charset_test="vietnamese"
    )
    cfg.update(max_steps=2, batch_size=6, val_every_n_steps=2)
    (tmp_path / "vi.json").write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="clip4str.train"):
        assert main(["train", "--config", str(tmp_path / "vi.json"), "--no-progress"]) == 0
    text = caplog.text
    assert "training samples (6)" in text and "validation samples (6," in text  # NFD labels kept as NFC
    assert "re-initialised for the new charset" in text
    for name in ("visual_decoder.head.weight", "cross_decoder.text_embed.embedding.weight"):
        assert name in text
    run = tmp_path / "run"
    finals = [p.parent for p in run.rglob("model.safetensors")]
    assert finals, f"no model saved under {run}"
    model = load_model(finals[0])
    assert model.config.charset_train == CHARSET_VIETNAMESE
    assert model.visual_decoder.head.weight.shape[0] == len(CHARSET_VIETNAMESE) + 1
