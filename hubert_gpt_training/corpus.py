"""A synthetic Japanese speech corpus, built offline: slot-grammar sentences spoken by pyopenjtalk.

Test sentences are NEW sentences (split by a hash of the text) made of words that training covers, spoken by
pseudo-speakers whose speed/pitch lie in ranges training never uses. Writes a `datasets` folder (train / dev /
test; an `Audio` column of 16 kHz WAV bytes, a `transcription` column, and each utterance's voice: `speed`,
`half_tone`) that train_hf.py reads like any corpus.

  python -m hubert_gpt_training.corpus --hours 2 --out data        # prints the folder it wrote (or reused)

A hotword test set (`build_hotword_set`, `--hotword_set N`): N test-like sentences whose person or place slot holds a
name that never occurs in the corpus's training text but is written only with characters that do (`held_out_names`),
spoken with the test split's held-out voices; its `names` column says which name each utterance holds, and
`distractors` in hotwords.json lists 20 other held-out names that none of them says (for leakage).

A name pool (`--name_pool N`): half of the training sentences (every template has a person or place slot) hold one of
N two-kanji surnames (`name_pool`: common surname characters, never one of NAME_CANDIDATES) instead, so the model
hears far more sound sequences than the grammar's 56 words: what a model needs to spell a name it has never heard.
The dev and test splits stay the grammar's.
"""

import argparse
import hashlib
import io
import itertools
import json
import math
import os
import random
from multiprocessing import Pool

import numpy as np

SAMPLING_RATE = 16000
FORMAT = 2  # bump when the folder's layout changes, so stale caches are not reused
WORDS = {
    "time": ["今日は", "明日は", "昨日は", "毎朝", "毎晩", "週末に", "午後", "夕方に"],
    "person": ["田中さんが", "山田さんが", "私が", "先生が", "母が", "父が", "友達が", "子供が", "兄が", "姉が"],
    "place": ["駅で", "学校で", "公園で", "図書館で", "会社で", "病院で", "大阪で", "東京で", "家で", "店で"],
    "object": ["本を", "水を", "手紙を", "新聞を", "写真を", "野菜を", "魚を", "映画を", "音楽を", "料理を", "服を", "傘を"],
    "verb": ["読みます", "読みました", "読みません", "見ます", "見ました", "買います", "買いました", "買いません",
             "作ります", "作りました", "聞きます", "聞きました", "書きます", "書きました", "食べます", "食べました"],
}
TEMPLATES = [
    ("time", "person", "place", "object", "verb"),
    ("person", "place", "object", "verb"),
    ("time", "person", "object", "verb"),
    ("time", "place", "object", "verb"),
    ("person", "object", "verb"),
]
# Pseudo-speakers: training never uses the speed/pitch ranges the test split is spoken with.
TRAIN_VOICES = {"speed": [(0.88, 0.96), (1.04, 1.12)], "half_tone": [(-3.0, -1.0), (1.0, 3.0)]}
HELD_OUT_VOICES = {"speed": [(0.97, 1.03)], "half_tone": [(-0.8, 0.8)]}
SPLITS = (("train", 80), ("dev", 90), ("test", 100))  # cumulative percent of the sentence hash


def all_sentences():
    """Every sentence the grammar makes (about 150 thousand), in a fixed order."""
    return ["".join(words) for template in TEMPLATES for words in itertools.product(*(WORDS[s] for s in template))]


def split_of(sentence):
    """train / dev / test by a hash of the sentence: a test sentence is never trained on."""
    bucket = int(hashlib.sha1(sentence.encode("utf-8")).hexdigest(), 16) % 100
    return next(name for name, upper in SPLITS if bucket < upper)


def _uniform_from(ranges, rng):
    low, high = ranges[rng.randrange(len(ranges))]
    return rng.uniform(low, high)


def plan(hours, seed, name_pool=0):
    """(split, sentence, speed, half_tone) per utterance; ~2.2 s per sentence at speed 1. With `name_pool`, half the
    training sentences are instead `named_sentence`s holding one of that many pool names."""
    rng = random.Random(seed)
    pool = {name: [] for name, _ in SPLITS}
    for sentence in all_sentences():
        pool[split_of(sentence)].append(sentence)
    for sentences in pool.values():
        rng.shuffle(sentences)
    total = int(hours * 3600 / 2.2)
    counts = {"train": int(total * 0.9), "dev": int(total * 0.05), "test": int(total * 0.05)}
    names = name_pool_of(name_pool, seed)
    rows = []
    for name, count in counts.items():
        voices = TRAIN_VOICES if name == "train" else HELD_OUT_VOICES
        for sentence in pool[name][:count]:
            if name == "train" and names and rng.random() < 0.5:  # every template has a person or place slot
                sentence, _ = named_sentence(names, rng)
            rows.append((name, sentence, round(_uniform_from(voices["speed"], rng), 3),
                         round(_uniform_from(voices["half_tone"], rng), 2)))
    return rows


