"""A pure-functional Flax BERT encoder whose parameters have FlaxBertModel's exact layout.

``embeddings/{word,position,token_type}_embeddings/embedding``, ``embeddings/LayerNorm``,
``encoder/layer/<i>/attention/self/{query,key,value}``, ``.../attention/output/{dense,LayerNorm}``,
``.../intermediate/dense``, ``.../output/{dense,LayerNorm}`` and optionally ``pooler/dense``, so
``FlaxBertModel`` checkpoints load unchanged and PyTorch ones through ``pretrained.py``.

Attention is ``jax.nn.dot_product_attention``; ``dtype`` is the compute dtype (bf16 on GPUs)
while parameters stay in ``param_dtype`` (float32).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The fields of a BERT ``config.json`` that the encoder uses."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02

    @classmethod
    def from_dict(cls, values: dict) -> BertConfig:
        """Keeps the known fields of a (transformers) config dict; rejects non-BERT models."""
        model_type = values.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"model_type {model_type!r} is not a BERT encoder")
        if values.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        if values.get("hidden_act", "gelu") not in ACTIVATIONS:
            raise ValueError(f"hidden_act {values['hidden_act']!r} not in {sorted(ACTIVATIONS)}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def from_json(cls, path: str | pathlib.Path) -> BertConfig:
        return cls.from_dict(json.loads(pathlib.Path(path).read_text(encoding="utf-8")))


def _dense(features: int, config: BertConfig, dtype, name: str) -> nn.Dense:
    init = nn.initializers.normal(config.initializer_range)
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=init, name=name)


def _layer_norm(config: BertConfig, dtype, name: str = "LayerNorm") -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype, name=name)


class _BertModule(nn.Module):
    """Base of the encoder's submodules: the BERT config and the compute dtype."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32


class BertEmbeddings(_BertModule):
    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool):
        c, init = self.config, nn.initializers.normal(self.config.initializer_range)
        embed = lambda n, size: nn.Embed(size, c.hidden_size, embedding_init=init, name=n)  # noqa: E731
        hidden = (
            embed("word_embeddings", c.vocab_size)(input_ids)
            + embed("position_embeddings", c.max_position_embeddings)(position_ids)
            + embed("token_type_embeddings", c.type_vocab_size)(token_type_ids)
        )
        hidden = _layer_norm(c, self.dtype)(hidden)
        return nn.Dropout(c.hidden_dropout_prob)(hidden, deterministic=deterministic)


class BertSelfAttention(_BertModule):
    @nn.compact
    def __call__(self, hidden, mask, deterministic: bool):
        c = self.config
        heads, head_dim = c.num_attention_heads, c.hidden_size // c.num_attention_heads
        split = lambda x: x.reshape(*x.shape[:-1], heads, head_dim)  # noqa: E731
        q = split(_dense(c.hidden_size, c, self.dtype, "query")(hidden))
        k = split(_dense(c.hidden_size, c, self.dtype, "key")(hidden))
        v = split(_dense(c.hidden_size, c, self.dtype, "value")(hidden))
        dropout = c.attention_probs_dropout_prob
        if deterministic or dropout == 0.0:
            # [B, T, N, H]; mask [B, 1, T, T] (True = attend).
            out = jax.nn.dot_product_attention(q, k, v, mask=mask)
        else:  # explicit softmax: dropout on the attention probabilities, as BERT does
            logits = jnp.einsum("bqnh,bknh->bnqk", q, k) / jnp.sqrt(head_dim).astype(q.dtype)
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
            probs = nn.Dropout(dropout)(jax.nn.softmax(logits, axis=-1), deterministic=False)
            out = jnp.einsum("bnqk,bknh->bqnh", probs, v)
        return out.reshape(*hidden.shape[:-1], c.hidden_size)


class BertAttention(_BertModule):
    @nn.compact
    def __call__(self, hidden, mask, deterministic: bool):
        c = self.config
        attended = BertSelfAttention(c, self.dtype, name="self")(hidden, mask, deterministic)
        return BertSelfOutput(c, self.dtype, name="output")(attended, hidden, deterministic)


