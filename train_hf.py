"""Fine-tune hubert-gpt with Hugging Face Trainer (DeepSpeed, PEFT LoRA), evaluate CER, write a Hub-ready folder.

  python train_hf.py --output_dir runs/default          # the embedded default: synthetic Japanese corpus, CPU
  python train_hf.py --preset smoke --output_dir runs/smoke                      # tiny model, tone data, CPU, <2 min
  python train_hf.py --audio_model rinna/japanese-hubert-base --text_model rinna/japanese-gpt-neox-3.6b \
      --dataset_name reazon-research/reazonspeech --dataset_config all --streaming --max_steps 100000 \
      --deepspeed configs/zero2.json --bf16 --output_dir runs/reazon             # the paper's recipe
  python train_hf.py config.json                                                 # every option from one JSON/YAML

Any Seq2SeqTrainingArguments flag works. `--deepspeed` without a launcher runs as one process.
"""

import contextlib
import itertools
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import torch
import transformers
from transformers import (
    AutoProcessor,
    HfArgumentParser,
    Seq2SeqTrainingArguments,
    TrainerCallback,
    Wav2Vec2FeatureExtractor,
)

from hubert_gpt_training.cpu import cpu_info, emulates_bf16

logger = logging.getLogger("train_hf")


# 1. Arguments ---------------------------------------------------------------------------------------------------------
@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "an existing hubert-gpt checkpoint"})
    audio_model: str | None = field(default=None, metadata={"help": "pretrained encoder (with --text_model)"})
    text_model: str | None = field(default=None, metadata={"help": "pretrained causal LM (with --audio_model)"})
    model_size: str = field(default="tiny", metadata={"help": "random-init size when no pretrained model is given",
                                                      "choices": ["tiny", "small"]})
    bridge: str = field(default="conv", metadata={"help": "conv or ctc (new models only)", "choices": ["conv", "ctc"]})
    bridge_strides: str | None = field(default=None, metadata={
        "help": "new conv-bridge models: the strides of its Conv1d layers (kernel 4 each), comma-separated; default "
                "2,2 (one prompt vector per 4 encoder frames); 2,1 keeps twice as many"})
    audio_frontend: str = field(default="conv", metadata={
        "help": "random-init encoders: conv (HuBERT's conv stack on raw audio) or log_mel (learns far faster from "
                "scratch)", "choices": ["conv", "log_mel"]})
    ctc_head: bool = field(default=False, metadata={
        "help": "a bridge that does not use a CTC head (conv): also train one on the encoder (aux CTC loss); its "
                "hypothesis drafts for lossless speculative decoding, generate(ctc_draft=True). An existing "
                "checkpoint without a head gets a new, untrained one (the ctc bridge always has its own)"})
    ctc_trains_encoder: bool = field(default=True, metadata={
        "help": "the aux CTC loss trains the encoder too (joint CTC); False trains the CTC head alone (a pure draft "
                "head next to a conv bridge: the recognizer trains as without it)"})
    ctc_head_chars: bool = field(default=False, metadata={
        "help": "with --ctc_head: the new head spells the training text's characters (its text is tokenized into "
                "the draft), not LLM tokens"})
    ctc_head_kernel_size: int = field(default=1, metadata={
        "help": "with --ctc_head: 1 = a Linear per frame; odd k > 1 = Conv1d over k frames + GELU + Linear (a better "
                "draft)"})
    ctc_loss_weight: float | None = field(default=None, metadata={
        "help": "aux CTC loss weight, models with a CTC head (default: the model's, 0.3)"})
    encoder_dropout: float = field(default=0.05, metadata={
        "help": "random-init encoders: hidden, attention and activation dropout"})
    encoder_hop: int = field(default=320, metadata={
        "help": "random-init encoders: audio samples per encoder frame, 320 (50 Hz) or 640 (25 Hz: half the frames "
                "for the encoder's layers, the bridge and the LLM's speech prompt)", "choices": [320, 640]})
    frontend_width: int | None = field(default=None, metadata={
        "help": "random-init encoders: the front end's channels (every layer of the raw-audio conv stack, or the "
                "log-mel front end's projection); default 32 (tiny) / 48 (small)"})
    log_mel_stack: int = field(default=1, metadata={
        "help": "random-init encoders with --audio_frontend log_mel: STFT frames per encoder frame (1: one window "
                "as long as the frame's; k: k 25 ms windows at a k-th of the hop, stacked)"})
    vocab_size: int = field(default=200, metadata={"help": "sentencepiece size for a random-init model's tokenizer"})
    freeze_encoder: bool = field(default=False, metadata={"help": "keep the speech encoder fixed"})
    freeze_bridge: bool = field(default=False, metadata={"help": "keep the bridge fixed"})
    freeze_llm: bool = field(default=False, metadata={"help": "keep the LLM fixed"})
    lora: bool = field(default=False, metadata={"help": "LoRA adapters on the LLM; the base encoder and LLM stay "
                                                        "frozen, the bridge trains fully (unless frozen)"})
    lora_encoder: bool = field(default=False, metadata={"help": "LoRA adapters on the encoder's layers too"})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "Hub id or builder (e.g. audiofolder)"})
    dataset_config: str | None = None
    dataset_dir: str | None = field(default=None, metadata={"help": "a datasets.save_to_disk folder"})
    data_dir: str | None = field(default=None, metadata={"help": "data_dir for the builder (audiofolder)"})
    manifest: str | None = field(default=None, metadata={"help": "JSONL/CSV of audio path + text"})
    train_split: str = "train"
    eval_split: str | None = field(default=None, metadata={"help": "default: hold out --eval_size rows of train"})
    eval_size: int = 64
    audio_column: str = "audio"
    text_column: str = "transcription"
    streaming: bool = field(default=False, metadata={"help": "stream the training split (needs --max_steps)"})
    max_seconds: float = field(default=16.0, metadata={"help": "drop longer utterances (paper: 16 s)"})
    max_eval_samples: int | None = None
    edge_silence_crop: float = field(default=0.0, metadata={
        "help": "probability per training utterance and end of cropping a random share of its edge silence (0: off); "
                "for corpora whose utterances all carry the same silence around their sound "
                "(hubert_gpt_training/augment.py)"})
    room_augment: float = field(default=0.0, metadata={
        "help": "probability per training utterance of playing it in a simulated room, with noise and/or over a "
                "telephone line (0: off; hubert_gpt_training/augment.py RoomAugment)"})
    non_speech: float = field(default=0.0, metadata={
        "help": "probability per training utterance of replacing it by noise, hum, tones or room tone with an empty "
                "transcript (0: off): the LLM learns to write nothing for sound without speech"})
    augment_ramp_steps: str = field(default="0", metadata={
        "help": "END or START,END: --room_augment and --non_speech are off until training step START (default 0) and "
                "grow linearly to full at step END (0: full from the start): a model from scratch first learns to "
                "hear clean speech"})
    test_splits: str | None = field(default=None, metadata={
        "help": "comma-separated splits evaluated after training, the first one the headline CER (default: the "
                "eval split); the embedded recipe adds its noisy, reverberant, telephone and katakana test splits"})
    reazonspeech_base_url: str | None = field(default=None, metadata={
        "help": "reazon-research/reazonspeech: where its files are (a mirror URL, a folder or file://; default "
                "https://corpus.reazon-research.org/); splits train, train_holdout and test (the last shard)"})


