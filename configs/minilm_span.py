"""The span decoder with the MiniLM on Chia: nested entities, relations between entities.

    python -m jointre_jax.main --config=configs/minilm_span.py --workdir=runs/span

7 epochs; the encoder at a peak learning rate of 1e-4 and the new heads (span scorer, entity
type embedding, pair scorer) at 5e-4, 10% warmup, batch 32.
"""

from configs import minilm_m2


def get_config():
    """``minilm_m2`` with the span decoder and its 7-epoch recipe."""
    config = minilm_m2.get_config()
    config.model.ner_decoder = "span"
    config.num_epochs = 7
    config.optim.learning_rate = 1e-4
    config.optim.head_learning_rate = 5e-4
    config.checkpoint_every_steps = 100
    config.eval_before_training = False
    return config
