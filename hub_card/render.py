"""Render a model card from a training run's measured results.

The numbers in the card (YAML `model-index` and the README table) come only from `results`, the
run's results JSON; a card without a real CER is refused.
"""

import importlib.metadata
import json
import math
import os
import platform

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "template.md")
PAPER_URL = "https://arxiv.org/abs/2312.03668"
REQUIRED_RESULT_KEYS = ("cer", "wer", "num_utterances", "dataset_name", "split", "bridge_type")
LANGUAGE_NAMES = {"ja": "Japanese", "en": "English"}
BRIDGE_DESCRIPTIONS = {
    "conv": "strided Conv1d + GELU layers that shorten the encoder's 50 Hz frames, then a Linear to the LLM width",
    "ctc": "a CTC head whose blank frames are dropped (and repeated labels merged), then a Linear to the LLM width",
}
# training_summary keys shown with a readable label, in this order; other keys follow under their own name.
RECIPE_LABELS = {
    "bridge_type": "Bridge",
    "audio_frontend": "Encoder front end",
    "ctc_head": "CTC head (aux loss; drafts for `ctc_draft=True`)",
    "ctc_loss_weight": "CTC loss weight",
    "ctc_trains_encoder": "CTC loss trains the encoder",
    "hours_of_audio": "Training audio (hours)",
    "train_utterances": "Training utterances",
    "epochs": "Epochs",
    "steps": "Optimizer steps",
    "batch_size": "Batch size per device",
    "learning_rate": "Peak learning rate",
    "trained": "Trained",
    "frozen": "Frozen",
    "lora": "LoRA",
    "deepspeed_config": "DeepSpeed",
    "deepspeed": "DeepSpeed",
}
DEEPSPEED_KEYS = ("deepspeed_config", "deepspeed")
# Shown elsewhere in the card (render_card's own arguments), so left out of the recipe table.
NOT_IN_RECIPE = ("base_models", "dataset_id")
# results["phases_s"] keys (train_hf.py's phases) with a readable label, in this order; other keys follow as they are.
PHASE_LABELS = {
    "data": "Data (corpus build or load, decoding)",
    "model": "Model and tokenizer build",
    "training": "Training (periodic evaluation excluded)",
    "evaluation_during_training": "Evaluation during training",
    "draft_head_refit": "CTC draft head refit",
    "test_evaluation": "Test evaluation",
}


def _check_results(results):
    """Raise a clear error unless `results` carries every required, real number."""
    missing = [key for key in REQUIRED_RESULT_KEYS if results.get(key) is None]
    if missing:
        raise ValueError(
            f"results is missing {missing} (have {sorted(results)}): a model card is only rendered from "
            f"measured numbers; run the evaluation and pass its results JSON"
        )
    for key in ("cer", "wer"):
        _number(results[key], f"results[{key!r}]", positive=False)
    count = results["num_utterances"]
    if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
        raise ValueError(f"results['num_utterances'] must be a positive int, got {count!r}")


def _number(value, name, positive):
    """`value` if it is a finite number, > 0 (positive) or >= 0; else a ValueError naming `name`."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
            or (positive and value == 0)):
        raise ValueError(f"{name} must be a finite, {'positive' if positive else 'non-negative'} number, got {value!r}")
    return value


def _speed_rows(results):
    """(label, value) rows of the training speed and of each phase's wall time; [] when results has none."""
    speed, phases = results.get("speed"), results.get("phases_s") or {}
    rows = []
    if speed and speed.get("steps_per_s") is not None:  # None: no step trained in this run (nothing to time)
        rows += [("Training steps per second", f"{_number(speed['steps_per_s'], 'speed.steps_per_s', True):.3g}"),
                 ("Audio seconds trained per second",
                  f"{_number(speed['audio_s_per_s'], 'speed.audio_s_per_s', True):.4g}"),
                 ("Measured on", _cell(speed.get("device", "not recorded")))]
    keys = [k for k in PHASE_LABELS if k in phases] + [k for k in phases if k not in PHASE_LABELS]
    # a phase may take under the 0.01 s it is rounded to: 0 is a time, not an error
    rows += [(f"{PHASE_LABELS.get(k, k)}, wall", f"{_number(phases[k], f'phases_s.{k}', False):.1f} s") for k in keys]
    if rows and results.get("wall_s") is not None:
        wall = _number(results["wall_s"], "wall_s", True)
        rows.append(("Whole run before the folder is written, wall", f"{wall:.1f} s"))
    return rows


def _cut_short_note(results):
    """The time-limit guard's message when it cut training short, else None."""
    limit = results.get("time_limit") or {}
    if not limit.get("cut_short"):
        return None
    if not isinstance(limit.get("message"), str) or not limit["message"]:
        raise ValueError(f"results['time_limit'] says cut_short but has no message: {limit!r}")
    return limit["message"]


def _cell(value):
    """A training_summary value as Markdown table text."""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "nothing"
    if isinstance(value, dict):
        return "`" + json.dumps(value, sort_keys=True) + "`"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")


