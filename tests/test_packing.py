"""Sequence packing: rows, plans, and a packed example getting the logits, losses and
predictions it gets alone; one compiled shape for training and one for prediction."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jointre_jax import parallel, runtime, steps, validation
from jointre_jax import state as state_lib
from jointre_jax.data.batching import Batcher
from jointre_jax.data.corpus import load_split, make_encoder
from jointre_jax.data.packing import PackedBatcher, make_batcher, pack, rows_for
from jointre_jax.labels import BioScheme
from jointre_jax.model.losses import LossOptions, loss_terms
from jointre_jax.predictor import Predictor
from tests.conftest import CHIA_DIR, MINILM_DIR, needs_chia
from tests.test_train import tiny_model, tiny_train_config


def test_pack_places_every_example_once_within_both_capacities():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, 500)
    entities = rng.integers(0, 9, 500)
    rows = pack(lengths, entities, 64, 12, seed=3)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(lengths[row].sum() <= 64 and entities[row].sum() <= 12 for row in rows)
    assert rows == pack(lengths, entities, 64, 12, seed=3)  # deterministic from the seed
    assert rows != pack(lengths, entities, 64, 12, seed=4)  # ties ordered by the seed
    # Close to the fewest rows the two capacities allow.
    fewest = max(np.ceil(lengths.sum() / 64), np.ceil(entities.sum() / 12))
    assert len(rows) <= 1.06 * fewest, (len(rows), fewest)


def test_pack_gives_an_example_beyond_the_entity_slots_a_row_of_its_own():
    rows = pack([10, 10, 10], [2, 20, 2], 64, 8)
    assert [1] in rows and sorted(i for row in rows for i in row) == [0, 1, 2]
    with pytest.raises(ValueError, match="exceeds rows of 64"):
        pack([65], [0], 64, 8)


def test_rows_for_holds_about_a_batch_and_splits_over_the_devices():
    assert rows_for(32, 20.4, 128) == 5
    assert rows_for(8, 20.4, 128) == 1
    assert rows_for(8, 20.4, 128, multiple=4) == 4
    assert rows_for(1, 3.0, 128) == 1


def _tiny(tmp_path, decoder="bio", packing=True, num_devices=None, context_length=0, **model):
    config = tiny_train_config(tmp_path, epochs=1, decoder=decoder, packing=packing)
    if num_devices is not None:
        config.num_devices = num_devices
    if context_length:
        config.data.context_length = context_length
        config.data.pack_length = 0  # max_length + context_length
    for key, value in model.items():
        config.model[key] = value
    encoder, data, model = tiny_model(config)
    return config, encoder, data, model


def test_packed_plans_are_seeded_resumable_and_cover_each_example_once(tmp_path):
    _, encoder, data, _ = _tiny(tmp_path)
    examples = list(data.examples) * 7  # several rows
    batcher = PackedBatcher(examples, 32, 2, seed=5, scheme=encoder.scheme)
    plans = [batcher.epoch_plan(e) for e in range(3)]
    assert {len(p) for p in plans} == {batcher.steps_per_epoch()}
    for plan in plans:
        seen = sorted(i for p in plan for row in p.segments() for i in row)
        assert seen == list(range(len(examples)))
        assert {p.indices.shape[0] for p in plan} == {2} and {p.length for p in plan} == {32}
    assert [p.indices.tolist() for p in plans[0]] != [p.indices.tolist() for p in plans[1]]
    again = PackedBatcher(examples, 32, 2, seed=5, scheme=encoder.scheme)
    assert [p.indices.tolist() for p in again.epoch_plan(1)] == [
        p.indices.tolist() for p in plans[1]
    ]
    # A resumed epoch replays the remaining batches; each process builds its own rows.
    full = list(batcher.iterate(plans[2]))
    resumed = list(batcher.iterate(plans[2], start_step=2))
    for a, b in zip(full[2:], resumed, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    halves = [batcher.build(plans[2][0], batcher.local_rows(p, 2)) for p in range(2)]
    assert np.array_equal(np.concatenate([h["input_ids"] for h in halves]), full[0]["input_ids"])
    real = sum(ex.length for ex in examples)
    assert len(batcher.rows) <= -(-real // 32) + 1  # at most one row beyond the fewest


def _rows_of_both(config, encoder, data, length=64):
    """A packed batch of every training example and the unpacked batch of each alone."""
    slots = int(config.model.max_entities)
    packed = PackedBatcher(data.examples, length, 1, scheme=encoder.scheme, max_entities=slots)
    assert len(packed.rows) == 1  # the tiny split fits one row
    single = Batcher(data.examples, (length,), 1, scheme=encoder.scheme, max_entities=slots)
    plan = packed.eval_plan()[0]
    alone = {}
    for place in packed.example_offsets(plan):
        one = single.build(single._batch(np.array([place.index]), length))
        alone[place.index] = (one, place.words, place.entities)
    return packed.build(plan), alone


@pytest.mark.parametrize(
    "decoder, options",
    [
        ("bio", {}),
        ("span", {"span_pooling_dim": 8}),
        ("span", {"span_pooling_dim": 8, "span_context": True}),
        ("span", {"casing_embedding_dim": 4}),
        ("span", {"word_features": "first_last", "layer_mix": True}),
        ("span", {"boundary_smoothing": 0.2}),
        # The word LSTM restarts at each criterion of the row, in both directions.
        ("bio", {"word_lstm_dim": 8}),
        ("span", {"word_lstm_dim": 8, "span_pooling_dim": 8}),
        # Neighbouring criteria as context: longer segments, words that do not start at 1.
        ("bio", {"context_length": 8}),
        ("span", {"span_pooling_dim": 8, "span_context": True, "context_length": 8}),
        # The span convolution reads no span that crosses into the next criterion.
        ("span", {"span_conv_layers": 2, "span_conv_dim": 4}),
    ],
)
@pytest.mark.parametrize("negatives", ["gs-based", "incremental"])
def test_a_packed_example_gets_its_logits_and_losses_alone(tmp_path, decoder, options, negatives):
    # Slots for every span an untrained decoder finds: the row's table must cut none of them.
    config, encoder, data, model = _tiny(tmp_path, decoder, max_entities=400, **options)
    params = state_lib.init_params(model, jax.random.key(0))
    if "span_conv_layers" in options:  # its output layer starts at zero: make the term speak
        kernel = params["ner"]["conv_classes"]["kernel"]
        params["ner"]["conv_classes"]["kernel"] = jax.random.normal(jax.random.key(5), kernel.shape)
    context = "context_length" in options
    batch, alone = _rows_of_both(config, encoder, data, length=128 if context else 64)
    assert batch["segment_ids"].max() == len(data.examples) >= 3
    if context:  # some example reads context on each side of its criterion
        assert any(ex.word_starts[0] > 1 for ex in data.examples)
        assert any(ex.right_context for ex in data.examples)
    smoothing = float(config.model.boundary_smoothing)
    options = LossOptions(encoder.scheme, negatives, "gold", boundary_smoothing=smoothing)
    tables = (options.re_table, "predicted")

    @jax.jit  # one compilation per batch shape: the row and each example alone share theirs
    def run(b):
        out = model.apply({"params": params}, b, label_source="gold", tables=tables)
        return out, loss_terms(out, b, options)

    packed_out, packed_terms = run(batch)
    assert int(packed_out["predicted"]["overflow"][0]) == 0
    sums = {k: 0.0 for k in packed_terms}
    for index, (single, words, entities) in alone.items():
        out, terms = run(single)
        for key in sums:
            sums[key] += float(terms[key])
        w = data.examples[index].num_words
        n = len(data.examples[index].entities)
        logits = np.asarray(packed_out["ner_logits"][0])
        if decoder == "span":  # spans inside the example: the same scores
            got = logits[words : words + w, words : words + w]
            want = np.asarray(out["ner_logits"][0])[:w, :w]
            inside = np.triu(np.ones((w, w), bool))
            np.testing.assert_allclose(got[inside], want[inside], atol=1e-5, rtol=1e-5)
        else:
            got, want = logits[words : words + w], np.asarray(out["ner_logits"][0])[:w]
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
        re = np.asarray(packed_out["re_logits_gold"][0]) if "re_logits_gold" in out else None
        if re is not None and n:
            got = re[entities : entities + n, entities : entities + n]
            want = np.asarray(out["re_logits_gold"][0])[:n, :n]
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    for key, value in sums.items():  # sums and denominators: the row's are the examples'
        assert float(packed_terms[key]) == pytest.approx(value, rel=1e-5, abs=1e-5), key


def flax_lstm_params(params: dict, size: int) -> dict:
    """WordLSTM's fused gates as the parameters of flax's nn.Bidirectional of two
    nn.RNN(nn.OptimizedLSTMCell) (gates i, f, g, o)."""
    tree = {}
    for direction in ("forward", "backward"):
        cell = {}
        for n, gate in enumerate("ifgo"):
            block = slice(n * size, (n + 1) * size)
            cell["i" + gate] = {"kernel": params[f"{direction}_input"][:, block]}
            cell["h" + gate] = {
                "kernel": params[f"{direction}_hidden"][:, block],
                "bias": params[f"{direction}_bias"][block],
            }
        tree[f"{direction}_rnn"] = {"cell": cell}
    return {"params": tree}


def test_the_word_lstm_is_flax_bidirectional_lstm_restarted_at_each_segment():
    from flax import linen as nn

    from jointre_jax.model.joint import WordLSTM

    words = jax.random.normal(jax.random.key(1), (2, 9, 5))
    segment = jnp.array([[1, 1, 1, 2, 2, 3, 3, 3, 0], [1, 1, 1, 1, 1, 1, 0, 0, 0]])
    lstm = WordLSTM(4)
    initial = lstm.init(jax.random.key(0), words, segment)["params"]
    params = jax.tree.map(
        lambda p: p + 0.3 * jax.random.normal(jax.random.key(2), p.shape), initial
    )
    got = lstm.apply({"params": params}, words, segment)
    assert got.shape == (2, 9, 8)
    cell = lambda: nn.RNN(nn.OptimizedLSTMCell(4))  # noqa: E731
    flax_lstm, reference = nn.Bidirectional(cell(), cell()), flax_lstm_params(params, 4)
    for row, bounds in enumerate([[(0, 3), (3, 5), (5, 8)], [(0, 6)]]):
        for start, end in bounds:  # each segment alone, as flax reads a row of its length
            want = flax_lstm.apply(reference, words[row : row + 1, start:end])
            np.testing.assert_allclose(got[row, start:end], want[0], atol=1e-5)
    # One row, one sequence of its length: what flax reads with seq_lengths.
    whole = flax_lstm.apply(reference, words, seq_lengths=jnp.array([8, 6]))
    np.testing.assert_allclose(got[1, :6], whole[1, :6], atol=1e-5)
    assert not np.allclose(got[0, :8], whole[0, :8], atol=1e-3)  # three criteria, not one
    # Each recurrent gate kernel starts orthogonal, as flax's cell initialises it.
    for n in range(4):
        block = initial["forward_hidden"][:, n * 4 : (n + 1) * 4]
        np.testing.assert_allclose(block.T @ block, np.eye(4), atol=1e-5)


def test_bio_tags_never_continue_into_the_next_segment():
    tags = jnp.array([[1, 2, 2, 2, 0]])  # B-0 I-0 | I-0 I-0 (segment 2) O
    mask = jnp.array([[True, True, True, True, False]])
    segments = jnp.array([[1, 1, 2, 2, 0]])
    plain = BioScheme.decode_tags(tags, mask)
    packed = BioScheme.decode_tags(tags, mask, segments)
    assert plain["end"][0].tolist()[0] == 4
    assert packed["first"][0].tolist() == [True, False, True, False, False]
    assert packed["end"][0].tolist()[:3] == [2, -1, 4]


@pytest.mark.parametrize("decoder", ["bio", "span"])
def test_packed_and_bucketed_prediction_agree(tmp_path, decoder):
    # Slots for every span an untrained decoder finds (a row's table holds several examples').
    config, encoder, data, model = _tiny(tmp_path, decoder, max_entities=400)
    mesh = runtime.make_mesh(config)
    params = state_lib.create_params(config, model, None, mesh)
    packed = dict(Predictor(config, model, params).predict(data.examples))
    config.data.packing = False
    bucketed = dict(Predictor(config, model, params).predict(data.examples))
    assert sorted(packed) == sorted(bucketed) == list(range(len(data.examples)))
    for index in packed:
        a, b = packed[index], bucketed[index]
        assert [(e.start, e.end, e.label) for e in a.entities] == [
            (e.start, e.end, e.label) for e in b.entities
        ]
        assert [r[:3] for r in a.relations] == [r[:3] for r in b.relations]
        assert a.gold_relations == b.gold_relations
        assert a.overflow == b.overflow == 0
        np.testing.assert_allclose(
            [e.score for e in a.entities], [e.score for e in b.entities], atol=1e-5
        )


def test_a_packed_epoch_compiles_one_training_and_one_prediction_shape(tmp_path):
    config, encoder, data, model = _tiny(tmp_path, num_devices=0)  # rows over 4 devices
    examples = list(data.examples) * 40
    batcher = make_batcher(config, examples, encoder.scheme, training=True)
    eval_batcher = make_batcher(config, examples, encoder.scheme, training=False)
    assert isinstance(batcher, PackedBatcher) and len(batcher.rows) > 4
    assert batcher.batch_size % 4 == 0  # rows a batch: a multiple of the devices
    mesh = runtime.make_mesh(config)
    state = state_lib.create_state(config, model, None, 10, mesh)
    train_fn = steps.jit_train_step(mesh, state, runtime.loss_options(config, encoder.scheme))
    predict_fn = steps.jit_predict_step(mesh, state.params, model)
    rng = jax.random.key(0)
    for epoch in range(2):
        for batch in batcher.iterate(batcher.epoch_plan(epoch)):
            state, _ = train_fn(state, batch, rng)
    for planned in eval_batcher.eval_plan():
        predict_fn(state.params, eval_batcher.build(planned))
    assert train_fn._cache_size() == 1
    assert predict_fn._cache_size() == 1


@needs_chia
def test_chia_rows_are_at_least_97_percent_real_wordpieces():
    from configs import minilm_span

    config = minilm_span.get_config()
    config.data.dir, config.model.encoder = str(CHIA_DIR), str(MINILM_DIR)
    encoder = make_encoder(config)
    data = load_split(config, "train", encoder, progress=False)
    runtime.resolve_sizes(config, data.examples)
    batcher = make_batcher(config, data.examples, encoder.scheme, training=True)
    real = sum(ex.length for ex in data.examples)
    slots = sum(p.indices.shape[0] * p.length for p in batcher.epoch_plan(0))
    assert real / slots >= 0.97, real / slots


def test_compiling_ahead_leaves_every_shape_ready_and_reports_failures(tmp_path):
    config, encoder, data, model = _tiny(tmp_path, packing=False)  # several bucket shapes
    mesh = runtime.make_mesh(config)
    params = state_lib.create_params(config, model, None, mesh)
    predict_fn = steps.jit_predict_step(mesh, params, model)
    batcher = make_batcher(config, data.examples, encoder.scheme, training=False)
    sharding = parallel.batch_sharding(mesh)
    batches = runtime.shape_batches(batcher, batcher.eval_plan(), sharding)
    assert len(batches) >= 2
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params
    )
    ahead = runtime.CompileAhead(
        [(f"shape {i}", predict_fn, (abstract, b)) for i, b in enumerate(batches)]
    )
    ahead.wait()
    lowered = []  # every lowering of a jitted function to MLIR from here on

    def listen(event, _seconds, **_):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for batch in batches:
            predict_fn(params, batch)
        fresh = jax.jit(lambda x: x + 1)  # the listener hears a lowering
        fresh(1)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert predict_fn._cache_size() == len(batches)
    assert len(lowered) == 1  # fresh's alone: the calls found every shape compiled ahead
    broken = runtime.CompileAhead(
        [("broken", predict_fn, (abstract, {"input_ids": batches[0]["input_ids"]}))]
    )
    with pytest.raises(KeyError):
        broken.wait()


def test_runs_saved_before_packing_keep_their_length_buckets(tmp_path):
    from jointre_jax import inference

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"data": {"batch_size": 8}}))  # written before data.packing
    assert inference.saved_config(path).data.packing is False
    path.write_text(json.dumps({"data": {"packing": True, "pack_rows": 3, "eval_pack_rows": 5}}))
    config = inference.saved_config(path)
    assert config.data.packing and (config.data.pack_rows, config.data.eval_pack_rows) == (3, 5)


def test_rows_shorter_than_the_longest_example_are_a_user_error(tmp_path):
    from jointre_jax.errors import UserError

    config = tiny_train_config(tmp_path, epochs=1)
    config.data.pack_length, config.data.max_length = 64, 128
    with pytest.raises(UserError, match="data.pack_length=64 is shorter than data.max_length"):
        runtime.resolve_sizes(config, [])
    # Context makes examples longer than max_length: rows and buckets must hold them, and
    # the encoder's positions too.
    config.data.pack_length, config.data.context_length = 128, 64
    with pytest.raises(UserError, match="data.max_length \\+ data.context_length = 192"):
        runtime.resolve_sizes(config, [])
    config.data.packing = False
    with pytest.raises(UserError, match="bucket_boundaries end at 128, below"):
        make_batcher(config, [], BioScheme(1), training=True)
    config.data.context_length = 400
    bert, _ = runtime.encoder_config(config)
    with pytest.raises(UserError, match="= 528 wordpieces: more than the 128 positions"):
        validation.check_encoder(config, bert)
