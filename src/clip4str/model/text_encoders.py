"""Text encoders for the cross-modal branch other than CLIP's own (``ModelConfig.text_encoder != 'clip'``).

CLIP's text tower reads captions with an English byte-level BPE. For other languages the cross-modal branch can
read the visual branch's predictions with a multilingual encoder from Hugging Face ``transformers`` (an optional
dependency: ``pip install clip4str[multilingual]``), typically Multilingual-CLIP
(``M-CLIP/XLM-Roberta-Large-Vit-B-32``: XLM-RoBERTa large + a linear map into CLIP's text space).

:class:`HFTextEncoder` turns N captions into (N, S, E) features:

1. its own tokenizer, padded/truncated to a fixed S = ``max_length`` (default ``config.caption_length``, 16),
   with the model's special tokens (``<s> … </s> <pad>…``);
2. the transformer's last hidden states (N, S, H), with the attention mask, so real tokens never attend to
   padding; the padding positions' outputs are computed like any other position (as CLIP does for its
   padding), and the decoders see all S positions (no padding mask is used downstream);
3. M-CLIP's ``LinearTransformation`` (H → P) applied **per token**. The original applies it to the mean of
   the real tokens' states; the map is affine, so the masked mean of these per-token features is exactly
   M-CLIP's sentence embedding;
4. ``proj``: a trainable ``Linear(P, E)`` to the decoder width when P != E (identity otherwise, unless
   ``output_projection=True``).

Options (``ModelConfig.text_encoder_options``):

* ``model``: a Hugging Face hub id or a local folder (an M-CLIP folder: ``config.json`` with ``model_type
  'M-CLIP'``, ``modelBase``, ``numDims``, weights ``transformer.*`` + ``LinearTransformation.*``; or any
  ``transformers`` encoder folder).
* ``config``: a ``transformers`` config dict (with ``model_type``) to build the architecture without any file.
* ``tokenizer``: tokenizer folder or hub id (default: ``model``).
* ``projection_dim``: P of a fresh ``LinearTransformation`` when building from ``config`` (0: none).
* ``pretrained`` (True): load the weights of ``model``; False builds the architecture only (the weights then
  come from a CLIP4STR checkpoint; :func:`clip4str.checkpoints.load_model` builds with it).
* ``freeze_layers`` (-1): -1 freezes the transformer and ``LinearTransformation`` (kept in eval mode, so no
  dropout); N > 0 the embeddings and first N layers; 0 nothing. ``proj`` always trains.
* ``max_length``, ``output_projection``, ``revision``, ``cache_dir``, ``offline`` (default ``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clip4str.config import ConfigError, ModelConfig
from clip4str.errors import CheckpointError

__all__ = [
    "TEXT_ENCODERS",
    "HFTextEncoder",
    "build_text_encoder",
    "mclip_sentence_embedding",
]

# Architectures M-CLIP's config.json names in ``modelBase`` (values of the public xlm-roberta configs).
_XLMR_COMMON: dict[str, Any] = dict(
    model_type="xlm-roberta",
    vocab_size=250002,
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    hidden_act="gelu",
)
_KNOWN_BASES: dict[str, dict[str, Any]] = {
    "xlm-roberta-large": dict(
        _XLMR_COMMON, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ),
    "xlm-roberta-base": dict(
        _XLMR_COMMON, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    ),
}
_MCLIP_KEYS = ("modelBase", "numDims", "transformerDimensions")
_OPTION_KEYS = {
    "model",
    "config",
    "tokenizer",
    "projection_dim",
    "pretrained",
    "freeze_layers",
    "max_length",
    "output_projection",
    "revision",
    "cache_dir",
    "offline",
}


def _transformers():
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "this model's cross-modal branch uses a Hugging Face text encoder, which needs the optional "
            "'transformers' package: pip install 'clip4str[multilingual]'"
        ) from err
    return transformers


def resolve_model_dir(name_or_path: str, options: Mapping[str, Any], weights: bool = True) -> Path:
    """A local folder, or the hub cache's snapshot of ``name_or_path`` (:func:`clip4str.hub.resolve_snapshot`,
    with the ``revision``, ``cache_dir`` and ``offline`` options)."""
    from clip4str.hub import resolve_snapshot

    return resolve_snapshot(
        name_or_path,
        weights=weights,
        revision=options.get("revision"),
        cache_dir=options.get("cache_dir"),
        offline=options.get("offline"),
        what="text encoder",
        fix="set text_encoder_options.model to a local folder holding its config.json, tokenizer and weights",
    )


def _read_json(path: Path) -> dict[str, Any]:
    from clip4str.files import MAX_CONFIG_BYTES, read_text_file

    try:  # the one regular-file reader: a FIFO or /dev/zero link is refused, at most 16 MiB
        data = json.loads(read_text_file(path, "JSON file", ConfigError, "utf-8", MAX_CONFIG_BYTES))
    except (OSError, json.JSONDecodeError, RecursionError) as err:
        raise ConfigError(f"{path}: not a readable JSON file: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def _config_from_dict(data: Mapping[str, Any], source: str):
    transformers = _transformers()
    data = dict(data)
    model_type = data.pop("model_type", None)
    if not model_type:
        raise ConfigError(f"{source}: the transformers config needs a 'model_type' (e.g. 'xlm-roberta')")
    for key in (*_MCLIP_KEYS, "architectures", "transformers_version", "_name_or_path"):
        data.pop(key, None)
    try:
        return transformers.AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError) as err:
        raise ConfigError(f"{source}: unknown transformers model_type {model_type!r}: {err}") from err


def _base_config(folder: Path, data: dict[str, Any], options: Mapping[str, Any]):
    """(transformers config, M-CLIP projection dim or None) of a model folder's config.json."""
    is_mclip = data.get("model_type") == "M-CLIP" or "numDims" in data
    if not is_mclip:
        return _config_from_dict(data, str(folder / "config.json")), None
    proj = int(data["numDims"]) if "numDims" in data else None
    if "hidden_size" in data and data.get("model_type") != "M-CLIP":
        return _config_from_dict(data, str(folder / "config.json")), proj  # full config inline
    base = str(data.get("modelBase", ""))
    if base in _KNOWN_BASES:
        return _config_from_dict(_KNOWN_BASES[base], f"modelBase {base!r}"), proj
    if not base:
        raise ConfigError(f"{folder / 'config.json'}: an M-CLIP config needs 'modelBase'")
    base_dir = resolve_model_dir(base, options, weights=False)
    return _config_from_dict(_read_json(base_dir / "config.json"), str(base_dir / "config.json")), proj


