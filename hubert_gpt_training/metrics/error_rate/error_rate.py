"""Corpus-level character and word error rates (CER, WER) as a local `evaluate` metric.

Loads offline: `evaluate.load("hubert_gpt_training/metrics/error_rate")` (the Hub's "cer"/"wer"
scripts are fetched from the Hub and fail without a network).

Both rates are corpus-level: the edit distances of all utterances summed, divided by the summed
reference lengths (not a mean of per-utterance rates). Characters include spaces, as in jiwer's
default CER; words are whitespace-separated tokens. The texts are compared as given: normalise
them first (see `hubert_gpt_training.metrics.normalize_text`).

An empty reference is allowed: it adds no reference units, and every unit of its hypothesis
counts as an insertion. If all references are empty the rates are undefined and `compute`
raises ValueError.
"""

import datasets
import evaluate
import jiwer

_CITATION = """\
@inproceedings{morris2004,
  title={From WER and RIL to MER and WIL: improved evaluation measures for connected speech recognition},
  author={Morris, Andrew Cameron and Maier, Viktoria and Green, Phil},
  booktitle={Interspeech},
  year={2004}
}
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of str): hypotheses, one per utterance.
    references (list of str): reference transcripts, one per utterance.
Returns:
    cer (float): character edits / reference characters, over the whole corpus.
    wer (float): word edits / reference words, over the whole corpus.
    num_utterances (int): number of (reference, prediction) pairs.
    num_empty_references (int): pairs whose reference is the empty string.
Example:
    >>> metric = evaluate.load("hubert_gpt_training/metrics/error_rate")
    >>> metric.compute(predictions=["abd"], references=["abc"])["cer"]
    0.3333333333333333
"""


def _rate(output, unit):
    """(substitutions + deletions + insertions) / reference units, from a jiwer output."""
    edits = output.substitutions + output.deletions + output.insertions
    reference_units = output.hits + output.substitutions + output.deletions
    if reference_units == 0:
        raise ValueError(f"all references are empty: the {unit} error rate is undefined")
    return edits / reference_units


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS_DESCRIPTION)
class ErrorRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://github.com/jitsi/jiwer"],
        )

    def _compute(self, predictions, references):
        if len(references) == 0:
            raise ValueError("no utterances to score")
        return {
            "cer": _rate(jiwer.process_characters(references, predictions), "character"),
            "wer": _rate(jiwer.process_words(references, predictions), "word"),
            "num_utterances": len(references),
            "num_empty_references": sum(1 for r in references if r == ""),
        }
