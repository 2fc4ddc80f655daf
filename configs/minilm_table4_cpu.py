"""The Table 4 grid on a 2-core CPU: MiniLM, a budget that fits the machine.

1,024 training criteria, 2 epochs at lr 1e-4, four length buckets (fewer compilations per
row); dev and test are evaluated whole. Used by benchmarks/table4/ (see its README):

    python -m jointre_jax.grid --config=configs/minilm_table4_cpu.py --workdir=runs/table4 \
        --seeds=0,1
"""

from configs import minilm_m2


def get_config():
    """``minilm_m2`` with the CPU budget of the committed Table 4."""
    config = minilm_m2.get_config()
    config.num_epochs = 2
    config.optim.learning_rate = 1e-4
    config.data.max_train_examples = 1024
    config.data.bucket_boundaries = (16, 32, 64, 128)
    config.checkpoint_every_steps = 0
    return config