def _load_tokenizer(source: str, options: Mapping[str, Any]):
    transformers = _transformers()
    folder = resolve_model_dir(source, options, weights=False)
    tok_file = folder / "tokenizer.json"
    if tok_file.is_file():
        # Read tokenizer.json directly: an M-CLIP config.json has a model_type AutoTokenizer does not know.
        special: dict[str, Any] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            if (folder / name).is_file():
                for key, value in _read_json(folder / name).items():
                    if key.endswith("_token") and isinstance(value, (str, dict)):
                        special.setdefault(key, value["content"] if isinstance(value, dict) else value)
        tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tok_file), **special)
    else:
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        except Exception as err:  # noqa: BLE001
            raise ConfigError(f"text encoder tokenizer in {folder} could not be loaded: {err}") from err
    if tokenizer.pad_token is None:
        raise ConfigError(
            f"the tokenizer in {folder} has no padding token; captions are padded to a fixed length, so set "
            "pad_token in its tokenizer_config.json / special_tokens_map.json"
        )
    return tokenizer


def _read_weights(folder: Path) -> dict[str, Tensor]:
    from clip4str.weights import read_tensor_file

    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            obj = read_tensor_file(folder / name)
            return dict(obj.get("state_dict", obj)) if isinstance(obj, Mapping) else obj
    raise CheckpointError(
        f"{folder} has no model.safetensors or pytorch_model.bin; pass text_encoder_options.pretrained=false to "
        "build the architecture without weights"
    )


