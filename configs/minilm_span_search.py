"""The base of the span decoder's recipe search (``benchmarks/recipes/span.md``).

    python -m benchmarks.recipe_search --config=configs/minilm_span_search.py \
        --workdir=runs/recipe_span --out=benchmarks/recipes/span

Batch 32, the encoder at a peak learning rate of 1e-4 and the new heads at 5e-4, NER loss
weight 1, 10% warmup; each recipe of the search changes one of these.
"""

from configs import minilm_m2


def get_config():
    """``minilm_m2`` with the span decoder and the search's base recipe."""
    config = minilm_m2.get_config()
    config.model.ner_decoder = "span"
    config.num_epochs = 7
    config.optim.learning_rate = 1e-4
    config.optim.head_learning_rate = 5e-4
    config.checkpoint_every_steps = 0
    config.eval_before_training = False
    return config
