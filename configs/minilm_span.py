"""The span decoder with the MiniLM on Chia: nested entities, relations between entities.

    python -m jointre_jax.main --config=configs/minilm_span.py --workdir=runs/span

The recipe of the search in ``benchmarks/recipes/span.md`` (dev only, a 2,048-criterion subset
for 4 epochs, one factor at a time): 7 epochs, batch 8 and NER loss weight 3 (the two best
factors, combined), the encoder at a peak learning rate of 1e-4 and the new heads (span scorer,
entity type embedding, pair scorer) at 5e-4, 10% warmup. Of the model variants trained side by
side for 7 epochs in ``benchmarks/recipes/variants_h100.md`` (whole train split, chosen on dev),
the span-content term (``model.span_pooling_dim``) was the best that finished. Decoding keeps
no entity inside another of its own type (``model.span_nesting="other_type"``): on dev, over
the three seeds of the README's table, +1.0 strict end-to-end RE F1 and +0.15 NER F1 against
keeping any nesting. Discontinuous entities are learned as linked fragments
(``model.discontinuous``): over three seeds, dev strict end-to-end RE F1 +1.4, +0.9, +2.1 and
NER F1 -0.1, -0.2, +1.6 at the best epoch against the same recipe without them (README,
"Against the peer"). The span-content term also reads the criterion's [CLS] output
(``model.span_context``), the span scores train against boundary-smoothed targets
(``model.boundary_smoothing=0.1``) and the dropout on the encoder output and in the heads is
0.2 (``model.dropout_rate``): together, over three seeds,
dev NER F1 +0.3, +1.5, +0.1 and strict end-to-end RE F1 +0.1, +1.2, +0.6 at the kept epoch
against the config without them (``benchmarks/recipes/span_screens_cpu.md``); none of the
three alone had beaten it on seed 0. Each step also trains on adversarial word embeddings
(``model.adversarial_epsilon=1.0``, the fast gradient method; a step costs about twice as
much): over three seeds side by side on one H100 (7 epochs, corpus gold), dev NER F1 at the
kept epoch 67.9, 68.1, 67.7 and strict end-to-end RE F1 46.7, 47.1, 46.8, against 66.4-66.7
and 45.1-45.8 without it (three seeds on a 2-core CPU);
epsilon 2.0 was a little lower on dev on every seed, and a moving average of the parameters
(``optim.ema_decay=0.999``) gained nothing (``benchmarks/recipes/variants_reg_h100.md``).
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
