"""BERT base (uncased) with the joint re_m2 model ("bilinear only"), as in the paper."""

from configs import minilm_m2


def get_config():
    """minilm_m2 with ``bert-base-uncased``."""
    config = minilm_m2.get_config()
    config.model.encoder = "bert-base-uncased"
    config.model.lowercase = True
    return config
