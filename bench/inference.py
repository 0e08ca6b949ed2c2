#!/usr/bin/env python
"""Inference benchmark: every variant side by side, on the same audio and the same weights, in one run.

    python bench/inference.py --quick --json /tmp/b.json      # < 1 min on 2 CPU cores
    python bench/inference.py --json bench.json               # a bigger random model, more and longer audio
    python bench/inference.py --model runs/default --dataset data/ja-synth-2h-seed42-1257154b   # a trained folder on
                                                              # its own test split (real speech; tokenizer and bridge its own)

Variants (each checked against its model's one-at-a-time greedy transcript; any difference exits 1, loudly):
  baseline       nue-asr style: one utterance at a time, conv bridge, plain greedy `generate`
  generate bN    this package, N utterances per `generate` call (right-padded audio, left-padded prompts)
  generate b16, DynamicCache / encoder in one call   batch 16 with one CPU speed-up switched off: transformers'
                 DynamicCache (concatenates the whole cache every step) instead of the appending cache, or the
                 encoder run on the whole padded batch instead of length groups (JSON appending_cache_speedup_16,
                 encoder_groups_speedup_16: the switched-off wall over the default's)
  pipeline bN    the ASR pipeline (`HubertGptASRPipeline`) with batch_size=N
  ctc ...        the same encoder and LLM weights behind the CTC bridge (a different model: own baseline)
  spec bN        `generate(ctc_draft=True)`: lossless CTC-draft speculative decoding (LLM passes counted)
  spec ..., oracle / noisy N% draft   the verifier fed the greedy transcript itself, or with N% token errors
                 (substitutions, insertions, deletions: what a CTC head of that token error rate would give): how
                 pass counts and wall time scale with draft quality, whatever the random weights do
Also: conv vs CTC speech-prompt positions per audio second and the LLM prefill cost (one forward, 16 utterances);
peak memory (CUDA: max_memory_allocated; CPU: peak RSS growth sampled from /proc/self/statm); real-time factor
(wall / audio seconds) and audio seconds per wall second.

Random weights are shaped like the paper's pair at CPU scale: the LLM (512x8 quick, 1024x12 full) far bigger than
the encoder (128x4, 256x6), as a 3.6B GPT-NeoX is beside HuBERT-base (95M), so decoding, not encoding, dominates;
`--llm-width/--llm-layers` change it. A tiny trained model (`--model runs/default`) is the opposite case: its encoder
is as big as its LLM and runs on 50 frames/s, so encoding (compute-bound: batching saves little) dominates.

Random weights: the LLM rarely picks eos, so outputs run to the per-utterance bound, and a random CTC head disagrees
with a random LLM: `spec_passes_per_token` / `spec_speedup` (the model's OWN draft, batch 1) are then those of a
useless draft (what passes are saved comes from the prompt-lookup fallback on the LLM's loops). Use `--model DIR`
for a trained folder's real figures; the oracle / noisy rows (JSON `spec_*_oracle`, `spec_*_noisy15`) show what a
draft of a given quality buys on these weights. (Self-distilling the random LLM into copying its CTC head was tried:
it memorises a small training set but does not generalise within a benchmark's minutes, so it is not done.) The
random CTC head's blank bias is set so that ~20% of frames carry a label (a trained CTC head keeps ~10 frames/s of
50), else nearly every frame would be kept.

CPU runs use torch's default threads (one per core), as a user's would; `--threads 1` on a machine shared with other
busy jobs, where OpenMP barriers across busy cores turn a 1 ms decoding step into tens of ms at random. On CPU the
one-at-a-time baseline (a matrix-vector product per LLM weight matrix per token, plus per-step framework work) gains
little from more cores; batched decoding, the encoder and the prefill are compute-bound and gain nearly 2x from 2.

On CUDA it also runs the paper-scale shape (HuBERT-base + a 3.6B GPT-NeoX, random weights, bf16): decode time per
token vs the bound "LLM weight bytes / memory bandwidth" (bandwidth measured with a device copy).

JSON keys: batched_speedup_16, appending_cache_speedup_16, encoder_groups_speedup_16, spec_passes_per_token,
spec_speedup, identical, device, and the full table.
"""

