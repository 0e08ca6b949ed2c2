"""A sentencepiece tokenizer trained on transcripts, saved as a folder AutoTokenizer loads faithfully."""

import io
import os
import shutil

# Special pieces laid out like rinna/japanese-gpt-neox-3.6b: [PAD]=0, <unk>=1, <s>=2, </s>=3, then [SEP], [CLS], [MASK].
SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "[SEP]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}



def train_sentencepiece(sentences, model_file, vocab_size=160, model_type="unigram"):
    """Train a sentencepiece model with rinna's special-piece layout and write it to `model_file`."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=buffer,
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # small corpora: a smaller vocabulary instead of an error
        model_type=model_type,
        character_coverage=1.0,  # every character of the corpus gets a piece: only truly unseen ones become <unk>
        pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        pad_piece="[PAD]", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        user_defined_symbols=["[SEP]", "[CLS]", "[MASK]"],
        num_threads=1,  # deterministic
        minloglevel=2,
    )
    with open(model_file, "wb") as f:
        f.write(buffer.getvalue())


def sentencepiece_to_hf_tokenizer(model_file, out_dir, special_tokens=None):
    """Convert a sentencepiece model into a tokenizer folder that `AutoTokenizer.from_pretrained` loads faithfully.

    special_tokens: {"unk_token": "<unk>", ...} naming the model's special pieces (default: rinna's, SPECIAL_TOKENS).

    Why not a `T5Tokenizer` folder (spiece.model + tokenizer_class "T5Tokenizer", as rinna ships)? In transformers 5
    `T5Tokenizer` is rebuilt from the .model file with T5's assumptions: its Unigram model has `unk_id=2` hard-coded
    (with rinna's layout every unknown character becomes `<s>`), byte fallback is switched off, and it splits on
    whitespace. `TokenizersBackend.convert_to_native_format` instead builds the backend from the model's own
    settings (unk id, byte fallback, normalizer, dummy prefix), and saving writes a `tokenizer.json` with
    tokenizer_class "TokenizersBackend" that loads back unchanged. The .model file is kept beside it as spiece.model.
    """
    from transformers import TokenizersBackend

    os.makedirs(out_dir, exist_ok=True)
    special_tokens = SPECIAL_TOKENS if special_tokens is None else special_tokens
    tokenizer = TokenizersBackend(**TokenizersBackend.convert_to_native_format(vocab_file=str(model_file),
                                                                               **special_tokens))
    tokenizer.save_pretrained(out_dir)
    target = os.path.join(out_dir, "spiece.model")
    if os.path.abspath(model_file) != os.path.abspath(target):
        shutil.copyfile(model_file, target)
    return tokenizer



def train_tokenizer(texts, out_dir, vocab_size=200, model_type="unigram"):
    """Train on `texts`, save to `out_dir` (tokenizer.json + spiece.model), return the HF tokenizer."""
    os.makedirs(out_dir, exist_ok=True)
    model_file = os.path.join(out_dir, "spiece.model")
    train_sentencepiece(list(texts), model_file, vocab_size=vocab_size, model_type=model_type)
    return sentencepiece_to_hf_tokenizer(model_file, out_dir)
