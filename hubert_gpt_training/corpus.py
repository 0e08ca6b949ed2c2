"""A synthetic Japanese speech corpus, built offline: slot-grammar sentences spoken by two TTS engines.

Sentences come from a slot grammar (times and dates, people, places, objects, counts, verbs: several hundred words)
and, in `NAMED_SHARE` of the training sentences, a surname of `japanese-personal-name-dataset` in the person or place
slot, spoken by its reading. Test sentences are NEW sentences (split by a hash of the text) made of trained words.

Voices (`hubert_gpt_training.voices`): pyopenjtalk pseudo-speakers (speed / pitch) and Kokoro-82M voices and blends
of two. Training never hears the test voices: openjtalk speeds / pitches in other ranges, and Kokoro's `jf_tebukuro`
(alone or blended) is held out of training, which mixes the other four (`TRAIN_KOKORO`, `HELD_OUT_KOKORO`).

Splits: train / dev / test, and four test conditions: `test_noisy` (the test split's Kokoro utterances with white,
pink, babble, hum or tone noise at 10 dB SNR), `test_reverb` (in simulated rooms training never used), `test_phone`
(over a narrowband telephone line), `test_katakana` (sentences holding a katakana loanword that no training text
holds, written with trained characters). Columns: `audio` (16 kHz WAV bytes), `transcription`, `voice`
(`voices.voice_label`).

  python -m hubert_gpt_training.corpus --hours 2 --out data        # prints the folder it wrote (or reused)

A hotword test set (`build_hotword_set`, `--hotword_set N`): N test-like sentences whose person or place slot holds a
name that never occurs in the corpus's training text but is written only with characters that do (`held_out_names`),
spoken with the test split's held-out voices; its `names` column says which name each utterance holds, and
`distractors` in hotwords.json lists 20 other held-out names that none of them says (for leakage).
"""

import argparse
import hashlib
import io
import itertools
import json
import os
import random
from multiprocessing import Pool

import numpy as np

from .voices import SAMPLING_RATE, speak, voice_label

