"""The pipeline and the training code use documented transformers / datasets extension points. Where none exists,
one helper holds the private use; its test here fails if transformers changes what the helper relies on."""

import ast
import contextlib
from pathlib import Path

import pytest
from transformers import AutoModel, HubertConfig, Pipeline, TrainingArguments

import modeling_hubert_gpt.pipeline_hubert_gpt as pipeline_module
from modeling_hubert_gpt import HubertGptASRPipeline


# --- the pipeline: no private use ----------------------------------------------------------------------------------
def test_pipeline_imports_only_the_top_level_transformers_api():
    tree = ast.parse(Path(pipeline_module.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert {name for name in imported if name.split(".")[0] == "transformers"} == {"transformers"}


def test_pipeline_overrides_only_the_documented_hooks_and_public_methods():
    # Any other name shared with transformers.Pipeline would replace a base-class internal.
    overridden = {name for name in vars(HubertGptASRPipeline) if hasattr(Pipeline, name)}
    overridden -= {name for name in overridden if name.startswith("__") or name == "_abc_impl"}  # Python's own
    assert overridden == {"_sanitize_parameters", "preprocess", "_forward", "postprocess", "save_pretrained"}


# --- train_hf.whole_model_init: the one private use in the training code --------------------------------------------
def test_whole_model_init_builds_without_zero_init_under_zero3(tmp_path, monkeypatch):
    deepspeed = pytest.importorskip("deepspeed")
    from transformers.integrations import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    import train_hf

    class Partitioned(Exception):
        pass

    @contextlib.contextmanager
    def zero_init(*args, **kwargs):  # what transformers enters to build a model partitioned
        raise Partitioned
        yield

    monkeypatch.setattr(deepspeed.zero, "Init", zero_init)
    config = HubertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                          conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=4)
    targs = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[],
                              deepspeed={"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"})
    try:
        assert is_deepspeed_zero3_enabled()  # TrainingArguments registered its ZeRO-3 config for every model build
        with pytest.raises(Partitioned):  # so a model built now would be partitioned by zero.Init
            AutoModel.from_config(config)
        with train_hf.whole_model_init(targs):
            assert not is_deepspeed_zero3_enabled()
            AutoModel.from_config(config)  # built whole
        assert is_deepspeed_zero3_enabled()  # and the Trainer finds the config again
        assert targs.hf_deepspeed_config.is_zero3()
    finally:
        unset_hf_deepspeed_config()