@dataclass
class RunArguments:
    preset: str | None = field(default=None, metadata={
        "help": "smoke: tiny model on tone data; recipe (the default when no data source is given): a small model "
                "from scratch on the synthetic Japanese corpus", "choices": ["smoke", "recipe"]})
    corpus_hours: float = field(default=2.0, metadata={"help": "recipe: size of the synthetic corpus"})
    corpus_dir: str = field(default="data", metadata={"help": "recipe: where the synthetic corpus is cached"})
    max_train_minutes: float | None = field(default=None, metadata={
        "help": "a guard, not part of a recipe (which is its steps): stop training after this wall time; a run it stops "
                "early says so at the end, in results.json and in the card"})
    export_dir: str | None = field(default=None, metadata={"help": "also write the Hub-ready folder here"})
    draft_head_fit_steps: int = field(default=0, metadata={
        "help": "after training, refit a CTC draft head trained alone (--ctc_trains_encoder false, a bridge that "
                "does not use the head) on the final encoder for this many steps (one process, no DeepSpeed/LoRA): "
                "better drafts for ctc_draft, same transcripts"})
    draft_head_fit_utterances: int = field(default=1500, metadata={
        "help": "training utterances whose encoder output the refit keeps in memory"})
    draft_head_fit_joined: int = field(default=0, metadata={
        "help": "the refit also reads this many rows of 2-3 of those utterances spoken in a row (0-0.6 s apart): the "
                "head learns to place a sentence's last character where it is spoken, which timestamps and the "
                "pause cuts of long audio need"})
    draft_head_fit_non_speech: int = field(default=0, metadata={
        "help": "the refit also reads this many rows of silence, noise or tones with an empty transcript: the head "
                "learns to hear nothing there, which the no-speech guard reads"})


SMOKE = dict(max_steps=60, per_device_train_batch_size=8, per_device_eval_batch_size=16, learning_rate=3e-3,
             warmup_steps=5, logging_steps=10, eval_strategy="no", save_strategy="no", report_to="none")