import argparse
import inspect
import json
import logging
import os
import resource
import sys
import threading
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from tokenizers.models import WordLevel  # noqa: E402
from tokenizers.pre_tokenizers import WhitespaceSplit  # noqa: E402
from transformers import DynamicCache, PreTrainedTokenizerFast, Wav2Vec2FeatureExtractor  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from hubert_gpt_training.tiny import tiny_config  # noqa: E402
from modeling_hubert_gpt import HubertGptASRPipeline, HubertGptConfig, HubertGptForConditionalGeneration  # noqa: E402
from modeling_hubert_gpt.cache_hubert_gpt import cache_keyword  # noqa: E402
from tests.helpers import make_audio  # noqa: E402

RATE = 16000
SPECIAL = ["[PAD]", "<s>", "</s>", "[SEP]"]  # ids 0..3: tiny_config's pad, bos, eos and [SEP]
NOISE_RATES = (0.05, 0.15, 0.3)  # token error rates of the simulated CTC drafts


# --- measuring -------------------------------------------------------------------------------------------------------
def _rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak memory above the level at entry: CUDA max_memory_allocated, or on CPU the RSS sampled every ms."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.peak_mib = 0.0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = _rss_bytes()
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.001):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.stop.set()
            self.thread.join()
            self.peak = max(self.peak, _rss_bytes())
            self.peak_mib = (self.peak - self.base) / 2**20


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn, device, repeat=1):
    """(result of the last run, fastest wall seconds, largest peak MiB) over `repeat` runs: other work on the
    machine only ever slows a run down, so the fastest is the best estimate of the code's own time."""
    walls, peaks = [], []
    for _ in range(repeat):
        sync(device)
        with PeakMemory(device) as memory:
            start = time.perf_counter()
            result = fn()
            sync(device)
            walls.append(time.perf_counter() - start)
        peaks.append(memory.peak_mib)
    return result, min(walls), max(peaks)


# --- data, tokenizer, models -------------------------------------------------------------------------------------------
def make_audios(n, low, high, seed):
    rng = np.random.default_rng(seed)
    return [make_audio(float(s), seed=seed * 1000 + i) for i, s in enumerate(rng.uniform(low, high, size=n))]


def dataset_audios(path, split, n):
    """The first n utterances of a split, decoded and resampled to 16 kHz by the training data loader."""
    from hubert_gpt_training.data import load_source, prepare

    rows = prepare(load_source(disk_path=path, split=split), sampling_rate=RATE)
    if len(rows) < n:
        raise ValueError(f"{path} [{split}] has {len(rows)} usable utterances; --utterances asks for {n}")
    return [np.asarray(a, dtype=np.float32) for a in rows.select(range(n))["audio"]]


