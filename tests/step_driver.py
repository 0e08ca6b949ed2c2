"""One plain-SGD step (learning rate 1, no clipping) of HubertGptTrainer on a seeded tiny model with a CTC head:
returns each parameter's update (before - after) and the logged loss. Imported by tests/test_train.py, or run under
torch.distributed.run with `processor_dir out.pt batch_size accumulation ctc_loss_weight text...` (rank 0 saves)."""

import copy
import os
import sys

import datasets
import torch
from helpers import make_audio
from transformers import Seq2SeqTrainingArguments

from hubert_gpt_training.data import SpeechCollator
from hubert_gpt_training.tiny import tiny_config
from hubert_gpt_training.trainer import HubertGptTrainer
from modeling_hubert_gpt import HubertGptForConditionalGeneration, HubertGptProcessor


def tiny_model_and_rows(processor, texts):
    """The same model (no dropout) and utterances in every process."""
    torch.manual_seed(0)
    model = HubertGptForConditionalGeneration(tiny_config(tokenizer=processor.tokenizer, ctc_head_config={}, dropout=0.0))
    rows = [{"audio": make_audio(0.4 + 0.2 * i, seed=i), "text": t} for i, t in enumerate(texts)]
    return model, rows


def one_step(model, processor, rows, batch_size, accumulation, ctc_loss_weight, output_dir):
    model = copy.deepcopy(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = Seq2SeqTrainingArguments(output_dir=str(output_dir), use_cpu=True, report_to="none", max_steps=1,
                                    per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                                    optim="sgd", learning_rate=1.0, lr_scheduler_type="constant", max_grad_norm=0.0,
                                    logging_steps=1, remove_unused_columns=False)
    trainer = HubertGptTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                               data_collator=SpeechCollator(processor), ctc_loss_weight=ctc_loss_weight)
    trainer.train()
    update = {name: before[name] - p.detach() for name, p in model.named_parameters()}
    logged = next(row for row in trainer.state.log_history if "loss" in row)
    return update, logged


if __name__ == "__main__":
    processor_dir, out, batch_size, accumulation, weight, *texts = sys.argv[1:]
    processor = HubertGptProcessor.from_pretrained(processor_dir)
    model, rows = tiny_model_and_rows(processor, texts)
    update, logged = one_step(model, processor, rows, int(batch_size), int(accumulation), float(weight),
                              os.path.dirname(out))
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save({"update": update, "logged": logged}, out)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
