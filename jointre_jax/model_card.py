"""The model card (``README.md``) of an exported model folder, made from its run: what the
model is, how to use it, how it was trained, its test scores with the command that checks
them, the data's licence, its intended use and its limitations."""

from __future__ import annotations

# Licences of corpora this project knows by their folder's name; any other is "not stated"
# unless ``jointre export --data_license`` says.
KNOWN_LICENSES = {"chia": "CC BY 4.0 (Chia: Kury et al., Scientific Data 2020)"}


def data_license(data_name: str, given: str = "") -> str:
    """The licence line of the training data: ``given``, else a known corpus's, else unknown."""
    if given:
        return given
    for name, license_line in KNOWN_LICENSES.items():
        if name in data_name.lower():
            return license_line
    return "not stated (give jointre export --data_license=...)"


def _score_rows(metrics: dict | None) -> list[str]:
    corpus = (metrics or {}).get("corpus")
    if not corpus:
        return ["The run recorded no test scores (it had no test split)."]
    rows = [
        "| test split, corpus gold, best epoch | precision | recall | F1 |",
        "|---|---:|---:|---:|",
    ]
    for key, name in (("ner", "NER"), ("re_e2e", "RE end-to-end, strict")):
        if key in corpus:
            s = corpus[key]
            rows.append(f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} |")
    return rows


def render(header: dict, labels: dict, metrics: dict | None, license_line: str) -> str:
    """README.md of a model folder (``header``: its config.json; ``labels``: labels.json)."""
    config = header["config"]
    model, data = config["model"], config["data"]
    encoder, corpus = header["encoder"] or "?", header["data"] or "?"
    method = {"joint": "joint NER + RE", "pipeline": "NER then RE (two encoders)"}.get(
        model["method"], model["method"]
    )
    splits = f"{data['train_split']} (train), {data['eval_split']} (dev, model selection)"
    if data.get("max_train_examples"):
        splits += f"; only {data['max_train_examples']:,} training examples (a short run)"
    types = ", ".join(labels["entity_types"])
    relations = ", ".join(labels["relation_labels"][1:])
    lines = [
        "---",
        "library_name: jointre_jax",
        "language: en",
        "tags: [named-entity-recognition, relation-extraction, clinical-trials, jax, flax]",
        "---",
        "",
        f"# {encoder}, {model['ner_decoder']} decoder: {method} of eligibility criteria",
        "",
        "Entities and the relations between them in the free text of clinical-trial "
        "eligibility criteria, from one jointly trained model on a pre-trained BERT encoder "
        "(Chen, Lan, Du, Lobanov, ClinicalNLP 2020), made with "
        f"jointre_jax {header['jointre_jax_version']}.",
        "",
        "## Use",
        "",
        "```bash",
        "jointre extract --model=THIS_FOLDER_OR_HUB_ID --input=records.jsonl --output=out.duckdb",
        "python -m jointre_jax.serve --model=THIS_FOLDER_OR_HUB_ID --port=8000",
        "```",
        "",
        "```python",
        "from jointre_jax.extraction import Extractor",
        'extractor = Extractor.load("THIS_FOLDER_OR_HUB_ID")',
        'extractor.extract("Pregnant or breastfeeding women")',
        "```",
        "",
        "## Training",
        "",
        f"- Encoder: `{encoder}` ({header['parameters']:,} parameters in all, stored as "
        f"{header['dtype']}).",
        f"- Data: `{corpus}`; splits {splits}.",
        f"- {config['num_epochs']} epochs, seed {config['seed']}, peak learning rate "
        f"{config['optim']['learning_rate']}, maximum length {data['max_length']} tokens.",
        f"- Entity types: {types}.",
        f"- Relation types: {relations}.",
        "",
        "## Scores",
        "",
        *_score_rows(metrics),
        "",
        "Scores count every annotation of the kept types in the corpus (the corpus gold). "
        "To check them on the corpus's test split:",
        "",
        "```bash",
        "jointre evaluate --model=THIS_FOLDER --brat_dir=CORPUS --split_file=CORPUS/splits/"
        f"{data['test_split']}.txt --out=scores.json",
        "```",
        "",
        "## Data licence",
        "",
        f"The training data: {license_line}.",
        "",
        "## Intended use and limitations",
        "",
        "- For research and for structuring registry records (ClinicalTrials.gov eligibility "
        "criteria) into data to query; not for decisions about a patient without review.",
        "- Trained on English criteria of the registry's style; other text (notes, reports) "
        "is outside what it was scored on.",
        "- Relations join entities of one criterion line only; a line longer than the "
        "maximum length is cut into windows at word boundaries, and relations join entities "
        "of one window only.",
        "- Entities are whole words: an entity never begins or ends inside a word.",
        "",
        "## Weights",
        "",
        f"`model.safetensors`, {header['dtype']}, sha256 `{header['weights_sha256']}` "
        "(checked at every load).",
        "",
    ]
    return "\n".join(lines)