FORMAT = 3  # bump when the folder's layout changes, so stale caches are not reused
WORDS = {
    "time": ["今日は", "明日は", "昨日は", "毎朝", "毎晩", "週末に", "午後", "夕方に", "来週", "先週", "今年", "去年",
             "月曜日に", "水曜日に", "金曜日に", "日曜日に", "一時に", "三時に", "七時半に", "十時に", "九時十五分に",
             "五月に", "八月に", "十二月に", "二十日に", "朝早く", "夜遅く", "さっき", "いつも", "時々"],
    "person": ["田中さんが", "山田さんが", "私が", "先生が", "母が", "父が", "友達が", "子供が", "兄が", "姉が", "弟が",
               "妹が", "祖母が", "祖父が", "彼が", "彼女が", "医者が", "学生が", "社長が", "店員が", "隣の人が", "家族が"],
    "place": ["駅で", "学校で", "公園で", "図書館で", "会社で", "病院で", "大阪で", "東京で", "家で", "店で", "京都で",
              "名古屋で", "横浜で", "札幌で", "福岡で", "神戸で", "仙台で", "広島で", "空港で", "銀行で", "郵便局で",
              "大学で", "美術館で", "海で", "山で", "川で", "台所で", "部屋で", "ホテルで", "レストランで", "スーパーで",
              "コンビニで", "デパートで", "カフェで"],
    "object": ["本を", "水を", "手紙を", "新聞を", "写真を", "野菜を", "魚を", "映画を", "音楽を", "料理を", "服を", "傘を",
               "肉を", "果物を", "お茶を", "牛乳を", "卵を", "花を", "鍵を", "靴を", "帽子を", "時計を", "切符を", "雑誌を",
               "辞書を", "地図を", "荷物を", "お土産を", "弁当を", "薬を", "コーヒーを", "パンを", "カメラを", "テレビを",
               "パソコンを", "ケーキを", "ジュースを", "シャツを", "ノートを", "ペンを", "バッグを", "チケットを",
               "ラジオを", "ピアノを", "ギターを", "ボールを", "タオルを", "スマホを", "メールを", "ニュースを",
               "ゲームを", "アイスを", "サラダを", "スープを", "カレーを", "ピザを", "ドレスを", "ベルトを", "マスクを",
               "コートを", "セーターを", "スカートを", "ネクタイを", "テーブルを", "ソファーを", "ベッドを", "カップを",
               "ナプキンを", "フライパンを", "ポケットを", "ミキサーを", "チョコレートを", "レシートを", "メモを",
               "ハンガーを", "リモコンを", "ヘルメットを", "ワインを", "ビールを", "ドーナツを", "エプロンを"],
    "count": ["一つ", "二つ", "三つ", "四つ", "五つ", "たくさん", "少し", "全部", "もう一度", "また"],
    "verb": ["読みます", "読みました", "読みません", "見ます", "見ました", "買います", "買いました", "買いません",
             "作ります", "作りました", "聞きます", "聞きました", "書きます", "書きました", "食べます", "食べました",
             "飲みます", "飲みました", "使います", "使いました", "探します", "探しました", "待ちます", "送りました",
             "借ります", "借りました", "返しました", "洗います", "洗いました", "運びます", "運びました", "忘れました",
             "見つけました", "選びました", "売りました", "売ります", "持ってきました", "届けました", "頼みました",
             "片付けました", "撮りました", "直しました"],
}
TEMPLATES = [
    ("time", "person", "place", "object", "verb"),
    ("person", "place", "object", "verb"),
    ("time", "person", "object", "verb"),
    ("time", "place", "object", "verb"),
    ("person", "object", "verb"),
    ("time", "person", "object", "count", "verb"),
    ("person", "place", "object", "count", "verb"),
]
# Katakana loanwords no training text holds (written with trained katakana): the test_katakana split.
HELD_OUT_KATAKANA = ["コピーを", "ソースを", "ナイフを", "フォークを", "カードを", "ポスターを", "ミルクを", "バターを",
                     "チーズを", "トマトを", "レモンを", "メロンを", "バナナを", "ドアを", "ランプを", "ハンカチを",
                     "スプーンを", "ケースを", "ボタンを", "ペンキを", "テープを", "リボンを", "ブーツを", "ジャムを"]
NAMED_SHARE = 0.3  # training sentences whose person or place slot holds a dataset surname
SURNAMES = 400  # that many of the dataset's most common two-character surnames (never a NAME_CANDIDATES name)
# Pseudo-speakers: training never uses the speed/pitch ranges, nor the Kokoro voice, the test splits are spoken with.
TRAIN_VOICES = {"speed": [(0.88, 0.96), (1.04, 1.12)], "half_tone": [(-3.0, -1.0), (1.0, 3.0)]}
HELD_OUT_VOICES = {"speed": [(0.97, 1.03)], "half_tone": [(-0.8, 0.8)]}
TRAIN_KOKORO = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jm_kumo")  # alone, or two blended at a random weight
HELD_OUT_KOKORO = ({"jf_tebukuro": 1.0}, {"jf_tebukuro": 0.5, "jm_kumo": 0.5}, {"jf_tebukuro": 0.6, "jf_alpha": 0.4})
KOKORO_SHARE = 0.25  # of the training utterances (Kokoro is ~8x slower to synthesise); half of every test split
SPLITS = (("train", 80), ("dev", 90), ("test", 100))  # cumulative percent of the sentence hash
CONDITIONS = ("test_noisy", "test_reverb", "test_phone")
TEST_SNR_DB = 10.0


def all_sentences():
    """Every sentence the grammar makes (millions), lazily, in a fixed order."""
    return ("".join(words) for template in TEMPLATES for words in itertools.product(*(WORDS[s] for s in template)))


