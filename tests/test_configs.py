"""DeepSpeed configs in configs/: valid JSON, "auto" where Trainer fills values, and accepted by
transformers' HfTrainerDeepSpeedConfig (filled from TrainingArguments without starting DeepSpeed)."""

import json
import os

import pytest

from hubert_gpt_training.tiny import tiny_config

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# name -> (ZeRO stage, optimizer offloaded to CPU)
CONFIGS = {"zero2.json": (2, False), "zero3.json": (3, False), "zero2_offload.json": (2, True)}
AUTO_KEYS = [
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "optimizer.params.lr",
    "optimizer.params.betas",
    "optimizer.params.eps",
    "optimizer.params.weight_decay",
    "scheduler.params.warmup_min_lr",
    "scheduler.params.warmup_max_lr",
    "scheduler.params.warmup_num_steps",
    "scheduler.params.total_num_steps",
    "bf16.enabled",
    "fp16.enabled",
]


def load(name):
    with open(os.path.join(CONFIG_DIR, name), encoding="utf-8") as f:
        return json.load(f)


def get(config, dotted):
    for key in dotted.split("."):
        config = config[key]
    return config


def auto_paths(node, path=""):
    if isinstance(node, dict):
        return [p for key, value in node.items() for p in auto_paths(value, f"{path}.{key}".lstrip("."))]
    return [path] if node == "auto" else []


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_is_json_with_trainer_autos(name):
    stage, offload = CONFIGS[name]
    config = load(name)
    for key in AUTO_KEYS:
        assert get(config, key) == "auto", key
    zero = config["zero_optimization"]
    assert zero["stage"] == stage
    assert zero.get("offload_optimizer", {}).get("device") == ("cpu" if offload else None)
    assert "offload_param" not in zero
    if stage == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    # Without offload, torch's AdamW: DeepSpeed's FusedAdam would need a CUDA toolchain to JIT-compile.
    assert config["optimizer"]["params"].get("torch_adam", False) is (not offload)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_hf_trainer_deepspeed_config_accepts_and_fills(name, tmp_path):
    pytest.importorskip("deepspeed")
    from types import SimpleNamespace

    from transformers import TrainingArguments
    from transformers.integrations import HfTrainerDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    stage, offload = CONFIGS[name]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        learning_rate=3e-4,
        adam_beta2=0.98,
        weight_decay=0.01,
        max_grad_norm=0.5,
        warmup_steps=10,
        report_to=[],
    )
    try:
        ds_config = HfTrainerDeepSpeedConfig(os.path.join(CONFIG_DIR, name))
        ds_config.trainer_config_process(args)
        ds_config.trainer_config_finalize(args, SimpleNamespace(config=tiny_config()), num_training_steps=100)
        config = ds_config.config
        assert auto_paths(config) == []
        assert ds_config.is_zero3() is (stage == 3)
        assert ds_config.is_offload() is offload
        assert config["train_micro_batch_size_per_gpu"] == 2
        assert config["gradient_accumulation_steps"] == 4
        assert config["train_batch_size"] == 8  # world size 1
        assert config["gradient_clipping"] == 0.5
        assert config["optimizer"]["params"]["lr"] == 3e-4
        assert config["optimizer"]["params"]["betas"] == [0.9, 0.98]
        assert config["optimizer"]["params"]["weight_decay"] == 0.01
        assert config["scheduler"]["params"]["warmup_max_lr"] == 3e-4
        assert config["scheduler"]["params"]["warmup_num_steps"] == 10
        assert config["scheduler"]["params"]["total_num_steps"] == 100
        assert config["bf16"]["enabled"] is False and config["fp16"]["enabled"] is False
        assert config["zero_optimization"]["reduce_bucket_size"] > 0  # from the model config's hidden size

        # DeepSpeed's own schema accepts the filled config (parsing only; no engine, no process group).
        from deepspeed.runtime.config import DeepSpeedConfig

        assert DeepSpeedConfig(config).zero_optimization_stage == stage
    finally:
        unset_hf_deepspeed_config()  # the config registers itself globally (is_deepspeed_zero3_enabled)
