"""Seq2SeqTrainer that passes hubert-gpt's training settings to the model and logs the parts of its loss."""

import torch
from transformers import Seq2SeqTrainer

LOSS_PARTS = ("llm_loss", "ctc_loss")


class HubertGptTrainer(Seq2SeqTrainer):
    """Logs `llm_loss` and `ctc_loss` beside `loss`: the means of each batch's values (the model's per-batch means)
    over the batches trained since the last log row.

    `ctc_loss_weight` (None: the model's default, 0.3) and `ctc_trains_encoder` (False: the auxiliary CTC loss trains
    the CTC head alone) go to every forward that computes a loss, in training and evaluation (as keywords, which
    DeepSpeed's engine and PEFT models pass on).

    Values are this process's (not averaged across ranks); they are summed as tensors and read once per log row,
    so no step waits for the device.
    """

    def __init__(self, *args, ctc_loss_weight=None, ctc_trains_encoder=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.ctc_loss_weight, self.ctc_trains_encoder = ctc_loss_weight, ctc_trains_encoder
        self._loss_parts = {}  # name -> (summed tensor, count)

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        inputs = {**inputs, "ctc_loss_weight": self.ctc_loss_weight, "ctc_trains_encoder": self.ctc_trains_encoder}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        if model.training:
            for name in LOSS_PARTS:
                value = outputs.get(name) if hasattr(outputs, "get") else None
                if value is not None:
                    total, count = self._loss_parts.get(name, (0.0, 0))
                    self._loss_parts[name] = (total + value.detach().float(), count + 1)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        """Seq2SeqTrainer's generating evaluation takes its loss from a bare `model(**inputs)`; here it comes from
        `compute_loss`, with this trainer's CTC settings (`generate` gets the audio only)."""
        if not self.args.predict_with_generate or prediction_loss_only or "labels" not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)
        audio_only = {k: v for k, v in inputs.items() if k not in ("labels", "ctc_targets")}
        _, tokens, _ = super().prediction_step(model, audio_only, False, ignore_keys=ignore_keys, **gen_kwargs)
        # On the device as Trainer's own step puts them (its dataloader already has); the encoder casts the audio to
        # its dtype itself. No num_items_in_batch: this batch's mean, as the generating step always gave.
        inputs = {k: v.to(self.args.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs).detach().mean()
        if self.args.prediction_loss_only:
            return loss, None, None
        labels, config = inputs["labels"], self.model.generation_config  # padded as Seq2SeqTrainer pads them
        if labels.shape[-1] < config.max_length:
            labels = self.pad_labels(labels, config.max_length)
        elif config.max_new_tokens is not None and labels.shape[-1] < config.max_new_tokens + 1:
            labels = self.pad_labels(labels, config.max_new_tokens + 1)
        return loss, tokens, labels

    def pad_labels(self, labels, length):
        """labels (B, N) -> (B, length), padded with the pad id Seq2SeqTrainer pads generated tokens with (the
        processor's, else the model's generation pad id)."""
        pad_id = getattr(self.processing_class, "pad_token_id", None)
        pad_id = self.model.generation_config.pad_token_id if pad_id is None else pad_id
        return torch.nn.functional.pad(labels, (0, length - labels.shape[-1]), value=pad_id)

    def log(self, logs, *args, **kwargs):
        if "loss" in logs:
            for name, (total, count) in self._loss_parts.items():
                logs[name] = round(float(total) / count, 4)
            self._loss_parts = {}
        super().log(logs, *args, **kwargs)