def split_of(sentence):
    """train / dev / test by a hash of the sentence: a test sentence is never trained on."""
    bucket = int(hashlib.sha1(sentence.encode("utf-8")).hexdigest(), 16) % 100
    return next(name for name, upper in SPLITS if bucket < upper)


def random_sentence(rng, words=WORDS):
    """One grammar sentence: a random template, a random word per slot."""
    return "".join(rng.choice(words[slot]) for slot in rng.choice(TEMPLATES))


def sentences_of(split, count, rng):
    """`count` distinct grammar sentences of `split` (drawn at random: the grammar is too large to list)."""
    chosen = {}
    while len(chosen) < count:
        sentence = random_sentence(rng)
        if split_of(sentence) == split:
            chosen.setdefault(sentence, None)
    return list(chosen)


def _uniform_from(ranges, rng):
    low, high = ranges[rng.randrange(len(ranges))]
    return rng.uniform(low, high)


def openjtalk_voice(rng, held_out):
    ranges = HELD_OUT_VOICES if held_out else TRAIN_VOICES
    return {"engine": "openjtalk", "speed": round(_uniform_from(ranges["speed"], rng), 3),
            "half_tone": round(_uniform_from(ranges["half_tone"], rng), 2)}


def kokoro_voice(rng, held_out):
    """A held-out voice (HELD_OUT_KOKORO), or a training one: one of TRAIN_KOKORO alone (40 %) or two blended."""
    if held_out:
        return {"engine": "kokoro", "mix": dict(rng.choice(HELD_OUT_KOKORO)), "speed": round(rng.uniform(0.95, 1.05), 3)}
    if rng.random() < 0.4:
        mix = {rng.choice(TRAIN_KOKORO): 1.0}
    else:
        a, b = rng.sample(TRAIN_KOKORO, 2)
        weight = round(rng.uniform(0.2, 0.8), 2)
        mix = {a: weight, b: round(1 - weight, 2)}
    return {"engine": "kokoro", "mix": mix, "speed": round(rng.uniform(0.85, 1.15), 3)}


def plan(hours, seed, kokoro_share=KOKORO_SHARE):
    """Rows {"split", "text", "reading", "voice"}: ~2.6 s per sentence. Dev and test rows alternate Kokoro and
    openjtalk held-out voices; test_katakana holds as many rows as test, up to 60."""
    rng = random.Random(seed)
    total = int(hours * 3600 / 2.6)
    counts = {"train": int(total * 0.9), "dev": int(total * 0.05), "test": int(total * 0.05)}
    names = surname_pool(SURNAMES)
    rows = []
    for split, count in counts.items():
        for i, sentence in enumerate(sentences_of(split, count, rng)):
            reading = None
            if split == "train":
                if rng.random() < NAMED_SHARE:
                    sentence, reading, _ = named_sentence(names, rng)
                engine = kokoro_voice if rng.random() < kokoro_share else openjtalk_voice
            else:
                engine = kokoro_voice if i % 2 == 0 else openjtalk_voice
            rows.append({"split": split, "text": sentence, "reading": reading, "voice": engine(rng, split != "train")})
    words = dict(WORDS, object=[w for w in HELD_OUT_KATAKANA if katakana(w) <= katakana(*all_words())])
    for i in range(min(counts["test"], 60)):
        template = rng.choice([t for t in TEMPLATES if "object" in t])
        sentence = "".join(rng.choice(words[slot]) for slot in template)
        voice = (kokoro_voice if i % 2 == 0 else openjtalk_voice)(rng, True)
        rows.append({"split": "test_katakana", "text": sentence, "reading": None, "voice": voice})
    return rows


def all_words():
    return [w for words in WORDS.values() for w in words]


def katakana(*texts):
    """The katakana characters of `texts`."""
    return {c for text in texts for c in text if "\u30a0" <= c <= "\u30ff"}