def word_tokenizer(vocab_size):
    """Ids 0..3 are [PAD] <s> </s> [SEP]; id i >= 4 is the word "t{i}": any id decodes to a readable text."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL)} | {f"t{i}": i for i in range(len(SPECIAL), vocab_size)}
    backend = Tokenizer(WordLevel(vocab, unk_token="[PAD]"))
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", bos_token="<s>", eos_token="</s>",
                                   sep_token="[SEP]")


def feature_extractor():
    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=RATE, padding_value=0.0, do_normalize=False,
                                    return_attention_mask=True)


def random_models(width, layers, llm_width, llm_layers, vocab, seed):
    """A conv and a CTC model with the same encoder and LLM weights (only the bridges differ)."""
    shape = dict(width=width, layers=layers, text_width=llm_width, text_layers=llm_layers, vocab_size=vocab)
    torch.manual_seed(seed)
    conv = HubertGptForConditionalGeneration(tiny_config("conv", **shape)).eval()
    torch.manual_seed(seed + 1)
    ctc = HubertGptForConditionalGeneration(tiny_config("ctc", **shape)).eval()
    ctc.audio_tower.load_state_dict(conv.audio_tower.state_dict())
    ctc.language_model.load_state_dict(conv.language_model.state_dict())
    # random weights loop and hear no speech: the CTC head's guards would cut them; decoding is measured without
    ctc.generation_config.no_speech_threshold, ctc.generation_config.loop_guard = None, False
    return conv, ctc


@torch.no_grad()
def calibrate_blank(model, audios, labelled=0.2):
    """Raise a random CTC head's blank logit so that a fraction `labelled` of the frames carry a label."""
    values, mask = pad(audios, next(model.parameters()).device)
    posteriors = model.ctc_posteriors(values, mask)  # log-softmax: differences between classes are the logits'
    log_probs, frames = posteriors.log_probs, posteriors.frame_lengths
    blank = model.ctc_head.blank_id
    margin = torch.cat([log_probs[..., :blank], log_probs[..., blank + 1 :]], -1).max(-1).values - log_probs[..., blank]
    valid = torch.arange(log_probs.shape[1], device=log_probs.device) < frames.to(log_probs.device)[:, None]
    model.ctc_head.out.bias[blank] += torch.quantile(margin[valid], 1 - labelled)


def pad(audios, device):
    values = torch.zeros(len(audios), max(len(a) for a in audios))
    mask = torch.zeros(values.shape, dtype=torch.long)
    for i, a in enumerate(audios):
        values[i, : len(a)] = torch.from_numpy(a)
        mask[i, : len(a)] = 1
    return values.to(device), mask.to(device)


# --- running variants --------------------------------------------------------------------------------------------------
def strip_row(row, pad_id):
    row = list(row)
    while row and row[-1] == pad_id:
        row.pop()
    return row


def run_generate(model, audios, batch, device, per_call=dict, **kwargs):
    """Token rows (padding stripped) and, with ctc_draft, summed speculative statistics. `per_call()`: keywords
    made afresh for each generate call (a new cache)."""
    pad_id = model.generation_config.pad_token_id
    rows, spec = [], {"passes": 0, "plain_passes": 0, "tokens": 0, "accepted": 0, "proposed": 0}
    draft = bool(kwargs.get("ctc_draft"))  # then generate's dict output carries the statistics
    for s in range(0, len(audios), batch):
        chunk = audios[s : s + batch]
        if batch == 1:
            out = model.generate(torch.from_numpy(chunk[0])[None].to(device), return_dict_in_generate=draft, **kwargs,
                                 **per_call())
        else:
            out = model.generate(*pad(chunk, device), return_dict_in_generate=draft, **kwargs, **per_call())
        stats = out.draft_stats if draft else None  # None too when the no-speech guard left no row to decode
        out = out.sequences if draft else out
        rows += [strip_row(r, pad_id) for r in out.tolist()]
        if stats is not None:
            spec["passes"] += stats["llm_forward_passes"]
            spec["plain_passes"] += max(stats["row_tokens"])  # plain greedy: one pass per step of the longest row
            spec["tokens"] += stats["new_tokens"]
            spec["accepted"] += sum(stats["accepted_tokens"].values())
            spec["proposed"] += sum(stats["proposed_tokens"].values())
    return rows, spec


def as_text(tokenizer, row, ends):
    """What the pipeline returns for these tokens: cut at the first eos/pad, special tokens dropped."""
    row = row[: next((i for i, t in enumerate(row) if t in ends), len(row))]
    return tokenizer.decode([t for t in row if t not in set(tokenizer.all_special_ids)], skip_special_tokens=True)


