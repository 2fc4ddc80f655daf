"""Every config under configs/ builds what a run builds first: its label scheme, its loss
options and its model (an option one decoder does not have, inherited from a config of the
other, fails here rather than at the start of a training)."""

import importlib
import pathlib

import pytest

from jointre_jax import runtime
from jointre_jax.labels import make_scheme
from jointre_jax.model.bert import BertConfig

CONFIGS = sorted(
    p.stem for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
    if p.stem != "__init__"
)  # fmt: skip


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_builds_its_scheme_loss_and_model(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    scheme = make_scheme(config)
    options = runtime.loss_options(config, scheme)
    assert options.scheme == scheme
    with config.unlocked():
        config.model.max_entities = 8  # resolved from the data in a run
    bert = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64)  # fmt: skip
    model = runtime.create_model(config, scheme, len(config.data.relation_types) + 1, bert, 3)
    assert model.method == config.model.method


def test_the_list_of_configs_is_not_empty():
    assert {"default", "minilm_span", "minilm_bio", "demo"} <= set(CONFIGS)


def test_every_model_option_has_one_owner():
    """Each field of ``config.model`` is read by exactly one owner: the network's
    ``ModelOptions``, the loss's ``LossOptions``, the label scheme (``make_scheme``) or the
    encoder's loading; a new option joins one of them and nothing else (no kwarg plumbing)."""
    import dataclasses

    from configs import default
    from jointre_jax.labels import SCHEME_FIELDS
    from jointre_jax.model.joint import ModelOptions
    from jointre_jax.model.losses import LossOptions

    network = {f.name for f in dataclasses.fields(ModelOptions)}
    loss = {f.name for f in dataclasses.fields(LossOptions)} - {"scheme"}
    scheme = {*SCHEME_FIELDS, "span_nesting", "decision_threshold"}
    encoder = {"encoder", "lowercase", "pretrained"}  # data.corpus, runtime.encoder_config
    owners = (network, loss, scheme, encoder)
    assert sum(map(len, owners)) == len(set().union(*owners)), "an option with two owners"
    assert set().union(*owners) == set(default.get_config().model.keys())