def surname_pool(count):
    """[(surname, reading)]: the dataset's `count` most common two-character surnames, none of NAME_CANDIDATES (the
    hotword set's held-out names) and none a word of the grammar."""
    import japanese_personal_name_dataset

    last_names = japanese_personal_name_dataset.load_dataset(include_last_names=True)[2]
    ranked = sorted(last_names.items(), key=lambda item: -item[1]["count"])
    grammar = "".join(all_words())
    pool = [(name, row["reading"]) for name, row in ranked
            if len(name) == 2 and name not in NAME_CANDIDATES and name not in grammar]
    if count > len(pool):
        raise ValueError(f"the surname pool can be at most {len(pool)} names, got {count}")
    return pool[:count]


def named_sentence(names, rng):
    """(sentence, reading, name): a sentence of a template with a person or place slot, that slot ("<name>さんが" or
    "<name>で") holding one of `names` ([(written, reading)]); `reading` is the sentence with the name spoken by its
    reading (the engines' dictionary misreads many surnames)."""
    template = rng.choice([t for t in TEMPLATES if "person" in t or "place" in t])
    slot = rng.choice([s for s in ("person", "place") if s in template])
    name, kana = rng.choice(names)
    suffix = "さんが" if slot == "person" else "で"
    words = [rng.choice(WORDS[s]) for s in template]
    written = [name + suffix if s == slot else w for s, w in zip(template, words)]
    spoken = [kana + suffix if s == slot else w for s, w in zip(template, words)]
    return "".join(written), "".join(spoken), name


def synthesize(row):
    """One planned row -> (row, WAV bytes at 16 kHz)."""
    audio = speak(row["text"], row["voice"], row["reading"])
    return row, wav_bytes(audio)


def wav_bytes(audio):
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(audio, -1, 1).astype(np.float32), SAMPLING_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def conditions_of(test_rows, seed):
    """{condition: [(row, WAV bytes)]}: the test split's Kokoro utterances at TEST_SNR_DB of noise (the kinds in
    turn; babble from the other test utterances), in rooms simulated from a seed training never uses, and over a
    telephone line."""
    import soundfile

    from .augment import NOISE_KINDS, mix_at_snr, noise_of, reverberate, room_impulse_responses, telephone

    kokoro = [(row, soundfile.read(io.BytesIO(wav), dtype="float32")[0]) for row, wav in test_rows
              if row["voice"]["engine"] == "kokoro"]
    rng = np.random.default_rng([seed, 10])  # training's rooms and noise come from the training seed itself
    rooms = room_impulse_responses(16, seed=[seed, 11], rt60=(0.3, 0.8))
    audios = [audio for _, audio in kokoro]
    out = {name: [] for name in CONDITIONS}
    for i, (row, audio) in enumerate(kokoro):
        kind = NOISE_KINDS[i % len(NOISE_KINDS)]
        noise = noise_of(kind, len(audio), rng, audios[:i] + audios[i + 1:])
        variants = {"test_noisy": mix_at_snr(audio, noise, TEST_SNR_DB),
                    "test_reverb": reverberate(audio, rooms[i % len(rooms)]), "test_phone": telephone(audio)}
        for name, degraded in variants.items():
            out[name].append(({**row, "split": name}, wav_bytes(degraded)))
    return out