# The recipe is its 4000 steps; the 90-minute guard only stops a runaway run (a slower machine must reach the same
# model, only later). The encoder runs at 25 Hz on four stacked 25 ms log-mel windows per frame; the conv bridge
# halves that once (a 12.5 Hz speech prompt, as the paper's). Rooms, noise and non-speech rows start at step 1500 and
# are at full strength from step 2500: from step 0 they kept the encoder from hearing anything for 1500 steps.
RECIPE = dict(max_steps=4000, per_device_train_batch_size=16, per_device_eval_batch_size=32, learning_rate=2e-3,
              lr_scheduler_type="cosine", warmup_steps=200, weight_decay=0.01, logging_steps=25, eval_strategy="steps",
              eval_steps=500, save_strategy="no", report_to="none", model_size="small", bridge="conv",
              audio_frontend="log_mel", encoder_hop=640, log_mel_stack=4, frontend_width=192, max_train_minutes=90,
              eval_split="dev", test_splits="test,test_noisy,test_reverb,test_phone,test_katakana",
              edge_silence_crop=0.5, room_augment=0.5, non_speech=0.03, augment_ramp_steps="1500,2500",
              vocab_size=1000)
# Per bridge: the conv bridge gets a CTC draft head trained alone (a small weight is enough: its loss only
# trains the head); the ctc bridge's own head trains the encoder at full weight.
RECIPE_BY_BRIDGE = {"conv": dict(bridge_strides="2,1", ctc_head=True, ctc_head_chars=True, ctc_trains_encoder=False,
                                 ctc_head_kernel_size=5, ctc_loss_weight=0.01, draft_head_fit_steps=6000,
                                 draft_head_fit_joined=750, draft_head_fit_non_speech=200),
                    "ctc": dict(ctc_loss_weight=1.0)}
PRESETS = {"smoke": SMOKE, "recipe": RECIPE}


def parse(argv):
    parser = HfArgumentParser((ModelArguments, DataArguments, RunArguments, Seq2SeqTrainingArguments))
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        loader = parser.parse_json_file if argv[0].endswith(".json") else parser.parse_yaml_file
        return loader(os.path.abspath(argv[0]))
    argv = list(argv)
    given = {a.lstrip("-").split("=")[0] for a in argv if a.startswith("--")}
    if not given & {"preset", "dataset_name", "dataset_dir", "manifest", "model_name_or_path", "audio_model"}:
        argv += ["--preset", "recipe"]  # no data and no model given: the embedded default
    preset = flag_value(argv, "preset")
    if preset in PRESETS:  # preset values are defaults: any flag given on the command line wins
        defaults = dict(PRESETS[preset])
        if preset == "recipe":
            defaults |= RECIPE_BY_BRIDGE.get(flag_value(argv, "bridge", RECIPE["bridge"]), {})
        argv += [x for k, v in defaults.items() if k not in given for x in (f"--{k}", str(v))]
    if "bf16" in given and "use_cpu" not in given and not torch.accelerator.is_available():
        argv += ["--use_cpu", "true"]  # bf16 autocast on the CPU: Trainer otherwise refuses bf16 without a GPU
    parsed = parser.parse_args_into_dataclasses(argv)
    targs = parsed[3]
    if targs.bf16 and (targs.use_cpu or not torch.accelerator.is_available()) and emulates_bf16(info := cpu_info()):
        print(f"WARNING: --bf16 on this CPU ({info['cpu'] or 'unknown model'}: no AVX512-BF16 or AMX) computes bf16 in "
              "emulation, several times slower than fp32; leave --bf16 out on this machine.", file=sys.stderr)
    return parsed


def flag_value(argv, name, default=None):
    """The value of `--name value` or `--name=value` in argv (the last one given), else default."""
    value = default
    for i, arg in enumerate(argv):
        if arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


# 2. One process without a launcher: rendezvous defaults for torch.distributed / DeepSpeed ---------------------------------
def default_rendezvous(argv):
    """`--deepspeed` needs torch.distributed; a plain `python train_hf.py` gets a one-process world."""
    if "--deepspeed" not in " ".join(argv) or "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