class BertSelfOutput(_BertModule):
    """Dense + dropout + residual + LayerNorm (``attention/output`` and ``output``)."""

    @nn.compact
    def __call__(self, hidden, residual, deterministic: bool):
        c = self.config
        hidden = _dense(c.hidden_size, c, self.dtype, "dense")(hidden)
        hidden = nn.Dropout(c.hidden_dropout_prob)(hidden, deterministic=deterministic)
        return _layer_norm(c, self.dtype)(hidden + residual)


class BertIntermediate(_BertModule):
    @nn.compact
    def __call__(self, hidden):
        c = self.config
        return ACTIVATIONS[c.hidden_act](
            _dense(c.intermediate_size, c, self.dtype, "dense")(hidden)
        )


class BertLayer(_BertModule):
    @nn.compact
    def __call__(self, hidden, mask, deterministic: bool):
        c = self.config
        attended = BertAttention(c, self.dtype, name="attention")(hidden, mask, deterministic)
        inner = BertIntermediate(c, self.dtype, name="intermediate")(attended)
        return BertSelfOutput(c, self.dtype, name="output")(inner, attended, deterministic)


class BertLayerCollection(_BertModule):
    """The layers in turn; returns the last output, or with ``all_layers`` the input and
    every layer's output stacked [num_hidden_layers + 1, B, L, hidden]."""

    @nn.compact
    def __call__(self, hidden, mask, deterministic: bool, all_layers: bool = False):
        outputs = [hidden]
        for i in range(self.config.num_hidden_layers):
            hidden = BertLayer(self.config, self.dtype, name=str(i))(hidden, mask, deterministic)
            outputs.append(hidden)
        return jnp.stack(outputs) if all_layers else hidden


class BertEncoder(_BertModule):
    @nn.compact
    def __call__(self, hidden, mask, deterministic: bool, all_layers: bool = False):
        return BertLayerCollection(self.config, self.dtype, name="layer")(
            hidden, mask, deterministic, all_layers
        )


class BertPooler(_BertModule):
    @nn.compact
    def __call__(self, hidden):
        return nn.tanh(
            _dense(self.config.hidden_size, self.config, self.dtype, "dense")(hidden[:, 0])
        )


class BertModel(_BertModule):
    """BERT encoder.

    Call with input_ids int32 [B, L] and input_mask bool [B, L] (True = real token); returns
    the last hidden states [B, L, hidden] in ``dtype`` (and the pooled [B, hidden] output when
    ``add_pooling_layer``). With ``all_layers``: the embeddings and every layer's output,
    stacked [num_hidden_layers + 1, B, L, hidden] (no pooled output).

    Packed rows (:mod:`jointre_jax.data.packing`) pass ``segment_ids`` int32 [B, L] (a token
    attends only to tokens of its own segment; 0 = padding) and ``position_ids`` int32 [B, L]
    (restarting in each segment): each segment is then encoded as if it were alone.
    """

    add_pooling_layer: bool = False

    @nn.compact
    def __call__(
        self,
        input_ids,
        input_mask,
        token_type_ids=None,
        deterministic: bool = True,
        all_layers: bool = False,
        segment_ids=None,
        position_ids=None,
    ):
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
        hidden = BertEmbeddings(self.config, self.dtype, name="embeddings")(
            input_ids, token_type_ids, position_ids, deterministic
        )
        if segment_ids is None:
            segment_ids = input_mask.astype(jnp.int32)
        segment_ids = jnp.where(input_mask, segment_ids, 0)
        same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
        mask = (same & (segment_ids > 0)[:, None, None, :]) | jnp.eye(
            input_ids.shape[-1], dtype=bool
        )  # [B, 1, L, L]; padded queries attend to themselves only: no NaN rows
        hidden = BertEncoder(self.config, self.dtype, name="encoder")(
            hidden, mask, deterministic, all_layers
        )
        if all_layers or not self.add_pooling_layer:
            return hidden
        return hidden, BertPooler(self.config, self.dtype, name="pooler")(hidden)