class HFTextEncoder(nn.Module):
    """A Hugging Face encoder reading captions for the cross-modal branch: captions → (N, S, E).

    Args:
        transformer: a ``transformers`` encoder returning ``last_hidden_state`` (N, S, H).
        tokenizer: its (fast) tokenizer, with a padding token.
        embed_dim: E, the decoder width.
        max_length: S, the fixed caption length in tokens (specials included).
        projection_dim: P of M-CLIP's ``linear_transformation`` (H → P); None for no such layer.
        freeze_layers: -1 all of the transformer and ``linear_transformation``, N > 0 embeddings + first N
            layers, 0 none.
        output_projection: force (True) or forbid (False) the trainable ``proj`` (P → E); None: only if P != E.
    """

    def __init__(
        self,
        transformer: nn.Module,
        tokenizer: Any,
        embed_dim: int,
        max_length: int = 16,
        projection_dim: int | None = None,
        freeze_layers: int = -1,
        output_projection: bool | None = None,
    ) -> None:
        super().__init__()
        if max_length < 2:
            raise ConfigError(f"text_encoder_options.max_length must be >= 2, got {max_length}")
        hidden = int(transformer.config.hidden_size)
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.linear_transformation = nn.Linear(hidden, projection_dim) if projection_dim else None
        width = projection_dim or hidden
        use_proj = width != embed_dim if output_projection is None else bool(output_projection)
        if not use_proj and width != embed_dim:
            raise ConfigError(
                f"text encoder features are {width} wide but the decoders are {embed_dim} wide; "
                "output_projection=false is only possible when they match"
            )
        self.proj = nn.Linear(width, embed_dim) if use_proj else nn.Identity()
        self.freeze_layers = int(freeze_layers)
        self._apply_freezing()
        self.train(self.training)

    def _apply_freezing(self) -> None:
        n = self.freeze_layers
        if n == 0:
            return
        if n < 0:
            self.transformer.requires_grad_(False)
            if self.linear_transformation is not None:
                self.linear_transformation.requires_grad_(False)
            return
        layers = getattr(getattr(self.transformer, "encoder", None), "layer", None)
        embeddings = getattr(self.transformer, "embeddings", None)
        if layers is None or embeddings is None:
            raise ConfigError(
                f"text_encoder_options.freeze_layers={n}: {type(self.transformer).__name__} has no "
                "embeddings/encoder.layer to freeze by layer; use -1 (all) or 0 (none)"
            )
        if n > len(layers):
            raise ConfigError(
                f"text_encoder_options.freeze_layers={n} but the encoder has {len(layers)} layers"
            )
        embeddings.requires_grad_(False)
        for layer in layers[:n]:
            layer.requires_grad_(False)

    @property
    def fully_frozen(self) -> bool:
        return self.freeze_layers < 0

    def train(self, mode: bool = True) -> HFTextEncoder:
        super().train(mode)
        if self.fully_frozen:  # a frozen encoder never uses dropout
            self.transformer.eval()
        return self

    def tokenize(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        """Captions → (input_ids, attention_mask), both (N, S) int64 on the encoder's device."""
        enc = self.tokenizer(
            list(captions),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        device = next(self.parameters()).device
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)

    def token_features(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        """Per-token features before ``proj``: (N, S, P) and the attention mask (N, S)."""
        ids, mask = self.tokenize(captions)
        trains = torch.is_grad_enabled() and any(p.requires_grad for p in self.transformer.parameters())
        with torch.set_grad_enabled(trains):
            hidden = self.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.linear_transformation is not None:
            hidden = self.linear_transformation(hidden)
        return hidden, mask

    def forward(self, captions: list[str]) -> Tensor:
        """N captions → (N, S, E) features for the cross-modal decoder."""
        if len(captions) == 0:
            p = next(self.parameters())
            out_dim = self.proj.out_features if isinstance(self.proj, nn.Linear) else self._width()
            return p.new_zeros(0, self.max_length, out_dim)
        hidden, _ = self.token_features(captions)
        return self.proj(hidden)

    def _width(self) -> int:
        if self.linear_transformation is not None:
            return self.linear_transformation.out_features
        return int(self.transformer.config.hidden_size)


def mclip_sentence_embedding(encoder: HFTextEncoder, captions: list[str]) -> Tensor:
    """M-CLIP's sentence embedding (N, P): the attention-masked mean of the per-token features."""
    feats, mask = encoder.token_features(captions)
    m = mask.unsqueeze(-1).to(feats.dtype)
    return (feats * m).sum(1) / m.sum(1)


def _build_hf(config: ModelConfig, options: Mapping[str, Any]) -> HFTextEncoder:
    unknown = sorted(set(options) - _OPTION_KEYS)
    if unknown:
        raise ConfigError(
            f"text_encoder_options has unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(_OPTION_KEYS))}"
        )
    transformers = _transformers()
    model_name = options.get("model")
    inline = options.get("config")
    if not model_name and not inline:
        raise ConfigError(
            f"text_encoder={config.text_encoder!r} needs text_encoder_options.model (a hub id such as "
            "'M-CLIP/XLM-Roberta-Large-Vit-B-32' or a local folder) or text_encoder_options.config"
        )
    pretrained = bool(options.get("pretrained", True))
    folder: Path | None = None
    proj_dim: int | None = None
    if inline:
        if not isinstance(inline, Mapping):
            raise ConfigError("text_encoder_options.config must be a mapping (a transformers config dict)")
        hf_config = _config_from_dict(inline, "text_encoder_options.config")
        proj_dim = int(options.get("projection_dim", 0)) or None
        if model_name and pretrained:
            folder = resolve_model_dir(str(model_name), options)
    else:
        folder = resolve_model_dir(str(model_name), options, weights=pretrained)
        if not (folder / "config.json").is_file():
            raise ConfigError(f"text encoder folder {folder} has no config.json")
        hf_config, proj_dim = _base_config(folder, _read_json(folder / "config.json"), options)
        if "projection_dim" in options:
            proj_dim = int(options["projection_dim"]) or None
    try:
        transformer = transformers.AutoModel.from_config(hf_config, add_pooling_layer=False)
    except TypeError:
        transformer = transformers.AutoModel.from_config(hf_config)
    tokenizer_source = options.get("tokenizer") or model_name
    if not tokenizer_source:
        raise ConfigError(
            "text_encoder_options.tokenizer is needed when the encoder is built from 'config' alone"
        )
    encoder = HFTextEncoder(
        transformer,
        _load_tokenizer(str(tokenizer_source), options),
        embed_dim=config.clip.embed_dim,
        max_length=int(options.get("max_length", config.caption_length)),
        projection_dim=proj_dim,
        freeze_layers=int(options.get("freeze_layers", -1)),
        output_projection=options.get("output_projection"),
    )
    if pretrained and folder is not None:
        _load_pretrained(encoder, folder)
    vocab = int(hf_config.vocab_size)
    if len(encoder.tokenizer) > vocab:
        raise ConfigError(
            f"the text encoder's tokenizer has {len(encoder.tokenizer)} tokens but its embedding table has "
            f"{vocab} rows; use the tokenizer that belongs to the model"
        )
    return encoder


def _load_pretrained(encoder: HFTextEncoder, folder: Path) -> None:
    """Copy a folder's weights (M-CLIP ``transformer.*`` + ``LinearTransformation.*``, or a bare encoder)."""
    from clip4str.weights import load_state_dict_strict

    sd = _read_weights(folder)
    if any(k.startswith("transformer.") for k in sd):
        body = {k[len("transformer.") :]: v for k, v in sd.items() if k.startswith("transformer.")}
    else:
        prefix = getattr(encoder.transformer, "base_model_prefix", "")
        body = {
            k[len(prefix) + 1 :] if prefix and k.startswith(prefix + ".") else k: v for k, v in sd.items()
        }
    ignorable = ("pooler.", "embeddings.position_ids", "lm_head.", "LinearTransformation.")
    own = encoder.transformer.state_dict()
    body = {
        k: v.float() if v.is_floating_point() else v
        for k, v in body.items()
        if k in own or not k.startswith(ignorable)
    }
    load_state_dict_strict(encoder.transformer, body, f"{folder} (text encoder built from its config.json)")
    lt = encoder.linear_transformation
    if lt is not None:
        w, b = sd.get("LinearTransformation.weight"), sd.get("LinearTransformation.bias")
        if w is None or b is None:
            raise CheckpointError(f"{folder}: M-CLIP weights without LinearTransformation.weight/bias")
        if tuple(w.shape) != tuple(lt.weight.shape):
            raise CheckpointError(
                f"{folder}: LinearTransformation.weight is {tuple(w.shape)}, expected {tuple(lt.weight.shape)} "
                "(numDims x transformerDimensions of its config.json)"
            )
        with torch.no_grad():
            lt.weight.copy_(w.float())
            lt.bias.copy_(b.float())


TEXT_ENCODERS = {
    "mclip": _build_hf,
    "hf": _build_hf,
}


def build_text_encoder(config: ModelConfig) -> nn.Module:
    """The cross-modal text encoder ``config.text_encoder`` names ('mclip' or 'hf': a ``transformers``
    encoder, see the module docstring), configured by ``config.text_encoder_options``."""
    builder = TEXT_ENCODERS.get(config.text_encoder)
    if builder is None:
        raise ConfigError(
            f"unknown text_encoder {config.text_encoder!r}; valid: 'clip' (CLIP's own text tower), "
            + ", ".join(repr(k) for k in TEXT_ENCODERS)
        )
    return builder(config, dict(config.text_encoder_options))