# 3. Model and processor ------------------------------------------------------------------------------------------------
def build_model(margs, train_texts, work_dir):
    from modeling_hubert_gpt import HubertGptConfig, HubertGptForConditionalGeneration, HubertGptProcessor
    from modeling_hubert_gpt.bridges_hubert_gpt import bridge_class
    from modeling_hubert_gpt.ctc_head_hubert_gpt import check_ctc_head_options

    extra = {}
    existing = HubertGptConfig.from_pretrained(margs.model_name_or_path) if margs.model_name_or_path else None
    bridge = bridge_class(existing.bridge_type if existing else margs.bridge)
    # --ctc_head adds a head where there is none; a bridge that picks frames with one (ctc) always has its own.
    if margs.ctc_head and not bridge.uses_ctc_head and not (existing and existing.ctc_head_config is not None):
        extra["ctc_head_config"] = {"kernel_size": margs.ctc_head_kernel_size,
                                    "vocab": sorted(set("".join(train_texts))) if margs.ctc_head_chars else None}
    if margs.bridge_strides and not margs.model_name_or_path:
        if bridge.uses_ctc_head:
            raise ValueError(f"--bridge_strides sets the conv bridge's layers; the {margs.bridge!r} bridge has none")
        try:
            strides = [int(x) for x in margs.bridge_strides.split(",")]
        except ValueError:
            raise ValueError(f"--bridge_strides takes comma-separated whole numbers (e.g. 2,1); got "
                             f"{margs.bridge_strides!r}") from None
        extra["bridge_config"] = {"kernel_sizes": [4] * len(strides), "strides": strides}
    if margs.model_name_or_path:
        processor = AutoProcessor.from_pretrained(margs.model_name_or_path, trust_remote_code=True)
        if extra:  # the checkpoint has no head: a new, untrained one
            existing.ctc_head_config = check_ctc_head_options(extra["ctc_head_config"], existing.text_config.vocab_size)
        model = HubertGptForConditionalGeneration.from_pretrained(margs.model_name_or_path, config=existing)
        return model, processor
    if margs.audio_model or margs.text_model:
        if not (margs.audio_model and margs.text_model):
            raise ValueError("--audio_model and --text_model go together (or use --model_name_or_path)")
        from transformers import AutoFeatureExtractor

        from hubert_gpt_training.tokenizer import load_tokenizer

        processor = HubertGptProcessor(AutoFeatureExtractor.from_pretrained(margs.audio_model),
                                       load_tokenizer(margs.text_model, os.path.join(work_dir, "tokenizer")))
        model = HubertGptForConditionalGeneration.from_pretrained_components(
            margs.audio_model, margs.text_model, bridge_type=margs.bridge, **extra,
            prompt_sep_token_id=processor.tokenizer.sep_token_id)
        return model, processor
    from hubert_gpt_training.tiny import tiny_config
    from hubert_gpt_training.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(train_texts, os.path.join(work_dir, "tokenizer"), vocab_size=margs.vocab_size)
    # A conv stack on raw 16 kHz audio would dominate an encoder this small: keep its channels few (with log_mel,
    # conv_dim[-1] is the front end's output width, --frontend_width).
    width, layers, conv_dim = (64, 2, 32) if margs.model_size == "tiny" else (192, 4, 48)
    conv_dim = margs.frontend_width or conv_dim
    config = tiny_config(margs.bridge, tokenizer=tokenizer, width=width, layers=layers, conv_dim=conv_dim,
                         audio_frontend=margs.audio_frontend, log_mel_stack=margs.log_mel_stack,
                         dropout=margs.encoder_dropout, hop=margs.encoder_hop, **extra)
    # From scratch, zero-mean unit-variance audio (per utterance, real samples only) trains faster.
    feature_extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                 do_normalize=True, return_attention_mask=True)
    return HubertGptForConditionalGeneration(config), HubertGptProcessor(feature_extractor, tokenizer)