def _recipe_rows(training_summary, bridge_type):
    summary = dict(training_summary)
    if summary.setdefault("bridge_type", bridge_type) != bridge_type:
        raise ValueError(
            f"training_summary says bridge_type={summary['bridge_type']!r} but results say {bridge_type!r}"
        )
    deepspeed_json = None
    for key in DEEPSPEED_KEYS:
        if key not in summary:
            continue
        if isinstance(summary[key], dict):
            deepspeed_json = json.dumps(summary[key], indent=2, sort_keys=True)
            summary[key] = "yes, config below"
        elif not summary[key]:
            summary[key] = "not used"
    keys = [k for k in RECIPE_LABELS if k in summary] + [k for k in summary if k not in RECIPE_LABELS]
    # A None value means "not known": no row.
    rows = [(RECIPE_LABELS.get(k, k), _cell(summary[k])) for k in keys if k not in NOT_IN_RECIPE and summary[k] is not None]
    return rows, deepspeed_json


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def render_card(
    results: dict,
    out_dir: str,
    *,
    model_name: str,
    base_models: list[str] | None,
    dataset_name: str,
    dataset_id: str | None,
    training_summary: dict,
    language: str = "ja",
) -> ModelCard:
    """Build the model card and write it to `out_dir/README.md`.

    Args:
        results: the run's results JSON, with at least `cer`, `wer` (fractions, e.g. 0.084),
            `num_utterances`, `dataset_name`, `split` (of the evaluation set) and `bridge_type`.
            Optional, as train_hf.py writes them: `speed` (`steps_per_s`, `audio_s_per_s`, `device`),
            `phases_s` (wall seconds per phase), `wall_s`, and `time_limit` (`cut_short`, `message`): a run the
            time limit cut short gets a warning at the top of the card.
            Optional `dataset_id`: Hub id of the evaluation set (defaults to `dataset_id` below when
            `results["dataset_name"] == dataset_name`, else to the evaluation set's name).
        out_dir: folder to write README.md into (created if needed).
        model_name: the Hub repo id ("org/name"): the card's title, its model-index name and the
            id used in the usage snippets.
        base_models: Hub ids of the pretrained encoder / LLM the model started from, or None when
            trained from random initialisation.
        dataset_name, dataset_id: the training data's readable name and Hub id (None if not on the Hub).
        training_summary: the recipe, shown as a table. Known keys (others are listed under their
            own name; keys whose value is None are left out; `base_models` and `dataset_id` are
            ignored, being arguments here): `hours_of_audio`, `train_utterances`, `epochs`, `steps`,
            `batch_size`, `learning_rate`, `trained` / `frozen` (lists of components), `lora`,
            `deepspeed_config` or `deepspeed` (path, dict, or None/empty = not used), `bridge_type`, `ctc_head`
            (whether the model has one), `ctc_loss_weight` and `ctc_trains_encoder` (the run's CTC settings).
        language: ISO 639-1 code of the transcribed language.

    Raises ValueError if a result is missing or not a real number: no card without measured numbers.
    """
    _check_results(results)
    for split, rates in _conditions(results):
        for key in ("cer", "wer"):
            _number(rates.get(key), f"results['conditions'][{split!r}][{key!r}]", positive=False)
    cer, wer = float(results["cer"]), float(results["wer"])
    bridge_type = results["bridge_type"]
    # The training set's Hub id describes the evaluation set only when they are the same dataset.
    eval_dataset_id = results.get("dataset_id") or (dataset_id if results["dataset_name"] == dataset_name else None)
    eval_dataset_type = eval_dataset_id or results["dataset_name"]  # model-index needs a type string
    eval_results = [
        EvalResult(
            task_type="automatic-speech-recognition",
            task_name="Speech Recognition",
            dataset_type=eval_dataset_type,
            dataset_name=results["dataset_name"],
            dataset_split=split,
            metric_type=metric,
            metric_name=metric.upper(),
            metric_value=value,
        )
        for split, rates in [(results["split"], {"cer": cer, "wer": wer}), *_conditions(results)]
        for metric, value in (("cer", float(rates["cer"])), ("wer", float(rates["wer"])))
    ]
    card_data = ModelCardData(
        language=language,
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="automatic-speech-recognition",
        tags=["hubert-gpt", "speech-llm", "hubert", "gpt-neox", f"{bridge_type}-bridge"],
        datasets=[dataset_id] if dataset_id else None,
        base_model=list(base_models) if base_models else None,
        model_name=model_name,
        eval_results=eval_results,
    )
    recipe, deepspeed_json = _recipe_rows(training_summary, bridge_type)
    speed_rows, cut_short_note = _speed_rows(results), _cut_short_note(results)
    card = ModelCard.from_template(
        card_data,
        template_path=TEMPLATE_PATH,
        repo_id=model_name,
        language_name=LANGUAGE_NAMES.get(language, language),
        is_japanese=language == "ja",
        paper_url=PAPER_URL,
        bridge_type=bridge_type,
        bridge_description=BRIDGE_DESCRIPTIONS.get(bridge_type, f"a {bridge_type!r} bridge"),
        base_models=list(base_models or []),
        train_dataset_name=dataset_name,
        train_dataset_id=dataset_id,
        recipe=recipe,
        speed_rows=speed_rows,
        cut_short_note=cut_short_note,
        deepspeed_json=deepspeed_json,
        eval_dataset_name=results["dataset_name"],
        eval_dataset_id=eval_dataset_id,
        eval_split=results["split"],
        num_utterances=results["num_utterances"],
        cer_percent=f"{100 * cer:.2f}",
        condition_rows=[(split, rates["num_utterances"], f"{100 * float(rates['cer']):.2f}",
                         f"{100 * float(rates['wer']):.2f}") for split, rates in _conditions(results)],
        wer_percent=f"{100 * wer:.2f}",
        python_version=platform.python_version(),
        torch_version=_version("torch"),
        transformers_version=_version("transformers"),
        huggingface_hub_version=_version("huggingface_hub"),
    )
    os.makedirs(out_dir, exist_ok=True)
    card.save(os.path.join(out_dir, "README.md"))
    return card


def _conditions(results):
    """[(split, {"cer", "wer", "num_utterances", ...})]: the further test splits a run measured (noise, rooms, ...)."""
    return list((results.get("conditions") or {}).items())
