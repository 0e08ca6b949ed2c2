"""Convert a rinna/nue-asr checkpoint into a hubert-gpt folder that the stock entry points open.

    python convert_nue_asr.py --src path/to/nue-asr --dst nue-asr-hubert-gpt

Then, in any process (our package need not be importable there):

    from transformers import pipeline
    asr = pipeline("automatic-speech-recognition", model="nue-asr-hubert-gpt", trust_remote_code=True)

The source is nue-asr's layout: config.json (`model_type: "nue_asr"`, `audio_encoder_config` = a HubertConfig dict,
`llm_config` = a GPTNeoXConfig dict, `bridge_conv_kernel_size`, `bridge_conv_stride`), weights in model.safetensors or
pytorch_model.bin (or their sharded `*.index.json` forms) under `audio_encoder.*` (HubertModel), `bridge_convs.{0,1}.*`,
`bridge_proj.*` and `llm.*` (GPTNeoXForCausalLM), and the japanese-gpt-neox-3.6b tokenizer (spiece.model +
T5Tokenizer-style tokenizer_config.json). A hub id instead of a folder is downloaded with huggingface_hub.

What the result reproduces:
- weights: every tensor is copied from the checkpoint, none is initialised. A checkpoint tensor with no place in the
  model, or a model weight the checkpoint lacks, is an error that names it. Names written by older transformers are
  accepted: `llm.embed_out.*` (now `lm_head`), HuBERT's `weight_g`/`weight_v` (now weight-norm parametrizations), and
  GPT-NeoX's per-layer buffers `attention.bias`/`attention.masked_bias` (causal-mask constants, dropped as
  transformers itself drops them) and `attention.rotary_emb.inv_freq` (checked against the model's rotary table).
- audio: 16 kHz mono float, no normalisation (Wav2Vec2FeatureExtractor(do_normalize=False)).
- tokenizer: spiece.model with the special tokens the folder's own tokenizer_config.json / special_tokens_map.json
  name (`<unk>` or `[UNK]`, as written), each checked against spiece.model's ids; a contradiction is an error.
- prompt: `<s>` + speech + `[SEP]` (the tokenizer's bos and sep tokens), ids taken from the tokenizer.
- decoding: greedy, `min_new_tokens=2`, at most `int(4 * seconds + 20 + 0.5)` new tokens per utterance; nue-asr's
  pad/bos/eos ids (the tokenizer's). Unlike nue-asr, batches work (`generate` with an attention mask).

`load_nue_asr(src)` gives the converted `(model, processor)` in memory without writing anything.
"""

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile

import torch
from transformers import AutoModelForSpeechSeq2Seq, GPTNeoXConfig, HubertConfig, Wav2Vec2FeatureExtractor

from hubert_gpt_training.tokenizer import sentencepiece_to_hf_tokenizer, special_tokens_of
from modeling_hubert_gpt import HubertGptConfig, HubertGptProcessor

NUE_MODEL_TYPE = "nue_asr"
SAMPLING_RATE = 16000
# nue-asr's transcribe(): greedy, at least 2 new tokens, at most int(4 * seconds + 20 + 0.5).
MIN_NEW_TOKENS = 2
MAX_NEW_TOKENS_PER_SECOND = 4.0
MAX_NEW_TOKENS_BASE = 20
# NueASRConfig's defaults, used when config.json leaves the bridge keys out.
DEFAULT_KERNEL_SIZE = [4, 4]
DEFAULT_STRIDE = [2, 2]

# nue-asr submodule prefix -> ours (the HF encoder sits in our audio tower's `model`).
PREFIXES = (
    ("audio_encoder.", "audio_tower.model."),
    ("bridge_convs.", "bridge.convs."),
    ("bridge_proj.", "bridge.proj."),
    ("llm.", "language_model."),
)
# Names older transformers wrote for tensors of today's modules: (pattern on the nue-asr name, the old form).
LEGACY_ALIASES = (
    (re.compile(r"^llm\.lm_head\."), "llm.embed_out."),
    (re.compile(r"\.parametrizations\.weight\.original0$"), ".weight_g"),
    (re.compile(r"\.parametrizations\.weight\.original1$"), ".weight_v"),
)
# GPT-NeoX buffers that transformers < 4.31 saved with the weights; they hold no learned values.
_LEGACY_MASK_BUFFER = re.compile(r"^llm\.gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias)$")
_LEGACY_ROTARY_BUFFER = re.compile(r"^llm\.gpt_neox\.layers\.\d+\.attention\.rotary_emb\.inv_freq$")

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# The checkpoint's files are memory-mapped; the pages read stay in the process until the mapping is closed. Closing it
# after every this many bytes copied keeps conversion at the model's size plus this much, not twice the model.
RELEASE_EVERY_BYTES = 64 * 1024**2