@contextlib.contextmanager
def whole_model_init(targs):
    """Build the model unpartitioned even under ZeRO-3; DeepSpeed partitions it when the engine starts.

    HuBERT's own _init_weights gathers its conv weights inside transformers' ZeRO-3 init, which DeepSpeed refuses
    ("Nested GatheredParameters contexts cannot overlap"), so zero.Init is skipped while the model is built.

    The training code's one private use of transformers, because nothing public does this: TrainingArguments
    registers its DeepSpeed config (`targs.hf_deepspeed_config`) globally, and every `from_config` / `from_pretrained`
    wraps the build in zero.Init while `is_deepspeed_zero3_enabled()`. `unset_hf_deepspeed_config` /
    `set_hf_deepspeed_config` (exported by transformers.integrations, undocumented) take that registration away and
    give it back. tests/test_public_api.py fails if transformers changes any of this.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled, set_hf_deepspeed_config, unset_hf_deepspeed_config

    config = getattr(targs, "hf_deepspeed_config", None)
    if config is None or not is_deepspeed_zero3_enabled():  # ZeRO-2 or no DeepSpeed: no zero.Init to skip
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(config)


# 4. Data -------------------------------------------------------------------------------------------------------------
def load_data(dargs, rargs, sampling_rate, seed, rows_per_step=1):
    import datasets

    from hubert_gpt_training.data import load_source, prepare

    def source(split, streaming):
        return load_source(dargs.dataset_name, dargs.dataset_config, split, dargs.data_dir, dargs.dataset_dir,
                           dargs.manifest, streaming, dargs.reazonspeech_base_url)

    if rargs.preset == "recipe" and not dargs.dataset_dir:
        from hubert_gpt_training.corpus import build

        dargs.dataset_dir = build(rargs.corpus_hours, rargs.corpus_dir, seed)
        logger.info(f"synthetic corpus: {dargs.dataset_dir}")
    if rargs.preset == "smoke":
        from hubert_gpt_training.synthetic import tone_rows

        train = datasets.Dataset.from_list(tone_rows(192, seed=seed))
        evaluation = datasets.Dataset.from_list(tone_rows(32, seed=seed + 1))
    else:
        train = source(dargs.train_split, dargs.streaming)
        evaluation = source(dargs.eval_split, False) if dargs.eval_split else None
    prep = dict(audio_column=dargs.audio_column, text_column=dargs.text_column, sampling_rate=sampling_rate,
                max_seconds=dargs.max_seconds)
    if evaluation is None:
        if dargs.streaming:
            evaluation, train = train.take(dargs.eval_size), train.skip(dargs.eval_size)
        else:
            held = train.train_test_split(test_size=dargs.eval_size, seed=seed)
            train, evaluation = held["train"], held["test"]
    train, evaluation = prepare(train, **prep), prepare(evaluation, **prep)
    if dargs.max_eval_samples and len(evaluation) > dargs.max_eval_samples:
        evaluation = evaluation.select(range(dargs.max_eval_samples))
    tests = {}
    for split in (dargs.test_splits or "").split(","):
        if split:
            tests[split] = evaluation if split == dargs.eval_split else prepare(source(split, False), **prep)
    train = with_augmentation(train, dargs, seed, ramp_steps(dargs.augment_ramp_steps), rows_per_step)
    return train, evaluation, tests


def ramp_steps(text):
    """'END' or 'START,END' -> (start, end) steps."""
    try:
        steps = [int(x) for x in str(text).split(",")]
    except ValueError:
        steps = []
    if len(steps) not in (1, 2):
        raise ValueError(f"--augment_ramp_steps takes END or START,END (whole steps), got {text!r}")
    return (0, *steps) if len(steps) == 1 else tuple(steps)


def with_augmentation(train, dargs, seed, ramp=(0, 0), rows_per_step=1):
    """Training rows only, fresh draws each time a row is read: the edge-silence crop, then rooms, noise and lines."""
    from hubert_gpt_training.augment import Chain, EdgeSilenceCrop, RoomAugment

    steps = ([EdgeSilenceCrop(dargs.edge_silence_crop, seed)] if dargs.edge_silence_crop else []) + (
        [RoomAugment(dargs.room_augment, seed, non_speech=dargs.non_speech, ramp_start=ramp[0] * rows_per_step,
                     ramp_rows=ramp[1] * rows_per_step)]
        if dargs.room_augment or dargs.non_speech else [])
    if not steps:
        return train
    return train.map(Chain(steps), batched=True) if dargs.streaming else train.with_transform(Chain(steps))


# 5. What trains --------------------------------------------------------------------------------------------------------
def choose_trainable(model, margs):
    """Freeze what the flags say. A CTC head (model.ctc_head) is a part of its own that always trains:
    --freeze_bridge does not freeze it, and under LoRA it trains fully, like the bridge."""
    parts = {"encoder": model.audio_tower, "bridge": model.bridge, "llm": model.language_model}
    for name, frozen in (("encoder", margs.freeze_encoder), ("bridge", margs.freeze_bridge),
                         ("llm", margs.freeze_llm or margs.lora)):
        parts[name].requires_grad_(not frozen)
    if not (margs.lora or margs.lora_encoder):
        return model
    from peft import LoraConfig, get_peft_model

    scopes = ["language_model."] if margs.lora else []
    scopes += ["audio_tower.model.encoder."] if margs.lora_encoder else []
    targets = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
               and name.startswith(tuple(scopes)) and module is not model.get_output_embeddings()]
    config = LoraConfig(r=margs.lora_r, lora_alpha=margs.lora_alpha, lora_dropout=margs.lora_dropout,
                        target_modules=targets,
                        modules_to_save=[n for n, train in (("bridge", not margs.freeze_bridge),
                                                            ("ctc_head", model.ctc_head is not None)) if train])
    return get_peft_model(model, config)


def trainable_report(model):
    rows = {}
    for name, param in model.named_parameters():
        part = next((p for p in ("audio_tower", "bridge", "ctc_head", "language_model") if f".{p}." in f".{name}"),
                    "other")
        total, trainable = rows.get(part, (0, 0))
        rows[part] = (total + param.numel(), trainable + (param.numel() if param.requires_grad else 0))
    return {part: {"parameters": t, "trainable": tr} for part, (t, tr) in rows.items()}


# 6. Metrics on generated transcripts --------------------------------------------------------------------------------
def make_compute_metrics(processor):
    from hubert_gpt_training.metrics import error_rates

    def compute(prediction):
        pad = processor.tokenizer.pad_token_id
        predictions = torch.as_tensor(prediction.predictions)
        labels = torch.as_tensor(prediction.label_ids)
        hypotheses = processor.batch_decode(predictions.masked_fill(predictions < 0, pad), skip_special_tokens=True)
        references = processor.batch_decode(labels.masked_fill(labels < 0, pad), skip_special_tokens=True)
        return error_rates(references, hypotheses)

    return compute


class LossHistory(TrainerCallback):
    """Keeps every log row, with the minutes since it was made."""

    def __init__(self):
        self.rows, self.started = [], time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.rows.append({"step": state.global_step, "minutes": round((time.time() - self.started) / 60, 2),
                          **(logs or {})})


class TrainingClock(TrainerCallback):
    """Times the training phase (wall, and the part of it spent in periodic evaluation) and, as a guard only, stops
    training after `max_minutes` of wall time.

    The recipe is defined by its steps, not by a clock: the limit only makes a far slower machine than expected end
    at all. A run it stops before `state.max_steps` is cut short (`stopped_at_step`), and the run says so."""

    def __init__(self, max_minutes=None):
        self.max_minutes, self.stopped_at_step, self.training, self.evaluation_s = max_minutes, None, False, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.training, self.started = True, time.time()
        self.first_step, self.first_samples = state.global_step, state.num_input_tokens_seen  # a resumed run's start

    def on_step_end(self, args, state, control, **kwargs):
        if (self.max_minutes is not None and state.global_step < state.max_steps
                and time.time() - self.started > 60 * self.max_minutes):
            control.should_training_stop = True
            self.stopped_at_step = state.global_step
            logger.warning(f"time limit ({self.max_minutes:g} min) reached: training stops at step "
                           f"{state.global_step} of {state.max_steps}")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.training:  # periodic evaluation (eval_strategy): not training time
            self.evaluation_s += (metrics or {}).get("eval_runtime", 0.0)

    def on_train_end(self, args, state, control, **kwargs):
        self.training, self.wall_s = False, time.time() - self.started

    def report(self, state, rate, device):
        """(time_limit, speed) for results.json: whether the guard cut training short, and steps / audio seconds
        trained per second of training (periodic evaluation excluded), this run's steps only (not a resumed
        checkpoint's)."""
        cut = self.stopped_at_step is not None
        time_limit = {"max_train_minutes": self.max_minutes, "cut_short": cut, "stopped_at_step": self.stopped_at_step,
                      "max_steps": state.max_steps}
        if cut:
            time_limit["message"] = (f"Training stopped at step {self.stopped_at_step} of {state.max_steps} by the "
                                     f"time limit (--max_train_minutes {self.max_minutes:g}); expect a worse CER than "
                                     f"the full {state.max_steps} steps give")
        seconds = round(self.wall_s - self.evaluation_s, 2)
        steps = state.global_step - self.first_step
        audio_s = (state.num_input_tokens_seen - self.first_samples) / rate  # real (unpadded) samples, all ranks
        ran = steps > 0 and seconds > 0  # else (e.g. resumed at the last step) there is no rate to give
        speed = {"steps": steps, "training_s": seconds, "audio_s": round(audio_s, 2),
                 "steps_per_s": steps / seconds if ran else None,
                 "audio_s_per_s": round(audio_s, 2) / seconds if ran else None, "device": device}
        return time_limit, speed


