"""Add evaluation results to a model folder's card (README.md `model-index`), with huggingface_hub's card classes.

One `model-index` entry per dataset (task, dataset, config, split), holding a CER per normaliser (metric type
`cer`, the normaliser as `metric_config`, values as fractions like the training card's). Evaluating a dataset
again replaces its figures; other entries (the training run's own evaluation, other datasets) stay.
"""

import os

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hubert_gpt_training.normalizers import LABELS

TASK = "automatic-speech-recognition"


def eval_results_of(result):
    """One evaluation's results dict (hubert_gpt_training.evaluation) -> EvalResults, one per normaliser."""
    return [
        EvalResult(task_type=TASK, task_name="Speech Recognition", dataset_type=result["dataset"],
                   dataset_name=result["dataset_name"], dataset_config=result.get("config"),
                   dataset_split=result["split"], metric_type="cer", metric_name=f"CER ({LABELS[name]})",
                   metric_config=name, metric_value=value)
        for name, value in result["cer"].items() if value is not None
    ]


def _key(r):
    return r.task_type, r.dataset_type, r.dataset_config, r.dataset_split, r.metric_type, r.metric_config


def add_eval_results(model_dir, results):
    """Merge `results` (a list of evaluation results dicts) into model_dir/README.md; a card is made if none."""
    path = os.path.join(model_dir, "README.md")
    new = [r for result in results for r in eval_results_of(result)]
    replaced = {_key(r) for r in new}
    if os.path.isfile(path):
        card = ModelCard.load(path)
        kept = [r for r in (card.data.eval_results or []) if _key(r) not in replaced]
        card.data.eval_results = kept + new
        card.data.model_name = card.data.model_name or os.path.basename(os.path.abspath(model_dir))
    else:
        name = os.path.basename(os.path.abspath(model_dir))
        data = ModelCardData(library_name="transformers", pipeline_tag=TASK, tags=["hubert-gpt"], model_name=name,
                             eval_results=new)
        lines = [f"# {name}", "", "Evaluation (`hubert-gpt-evaluate`), CER %:", "",
                 "| dataset | split | utterances | normaliser | CER % |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {result['dataset_name']} | {result['split']} | {result['num_utterances']} | {LABELS[n]} | "
                  f"{100 * value:.2f} |" for result in results for n, value in result["cer"].items() if value is not None]
        card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    card.save(path)
    return card
