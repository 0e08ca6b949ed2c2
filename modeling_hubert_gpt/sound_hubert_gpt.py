"""What the waveform itself says about an utterance, without any model: how much of it rises above its own floor.

The no-speech guard trusts the CTC head; a head that cannot hear speech through noise it never met would empty real
speech. Speech rises and falls with its syllables, so many of its frames stand well above the input's quietest ones,
at any recording level and through steady noise; silence, room tone, hiss and hum stay near their floor.
`rising_share` is the guard's second witness: where the head hears nothing but the sound rises, the LLM decides.

Remote code: imports torch only; nothing of the package (a leaf module).
"""

import torch

FRAME_SECONDS = 0.02
FLOOR_QUANTILE = 0.1  # the input's floor: the level 10 % of its frames stay under
RISE_DB = 10.0  # a frame "rises" at this many dB above the floor


def rising_share(input_values, sample_lengths, sampling_rate=16000):
    """input_values (B, S) float, sample_lengths (B,) -> (B,) float: the share of each row's 20 ms frames (real
    samples only) whose mean power is at least RISE_DB above the row's FLOOR_QUANTILE frame power. 0 for a row of
    less than two frames or of digital silence."""
    frame = int(FRAME_SECONDS * sampling_rate)
    shares = []
    for row, length in zip(input_values.float(), sample_lengths.tolist()):
        count = int(length) // frame
        if count < 2:
            shares.append(0.0)
            continue
        power = row[: count * frame].reshape(count, frame).pow(2).mean(-1)  # (F,)
        if power.max() <= 0:
            shares.append(0.0)
            continue
        floor = torch.quantile(power, FLOOR_QUANTILE).clamp(min=power.max() * 1e-9)  # digital-silence gaps
        shares.append(float((power >= floor * 10 ** (RISE_DB / 10)).float().mean()))
    return torch.tensor(shares)