def device_label(targs):
    """The machine that trained, for reading its speed: "cpu, 2 threads" or "cuda (NVIDIA H200) x 8 processes"."""
    threads = torch.get_num_threads()
    label = (f"cuda ({torch.cuda.get_device_name(targs.device)})" if targs.device.type == "cuda"
             else f"{targs.device.type}, {threads} thread{'s' * (threads > 1)}")
    return label + (f" x {targs.world_size} processes" if targs.world_size > 1 else "")


@contextlib.contextmanager
def phase(seconds, name):
    """Adds the wall seconds of the `with` block to `seconds[name]`."""
    start = time.time()
    yield
    seconds[name] = round(time.time() - start, 2)


# 7. The Hub-ready folder --------------------------------------------------------------------------------------------
def write_hub_folder(trainer, model, processor, results, training_summary, destinations, dataset_label):
    """Model (LoRA merged), processor, remote code, pipeline, results and card: built in a temp dir, then copied
    into each destination, so a failed run never leaves a folder that looks complete."""
    from hub_card.render import render_card

    tmp = tempfile.mkdtemp(prefix=".hub-", dir=os.path.dirname(os.path.abspath(destinations[0])))
    if hasattr(model, "merge_and_unload"):
        trainer.save_model(os.path.join(tmp, "adapter"))  # the LoRA weights alone, for users of the base model
        trainer.model = model.merge_and_unload()
    trainer.save_model(tmp)  # gathers ZeRO-3 partitions; writes safetensors, remote code and the processor
    if trainer.args.should_save:
        os.remove(os.path.join(tmp, "training_args.bin"))  # a pickle: not for the Hub
        with open(os.path.join(tmp, "results.json"), "w") as f:
            json.dump(results, f, indent=2, ensure_ascii=False)
        from hubert_gpt_training.plots import plot_curves

        plot_curves(results["log_history"], os.path.join(tmp, "training_curves.png"))
        render_card(results, tmp, model_name=training_summary["model_name"],
                    base_models=training_summary.get("base_models"), dataset_name=dataset_label,
                    dataset_id=training_summary.get("dataset_id"), training_summary=training_summary)
        for destination in destinations:
            shutil.copytree(tmp, destination, dirs_exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)