def build(hours=2.0, out="data", seed=0, workers=None, kokoro_share=KOKORO_SHARE):
    """Build (or reuse) the corpus; returns its folder."""
    import datasets
    from tqdm import tqdm

    fields = [FORMAT, hours, seed, kokoro_share, WORDS, TEMPLATES, HELD_OUT_KATAKANA, NAMED_SHARE, SURNAMES,
              TRAIN_VOICES, HELD_OUT_VOICES, TRAIN_KOKORO, HELD_OUT_KOKORO, TEST_SNR_DB]
    key = hashlib.sha1(json.dumps(fields).encode())
    folder = os.path.join(out, f"ja-synth-{hours:g}h-seed{seed}-{key.hexdigest()[:8]}")
    if os.path.exists(os.path.join(folder, "dataset_dict.json")):
        return check_built(folder)
    rows = plan(hours, seed, kokoro_share)
    done = {}
    with Pool(workers or os.cpu_count()) as pool:
        # Kokoro rows first, spread over the workers: they take ~8x longer than openjtalk's
        order = sorted(range(len(rows)), key=lambda i: rows[i]["voice"]["engine"] != "kokoro")
        jobs = pool.imap(synthesize, [rows[i] for i in order], chunksize=4)
        for i, (row, wav) in zip(order, tqdm(jobs, total=len(rows), desc="synthesising", unit="utt")):
            done[i] = (row, wav)
    by_split = {}
    for i in range(len(rows)):
        by_split.setdefault(rows[i]["split"], []).append(done[i])
    by_split |= conditions_of(by_split["test"], seed)
    corpus = datasets.DatasetDict({
        split: datasets.Dataset.from_dict({
            "audio": [{"bytes": wav, "path": None} for _, wav in pairs],
            "transcription": [row["text"] for row, _ in pairs],
            "voice": [voice_label(row["voice"]) for row, _ in pairs],
        }).cast_column("audio", datasets.Audio(SAMPLING_RATE, decode=False))
        for split, pairs in by_split.items()
    })
    tmp = folder + ".partial"
    corpus.save_to_disk(tmp)
    os.replace(tmp, folder)  # only a complete corpus is ever reused
    return folder


def check_built(folder):
    """`folder` if it loads as a corpus of this format, else a clear error (a half-deleted or edited cache)."""
    import datasets

    try:
        corpus = datasets.load_from_disk(folder)
        missing = {"train", "dev", "test", *CONDITIONS} - set(corpus)
    except Exception as err:  # any reason the cache cannot be read
        raise RuntimeError(f"the cached corpus {folder} cannot be read ({type(err).__name__}: {err}); delete the "
                           f"folder and it is built again") from err
    if missing:
        raise RuntimeError(f"the cached corpus {folder} lacks the split(s) {sorted(missing)}; delete the folder and "
                           f"it is built again")
    return folder


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
    """(rows, names per row, distractors): each sentence fills its person slot ("<name>さんが") or its place slot
    ("<name>で") with a held-out name; the voices are the test split's (Kokoro and openjtalk in turn)."""
    names = held_out_names(train_texts, seed)
    if len(names) <= DISTRACTORS:
        raise ValueError(f"only {len(names)} held-out names; need more than {DISTRACTORS} (spoken + distractors)")
    spoken, distractors = names[DISTRACTORS:], names[:DISTRACTORS]
    rng = random.Random(seed)
    rows, said = [], []
    for i in range(count):
        sentence, _, name = named_sentence([(n, n) for n in spoken], rng)  # spoken as written
        voice = (kokoro_voice if i % 2 == 0 else openjtalk_voice)(rng, True)
        rows.append({"split": "hotwords", "text": sentence, "reading": None, "voice": voice})
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
        wavs = [wav for _, wav in pool.imap(synthesize, rows, chunksize=4)]
    data = datasets.Dataset.from_dict({
        "audio": [{"bytes": w, "path": None} for w in wavs], "transcription": [r["text"] for r in rows],
        "names": said, "voice": [voice_label(r["voice"]) for r in rows],
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
    parser.add_argument("--kokoro_share", type=float, default=KOKORO_SHARE,
                        help=f"share of the training utterances Kokoro speaks (default {KOKORO_SHARE})")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--hotword_set", type=int, default=0, metavar="N",
                        help="also build a hotword test set of N utterances next to the corpus (prints its folder too)")
    args = parser.parse_args(argv)
    folder = build(args.hours, args.out, args.seed, args.workers, args.kokoro_share)
    print(folder)
    if args.hotword_set:
        print(build_hotword_set(folder, args.hotword_set, args.seed, args.workers))


if __name__ == "__main__":
    main()