# --- reading the source -------------------------------------------------------------------------------------------
def resolve_source(src):
    """A local folder as is; anything else is taken for a hub id and downloaded (config, tokenizer, weights)."""
    if os.path.isdir(src):
        return src
    if os.path.exists(src):
        raise ValueError(f"--src {src!r} is a file; pass the nue-asr folder (config.json, weights, spiece.model)")
    from huggingface_hub import snapshot_download

    folder = snapshot_download(src, allow_patterns=["*.json", "*.model", "*.safetensors"])
    if not any(os.path.exists(os.path.join(folder, name)) for name in WEIGHT_FILES[:2]):
        folder = snapshot_download(src, allow_patterns=["*.json", "*.model", "pytorch_model*.bin"])
    return folder


def read_nue_config(src):
    """config.json of a nue-asr folder -> (HubertConfig, GPTNeoXConfig, kernel sizes, strides)."""
    path = os.path.join(src, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{src} has no config.json; is it a nue-asr checkpoint folder?")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if config.get("model_type") != NUE_MODEL_TYPE:
        raise ValueError(
            f"{path} has model_type {config.get('model_type')!r}; this converter reads {NUE_MODEL_TYPE!r} checkpoints "
            "(rinna/nue-asr)"
        )
    for key in ("audio_encoder_config", "llm_config"):
        if not isinstance(config.get(key), dict):
            raise ValueError(f"{path} lacks {key!r} (a dict), which every nue-asr config.json carries")
    # NueASRConfig builds a HubertModel and a GPTNeoXForCausalLM whatever model_type the dicts name.
    audio = HubertConfig(**{k: v for k, v in config["audio_encoder_config"].items() if k != "model_type"})
    text = GPTNeoXConfig(**{k: v for k, v in config["llm_config"].items() if k != "model_type"})
    kernels = list(config.get("bridge_conv_kernel_size", DEFAULT_KERNEL_SIZE))
    strides = list(config.get("bridge_conv_stride", DEFAULT_STRIDE))
    return audio, text, kernels, strides


def _weight_files(src):
    """Paths of the checkpoint's weight files (several when sharded), safetensors preferred."""
    for name in WEIGHT_FILES:
        path = os.path.join(src, name)
        if not os.path.isfile(path):
            continue
        if name.endswith(".index.json"):
            with open(path, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return [os.path.join(src, shard) for shard in shards]
        return [path]
    raise FileNotFoundError(f"{src} has none of {', '.join(WEIGHT_FILES)}")


class _Checkpoint:
    """Lazy access to the tensors of a checkpoint's files: names first, each tensor read when asked for."""

    def __init__(self, src):
        self.files = _weight_files(src)
        self._where = {}
        self._handles = {}
        for path in self.files:
            for key in self._open(path).keys():
                if key in self._where:
                    raise ValueError(f"tensor {key!r} appears in both {self._where[key]} and {path}")
                self._where[key] = path

    def _open(self, path):
        if path not in self._handles:
            if path.endswith(".safetensors"):
                from safetensors import safe_open

                self._handles[path] = safe_open(path, framework="pt")
            else:
                try:  # mmap: tensors are read from disk when copied, not all at once
                    self._handles[path] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # a pre-zipfile (torch < 1.6) pickle cannot be memory-mapped
                    self._handles[path] = torch.load(path, map_location="cpu", weights_only=True)
        return self._handles[path]

    def keys(self):
        return list(self._where)

    def release(self):
        """Close the files (their mapped pages leave the process); the next read opens them again."""
        self._handles.clear()

    def dtype_and_numel(self, key):
        handle = self._open(self._where[key])
        if not hasattr(handle, "get_slice"):
            return handle[key].dtype, handle[key].numel()
        view = handle.get_slice(key)
        return _SAFETENSORS_DTYPES[view.get_dtype()], math.prod(view.get_shape())

    def __getitem__(self, key):
        handle = self._open(self._where[key])
        return handle.get_tensor(key) if hasattr(handle, "get_tensor") else handle[key]


def checkpoint_dtype(checkpoint):
    """The dtype most of the checkpoint's floating-point elements have (read from headers, no tensor data)."""
    counts = {}
    for key in checkpoint.keys():
        dtype, numel = checkpoint.dtype_and_numel(key)
        if dtype.is_floating_point:
            counts[dtype] = counts.get(dtype, 0) + numel
    return max(counts, key=counts.get) if counts else torch.float32


# --- weights ------------------------------------------------------------------------------------------------------
def nue_names(model_key):
    """The names a nue-asr checkpoint may give the tensor our model calls `model_key`: today's, then older ones."""
    for ours, theirs in PREFIXES:
        if model_key.startswith(theirs):
            name = ours + model_key[len(theirs) :]
            break
    else:
        return []
    return [name] + [pattern.sub(old, name) for pattern, old in LEGACY_ALIASES if pattern.search(name)]


def _rotary_inv_freq(model):
    for name, buffer in model.language_model.named_buffers():
        if name.endswith("rotary_emb.inv_freq"):
            return buffer
    return None


def load_nue_weights(model, checkpoint):
    """Copy every checkpoint tensor into `model`; raise, naming the keys, on missing, unexpected or misshapen ones."""
    params = model.state_dict(keep_vars=True)
    source_of = {}  # checkpoint key -> our key
    for model_key in params:
        for name in nue_names(model_key):
            source_of[name] = model_key
    targets, unexpected, rotary = {}, [], []
    for key in checkpoint.keys():
        if key in source_of:
            target = source_of[key]
            if target in targets:
                raise ValueError(f"checkpoint tensors {targets[target]!r} and {key!r} both map to {target!r}")
            targets[target] = key
        elif _LEGACY_MASK_BUFFER.match(key):
            continue  # a causal-mask constant of older GPT-NeoX code, not a weight
        elif _LEGACY_ROTARY_BUFFER.match(key):
            rotary.append(key)
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(
            "unexpected key(s) in the nue-asr checkpoint, with no place in the converted model: "
            + ", ".join(unexpected)
        )
    # Tied tensors (one Parameter under two names) need only one of their names in the checkpoint.
    provided = {id(params[target]) for target in targets}
    missing = [k for k, v in params.items() if k not in targets and id(v) not in provided]
    if missing:
        described = [f"{' or '.join(nue_names(k))} (for {k})" if nue_names(k) else k for k in missing]
        raise ValueError(f"missing key(s) in the nue-asr checkpoint: {', '.join(described)}")
    inv_freq = _rotary_inv_freq(model)
    for key in rotary:
        stored = checkpoint[key].float()
        same = inv_freq is not None and stored.shape == inv_freq.shape
        if not (same and torch.allclose(stored, inv_freq.float().cpu(), rtol=1e-4, atol=0)):
            raise ValueError(
                f"checkpoint buffer {key} does not match the rotary frequencies the model computes from llm_config "
                "(rotary_pct / rotary_emb_base); the converted model would place tokens differently"
            )
    copied = 0
    with torch.no_grad():
        for target, key in targets.items():
            tensor, param = checkpoint[key], params[target]
            if tuple(tensor.shape) != tuple(param.shape):
                raise ValueError(
                    f"checkpoint tensor {key} has shape {tuple(tensor.shape)} but the model's {target} has "
                    f"{tuple(param.shape)}; does config.json belong to these weights?"
                )
            param.copy_(tensor)
            copied += tensor.numel() * tensor.element_size()
            del tensor
            if copied >= RELEASE_EVERY_BYTES:
                checkpoint.release()
                copied = 0
    checkpoint.release()
    return targets


# --- tokenizer and processor ----------------------------------------------------------------------------------------
def build_processor(src, work_dir):
    """The checkpoint's tokenizer (spiece.model, its own special tokens) as a transformers-5 tokenizer + nue-asr's
    audio handling."""
    import sentencepiece as spm

    model_file = os.path.join(src, "spiece.model")
    if not os.path.isfile(model_file):
        raise FileNotFoundError(f"{src} has no spiece.model (nue-asr's sentencepiece tokenizer)")
    raw = spm.SentencePieceProcessor(model_file=model_file)
    special = special_tokens_of(src, raw)
    tokenizer = sentencepiece_to_hf_tokenizer(model_file, work_dir, special)
    for key, piece in special.items():
        ours, theirs = tokenizer.convert_tokens_to_ids(piece), raw.piece_to_id(piece)
        if ours != theirs:
            raise ValueError(f"{key} {piece!r}: id {ours} in the converted tokenizer, {theirs} in spiece.model")
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLING_RATE, padding_value=0.0, do_normalize=False, return_attention_mask=True
    )
    return HubertGptProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def _prompt_id(tokenizer, token):
    """nue-asr's way: tokenizer.encode(token, add_special_tokens=False) must give exactly one id."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"the tokenizer encodes {token!r} as {ids}; nue-asr's prompt needs a single id")
    return ids[0]


# --- the model ----------------------------------------------------------------------------------------------------
def load_nue_asr(src, dtype="auto"):
    """A nue-asr folder (or hub id) -> (HubertGptForConditionalGeneration in eval mode, HubertGptProcessor).

    dtype: "auto" (the checkpoint's), "float32", "float16", "bfloat16" or a torch.dtype.
    """
    src = resolve_source(src)
    audio_config, text_config, kernels, strides = read_nue_config(src)
    checkpoint = _Checkpoint(src)
    with tempfile.TemporaryDirectory() as work_dir:
        processor = build_processor(src, work_dir)
    tokenizer = processor.tokenizer
    if len(tokenizer) > text_config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but llm_config.vocab_size is {text_config.vocab_size}"
        )
    bos, sep = _prompt_id(tokenizer, tokenizer.bos_token), _prompt_id(tokenizer, tokenizer.sep_token)
    config = HubertGptConfig(
        audio_config=audio_config,
        text_config=text_config,
        bridge_type="conv",
        bridge_config={"kernel_sizes": kernels, "strides": strides},
        prompt_bos_token_id=bos,
        prompt_sep_token_id=sep,
        sampling_rate=SAMPLING_RATE,
    )
    if dtype == "auto":
        dtype = checkpoint_dtype(checkpoint)
    elif isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    model = AutoModelForSpeechSeq2Seq.from_config(config, dtype=dtype)
    load_nue_weights(model, checkpoint)
    # nue-asr's transcribe(): greedy, min_new_tokens=2, at most int(4 * seconds + 20 + 0.5) new tokens, and the
    # tokenizer's pad / bos / eos ids.
    model.generation_config.update(
        do_sample=False,
        num_beams=1,
        min_new_tokens=MIN_NEW_TOKENS,
        max_new_tokens_per_second=MAX_NEW_TOKENS_PER_SECOND,
        max_new_tokens_base=MAX_NEW_TOKENS_BASE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model.eval(), processor


def convert(src, dst, dtype="auto", overwrite=False):
    """Write the converted model, processor and remote code to `dst`; returns (model, processor)."""
    if os.path.isdir(dst) and os.listdir(dst) and not overwrite:
        raise FileExistsError(f"{dst} exists and is not empty; pass --overwrite to write into it")
    src = resolve_source(src)
    model, processor = load_nue_asr(src, dtype=dtype)
    model.save_pretrained(dst)  # weights, config with auto_map + custom_pipelines, remote code, generation_config
    processor.save_pretrained(dst)
    shutil.copyfile(os.path.join(src, "spiece.model"), os.path.join(dst, "spiece.model"))  # the original, for reference
    return model, processor


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="nue-asr folder (config.json, weights, spiece.model) or hub id")
    parser.add_argument("--dst", required=True, help="output folder for the hubert-gpt model")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", *DTYPES], help="weights' dtype (auto: the checkpoint's)"
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --dst")
    args = parser.parse_args(argv)
    model, _ = convert(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.dst}: {params / 1e6:.1f} M parameters ({model.dtype}); open it with "
          f'pipeline("automatic-speech-recognition", model={args.dst!r}, trust_remote_code=True)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
