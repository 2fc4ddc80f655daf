"""The PyTorch reference of the joint model, for side-by-side timing (not used by training).

``TorchJointModel`` is jointre_jax's ``JointModel(method="joint")`` written with transformers'
``BertModel`` (eager PyTorch, its default attention implementation) and the same heads: NER
linear layer, NER label embedding (gold labels while training, predicted at inference), head and
tail layers with ReLU and dropout, and the ``m1`` / ``m2`` / ``m2_bilinear`` pair scorers. Its
loss is the gs-based joint loss of ``jointre_jax.model.losses`` (mean NER cross-entropy over real
wordpieces + mean RE cross-entropy over ordered pairs of gold anchors). ``load_flax_params``
copies a JAX model's parameters in, so a test can show both give the same loss.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from flax import traverse_util
from torch import nn
from transformers import BertConfig, BertModel

from jointre_jax.model.pretrained import convert_pytorch_state


class TorchJointModel(nn.Module):
    """BERT + word-level BIO NER + pair scores between the gold entities (first-word anchors).
    ``forward(batch)`` takes the batch dict of ``data.batching`` as torch tensors and returns
    (ner_logits [B, L, T] over words, re_logits [B, N, N, R] over the gold entity table)."""

    def __init__(
        self,
        bert_config: BertConfig,
        num_tags: int,
        num_relations: int,
        re_option: str = "m2_bilinear",
        label_embedding_dim: int = 16,
        pair_hidden_dim: int = 256,
        dropout_rate: float = 0.1,
    ):
        super().__init__()
        self.bert = BertModel(bert_config, add_pooling_layer=False)
        hidden = bert_config.hidden_size
        self.re_option = re_option
        self.dropout = nn.Dropout(dropout_rate)
        self.ner = nn.Linear(hidden, num_tags)
        self.label_embedding = nn.Embedding(num_tags, label_embedding_dim)
        features = hidden + label_embedding_dim
        self.head = nn.Linear(features, pair_hidden_dim)
        self.tail = nn.Linear(features, pair_hidden_dim)
        if re_option == "m1":
            self.classifier = nn.Linear(pair_hidden_dim, num_relations)
        else:
            self.bilinear = nn.Parameter(
                torch.randn(num_relations, pair_hidden_dim, pair_hidden_dim) / pair_hidden_dim**0.5
            )
        if re_option == "m2":
            self.linear_head = nn.Linear(pair_hidden_dim, num_relations)
            self.linear_tail = nn.Linear(pair_hidden_dim, num_relations, bias=False)

    def forward(self, batch: dict, label_source: str = "gold"):
        mask, positions = batch["input_mask"].long(), None
        if "segment_ids" in batch:  # packed rows: attention inside a segment, positions restart
            mask, positions = segment_attention(batch["segment_ids"]), batch["position_ids"]
        hidden = self.bert(
            input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions
        ).last_hidden_state
        hidden = self.dropout(hidden)
        words = _gather(hidden, batch["word_index"])
        ner_logits = self.ner(words)
        labels = batch["ner_labels"] if label_source == "gold" else ner_logits.argmax(-1)
        features = torch.cat([words, self.label_embedding(labels)], dim=-1)
        features = _gather(features, batch["entity_start"])  # first-word anchors
        head = self.dropout(F.relu(self.head(features)))
        tail = self.dropout(F.relu(self.tail(features)))
        if self.re_option == "m1":  # W (h_i + t_j) + b
            from_head = self.classifier(head)
            from_tail = F.linear(tail, self.classifier.weight)
            return ner_logits, from_head[:, :, None, :] + from_tail[:, None, :, :]
        scores = torch.einsum("bid,rde,bje->bijr", head, self.bilinear, tail)
        if self.re_option == "m2":
            scores = scores + self.linear_head(head)[:, :, None, :]
            scores = scores + self.linear_tail(tail)[:, None, :, :]
        return ner_logits, scores


def segment_attention(segment_ids: torch.Tensor) -> torch.Tensor:
    """int64 [B, L, L]: query i attends key j when both are in one segment (padding: itself
    only), the mask of ``jointre_jax.model.bert.BertModel``."""
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    eye = torch.eye(segment_ids.shape[1], dtype=torch.bool, device=segment_ids.device)[None]
    return ((same & (segment_ids[:, None, :] > 0)) | eye).long()


def _gather(values, index):
    """values [B, L, D] at index [B, N] -> [B, N, D]."""
    return torch.gather(values, 1, index[:, :, None].expand(-1, -1, values.shape[-1]))


def joint_loss(ner_logits, re_logits, batch) -> torch.Tensor:
    """Mean NER cross-entropy over real words + mean RE cross-entropy over the gs-based pairs
    (ordered pairs of distinct gold entities), as ``losses.loss_terms``/``total_loss``."""
    label_mask = batch["word_mask"] & batch["row_mask"][:, None]
    ner = F.cross_entropy(ner_logits[label_mask], batch["ner_labels"][label_mask], reduction="sum")
    ner = ner / label_mask.sum().clamp(min=1)
    gold = batch["entity_type"] > 0
    length = gold.shape[1]
    distinct = ~torch.eye(length, dtype=torch.bool, device=gold.device)[None]
    if "word_segment" in batch:  # packed rows: pairs inside one segment
        segment = torch.gather(batch["word_segment"], 1, batch["entity_start"])
        distinct = distinct & (segment[:, :, None] == segment[:, None, :])
    pairs = gold[:, :, None] & gold[:, None, :] & distinct & batch["row_mask"][:, None, None]
    re = F.cross_entropy(re_logits[pairs], batch["relations"][pairs], reduction="sum")
    return ner + re / pairs.sum().clamp(min=1)


def to_torch(batch: dict[str, np.ndarray], device: str = "cpu") -> dict[str, torch.Tensor]:
    """The numpy batch of ``data.batching`` as torch tensors (int64 ids and labels) on
    ``device``."""
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        tensor = torch.from_numpy(value.astype(np.int64) if value.dtype == np.int32 else value)
        out[key] = tensor.to(device, non_blocking=True) if device != "cpu" else tensor
    return out


def load_flax_params(model: TorchJointModel, params) -> None:
    """Copies the params of a JAX ``JointModel(method="joint")`` into ``model`` (in place)."""
    flat = traverse_util.flatten_dict(jax_to_numpy(params))
    state = {}
    for name, value in model.bert.state_dict().items():
        converted = convert_pytorch_state({name: value.numpy()})
        if not converted:  # buffers such as position_ids
            continue
        (path,) = converted
        array = flat[("encoder", *path)]
        state[name] = torch.from_numpy(
            np.ascontiguousarray(array.T if path[-1] == "kernel" else array)
        )
    model.bert.load_state_dict(state, strict=False)

    def linear(layer: nn.Linear, *path):
        layer.weight.data = torch.from_numpy(np.ascontiguousarray(flat[(*path, "kernel")].T))
        if layer.bias is not None:
            layer.bias.data = torch.from_numpy(flat[(*path, "bias")].copy())

    linear(model.ner, "ner")
    model.label_embedding.weight.data = torch.from_numpy(flat[("label_embedding", "embedding")])
    linear(model.head, "pairs", "head")
    linear(model.tail, "pairs", "tail")
    if model.re_option == "m1":
        model.classifier.weight.data = torch.from_numpy(
            np.ascontiguousarray(flat[("pairs", "classifier_kernel")].T)
        )
        model.classifier.bias.data = torch.from_numpy(flat[("pairs", "classifier_bias")].copy())
    else:
        model.bilinear.data = torch.from_numpy(flat[("pairs", "bilinear")].copy())
    if model.re_option == "m2":
        linear(model.linear_head, "pairs", "linear_head")
        linear(model.linear_tail, "pairs", "linear_tail")


def jax_to_numpy(tree):
    """A pytree of jax arrays as writable float32 numpy arrays."""
    import jax

    return jax.tree.map(lambda x: np.array(x, dtype=np.float32), tree)


def bert_config(encoder_config) -> BertConfig:
    """transformers' BertConfig of a ``jointre_jax.model.bert.BertConfig`` (eval dropout off
    is up to ``model.eval()``)."""
    return BertConfig(
        vocab_size=encoder_config.vocab_size,
        hidden_size=encoder_config.hidden_size,
        num_hidden_layers=encoder_config.num_hidden_layers,
        num_attention_heads=encoder_config.num_attention_heads,
        intermediate_size=encoder_config.intermediate_size,
        hidden_act=encoder_config.hidden_act,
        hidden_dropout_prob=encoder_config.hidden_dropout_prob,
        attention_probs_dropout_prob=encoder_config.attention_probs_dropout_prob,
        max_position_embeddings=encoder_config.max_position_embeddings,
        type_vocab_size=encoder_config.type_vocab_size,
        layer_norm_eps=encoder_config.layer_norm_eps,
    )
