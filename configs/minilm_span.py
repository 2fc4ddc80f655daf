"""The shipped model: the span decoder with the MiniLM on Chia, 7 epochs.

    jointre train --config=configs/minilm_span.py --workdir=runs/span

Nested entities (``span_nesting="other_type"``), discontinuous ones as linked fragments, the
span-content term with the criterion's [CLS], boundary smoothing 0.1, dropout 0.2 and
adversarial word embeddings (epsilon 1.0) on the recipe of ``benchmarks/recipes/span.md``.
Test scores (corpus gold, 3 seeds): NER F1 67.3 ± 0.5, strict RE 44.2 ± 0.9. How each choice
was made, with its dev figures: docs/results.md, "Why configs/minilm_span.py is what it is".
"""

from configs import minilm_m2


def get_config():
    """``minilm_m2`` with the span decoder and its 7-epoch recipe."""
    config = minilm_m2.get_config()
    config.model.ner_decoder = "span"
    config.num_epochs = 7
    config.data.batch_size = 8
    config.model.ner_loss_weight = 3.0
    config.model.span_pooling_dim = 256
    config.model.span_nesting = "other_type"
    config.model.discontinuous = True
    config.model.span_context = True
    config.model.boundary_smoothing = 0.1
    config.model.dropout_rate = 0.2
    config.model.adversarial_epsilon = 1.0
    config.optim.learning_rate = 1e-4
    config.optim.head_learning_rate = 5e-4
    config.checkpoint_every_steps = 400
    config.eval_before_training = False
    return config
