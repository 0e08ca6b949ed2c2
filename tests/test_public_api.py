"""The library code (the model package, the training code, the vLLM plugin, train_hf.py, convert_nue_asr.py) uses
transformers' documented API. Every use outside the top-level `transformers` namespace and every private name is
listed here with why (`test_the_lists_are_complete` scans the code and finds exactly these); where nothing public does
the job, one helper holds the private use, and its test here fails if transformers changes what the helper relies on."""

import ast
import contextlib
from pathlib import Path

import pytest
import torch
from transformers import (AutoModel, DynamicLayer, HubertConfig, Pipeline, Seq2SeqTrainer, Seq2SeqTrainingArguments,
                          TrainingArguments)

import modeling_hubert_gpt.pipeline_hubert_gpt as pipeline_module
from modeling_hubert_gpt import HubertGptASRPipeline

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = sorted([*ROOT.glob("modeling_hubert_gpt/*.py"), *ROOT.glob("hubert_gpt_training/*.py"),
                  *ROOT.glob("hubert_gpt_vllm/*.py"), ROOT / "train_hf.py", ROOT / "convert_nue_asr.py"])

# (file, transformers module, name): why it is used from there
SUBMODULE_IMPORTS = {
    ("modeling_hubert_gpt/audio_encoder_hubert_gpt.py", "transformers.audio_utils", "mel_filter_bank"):
        "documented: Utilities for FeatureExtractors",
    ("modeling_hubert_gpt/bridges_hubert_gpt.py", "transformers.utils", "logging"): "documented: Logging",
    ("modeling_hubert_gpt/modeling_hubert_gpt.py", "transformers.utils", "ModelOutput"): "documented: Model outputs",
    ("modeling_hubert_gpt/generation_hubert_gpt.py", "transformers.utils", "ModelOutput"): "documented: Model outputs",
    ("modeling_hubert_gpt/modeling_hubert_gpt.py", "transformers.utils", "can_return_tuple"):
        "the return_dict decorator transformers' model linter asks model code to use (mlinter rule TRF003)",
    ("train_hf.py", "transformers.integrations", "is_deepspeed_zero3_enabled"): "documented: DeepSpeed integration",
    ("train_hf.py", "transformers.integrations", "set_hf_deepspeed_config"):
        "PRIVATE (undocumented): train_hf.whole_model_init; test_whole_model_init_builds_without_zero_init_under_zero3",
    ("train_hf.py", "transformers.integrations", "unset_hf_deepspeed_config"): "PRIVATE: as set_hf_deepspeed_config",
}
# (file, attribute): the helper that holds the private use and its test
PRIVATE_ATTRIBUTES = {
    ("modeling_hubert_gpt/configuration_hubert_gpt.py", "_attn_implementation"):
        "attn_implementations (no public getter); test_attn_implementations_reads_what_the_parts_were_built_with",
}
# Internals of a public class that a subclass relies on, which the scan cannot see: where, and the test
SUBCLASSED_INTERNALS = {
    "modeling_hubert_gpt/cache_hubert_gpt.py": "AppendingLayer overrides DynamicLayer.update and uses its keys, "
    "values, is_initialized and lazy_initialization; test_dynamic_layer_keeps_what_appending_layer_relies_on and "
    "tests/test_cache.py::test_appending_layer_reads_back_as_dynamic_layer",
}
NOT_TRANSFORMERS = {"os._exit"}  # Python's own, documented


def transformers_uses(path):
    """(submodule imports [(module, name)], private attributes [name]) of transformers in one file: `x._name` on
    anything but self / cls, and `self._name` in a class derived from a transformers class, where the file defines no
    such name itself."""
    tree = ast.parse(path.read_text())
    imports = [(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and node.level == 0 and node.module.startswith("transformers.") for alias in node.names]
    from_transformers = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                         and node.level == 0 and node.module.split(".")[0] == "transformers" for alias in node.names}
    own = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    own |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)}
    derived = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
               and any(isinstance(base, ast.Name) and base.id in from_transformers for base in node.bases)]
    inherited = {id(node) for cls in derived for node in ast.walk(cls) if isinstance(node, ast.Attribute)}
    private = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
            continue
        if node.attr in own or ast.unparse(node) in NOT_TRANSFORMERS:
            continue
        on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
        if not on_self or id(node) in inherited:
            private.append(node.attr)
    return imports, private


def test_the_lists_are_complete():
    imports, private = set(), set()
    for path in LIBRARY:
        found_imports, found_private = transformers_uses(path)
        name = str(path.relative_to(ROOT))
        imports |= {(name, module, attr) for module, attr in found_imports}
        private |= {(name, attr) for attr in found_private}
    assert imports == set(SUBMODULE_IMPORTS)
    assert private == set(PRIVATE_ATTRIBUTES)
    assert all((ROOT / name).is_file() for name in SUBCLASSED_INTERNALS)


def test_the_scan_sees_private_names_and_submodule_imports(tmp_path):
    code = tmp_path / "example.py"
    code.write_text("from transformers import Seq2SeqTrainer\nfrom transformers.models.auto import X\n"
                    "class T(Seq2SeqTrainer):\n    def f(self, config):\n        self._mine = config._hidden\n"
                    "        return self._prepare_inputs(self._mine)\n"
                    "class Plain:\n    def g(self):\n        return self._helper()\n")
    assert transformers_uses(code) == ([("transformers.models.auto", "X")], ["_hidden", "_prepare_inputs"])


# --- the private uses: each one's test -------------------------------------------------------------------------------
def tiny_hubert_config():
    return HubertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=4)


def test_attn_implementations_reads_what_the_parts_were_built_with():
    from modeling_hubert_gpt.configuration_hubert_gpt import attn_implementations

    eager = AutoModel.from_config(tiny_hubert_config(), attn_implementation="eager")
    sdpa = AutoModel.from_config(tiny_hubert_config(), attn_implementation="sdpa")
    assert attn_implementations(eager.config, sdpa.config) == {"audio_config": "eager", "text_config": "sdpa"}


def test_dynamic_layer_keeps_what_appending_layer_relies_on():
    layer = DynamicLayer()
    assert not layer.is_initialized
    keys, values = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    layer.lazy_initialization(keys, values)
    assert layer.is_initialized and layer.keys.dtype == keys.dtype and layer.values.device == values.device
    got_keys, got_values = DynamicLayer.update(layer, keys, values)  # the method AppendingLayer replaces
    assert got_keys is layer.keys and got_values is layer.values and torch.equal(got_keys, keys)


def test_trainer_pads_labels_as_seq2seq_trainer_does(tmp_path, tiny_processor):
    from hubert_gpt_training.tiny import tiny_config
    from hubert_gpt_training.trainer import HubertGptTrainer
    from modeling_hubert_gpt import HubertGptForConditionalGeneration

    model = HubertGptForConditionalGeneration(tiny_config(tokenizer=tiny_processor.tokenizer))
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = HubertGptTrainer(model=model, args=args, processing_class=tiny_processor)
    labels = torch.tensor([[5, 6, -100], [7, -100, -100]])
    assert torch.equal(trainer.pad_labels(labels, 6), Seq2SeqTrainer._pad_tensors_to_max_len(trainer, labels, 6))
    assert trainer.pad_labels(labels, 6)[0].tolist() == [5, 6, -100] + [tiny_processor.tokenizer.pad_token_id] * 3


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


# --- train_hf.whole_model_init: the training code's one private use -----------------------------------------------
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
