"""Shared tiny fixtures: a rinna-style sentencepiece tokenizer trained on the spot and a HubertGptProcessor.

Session-scoped (built once, ~1 s): tests must not mutate them.
"""

import pytest
from helpers import build_tiny_tokenizer
from transformers import AutoTokenizer, Wav2Vec2FeatureExtractor


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tiny_tokenizer(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_feature_extractor():
    # Like rinna/nue-asr and HuBERT base: raw 16 kHz waveform, no normalisation.
    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=False, return_attention_mask=True
    )


@pytest.fixture(scope="session")
def tiny_processor(tiny_feature_extractor, tiny_tokenizer):
    from modeling_hubert_gpt.processing_hubert_gpt import HubertGptProcessor

    return HubertGptProcessor(feature_extractor=tiny_feature_extractor, tokenizer=tiny_tokenizer)
