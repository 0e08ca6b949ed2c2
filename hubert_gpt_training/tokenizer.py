"""A sentencepiece tokenizer trained on transcripts, saved as a folder AutoTokenizer loads faithfully."""

import io
import json
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


# The sentencepiece model's own ids for these special tokens (-1 where the model defines none).
_SENTENCEPIECE_IDS = {"pad_token": "pad_id", "unk_token": "unk_id", "bos_token": "bos_id", "eos_token": "eos_id"}


def _special_tokens_named(src):
    """Special-token strings named by the folder's special_tokens_map.json and tokenizer_config.json:
    {key: (token, file)}, the first file that names a key winning."""
    found = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = os.path.join(src, name)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        for key in SPECIAL_TOKENS:
            value = config.get(key)
            if isinstance(value, dict):  # an AddedToken as transformers serialises it
                value = value.get("content")
            if isinstance(value, str):
                found.setdefault(key, (value, name))
    return found


def special_tokens_of(src, raw):
    """The checkpoint's special tokens as it spells them, checked against its sentencepiece model `raw`.

    Each comes from the folder's own files; a key they leave out takes the sentencepiece model's own piece (pad, unk,
    bos, eos) or, for sep / cls / mask, rinna's spelling where the model has that piece. Refused, naming file, key
    and ids: a named token that is no piece of spiece.model, or a pad/unk/bos/eos token whose id is not the one
    spiece.model gives that role.
    """
    named, tokens = _special_tokens_named(src), {}
    for key, rinna_piece in SPECIAL_TOKENS.items():
        own = getattr(raw, _SENTENCEPIECE_IDS[key])() if key in _SENTENCEPIECE_IDS else -1
        if key not in named:
            if own >= 0:
                tokens[key] = raw.id_to_piece(own)
            elif raw.piece_to_id(rinna_piece) != raw.unk_id():
                tokens[key] = rinna_piece
            continue
        piece, where = named[key]
        piece_id = raw.piece_to_id(piece)  # the unk id for a string that is no piece
        if piece_id == raw.unk_id() and piece != raw.id_to_piece(piece_id):
            role = f" (its {key} is {raw.id_to_piece(own)!r}, id {own})" if own >= 0 else ""
            raise ValueError(f"{where} sets {key} = {piece!r}, but spiece.model has no piece {piece!r}{role}")
        if own >= 0 and piece_id != own:
            raise ValueError(
                f"{where} sets {key} = {piece!r}, id {piece_id} in spiece.model, but spiece.model's {key} is id "
                f"{own} ({raw.id_to_piece(own)!r})"
            )
        tokens[key] = piece
    for key in ("bos_token", "sep_token"):  # nue-asr's prompt: <s> + speech + [SEP]
        if key not in tokens:
            raise ValueError(
                f"{src} names no {key} and spiece.model has no {SPECIAL_TOKENS[key]!r} piece; the speech prompt "
                "(<s> + speech + [SEP], as nue-asr's) needs one"
            )
    return tokens


def load_tokenizer(name_or_path, work_dir):
    """A pretrained LLM's tokenizer. A sentencepiece folder (spiece.model, rinna's T5Tokenizer layout) is converted
    with its own special tokens (`special_tokens_of`; transformers 5 would rebuild it as T5's, sending unknown
    characters to id 2); anything else is `AutoTokenizer.from_pretrained` as it is. A Hub id is downloaded."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    folder = name_or_path
    if not os.path.isdir(folder):
        from huggingface_hub import snapshot_download

        folder = snapshot_download(name_or_path, allow_patterns=["*.json", "*.model", "*.txt"])
    model_file = os.path.join(folder, "spiece.model")
    if not os.path.isfile(model_file):
        return AutoTokenizer.from_pretrained(folder)
    special = special_tokens_of(folder, spm.SentencePieceProcessor(model_file=model_file))
    return sentencepiece_to_hf_tokenizer(model_file, work_dir, special)
