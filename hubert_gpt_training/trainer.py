"""Seq2SeqTrainer that also logs the parts of hubert-gpt's training loss (LLM and auxiliary CTC)."""

from transformers import Seq2SeqTrainer

LOSS_PARTS = ("llm_loss", "ctc_loss")


class HubertGptTrainer(Seq2SeqTrainer):
    """Logs `llm_loss` and `ctc_loss` beside `loss`: their means over the training steps since the last log row.

    Values are this process's (not averaged across ranks); they are summed as tensors and read once per log row,
    so no step waits for the device.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loss_parts = {}  # name -> (summed tensor, count)

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        if model.training:
            for name in LOSS_PARTS:
                value = outputs.get(name) if hasattr(outputs, "get") else None
                if value is not None:
                    total, count = self._loss_parts.get(name, (0.0, 0))
                    self._loss_parts[name] = (total + value.detach().float(), count + 1)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if "loss" in logs:
            for name, (total, count) in self._loss_parts.items():
                logs[name] = round(float(total) / count, 4)
            self._loss_parts = {}
        super().log(logs, *args, **kwargs)
