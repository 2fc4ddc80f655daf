"""A CPU budget for the Table 4 grid: the MiniLM on 2,048 training criteria.

3 epochs at lr 2e-4 (192 optimiser steps), four length buckets (fewer compilations per row);
dev and test are evaluated whole, dev after each epoch only:

    python -m jointre_jax.tools.grid --config=configs/minilm_table4_cpu.py --workdir=runs/table4 \
        --seeds=0,1,2

(1,024 criteria for 2 epochs at 1e-4, 64 steps, proved too few here: NER F1 stayed below 30.)
"""

from configs import minilm_m2


def get_config():
    """``minilm_m2`` with the CPU budget of the Table 4 grid."""
    config = minilm_m2.get_config()
    config.num_epochs = 3
    config.optim.learning_rate = 2e-4
    config.data.max_train_examples = 2048
    config.data.bucket_boundaries = (16, 32, 64, 128)
    config.checkpoint_every_steps = 0
    config.eval_before_training = False  # saves about 40 s per run
    return config
