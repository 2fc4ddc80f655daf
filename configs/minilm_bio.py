"""The whole-word BIO decoder (the paper's) with the MiniLM on Chia, on the span recipe.

    python -m jointre_jax.main --config=configs/minilm_bio.py --workdir=runs/bio

The training recipe of ``configs/minilm_span.py`` (7 epochs, batch 8, NER loss weight 3,
encoder 1e-4, heads 5e-4), not searched separately: the comparison of the two decoders
changes the decoder alone. The span config's later additions stay out: boundary smoothing and
the [CLS] context of the span-content term belong to the span decoder, and dropout 0.2 and
adversarial word embeddings were chosen for it alone. The BIO row of docs/results.md
predates packed rows: ``--config.data.packing=False`` gives its length buckets.
"""

from configs import minilm_span


def get_config():
    """``minilm_span`` with the BIO decoder."""
    config = minilm_span.get_config()
    config.model.ner_decoder = "bio"
    config.model.discontinuous = False  # BIO cannot hold fragments: they stay dropped
    config.model.span_context = False  # span-decoder options (the BIO head never read them)
    config.model.span_pooling_dim = 0
    config.model.boundary_smoothing = 0.0
    config.model.dropout_rate = 0.1  # as when the BIO row was measured
    config.model.adversarial_epsilon = 0.0
    return config
