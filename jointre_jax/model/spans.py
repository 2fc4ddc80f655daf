"""The biaffine span scorer of the span decoder (``model.ner_decoder = "span"``).

:class:`SpanScorer` maps word features [B, L, D] to span logits [B, L, L, classes]: a biaffine
start-end term (Yu et al. 2020), and optionally a span-content term and a span-interaction
term, both computed per (start, width) on a [B, L, W, .] grid (W = ``max_width``) and read
back per span by :func:`by_span`, so no [B, L, L, D] tensor is ever built.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class SpanScorer(nn.Module):
    """Biaffine start-end span scores: words [B, L, D] -> logits [B, L, L, num_classes].

    ``[b, i, j, c]`` scores class c (0 = no entity) for the span from word i to word j
    (inclusive): ``s_i^T U_c e_j + W_c (s_i || e_j) + b_c + w_c[j - i]`` with
    ``s = relu(dense(h))`` and ``e = relu(dense(h))`` the start and end vectors (Yu et al.
    2020) and ``w`` a learned bias per span width (in words, up to ``max_width``) and class.

    With ``pool_dim`` > 0 a second term scores each span from its content, as span classifiers
    do (SpERT, Eberts and Ulges 2020): ``V_c relu(P (max_{i<=k<=j} h_k || a[j - i]) + p) +
    v_c`` with ``a`` a learned width embedding; the max-pools of all spans of width w come
    from those of width w - 1 in one step each (``max_width`` steps, no [B, L, L, D] tensor).
    With ``context`` [B, L, D_c] (the criterion's [CLS] output at each word, SpERT's context
    vector) the hidden layer reads ``max || a[j - i] || context_i`` instead, so a span's score
    can depend on the whole criterion: one that the corpus leaves unannotated, say.

    With ``conv_layers`` > 0 a third term lets neighbouring spans inform each other, as a
    convolution over the span table does (CNN-NER, Yan et al. 2023): each candidate span gets
    ``g = gelu(A s_i + B e_j + c[j - i])`` of size ``conv_dim``, then ``conv_layers`` residual
    3 x 3 convolutions ``g <- (g + dropout(gelu(conv(g)))) * valid`` over the (start, width)
    grid (a span's neighbours: one boundary moved by a word, or both), then ``K_c g + k_c``
    (``K`` and ``k`` start at zero, so the term starts silent). ``valid`` zeroes every span
    that is not inside one word segment (``segment`` [B, L], 0 = padding), and a span reads
    only neighbours that start in its own segment, so no criterion of a packed row reads
    another. The convolution is one dense layer over the nine shifted grids (kernel [9 K, K],
    offsets (di, dw) in row-major order, di the start's).
    """

    num_classes: int
    hidden_dim: int
    max_width: int = 16
    pool_dim: int = 0
    width_embedding_dim: int = 25
    conv_layers: int = 0
    conv_dim: int = 64
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        words,
        deterministic: bool = True,
        dropout_rate: float = 0.1,
        context=None,
        segment=None,
    ):
        if context is not None and not self.pool_dim:
            raise ValueError("a span context vector needs the span-content term (pool_dim > 0)")
        if self.conv_layers and segment is None:
            raise ValueError("the span convolution (conv_layers > 0) needs the word segments")
        dense = lambda n, name, bias=True: nn.Dense(  # noqa: E731
            n, use_bias=bias, dtype=self.dtype, name=name
        )
        start = nn.relu(dense(self.hidden_dim, "start")(words))
        end = nn.relu(dense(self.hidden_dim, "end")(words))
        start = nn.Dropout(dropout_rate)(start, deterministic=deterministic)
        end = nn.Dropout(dropout_rate)(end, deterministic=deterministic)
        init = nn.initializers.lecun_normal(in_axis=(1, 2), out_axis=0)  # fan-in d * d
        bilinear = self.param(
            "bilinear", init, (self.num_classes, self.hidden_dim, self.hidden_dim), jnp.float32
        )
        scores = jnp.einsum("bid,cde,bje->bijc", start, bilinear.astype(self.dtype), end)
        scores = scores + dense(self.num_classes, "linear_start")(start)[:, :, None, :]
        scores = scores + dense(self.num_classes, "linear_end", bias=False)(end)[:, None, :, :]
        width_bias = self.param(
            "width_bias", nn.initializers.zeros, (self.max_width, self.num_classes), jnp.float32
        )
        positions = jnp.arange(words.shape[1])
        width = jnp.clip(positions[None, :] - positions[:, None], 0, self.max_width - 1)
        scores = scores + width_bias.astype(scores.dtype)[width][None]
        if self.pool_dim:
            scores = scores + self.pooled_scores(words, width, deterministic, dropout_rate, context)
        if self.conv_layers:
            scores = scores + self.conv_scores(
                start, end, segment, width, deterministic, dropout_rate
            )
        return scores

    def pooled_scores(self, words, width, deterministic: bool, dropout_rate: float, context=None):
        """Span-content logits [B, L, L, C] (see the class docstring); ``width`` [L, L] is the
        clipped width index j - i of each span; ``context`` [B, L, D_c] or None."""
        length = words.shape[1]
        widths = min(self.max_width, length)
        pools, pooled = [], words
        for w in range(widths):  # pooled[:, i] = max(words[i .. i + w]); past L: padding
            if w:
                pooled = jnp.maximum(pooled, shift(words, w, 1))
            pools.append(pooled)
        pools = jnp.stack(pools, axis=2)  # [B, L, W, D]
        embedding = nn.Embed(self.max_width, self.width_embedding_dim, name="width_embedding")
        sizes = embedding(jnp.arange(widths)).astype(words.dtype)  # [W, E]
        parts = [pools, jnp.broadcast_to(sizes, pools.shape[:3] + sizes.shape[-1:])]
        if context is not None:  # the context of a span's first word, at every width
            context = context.astype(words.dtype)[:, :, None, :]
            parts.append(jnp.broadcast_to(context, pools.shape[:3] + context.shape[-1:]))
        hidden = nn.Dense(self.pool_dim, dtype=self.dtype, name="pool_hidden")(
            jnp.concatenate(parts, axis=-1)
        )
        hidden = nn.Dropout(dropout_rate)(nn.relu(hidden), deterministic=deterministic)
        by_width = nn.Dense(self.num_classes, dtype=self.dtype, name="pool_classes")(hidden)
        return by_span(by_width, width)

    def conv_scores(self, start, end, segment, width, deterministic: bool, dropout_rate: float):
        """Span-interaction logits [B, L, L, C] (see the class docstring) from the start and
        end vectors [B, L, H]; ``segment`` int [B, L]; ``width`` [L, L] as in ``pooled_scores``."""
        widths = min(self.max_width, start.shape[1])
        dense = lambda n, name, **kw: nn.Dense(n, dtype=self.dtype, name=name, **kw)  # noqa: E731
        grid = band(dense(self.conv_dim, "conv_end", use_bias=False)(end), widths)
        grid = grid + dense(self.conv_dim, "conv_start")(start)[:, :, None, :]
        sizes = nn.Embed(self.max_width, self.conv_dim, name="conv_width")(jnp.arange(widths))
        grid = grid + sizes.astype(grid.dtype)  # [B, L, W, K]: span (i, i + w)
        ends = band(segment[..., None], widths)[..., 0]  # [B, L, W] segment of the last word
        valid = ((segment[:, :, None] > 0) & (ends == segment[:, :, None]))[..., None]
        valid = valid.astype(grid.dtype)
        grid = nn.gelu(grid) * valid
        # Offset di reads the spans that start di words away, from the same segment only.
        same = {
            di: (shift(segment, di, 1) == segment)[:, :, None, None].astype(grid.dtype)
            for di in (-1, 1)
        }
        for k in range(self.conv_layers):
            rows = {di: shift(grid, di, 1) * same[di] if di else grid for di in (-1, 0, 1)}
            patches = [shift(rows[di], dw, 2) for di in (-1, 0, 1) for dw in (-1, 0, 1)]
            conv = dense(self.conv_dim, f"conv_{k}")(jnp.concatenate(patches, axis=-1))
            update = nn.Dropout(dropout_rate)(nn.gelu(conv), deterministic=deterministic)
            grid = (grid + update) * valid
        zeros = nn.initializers.zeros
        by_width = dense(self.num_classes, "conv_classes", kernel_init=zeros)(grid)
        return by_span(by_width, width)


def shift(values, offset: int, axis: int):
    """``values`` moved along ``axis`` so that ``out[.., i, ..] = values[.., i + offset, ..]``,
    zero where ``i + offset`` falls outside."""
    if not offset:
        return values
    length = values.shape[axis]
    pad = [(0, 0)] * values.ndim
    if offset > 0:
        kept, pad[axis] = jax.lax.slice_in_dim(values, offset, length, axis=axis), (0, offset)
    else:
        kept, pad[axis] = jax.lax.slice_in_dim(values, 0, length + offset, axis=axis), (-offset, 0)
    return jnp.pad(kept, pad)


def band(values, widths: int):
    """values [B, L, ...] -> [B, L, W, ...] with ``[:, i, w] = values[:, i + w]`` (zero past L)."""
    return jnp.stack([shift(values, w, 1) for w in range(widths)], axis=2)


def by_span(by_width, width):
    """Per (start, width) values [B, L, W, C] -> per span [B, L, L, C]: span (i, j) reads width
    ``min(width[i, j], W - 1)`` of start i (``width`` [L, L]: the clipped j - i)."""
    batch, length, widths = by_width.shape[:3]
    index = jnp.broadcast_to(
        jnp.minimum(width, widths - 1)[None, :, :, None], (batch, length, length, 1)
    )
    return jnp.take_along_axis(by_width, index, axis=2)