SURNAME_FIRST = "山川田中本野村木林森井石原藤高小大西東北南上下松竹青白黒金岡島池沢宮谷内清日新真今友生水"
SURNAME_SECOND = "山川田中本野村木林森井原島沢谷岡内口崎部藤尾"


def name_pool_of(count, seed=0):
    """`count` two-kanji surnames (first character from SURNAME_FIRST, second from SURNAME_SECOND), none of them one
    of NAME_CANDIDATES (the hotword set's held-out names), in an order fixed by the seed."""
    names = [a + b for a in SURNAME_FIRST for b in SURNAME_SECOND if a != b and a + b not in NAME_CANDIDATES]
    if count > len(names):
        raise ValueError(f"name_pool can be at most {len(names)} names, got {count}")
    random.Random(seed).shuffle(names)
    return names[:count]


def named_sentence(names, rng):
    """(sentence, name): a sentence of a template with a person or place slot, that slot ("<name>さんが" or "<name>で")
    holding one of `names`."""
    template = rng.choice([t for t in TEMPLATES if "person" in t or "place" in t])
    slot = rng.choice([s for s in ("person", "place") if s in template])
    name = rng.choice(names)
    words = [name + ("さんが" if s == "person" else "で") if s == slot else rng.choice(WORDS[s]) for s in template]
    return "".join(words), name


SPEED_FACTORS = (0.9, 1.0, 1.1)  # --speed_perturb: Kaldi's classic three-way speed perturbation


def perturb_speed(audio, factor, sampling_rate=SAMPLING_RATE):
    """`audio` (1-D float) played `factor` times as fast (pitch and tempo together, as a tape would), with
    torchaudio.functional.speed: about len / factor samples."""
    import torch
    import torchaudio.functional

    if factor == 1.0:
        return audio
    faster, _ = torchaudio.functional.speed(torch.as_tensor(audio, dtype=torch.float32)[None], sampling_rate, factor)
    return faster[0].numpy()


def synthesize(row, augment=False, seed=0, speed_perturb=False):
    """One planned row -> (row, WAV bytes at 16 kHz). Training rows get, with `augment`, white noise and, with
    `speed_perturb`, a speed factor from SPEED_FACTORS (both drawn from the sentence and the seed)."""
    import pyopenjtalk
    import soundfile
    from scipy.signal import resample_poly

    split, text, speed, half_tone = row
    audio, rate = pyopenjtalk.tts(text, speed=speed, half_tone=half_tone)  # float64 in int16 range, 48 kHz
    audio = resample_poly(audio / 32768.0, SAMPLING_RATE, rate)
    rng = np.random.default_rng([seed, int(hashlib.sha1(text.encode()).hexdigest(), 16) % 2**32])
    if speed_perturb and split == "train":
        audio = perturb_speed(audio, SPEED_FACTORS[rng.integers(len(SPEED_FACTORS))])
    if augment and split == "train":
        audio = add_noise(audio, rng)
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(audio, -1, 1).astype(np.float32), SAMPLING_RATE, format="WAV", subtype="PCM_16")
    return row, buffer.getvalue()


def add_noise(audio, rng, snr_db=(10.0, 30.0)):
    """White noise at a random SNR (dB) in the given range."""
    snr = rng.uniform(*snr_db)
    power = np.mean(audio**2) + 1e-12
    return audio + rng.standard_normal(len(audio)) * math.sqrt(power / 10 ** (snr / 10))


def build(hours=2.0, out="data", seed=0, augment=False, workers=None, speed_perturb=False, name_pool=0):
    """Build (or reuse) the corpus; returns its folder."""
    import datasets
    from tqdm import tqdm

    fields = [FORMAT, hours, seed, augment, WORDS, TEMPLATES, TRAIN_VOICES, HELD_OUT_VOICES]
    fields += ([SPEED_FACTORS] if speed_perturb else []) + ([name_pool_of(name_pool, seed)] if name_pool else [])
    key = hashlib.sha1(json.dumps(fields).encode())
    folder = os.path.join(out, f"ja-synth-{hours:g}h-seed{seed}-{key.hexdigest()[:8]}")
    if os.path.exists(os.path.join(folder, "dataset_dict.json")):
        return folder
    rows = plan(hours, seed, name_pool)
    columns = {name: {"audio": [], "transcription": [], "speed": [], "half_tone": []} for name, _ in SPLITS}
    with Pool(workers or os.cpu_count()) as pool:
        jobs = pool.imap(_synthesize_job, [(row, augment, seed, speed_perturb) for row in rows], chunksize=16)
        for (split, text, speed, half_tone), wav in tqdm(jobs, total=len(rows), desc="synthesising", unit="utt"):
            for key, value in (("audio", {"bytes": wav, "path": None}), ("transcription", text), ("speed", speed),
                               ("half_tone", half_tone)):
                columns[split][key].append(value)
    corpus = datasets.DatasetDict({
        name: datasets.Dataset.from_dict(data).cast_column("audio", datasets.Audio(SAMPLING_RATE, decode=False))
        for name, data in columns.items()
    })
    tmp = folder + ".partial"
    corpus.save_to_disk(tmp)
    os.replace(tmp, folder)  # only a complete corpus is ever reused
    return folder


