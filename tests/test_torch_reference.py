"""The PyTorch reference of benchmarks/ computes the same joint loss as the JAX model, so the
benchmark's JAX/PyTorch ratios compare the same computation."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="the PyTorch reference needs torch (make test installs it)"
)

from benchmarks import torch_reference  # noqa: E402
from jointre_jax import runtime  # noqa: E402
from jointre_jax import state as state_lib  # noqa: E402
from jointre_jax.data.batching import Batcher  # noqa: E402
from jointre_jax.data.corpus import load_split, make_encoder  # noqa: E402
from jointre_jax.data.packing import PackedBatcher  # noqa: E402
from jointre_jax.model.losses import LossOptions, loss_terms, total_loss  # noqa: E402
from tests.test_train import tiny_train_config  # noqa: E402


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("re_option", ["m1", "m2", "m2_bilinear"])
def test_torch_reference_gives_the_jax_loss_and_logits(tmp_path, re_option, packed):
    config = tiny_train_config(tmp_path, epochs=1)
    config.model.re_option = re_option
    encoder = make_encoder(config)
    data = load_split(config, "train", encoder, progress=False)
    bert, _ = runtime.encoder_config(config)
    runtime.resolve_sizes(config, data.examples)
    model = runtime.create_model(config, encoder.scheme, data.schema.num_relation_labels, bert)
    state = state_lib.create_state(config, model, None, 10, runtime.make_mesh(config))
    if packed:  # every example in one row: segments, restarting positions, pairs inside one
        batcher = PackedBatcher(data.examples, 128, 1, scheme=encoder.scheme)
    else:
        batcher = Batcher(data.examples, (16, 128), 4, scheme=encoder.scheme)
    batch = batcher.build(batcher.eval_plan()[0])
    assert (batch["segment_ids"].max() > 1) == packed
    outputs = model.apply({"params": state.params}, batch, label_source="gold")
    jax_loss = float(total_loss(loss_terms(outputs, batch, LossOptions(encoder.scheme))))

    reference = torch_reference.TorchJointModel(
        torch_reference.bert_config(bert),
        encoder.scheme.num_classes,
        data.schema.num_relation_labels,
        re_option,
        config.model.ner_label_embedding_dim,
        config.model.pair_hidden_dim,
    )
    torch_reference.load_flax_params(reference, state.params)
    reference.eval()
    with torch.no_grad():
        ner_logits, re_logits = reference(torch_reference.to_torch(batch))
        torch_loss = float(
            torch_reference.joint_loss(ner_logits, re_logits, torch_reference.to_torch(batch))
        )
    mask = batch["word_mask"]
    np.testing.assert_allclose(
        ner_logits.numpy()[mask], np.asarray(outputs["ner_logits"])[mask], atol=1e-4, rtol=1e-4
    )
    gold = batch["entity_type"] > 0
    pairs = gold[:, :, None] & gold[:, None, :]
    assert pairs.sum() > 4
    np.testing.assert_allclose(
        re_logits.numpy()[pairs],
        np.asarray(outputs["re_logits_gold"])[pairs],
        atol=1e-4,
        rtol=1e-4,
    )
    assert torch_loss == pytest.approx(jax_loss, rel=1e-4)
    assert jax.tree.leaves(state.params)  # a real model was compared
