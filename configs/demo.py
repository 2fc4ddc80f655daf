"""`make demo`: a short training run that finishes in under 10 minutes on 2 CPU cores.

With Chia and the MiniLM (../shared, or JOINTRE_DATA_DIR / JOINTRE_ENCODER): the joint model
with the span decoder (``configs/minilm_span.py``) on the first 2,048 training criteria for 2
epochs. Without them: ``data.dir`` and
``model.encoder`` stay empty and ``jointre demo`` writes the project's own annotated sample
and a small randomly initialised encoder into the workdir.
"""

import pathlib

from configs import minilm_span


def get_config():
    """minilm_span, shortened; falls back to the shipped sample when Chia/MiniLM are absent."""
    config = minilm_span.get_config()
    config.num_epochs = 2
    config.checkpoint_every_steps = 0
    config.data.batch_size = 16
    config.optim.learning_rate = 2e-4
    config.data.max_train_examples = 2048
    if (
        not (pathlib.Path(config.data.dir) / "brat").is_dir()
        or not (pathlib.Path(config.model.encoder) / "config.json").is_file()
    ):
        config.data.dir = ""
        config.model.encoder = ""
        config.model.pretrained = False
        config.num_epochs = 40
        config.optim.learning_rate = 3e-3
        config.optim.head_learning_rate = 0.0  # the same for the random encoder and heads
        config.data.batch_size = 8
        config.data.eval_batch_size = 8
        config.data.max_train_examples = 0
    return config
