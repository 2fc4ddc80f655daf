"""The design's entry point: BioBERT (cased) with the joint re_m2 model ("bilinear only").

The hub id needs the network once (then the huggingface cache); point ``--config.model.encoder``
at a local directory to run offline. Chia comes from JOINTRE_DATA_DIR or ../shared.
"""

from configs import minilm_m2


def get_config():
    """minilm_m2 with BioBERT v1.2: cased, so lower-casing is switched off explicitly."""
    config = minilm_m2.get_config()
    config.model.encoder = "dmis-lab/biobert-base-cased-v1.2"
    # BioBERT is cased, but its hub files carry no tokenizer config, which would lower-case.
    config.model.lowercase = False
    return config