def push(folder, repo_id, token=None):
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    ignore = ["checkpoint-*/**", "runs/**", "work/**"]
    try:
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, ignore_patterns=list(ignore))
    except Exception as err:  # network, auth or server: the folder is complete on disk either way
        later = f"hf upload {repo_id} {folder} . " + " ".join(f'--exclude "{p}"' for p in ignore)
        raise SystemExit(f"Upload of {folder} to {repo_id} failed ({type(err).__name__}: {err}). "
                         f"Everything is saved locally in {folder}; push it later with `{later}`.")


# 8. Main -------------------------------------------------------------------------------------------------------------
def refit_draft_head(model, train, collator, rargs, margs, targs):
    """--draft_head_fit_steps: refit a CTC draft head that trained alone on the trained encoder (see fit_draft_head).

    Only a head the run trained alone (--ctc_trains_encoder false) that the bridge does not use: refitting it
    changes drafts, never the prompt or the transcripts."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if (rargs.draft_head_fit_steps <= 0 or margs.ctc_trains_encoder or base.ctc_head is None
            or base.bridge.uses_ctc_head):
        return None
    if targs.deepspeed or targs.world_size > 1 or margs.lora:
        logger.warning("--draft_head_fit_steps: skipped (runs in one process without DeepSpeed or LoRA)")
        return None
    from hubert_gpt_training.draft_head import fit_draft_head

    rows = list(itertools.islice(iter(train), rargs.draft_head_fit_utterances))
    return fit_draft_head(model, rows, collator, steps=rargs.draft_head_fit_steps, seed=targs.seed,
                          joined=rargs.draft_head_fit_joined, non_speech=rargs.draft_head_fit_non_speech)


def run(argv):
    """Train, evaluate and write the folder; returns (results, trainer) for callers that inspect the run."""
    default_rendezvous(argv)
    margs, dargs, rargs, targs = parse(argv)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.INFO if targs.should_log else logging.WARN)
    transformers.set_seed(targs.seed)
    targs.remove_unused_columns = False  # the collator needs the raw audio/text columns
    targs.predict_with_generate = True
    push_to_hub, targs.push_to_hub = targs.push_to_hub, False  # we upload the finished folder ourselves (section 7)
    # audio seconds trained: the attention mask's real samples (the collator always returns the mask)
    targs.include_num_input_tokens_seen = "non_padding"
    started, seconds = time.time(), {}  # seconds: wall time of each phase

    work_dir = os.path.join(targs.output_dir, "work")
    # one rank builds the corpus and the dataset caches, then the rest
    with phase(seconds, "data"), targs.main_process_first(desc="data"):
        rows_per_step = targs.per_device_train_batch_size * targs.gradient_accumulation_steps
        train, evaluation, tests = load_data(dargs, rargs, 16000, targs.seed, rows_per_step)
    if dargs.streaming:  # each rank reads its own shards of a stream (accelerate splits them), not rank 0 all
        targs.accelerator_config.dispatch_batches = False
    # Training text, for a new tokenizer or a character CTC head only: a stream is not read ahead without need.
    texts = []
    if not (margs.model_name_or_path or margs.audio_model) or margs.ctc_head_chars:
        texts = train["text"] if hasattr(train, "__len__") else [row["text"] for row in train.take(10000)]
    with phase(seconds, "model"), targs.main_process_first(desc="build model"), whole_model_init(targs):
        model, processor = build_model(margs, texts, work_dir)
    rate = processor.feature_extractor.sampling_rate
    model = choose_trainable(model, margs)
    parameters = trainable_report(model)
    for part, row in parameters.items():
        logger.info(f"{part}: {row['trainable']:,} trainable of {row['parameters']:,} parameters")
    if targs.gradient_checkpointing:
        targs.gradient_checkpointing_kwargs = {"use_reentrant": False}
    if not dargs.streaming and targs.train_sampling_strategy == "random":
        targs.train_sampling_strategy = "group_by_length"  # fewer padded samples per batch
        targs.length_column_name = "input_length"

    from hubert_gpt_training.data import SpeechCollator
    from hubert_gpt_training.trainer import HubertGptTrainer
    from modeling_hubert_gpt.modeling_hubert_gpt import DEFAULT_CTC_LOSS_WEIGHT

    history, clock = LossHistory(), TrainingClock(rargs.max_train_minutes)
    head = (model.get_base_model() if hasattr(model, "get_base_model") else model).ctc_head
    trainer = HubertGptTrainer(model=model, args=targs, train_dataset=train, eval_dataset=evaluation,
                               data_collator=SpeechCollator(processor, rate, None if head is None else head.vocab),
                               processing_class=processor,
                               compute_metrics=make_compute_metrics(processor), callbacks=[history, clock],
                               ctc_loss_weight=margs.ctc_loss_weight, ctc_trains_encoder=margs.ctc_trains_encoder)
    train_result = trainer.train(resume_from_checkpoint=targs.resume_from_checkpoint)
    time_limit, speed = clock.report(trainer.state, rate, device_label(targs))
    seconds["training"] = speed["training_s"]
    if clock.evaluation_s:
        seconds["evaluation_during_training"] = round(clock.evaluation_s, 2)
    with phase(seconds, "draft_head_refit"):
        draft_fit = refit_draft_head(model, train, trainer.data_collator, rargs, margs, targs)
    if draft_fit is None:  # no refit ran
        del seconds["draft_head_refit"]
    with phase(seconds, "test_evaluation"):
        splits = {name: trainer.evaluate(data, metric_key_prefix=name) for name, data in tests.items()}
        headline = next(iter(tests), None)  # the first test split is the headline CER, reported as test_*
        metrics = splits.pop(headline) if headline else trainer.evaluate(metric_key_prefix="test")
        if headline:
            metrics = {"test_" + key[len(headline) + 1:]: value for key, value in metrics.items()}
    conditions = {name: {key: m[f"{name}_{key}"] for key in ("cer", "wer", "num_utterances", "num_emptied")}
                  for name, m in splits.items()}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dataset_label = {"smoke": "tone-smoke", "recipe": "ja-synth"}.get(
        rargs.preset, dargs.dataset_name or dargs.dataset_dir or dargs.manifest)
    results = {
        "cer": metrics["test_cer"], "wer": metrics["test_wer"], "num_utterances": metrics["test_num_utterances"],
        "eval_loss": metrics.get("test_loss"), "dataset_name": dataset_label,
        "split": "generated eval set" if rargs.preset == "smoke" else (
            headline or dargs.eval_split or f"held-out {len(evaluation)} of {dargs.train_split}"),
        "num_emptied": metrics.get("test_num_emptied"), "conditions": conditions,
        "bridge_type": base.config.bridge_type, "global_step": trainer.state.global_step,
        "train_loss": train_result.training_loss, "train_runtime_s": round(train_result.metrics["train_runtime"], 1),
        "wall_s": round(time.time() - started, 1),  # the phases below, before the folder is written
        "phases_s": seconds, "speed": speed, "time_limit": time_limit,
        "parameters": parameters, "draft_head_fit": draft_fit, "log_history": history.rows,
    }
    summary = {"model_name": targs.hub_model_id or os.path.basename(os.path.abspath(targs.output_dir)),
               "bridge_type": base.config.bridge_type, "audio_frontend": base.config.audio_frontend,
               "ctc_head": base.ctc_head is not None,
               # the CTC settings this run trained with (None: no head, nothing to weigh)
               "ctc_loss_weight": None if base.ctc_head is None else (
                   DEFAULT_CTC_LOSS_WEIGHT if margs.ctc_loss_weight is None else margs.ctc_loss_weight),
               "ctc_trains_encoder": None if base.ctc_head is None else margs.ctc_trains_encoder,
               "steps": trainer.state.global_step,
               "learning_rate": targs.learning_rate, "batch_size": targs.per_device_train_batch_size,
               "deepspeed": targs.deepspeed, "lora": margs.lora, "frozen": [n for n in ("encoder", "bridge", "llm")
                                                                             if getattr(margs, f"freeze_{n}")],
               "base_models": [m for m in (margs.audio_model, margs.text_model, margs.model_name_or_path) if m],
               "dataset_id": dargs.dataset_name, "train_utterances": len(train) if hasattr(train, "__len__") else None}
    results["training_summary"] = summary
    destinations = [targs.output_dir] + ([rargs.export_dir] if rargs.export_dir else [])
    write_hub_folder(trainer, model, processor, results, summary, destinations, dataset_label)
    if targs.should_save:
        for name, row in conditions.items():
            print(f"{name}: CER {row['cer']:.4f} on {row['num_utterances']} utterances ({row['num_emptied']} emptied)")
        print(f"CER {results['cer']:.4f}  WER {results['wer']:.4f} on {results['num_utterances']} utterances; "
              f"Hub-ready folder (model, processor, card, "
              f"results.json): {os.path.abspath(targs.output_dir)}")
        if time_limit["cut_short"]:  # said last, so it is not missed
            print(f"\nWARNING: {time_limit['message']}. Its results.json and model card say so too; a larger "
                  f"--max_train_minutes lets it train every step.", file=sys.stderr)
    if push_to_hub and targs.should_save:
        push(rargs.export_dir or targs.output_dir, targs.hub_model_id, targs.hub_token)
    return results, trainer


if __name__ == "__main__":
    run(sys.argv[1:])
    sys.stdout.flush()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        os._exit(0)  # gloo teardown after ZeRO-3 can abort a finished multi-rank run (FACTS.md)
