"""What the vLLM plugin reads from hubert-gpt before the encoder runs (hubert_gpt_vllm/speech.py) agrees with the HF
model, and what it cannot serve is refused clearly. Runs in .venv: speech.py imports no vLLM."""

import pytest
import torch
from helpers import make_audio

from hubert_gpt_training.tiny import tiny_config
from hubert_gpt_vllm.speech import SpeechLayout, served_config
from modeling_hubert_gpt import HubertGptConfig, HubertGptForConditionalGeneration
from modeling_hubert_gpt.duration_hubert_gpt import longest_input_samples


def test_layout_counts_the_speech_prompt_the_bound_and_the_longest_utterance_as_the_model_does():
    model = HubertGptForConditionalGeneration(tiny_config(text_width=64)).eval()
    layout = SpeechLayout(served_config(model.config), model.generation_config)
    audios = [make_audio(seconds, seed=i) for i, seconds in enumerate([0.3, 1.3, 2.71])]
    lengths = torch.tensor([len(audio) for audio in audios])
    speech = model.encode_speech(torch.nn.utils.rnn.pad_sequence([torch.from_numpy(a) for a in audios], True),
                                 (torch.arange(int(lengths.max())) < lengths[:, None]).long())
    assert layout.speech_positions(lengths).tolist() == speech.lengths.tolist()  # what the bridge really emits
    assert layout.max_new_tokens(lengths).tolist() == model.max_new_tokens_for(lengths).tolist()
    assert layout.longest_samples == longest_input_samples(model)
    assert layout.min_samples == model.min_input_samples
    assert layout.prompt_token_ids() == [model.config.prompt_bos_token_id, model.config.text_config.pad_token_id,
                                         model.config.prompt_sep_token_id]


def test_only_bridges_with_lengths_known_before_encoding_are_served():
    with pytest.raises(ValueError, match="ctc bridge keeps as many frames as its CTC head hears"):
        served_config(tiny_config(bridge_type="ctc"))


def test_prompt_audio_token_id_defaults_to_pad_and_must_be_a_distinct_in_vocabulary_id():
    assert tiny_config().prompt_audio_token_id == 0  # tiny_config: pad 0, bos 1, sep 3
    assert tiny_config(prompt_audio_token_id=7).prompt_audio_token_id == 7
    for bad in (1, 3, 100, -1):  # bos, sep, the vocabulary's size, negative
        with pytest.raises(ValueError, match="prompt_audio_token_id"):
            tiny_config(prompt_audio_token_id=bad)
    config = tiny_config()
    config.text_config.pad_token_id = config.prompt_bos_token_id  # a pad that is the prompt's bos: no default
    reloaded = HubertGptConfig(**{k: v for k, v in config.to_dict().items()
                                  if k not in ("model_type", "prompt_audio_token_id")})
    assert reloaded.prompt_audio_token_id is None
    with pytest.raises(ValueError, match="set it to an in-vocabulary token id"):
        served_config(reloaded)
