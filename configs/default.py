"""Default configuration: the hyperparameters of Chen et al. (ClinicalNLP 2020) on Chia.

Every variant (``minilm_m2.py``, ``biobert_m2.py``, ...) imports this file and overrides only
what differs. The returned config is locked, so a mistyped ``--config.x=y`` fails.
"""

import os

import ml_collections
from ml_collections import config_dict

# The 15 main entity types of Chia; annotator flags (Non-query-able, Parsing_Error, ...) are
# left out and counted by the data report.
CHIA_ENTITY_TYPES = (
    "Condition",
    "Drug",
    "Procedure",
    "Measurement",
    "Observation",
    "Person",
    "Device",
    "Value",
    "Temporal",
    "Qualifier",
    "Negation",
    "Multiplier",
    "Reference_point",
    "Mood",
    "Visit",
)

# Directed binary relations read from BRAT `R` lines. The noise relations of Chia (multi,
# causal, v-AND, NOT and the rare R-line OR) are left out and counted.
CHIA_RELATION_TYPES = (
    "Has_value",
    "Has_temporal",
    "Has_qualifier",
    "Has_negation",
    "Has_multiplier",
    "Has_index",
    "Has_mood",
    "Has_context",
    "Subsumes",
    "AND",
)


def default_compilation_cache() -> str:
    """The user's compilation cache folder ("" when JOINTRE_COMPILATION_CACHE is set empty)."""
    if "JOINTRE_COMPILATION_CACHE" in os.environ:
        return os.environ["JOINTRE_COMPILATION_CACHE"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return os.path.join(cache, "jointre_jax", "xla")


def get_config() -> ml_collections.ConfigDict:
    """Returns the locked default config (paper hyperparameters, Chia schema)."""
    config = ml_collections.ConfigDict()

    # Seed of parameter initialisation, dropout and data shuffling.
    config.seed = 0
    # Training epochs over the training split (paper: 20).
    config.num_epochs = 20
    # Dev metric that picks the best epoch ("ner.f1", "re_gs.f1", "re_e2e.f1", ...); empty:
    # ner.f1 for standalone NER, re_gs.f1 for standalone RE, re_e2e.f1 otherwise.
    config.best_metric = ""
    # Save a resumable checkpoint every this many steps (0: only at the end of each epoch).
    config.checkpoint_every_steps = 200
    # Score the untrained model on dev before the first step (the baseline in metrics.jsonl).
    config.eval_before_training = True
    # Devices of the mesh (0 = every device of every process; must be 0 with several processes).
    config.num_devices = 0
    # JAX's persistent compilation cache: a second run of the same shapes compiles nothing.
    # Empty: off. Default: $JOINTRE_COMPILATION_CACHE, else $XDG_CACHE_HOME (~/.cache)/jointre_jax.
    config.compilation_cache_dir = default_compilation_cache()

    # ------------------------------------------------------------ sharding
    config.sharding = ml_collections.ConfigDict()
    # Devices per FSDP group: parameters and optimiser state of at least fsdp_min_size elements
    # are split over this many devices along their largest divisible dimension (1 = pure data
    # parallelism: state replicated). Batches are always split over every device.
    config.sharding.fsdp = 1
    # Arrays with fewer elements stay replicated under FSDP (biases, LayerNorm scales).
    config.sharding.fsdp_min_size = 4096

    # ---------------------------------------------------------------- data
    config.data = ml_collections.ConfigDict()
    # Corpus folder laid out like ../shared/data/chia: `brat/` (NAME.txt + NAME.ann) and
    # `splits/{train,dev,test}.txt` (document-id prefixes, one a line).
    config.data.dir = ""
    # Split names, each read from `splits/<name>.txt`.
    config.data.train_split = "train"
    config.data.eval_split = "dev"
    config.data.test_split = "test"
    # Use at most this many training examples (0 = all); for quick experiments.
    config.data.max_train_examples = 0
    # Evaluate on at most this many dev and test examples (0 = all); for quick experiments.
    config.data.max_eval_examples = 0
    # A teacher's span distributions of the train split (jointre teach): the soft
    # targets of model.distillation_weight ("" = none).
    config.data.teacher_file = ""
    # Maximum wordpieces per example, [CLS] and [SEP] included (paper: 128). Longer criteria
    # are split into windows that cut no entity, never truncated.
    config.data.max_length = 128
    # Wordpieces of the neighbouring criteria (lines) of the document that each example reads
    # besides its own, at most half before it and the rest after it, each line closed by
    # [SEP] (jointre_jax/data/encode.py); never scored. 0: each criterion alone (the paper).
    # An example then has up to max_length + context_length wordpieces.
    config.data.context_length = 0
    # True: annotation errors (text mismatch, bad offsets, unknown ids, malformed lines,
    # non-UTF-8 files) are skipped and counted in the report; False: they raise an error
    # naming the file and line.
    config.data.lenient = True
    # Entity types kept as NER labels (BIO tags are built from these, in this order).
    config.data.entity_types = CHIA_ENTITY_TYPES
    # Relation types kept from `R` lines.
    config.data.relation_types = CHIA_RELATION_TYPES
    # BRAT `*` (n-ary equivalence) group types turned into binary relations of the same name.
    config.data.group_relations = ("OR",)
    # How a group of n members becomes relations: "chain" = directed pairs between consecutive
    # members in text order (n - 1 relations); "all_pairs" = every ordered pair i < j in text
    # order (n (n - 1) / 2 relations).
    config.data.group_expansion = "chain"
    # Renamings applied before filtering, as "raw_name:kept_name" strings, e.g.
    # ("Multipler:Multiplier",). Applies to entity types.
    config.data.entity_aliases = ()
    # Same for relation and group types.
    config.data.relation_aliases = ()
    # BIO: the word of an entity whose features score its relations: "first" or "last".
    config.data.anchor = "first"
    # BIO: which of overlapping/nested entities the tags keep: "most_relations" (maximum total
    # weight, weight = 1 + number of relations of the entity), "longest" or "shortest" (greedy).
    config.data.overlap_policy = "most_relations"
    # Unpacked batches (packing=False): padded lengths of the length buckets (ascending, last =
    # max_length). Each bucket is one static shape, hence one compilation of the train step.
    config.data.bucket_boundaries = (8, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128)
    # Global training batch size in examples (paper: 32); split evenly across processes.
    config.data.batch_size = 32
    # Global evaluation batch size in examples.
    config.data.eval_batch_size = 32
    # Sequence packing (jointre_jax/data/packing.py): several examples share each row of
    # pack_length wordpieces, each attending only to itself, so training compiles one shape
    # and prediction one. False: one example a row, padded to its length bucket.
    config.data.packing = True
    # Wordpieces per packed row (0: max_length + context_length; never less, so that every
    # example fits a row).
    config.data.pack_length = 0
    # Rows per packed training batch (0: rows that hold about batch_size examples, from the
    # training data's mean length, rounded up to a multiple of the devices). Saved with the run.
    config.data.pack_rows = 0
    # Rows per packed prediction batch (0: likewise from eval_batch_size). Saved with the run.
    config.data.eval_pack_rows = 0

    # --------------------------------------------------------------- model
    config.model = ml_collections.ConfigDict()
    # Pre-trained BERT: a hub id (bert-base-uncased, dmis-lab/biobert-base-cased-v1.2) or a
    # local directory with config.json, weights and tokenizer files.
    config.model.encoder = "bert-base-uncased"
    # Lowercase before wordpiece tokenisation. Unset: as the tokenizer files say. Set it for
    # checkpoints whose files say nothing (BioBERT is cased but ships no tokenizer config).
    config.model.lowercase = config_dict.placeholder(bool)
    # NER decoder: "bio" (one BIO tag per word, the paper's) or "span" (a biaffine start-end
    # scorer over all word spans, nested entities kept; relations scored between entities).
    config.model.ner_decoder = "bio"
    # span: the widest entity in words (16 holds 99.96% of Chia's training entities; wider
    # ones are counted "too_wide").
    config.model.max_span_width = 16
    # span: which nested entities decoding keeps beside each other: "any", "other_type" (never
    # one inside another of its own type: of Chia's contiguous training entities, 1,166 lie
    # inside one of another type and 34 inside one of their own) or "none" (flat). Crossing
    # boundaries are never kept. Training is unchanged, but for incremental negatives.
    config.model.span_nesting = "any"
    # Decision rule of span classes (span decoder) and relation classes (both decoders): 0 =
    # the most probable class, "none" included (the paper's argmax); t > 0 = the most probable
    # entity or relation type wherever 1 - P(none) >= t (a recall knob, chosen on dev).
    config.model.decision_threshold = 0.0
    # span: size of the start and end vectors of the biaffine span scorer.
    config.model.span_hidden_dim = 256
    # Word features, which every head reads: "first" (the encoder output at each word's first
    # wordpiece) or "first_last" (that and the output at its last wordpiece, concatenated).
    config.model.word_features = "first"
    # Read a learned softmax mixture of the embeddings and every encoder layer instead of the
    # last layer alone.
    config.model.layer_mix = False
    # > 0: a bidirectional LSTM of this size per direction over the word features (0: none).
    config.model.word_lstm_dim = 0
    # > 0: each word's features also get an embedding of this size of its casing class
    # (jointre_jax.data.tokenization.CASINGS: lower, UPPER, Title, ...), which an uncased
    # encoder loses (0: none).
    config.model.casing_embedding_dim = 0
    # span: > 0 adds a span-content score (max-pooled words + width embedding, a hidden layer
    # of this size) to the biaffine one (0: biaffine alone).
    config.model.span_pooling_dim = 0
    # span, with span_pooling_dim > 0: the span-content term also reads the criterion's [CLS]
    # output (SpERT's context vector), so a span's score can depend on the whole criterion.
    config.model.span_context = False
    # span: > 0 adds a span-interaction score: this many residual 3 x 3 convolutions over the
    # table of candidate spans (start x width), so that a span's score reads its neighbours'
    # (CNN-NER, Yan et al. 2023); span_conv_dim: their channels (0 layers: no such term).
    config.model.span_conv_layers = 0
    config.model.span_conv_dim = 64
    # Training only: the probability that a word is replaced, all its wordpieces, by [MASK]
    # before the encoder reads it (whole-word masking as data augmentation; 0: never).
    config.model.word_masking = 0.0
    # Slots of the entity tables (gold and decoded entities per row, static shapes); 0: from
    # the training data, saved with the run. Unpacked: the most entities of any example; packed:
    # twice the entities of a full row at the data's mean density, at least the most of any
    # example; rounded up to a multiple of 8. Decoded or gold entities beyond it are counted
    # ("overflow" in the scores), never silently lost.
    config.model.max_entities = 0
    # False: initialise the encoder randomly from the encoder's config.json (no weights).
    config.model.pretrained = True
    # "joint" (NER + RE, one encoder), "ner" (standalone NER), "re" (standalone RE on gold
    # entities), "pipeline" (standalone NER feeding standalone RE, two encoders).
    config.model.method = "joint"
    # Pair scorer: "m1" (linear on h_i + t_j), "m2" (biaffine: bilinear + linear),
    # "m2_bilinear" (bilinear only; the paper's best end-to-end model).
    config.model.re_option = "m2_bilinear"
    # RE negatives: "gs-based" (all gold entity pairs) or "incremental" (gold relations plus
    # pairs of predicted entities); incremental needs method="joint".
    config.model.negative_sampling = "gs-based"
    # Size of the NER label embedding concatenated with the encoder output (paper: 16); for
    # the span decoder, the entity type embedding of each entity's relation features.
    config.model.ner_label_embedding_dim = 16
    # Labels the embedding reads while training: "gold" (teacher forcing, as in the joint
    # model the paper builds on) or "predicted"; inference always uses predicted labels.
    config.model.train_label_source = "gold"
    # Size of the head and tail vectors.
    config.model.pair_hidden_dim = 256
    # Dropout on the encoder output and the head/tail vectors (the encoder keeps its own).
    config.model.dropout_rate = 0.1
    # Compute dtype ("float32", or "bfloat16" on GPUs); parameters stay float32.
    config.model.compute_dtype = "float32"
    # Joint loss = ner_loss_weight * NER loss + re_loss_weight * RE loss.
    config.model.ner_loss_weight = 1.0
    config.model.re_loss_weight = 1.0
    # span: learn discontinuous entities (4% of Chia's) as linked fragments: each fragment a
    # span of class "fragment of <type>", consecutive fragments joined by an extra relation
    # label, read back by jointre_jax.labels.merge_fragments. False: they are dropped, counted
    # "discontinuous", and miss against the corpus gold.
    config.model.discontinuous = False
    # span: boundary smoothing eps of the NER loss (0: off, at most 0.25): a gold span gives eps
    # of its target to the candidate spans one boundary word away (Zhu and Li, ACL 2022).
    config.model.boundary_smoothing = 0.0
    # span, in (0, 1]: each training step keeps each negative span (a candidate whose target is
    # "no entity" alone) in the NER loss with this probability (Li et al., ICLR 2021: entities
    # the annotators left out are then rarely taught as negatives). 1: every candidate counts.
    config.model.span_negative_keep = 1.0
    # > 0: adversarial training (the fast gradient method, Miyato et al. 2017): each step also
    # takes the gradient of the loss with every encoder's word-embedding table moved by this
    # norm along its gradient (a second forward and backward pass: about twice the step's cost).
    config.model.adversarial_epsilon = 0.0
    # > 0 (with adversarial_epsilon): the adversarial pass's loss also holds this weight times
    # the mean KL divergence of its NER distributions from the clean pass's (held fixed):
    # virtual adversarial training's smoothness term, at no extra pass.
    config.model.adversarial_consistency = 0.0
    # > 0 (span decoder, with data.teacher_file): knowledge distillation, each span's NER target
    # is (1 - w) * gold + w * the teacher's distribution (jointre_jax/distillation.py).
    config.model.distillation_weight = 0.0

    # ---------------------------------------------------------- optimiser
    config.optim = ml_collections.ConfigDict()
    # Peak learning rate of AdamW (paper: 2e-5).
    config.optim.learning_rate = 2e-5
    # Peak learning rate of the new heads (everything but the pre-trained encoders); 0: the
    # same as learning_rate.
    config.optim.head_learning_rate = 0.0
    # Layer-wise learning-rate decay of the encoders (1: off): the layer e below the top takes
    # learning_rate * layer_decay ** e, the embeddings the least (Clark et al. 2020).
    config.optim.layer_decay = 1.0
    # Fraction of the steps with linear warmup; linear decay to 0 afterwards.
    config.optim.warmup_fraction = 0.1
    # AdamW decoupled weight decay.
    config.optim.weight_decay = 0.01
    # Gradient clipping by global norm.
    config.optim.grad_clip_norm = 1.0
    # > 0: keep an exponential moving average of the parameters with this decay per step
    # (0.999: about the last 1,000 steps), which evaluation, the kept checkpoint's scores and
    # inference use; 0: the parameters themselves.
    config.optim.ema_decay = 0.0

    config.lock()
    return config