def noisy(row, vocab, rng, rate):
    """A draft with token errors at `rate`: 2/3 substitutions, 1/6 deletions, 1/6 insertions."""
    out = []
    for t in row:
        u = rng.random()
        if u < rate * 2 / 3:
            out.append(int(rng.integers(len(SPECIAL), vocab)))
        elif u < rate * 5 / 6:
            continue
        elif u < rate:
            out += [t, int(rng.integers(len(SPECIAL), vocab))]
        else:
            out.append(t)
    return out


@torch.no_grad()
def prefill_cost(model, audios, device, repeats=3):
    """One LLM forward over the packed prompts of `audios`: positions, ms (median), estimated GFLOPs."""
    values, mask = pad(audios, device)
    speech = model.encode_speech(values, mask)
    embeds, prompt_mask, positions, _ = model.pack_prompt(speech.embeds, speech.lengths, left_pad=True)
    kwargs = {"use_cache": False}
    if "logits_to_keep" in inspect.signature(model.language_model.forward).parameters:
        kwargs["logits_to_keep"] = 1
    times = []
    for _ in range(repeats):
        _, wall, _ = measure(lambda: model.language_model(inputs_embeds=embeds, attention_mask=prompt_mask,
                                                          position_ids=positions, **kwargs), device)
        times.append(wall)
    embedding = model.language_model.get_input_embeddings().weight.numel()
    params = sum(p.numel() for p in model.language_model.parameters()) - embedding
    seconds = sum(len(a) for a in audios) / RATE
    real = int(prompt_mask.sum())
    return {
        "speech_positions_per_audio_s": float(speech.lengths.sum()) / seconds,
        "prompt_positions_real": real,
        "prompt_positions_padded": int(prompt_mask.numel()),
        "prefill_ms": 1000 * sorted(times)[len(times) // 2],
        "prefill_gflops_est": 2 * params * real / 1e9,
    }


# --- paper-scale shape on CUDA ---------------------------------------------------------------------------------------
@torch.no_grad()
def paper_scale(device, dtype=torch.bfloat16, config=None, seconds=5.0, new_tokens=64, log=print):
    """HuBERT-base + 3.6B GPT-NeoX (random weights): decode ms/token vs LLM weight bytes / measured bandwidth."""
    config = config or HubertGptConfig(bridge_type="ctc")  # defaults: HuBERT base + rinna 3.6B's shape
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = HubertGptForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.language_model.parameters())
    # memory bandwidth: a device-to-device copy reads and writes every byte
    n = (256 if device.type == "cuda" else 4) * 2**20
    a = torch.empty(n, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    _, wall, _ = measure(lambda: [b.copy_(a) for _ in range(10)], device)
    bandwidth = 2 * a.numel() * a.element_size() * 10 / wall  # bytes/s
    del a, b
    result = {"llm_weight_bytes": weight_bytes, "bandwidth_GBps": bandwidth / 1e9,
              "bound_ms_per_token": 1000 * weight_bytes / bandwidth, "dtype": str(dtype).replace("torch.", "")}
    for batch in (1, 16):
        audio = [make_audio(seconds, seed=i) for i in range(batch)]
        values, mask = pad(audio, device)
        values = values.to(dtype)
        force = dict(min_new_tokens=new_tokens, max_new_tokens=new_tokens)  # no early eos with random weights
        model.generate(values, mask, max_new_tokens=2)  # warm-up
        _, one, _ = measure(lambda: model.generate(values, mask, min_new_tokens=1, max_new_tokens=1), device)
        tokens, full, peak = measure(lambda: model.generate(values, mask, **force), device)
        per_token = (full - one) / (new_tokens - 1)
        result[f"b{batch}_decode_ms_per_token"] = 1000 * per_token
        result[f"b{batch}_decode_vs_bound"] = 1000 * per_token / result["bound_ms_per_token"]
        result[f"b{batch}_peak_MiB"] = peak
        if batch == 1:
            # verifying a right draft: one pass for what plain greedy does in `new_tokens` passes
            draft = [tokens[0, :-1].tolist()]
            spec_out, spec_wall, _ = measure(lambda: model.generate(values, mask, ctc_draft=True, draft_override=draft,
                                                                    return_dict_in_generate=True, **force), device)
            result["b1_spec_oracle_speedup"] = full / spec_wall
            result["b1_spec_oracle_passes"] = spec_out.draft_stats["llm_forward_passes"]
        log(f"  paper-scale b{batch}: {1000 * per_token:.2f} ms/token, bound {result['bound_ms_per_token']:.2f} ms")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# --- the benchmark -----------------------------------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller model, 16 short utterances (< 1 min on 2 cores)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--model", help="a trained hubert-gpt folder instead of random weights")
    parser.add_argument("--dataset", help="a datasets.save_to_disk folder: benchmark on its utterances (with --model)")
    parser.add_argument("--split", default="test", help="the --dataset split (default test)")
    parser.add_argument("--utterances", type=int, help="how many utterances (default 16 quick, 48 full)")
    parser.add_argument("--seconds", type=float, nargs=2, help="utterance length range (default 1-4 s quick, 2-8 s)")
    parser.add_argument("--width", type=int, help="random encoder width (default 128 quick, 256 full)")
    parser.add_argument("--layers", type=int, help="random encoder layers (default 4 quick, 6 full)")
    parser.add_argument("--llm-width", type=int, help="random LLM width (default 512 quick, 1024 full)")
    parser.add_argument("--llm-layers", type=int, help="random LLM layers (default 8 quick, 12 full)")
    parser.add_argument("--vocab", type=int, help="random model vocabulary (default 1000 quick, 4000 full)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int,
                        help="CPU threads (default: torch's, one per core; 1 on a machine busy with other jobs)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each variant this many times and keep the fastest (default 1; 3 for figures to quote)")
    parser.add_argument("--no-paper-scale", action="store_true", help="skip the paper-scale shape on CUDA")
    parser.add_argument("--paper-scale-tiny", action="store_true", help=argparse.SUPPRESS)  # code-path smoke test
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    quick = args.quick
    n = args.utterances or (16 if quick else 48)
    low, high = args.seconds or ((1.0, 4.0) if quick else (2.0, 8.0))
    width, layers = args.width or (128 if quick else 256), args.layers or (4 if quick else 6)
    llm_width, llm_layers = args.llm_width or (512 if quick else 1024), args.llm_layers or (8 if quick else 12)
    vocab = args.vocab or (1000 if quick else 4000)
    device = torch.device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    logging.getLogger("modeling_hubert_gpt").setLevel(logging.ERROR)  # "every frame ... blank" of random CTC heads
    warnings.filterwarnings("ignore", category=UserWarning)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    timed = lambda fn: measure(fn, device, args.repeat)  # noqa: E731
    started = time.perf_counter()

    if args.dataset and not args.model:
        parser.error("--dataset needs --model: random weights transcribe speech as well as noise")
    audios = dataset_audios(args.dataset, args.split, n) if args.dataset else make_audios(n, low, high, args.seed)
    audio_s = sum(len(a) for a in audios) / RATE
    if args.model:
        from transformers import AutoProcessor

        model = HubertGptForConditionalGeneration.from_pretrained(args.model).to(device).eval()
        processor = AutoProcessor.from_pretrained(args.model)
        tokenizer, extractor = processor.tokenizer, processor.feature_extractor
        models = {model.config.bridge_type: model}
        model_label = args.model + (f" on {args.dataset} [{args.split}]" if args.dataset else "")
    else:
        conv, ctc = random_models(width, layers, llm_width, llm_layers, vocab, args.seed)
        conv, ctc = conv.to(device), ctc.to(device)
        calibrate_blank(ctc, audios[:8])
        tokenizer, extractor = word_tokenizer(vocab), feature_extractor()
        models = {"conv": conv, "ctc": ctc}
        model_label = f"random: encoder {width}x{layers}, LLM {llm_width}x{llm_layers}, vocab {vocab}"
    # What generate() gets: each utterance through the model's own feature extractor (a trained recipe normalises
    # per utterance), as the pipeline does inside its timed calls; padding these with zeros is what a batch is.
    inputs = [extractor(a, sampling_rate=RATE)["input_values"][0].astype(np.float32) for a in audios]
    llm_params = sum(p.numel() for p in next(iter(models.values())).language_model.parameters())
    log(f"{n} utterances, {audio_s:.1f} s of audio; model: {model_label} (LLM {llm_params / 1e6:.2f} M params); "
        f"device {device}")

    rows, texts, failures = [], {}, []
    ends = {tokenizer.eos_token_id, tokenizer.pad_token_id}

    def record(name, bridge, batch, wall, peak, tokens=None, text=None, baseline=None, spec=None):
        text = text if text is not None else [as_text(tokenizer, r, ends) for r in tokens]
        same = baseline is None or (text == baseline[0] and (tokens is None or tokens == baseline[1]))
        if not same:
            bad = [i for i in range(len(text)) if text[i] != baseline[0][i] or (tokens and tokens[i] != baseline[1][i])]
            failures.append(f"{name}: utterances {bad} differ from the baseline")
        row = {"variant": name, "bridge": bridge, "batch": batch, "wall_s": wall, "rtf": wall / audio_s,
               "audio_s_per_s": audio_s / wall, "peak_MiB": peak, "identical": same}
        if spec:
            row.update(passes=spec["passes"], passes_per_token=spec["passes"] / max(spec["plain_passes"], 1),
                       accepted_per_pass=spec["accepted"] / max(spec["passes"], 1))
        rows.append(row)
        log(f"  {name:<28} {wall:7.2f} s" + ("" if same else "   <-- DIFFERS FROM BASELINE"))
        return text

    def warm(model, **kwargs):
        model.generate(torch.from_numpy(inputs[0])[None].to(device), max_new_tokens=2, **kwargs)

    baselines = {}
    for bridge, model in models.items():
        warm(model)
        label = "baseline (1 at a time)" if bridge == "conv" else "ctc baseline (1 at a time)"
        (tokens, _), wall, peak = timed(lambda: run_generate(model, inputs, 1, device))
        text = record(label, bridge, 1, wall, peak, tokens)
        baselines[bridge] = (text, tokens, wall)
        for batch in (4, 16):
            (out, _), wall, peak = timed(lambda: run_generate(model, inputs, batch, device))
            record(f"{bridge} generate b{batch}", bridge, batch, wall, peak, out, baseline=baselines[bridge])
        if bridge == next(iter(models)):  # batch 16 with one CPU speed-up switched off at a time
            (out, _), wall, peak = timed(lambda: run_generate(model, inputs, 16, device, per_call=lambda: {
                cache_keyword(model.language_model)[0]: DynamicCache(config=model.language_model.config)}))
            record(f"{bridge} generate b16, DynamicCache", bridge, 16, wall, peak, out, baseline=baselines[bridge])
            grouping, model.audio_tower.max_padding = model.audio_tower.max_padding, None
            try:
                (out, _), wall, peak = timed(lambda: run_generate(model, inputs, 16, device))
            finally:
                model.audio_tower.max_padding = grouping
            record(f"{bridge} generate b16, encoder in one call", bridge, 16, wall, peak, out, baseline=baselines[bridge])
        if bridge == "conv" or len(models) == 1:
            asr = HubertGptASRPipeline(model=model, tokenizer=tokenizer, feature_extractor=extractor, device=device)
            for batch in (1, 4, 16):
                out, wall, peak = timed(lambda: [o["text"] for o in asr(audios, batch_size=batch)])
                record(f"{bridge} pipeline b{batch}", bridge, batch, wall, peak, text=out, baseline=(baselines[bridge][0], None))

    # --- speculative decoding --------------------------------------------------------------------------------------
    spec_summary = {}

    def speculate(model, bridge, baseline):
        spec_kwargs = dict(ctc_draft=True, tokenizer=tokenizer)  # the tokenizer: for a character-level draft head
        warm(model, **spec_kwargs)
        tag = f"{bridge} "
        result = {}
        for batch in (1, 16):
            (out, spec), wall, peak = timed(lambda: run_generate(model, inputs, batch, device, **spec_kwargs))
            record(f"{tag}spec b{batch}", bridge, batch, wall, peak, out, baseline=baseline, spec=spec)
            result[f"b{batch}"] = dict(spec, wall_s=wall)
        rng = np.random.default_rng(args.seed)
        vocab_size = model.config.text_config.vocab_size
        drafts_by_name = {"oracle": baseline[1]}
        for rate in NOISE_RATES:
            drafts_by_name[f"noisy {round(100 * rate)}%"] = [noisy(r, vocab_size, rng, rate) for r in baseline[1]]
        for name, drafts in drafts_by_name.items():
            # the draft without its final eos (the verifier appends eos to every draft)
            drafts = [d[:-1] if d and d[-1] == tokenizer.eos_token_id else d for d in drafts]

            def run():
                out, spec = [], {"passes": 0, "plain_passes": 0, "accepted": 0}
                for audio, draft in zip(inputs, drafts):
                    generated = model.generate(torch.from_numpy(audio)[None].to(device), ctc_draft=True,
                                               draft_override=[draft], return_dict_in_generate=True)
                    row, stats = generated.sequences, generated.draft_stats or {
                        "llm_forward_passes": 0, "new_tokens": 0, "accepted_tokens": {}}  # None: taken for silence
                    spec["passes"] += stats["llm_forward_passes"]
                    spec["plain_passes"] += stats["new_tokens"]
                    spec["accepted"] += sum(stats["accepted_tokens"].values())
                    out.append(strip_row(row[0].tolist(), model.generation_config.pad_token_id))
                return out, spec

            (out, spec), wall, peak = timed(run)
            record(f"{tag}spec b1, {name} draft", bridge, 1, wall, peak, out, baseline=baseline, spec=spec)
            result[name] = dict(spec, wall_s=wall)
        return result

    # the first model with a CTC head drafts: the ctc bridge, or a trained conv bridge with its draft head
    spec_source = next((bridge for bridge, model in models.items() if model.ctc_head is not None), None)
    if spec_source:
        spec_summary[spec_source] = speculate(models[spec_source], spec_source, baselines[spec_source])

    # --- conv vs CTC bridge: prompt length and prefill ----------------------------------------------------------------
    prefill = {bridge: prefill_cost(model, inputs[:16], device) for bridge, model in models.items()}

    paper = None
    if device.type == "cuda" and not args.no_paper_scale:
        log("paper-scale shape (HuBERT-base + 3.6B GPT-NeoX, random weights, bf16) ...")
        paper = paper_scale(device, log=log)
    elif args.paper_scale_tiny:
        paper = paper_scale(device, dtype=torch.float32, new_tokens=8, seconds=1.0, log=log,
                            config=tiny_config("ctc", width=32, layers=2))

    # --- report --------------------------------------------------------------------------------------------------------
    base_wall = baselines[next(iter(models))][2]
    by_name = {r["variant"]: r for r in rows}
    identical = not failures
    result = {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                 f" ({torch.get_num_threads()} threads)"),
        "model": model_label,
        "utterances": n,
        "audio_seconds": audio_s,
        "repeat": args.repeat,
        "identical": identical,
        "failures": failures,
        "batched_speedup_16": None,
        "spec_passes_per_token": None,
        "spec_speedup": None,
        "spec_draft": "the model's own CTC draft" if spec_source else None,
        "rows": rows,
        "prefill": prefill,
        "paper_scale": paper,
        "total_wall_s": None,
    }
    first = next(iter(models))
    if f"{first} generate b16" in by_name:
        result["batched_speedup_16"] = base_wall / by_name[f"{first} generate b16"]["wall_s"]
        b16 = by_name[f"{first} generate b16"]["wall_s"]
        result["appending_cache_speedup_16"] = by_name[f"{first} generate b16, DynamicCache"]["wall_s"] / b16
        result["encoder_groups_speedup_16"] = by_name[f"{first} generate b16, encoder in one call"]["wall_s"] / b16
    if spec_source:
        tag = f"{spec_source} "
        b1 = spec_summary[spec_source]["b1"]
        result["spec_passes_per_token"] = b1["passes"] / max(b1["plain_passes"], 1)
        result["spec_accepted_per_pass"] = b1["accepted"] / max(b1["passes"], 1)
        result["spec_speedup"] = baselines[spec_source][2] / by_name[f"{tag}spec b1"]["wall_s"]
        b16 = spec_summary[spec_source]["b16"]
        result["spec_passes_per_token_b16"] = b16["passes"] / max(b16["plain_passes"], 1)
        for name in ("oracle", *(f"noisy {round(100 * r)}%" for r in NOISE_RATES)):
            s = spec_summary[spec_source][name]
            key = name.replace(" ", "").replace("%", "")
            result[f"spec_passes_per_token_{key}"] = s["passes"] / max(s["plain_passes"], 1)
            result[f"spec_speedup_{key}"] = baselines[spec_source][2] / s["wall_s"]
    result["total_wall_s"] = time.perf_counter() - started
    result["max_rss_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"\nhubert-gpt inference benchmark - {result['device']}; {model_label}; {n} utterances, {audio_s:.1f} s audio"
          + (f"; fastest of {result['repeat']} runs" if result["repeat"] > 1 else ""))
    header = f"{'variant':<34}{'batch':>6}{'wall s':>9}{'RTF':>8}{'audio s/s':>11}{'vs base':>9}{'peak MiB':>10}" \
             f"{'passes/tok':>11}{'acc/pass':>10}  same"
    print(header)
    print("-" * len(header))
    for r in rows:
        base = baselines[r["bridge"]][2]
        extra = (f"{r['passes_per_token']:>11.2f}{r['accepted_per_pass']:>10.2f}" if "passes" in r else " " * 21)
        print(f"{r['variant']:<34}{r['batch']:>6}{r['wall_s']:>9.2f}{r['rtf']:>8.3f}{r['audio_s_per_s']:>11.1f}"
              f"{base / r['wall_s']:>8.2f}x{r['peak_MiB']:>10.1f}{extra}  {'yes' if r['identical'] else 'NO'}")
    print("\nbridge   speech positions/audio s   prompt positions real/padded (16 utts)   prefill ms   prefill GFLOP")
    for bridge, p in prefill.items():
        print(f"{bridge:<8} {p['speech_positions_per_audio_s']:>26.1f}   {p['prompt_positions_real']:>17}/"
              f"{p['prompt_positions_padded']:<22} {p['prefill_ms']:>10.1f}   {p['prefill_gflops_est']:>13.3f}")
    if paper:
        print("\npaper-scale shape: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in paper.items()))
    print("\nsummary: " + ", ".join(f"{k} {result[k]:.3f}" if isinstance(result[k], float) else f"{k} {result[k]}"
                                  for k in ("batched_speedup_16", "appending_cache_speedup_16",
                                            "encoder_groups_speedup_16", "spec_passes_per_token", "spec_speedup",
                                            "spec_passes_per_token_noisy15", "spec_speedup_noisy15",
                                            "spec_passes_per_token_oracle", "spec_speedup_oracle", "identical",
                                            "total_wall_s") if k in result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if failures:
        print("\n" + "!" * 80 + "\nFAILED: outputs differ from the baseline:\n  " + "\n  ".join(failures) + "\n" + "!" * 80,
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