def _synthesize_job(args):
    return synthesize(*args)


# --- a hotword test set ----------------------------------------------------------------------------------------------
NAME_CANDIDATES = ["山本", "中野", "大野", "本田", "中山", "大山", "野田", "東山", "真田", "水野", "今田", "中田", "新田",
                   "大田", "本山", "山中", "東野", "日野", "大友", "友田", "生田", "園田", "野中", "中本", "山野", "新山",
                   "館山", "野本", "東田", "京田", "真野", "大本", "田中", "山田"]  # surnames / place names
DISTRACTORS = 20


def held_out_names(train_texts, seed=0):
    """The NAME_CANDIDATES written only with characters of `train_texts` and found in none of them, shuffled."""
    chars = set("".join(train_texts))
    names = [n for n in NAME_CANDIDATES if set(n) <= chars and not any(n in t for t in train_texts)]
    random.Random(seed).shuffle(names)
    return names


def hotword_plan(train_texts, count, seed=0):
    """(rows (split "hotwords", sentence, speed, half_tone), names per row, distractors): each sentence fills its person
    slot ("<name>さんが") or its place slot ("<name>で") with a held-out name; the voices are the test split's."""
    names = held_out_names(train_texts, seed)
    if len(names) <= DISTRACTORS:
        raise ValueError(f"only {len(names)} held-out names; need more than {DISTRACTORS} (spoken + distractors)")
    spoken, distractors = names[DISTRACTORS:], names[:DISTRACTORS]
    rng = random.Random(seed)
    rows, said = [], []
    for _ in range(count):
        sentence, name = named_sentence(spoken, rng)
        rows.append(("hotwords", sentence, round(_uniform_from(HELD_OUT_VOICES["speed"], rng), 3),
                     round(_uniform_from(HELD_OUT_VOICES["half_tone"], rng), 2)))
        said.append([name])
    return rows, said, distractors


def build_hotword_set(corpus, count=100, seed=0, workers=None):
    """Build (or reuse) `<corpus>-hotwords<count>` next to a corpus folder; returns its folder."""
    import datasets

    folder = f"{corpus.rstrip('/')}-hotwords{count}-seed{seed}"
    if os.path.exists(os.path.join(folder, "hotwords.json")):
        return folder
    train_texts = datasets.load_from_disk(corpus)["train"]["transcription"]
    rows, said, distractors = hotword_plan(train_texts, count, seed)
    with Pool(workers or os.cpu_count()) as pool:
        wavs = [wav for _, wav in pool.imap(_synthesize_job, [(row, False, seed) for row in rows], chunksize=8)]
    data = datasets.Dataset.from_dict({
        "audio": [{"bytes": w, "path": None} for w in wavs], "transcription": [r[1] for r in rows],
        "names": said, "speed": [r[2] for r in rows], "half_tone": [r[3] for r in rows],
    }).cast_column("audio", datasets.Audio(SAMPLING_RATE, decode=False))
    tmp = folder + ".partial"
    data.save_to_disk(tmp)
    with open(os.path.join(tmp, "hotwords.json"), "w") as f:
        json.dump({"spoken": sorted({n for names in said for n in names}), "distractors": distractors,
                   "corpus": os.path.abspath(corpus)}, f, ensure_ascii=False, indent=1)
    os.replace(tmp, folder)
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=2.0, help="total audio, all splits (default 2)")
    parser.add_argument("--out", default="data", help="parent folder (default data/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment", action="store_true", help="noise at a random SNR on training audio")
    parser.add_argument("--speed_perturb", action="store_true",
                        help="training audio at speed 0.9, 1.0 or 1.1 (torchaudio), one drawn per sentence")
    parser.add_argument("--name_pool", type=int, default=0, metavar="N",
                        help="half the training sentences hold one of N surnames in their person or place slot")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--hotword_set", type=int, default=0, metavar="N",
                        help="also build a hotword test set of N utterances next to the corpus (prints its folder too)")
    args = parser.parse_args(argv)
    folder = build(args.hours, args.out, args.seed, args.augment, args.workers, args.speed_perturb, args.name_pool)
    print(folder)
    if args.hotword_set:
        print(build_hotword_set(folder, args.hotword_set, args.seed, args.workers))


if __name__ == "__main__":
    main()
