"""Hotword biasing (contextual biasing) gated by the CTC head: the LLM is steered toward given words only where the
CTC head heard them.

`model.generate(..., hotwords=["山田", "ソニー"], tokenizer=processor.tokenizer)` (or one list per utterance) adds a
logits processor that raises the logits of the LLM tokens that start or continue a hotword (shallow fusion with a
prefix tree): each token by its share of `hotword_boost`, the part of the word's characters it spells, so a whole
word earns hotword_boost however it is tokenized. Peers paste such words into the text prompt, and they then leak into transcripts
where nobody said them. Here each hotword must first be heard:

- Gate (models with a CTC head; `hotword_threshold`, a log-ratio per label): the hotword's labels (a character head's
  characters, or a token head's tokens) are spotted in the utterance's CTC log-posteriors by a Viterbi pass over the
  CTC topology of the word alone, free to start and end at any frame (`keyword_scores`). Each frame on the word's path
  scores log P(its label) - max_c log P(c) (0 when the head's best label is the word's), frames outside it score 0;
  the best path's sum divided by the word's label count is the word's score (<= 0). A word is active for the
  utterance only when its score >= hotword_threshold; a word with a character the head cannot spell is never active.
- Place: an active word may only START where the head heard it. Its best path's first frame gives its position in
  the head's greedy transcript (how many characters the head spells before it); the word's first token is boosted
  only while the LLM's transcript (its characters the head can spell) is within START_SLACK + START_SLACK_RATIO x
  that position of it. Once a word is started, its continuation is boosted until it is complete or the LLM leaves it.
- Models without a CTC head (or `hotword_threshold=None`): every word is boosted everywhere (plain shallow fusion,
  as peers do); a model without a head warns that words may then leak.

The prefix tree (`HotwordTrie`) is over the words' characters, and every vocabulary token whose text continues a node
is an edge, so every tokenization of a word the vocabulary allows is boosted ("山田" as "山田", or "山" + "田"; a
leading space may come with a word's first token). Tokens whose text is not whole characters (byte pieces) are not
edges. The processor reads each row's generated tokens, so it holds for batches (each row its own words), beams
(each beam its own prefix) and the speculative verifier (the same processor, `select`ed per utterance, at every
verified position).

Remote code: imports numpy, torch and the public transformers API only.
"""

import warnings
import weakref

import numpy as np
import torch
from transformers import LogitsProcessor

from .generation_hubert_gpt import OPTIONS

# The defaults (generation_hubert_gpt.OPTIONS; model.generation_config may carry others):
DEFAULT_BOOST = OPTIONS["hotword_boost"][0]  # added over a whole word's tokens (each token its share of the characters)
DEFAULT_THRESHOLD = OPTIONS["hotword_threshold"][0]  # keyword score (mean log-ratio per label) a word needs
START_SLACK, START_SLACK_RATIO = 4, 0.2  # how far (characters) from where the head heard it a word may start
_VOCABULARIES = weakref.WeakKeyDictionary()  # tokenizer -> TokenTexts


# --- the vocabulary as text ------------------------------------------------------------------------------------------
class TokenTexts:
    """Each token's text (decoded alone); lookups of the tokens that spell a piece of text exactly (`exact`) or after
    leading whitespace (`starting`, for a word's first token)."""

    def __init__(self, tokenizer):
        special = set(tokenizer.all_special_ids)
        ids = list(range(len(tokenizer)))
        self.texts = tokenizer.batch_decode([[i] for i in ids])
        self.exact, self.starting = {}, {}
        for i, text in zip(ids, self.texts):
            if i in special or not text.strip() or "\ufffd" in text:  # specials, spaces, byte pieces
                continue
            self.exact.setdefault(text, []).append(i)
            self.starting.setdefault(text.lstrip(), []).append(i)


def token_texts(tokenizer):
    """The tokenizer's TokenTexts, built once per tokenizer object."""
    if tokenizer not in _VOCABULARIES:
        _VOCABULARIES[tokenizer] = TokenTexts(tokenizer)
    return _VOCABULARIES[tokenizer]


class HotwordTrie:
    """Prefix tree of some words: nodes are the words' prefixes (strings), edges are tokens.

    edges[node]: {token: (next node, share)} for tokens continuing `node` (a non-empty prefix); starts[word]: {token:
    (node, share)} for the tokens that begin `word` (with any leading whitespace). share: the part of the word's
    characters the token spells (the most over words sharing the edge), so a whole word earns the full boost however
    it is tokenized, and a token that only begins it earns its part (a word begun and left earns little)."""

    def __init__(self, words, vocabulary):
        self.words = tuple(words)
        self.edges, self.starts = {}, {}
        for word in self.words:
            self.starts[word] = {t: (word[:m], m / len(word)) for m in range(1, len(word) + 1)
                                 for t in vocabulary.starting.get(word[:m], [])}
            for k in range(1, len(word)):
                node = self.edges.setdefault(word[:k], {})
                for m in range(k + 1, len(word) + 1):
                    for t in vocabulary.exact.get(word[k:m], []):
                        share = max((m - k) / len(word), node.get(t, (None, 0.0))[1])
                        node[t] = (word[:m], share)


# --- the gate: keyword spotting in the CTC head's posteriors --------------------------------------------------------
def keyword_scores(log_probs, frame_lengths, keywords, blank):
    """Spot each keyword in each utterance: log_probs (B, T, C), frame_lengths (B,), keywords: W non-empty label lists.

    Returns (scores (B, W): the best path's sum of log P(label) - max_c log P(c) per label (<= 0), first_frames (B, W)
    long: where that path starts). The path runs through the keyword's CTC states [k1, blank, k2, blank, ..., kn]
    (a blank may be skipped between different labels) and may start and end at any frame. The pass over the frames
    runs in numpy on the CPU: its arrays are tiny and a frame's dozen operations cost little there."""
    batch, frames = log_probs.shape[:2]
    width = 2 * max(len(k) for k in keywords) - 1
    labels = np.full((len(keywords), width), blank, dtype=np.int64)  # (W, S) label of each state
    skip = np.full((len(keywords), width), -np.inf, dtype=np.float32)  # 0 where state s may be entered from s - 2
    last = np.array([2 * len(k) - 2 for k in keywords])  # (W,) the final state
    for w, keyword in enumerate(keywords):
        labels[w, 0 : 2 * len(keyword) : 2] = keyword
        for j in range(1, len(keyword)):
            if keyword[j] != keyword[j - 1]:
                skip[w, 2 * j] = 0.0
    ratio = log_probs.float() - log_probs.float().max(-1, keepdim=True).values  # (B, T, C), <= 0
    emit = ratio.detach().cpu().numpy()[:, :, labels]  # (B, T, W, S)
    emit[:, :, np.arange(width) > last[:, None]] = -np.inf
    lengths = frame_lengths.cpu().numpy()
    # score[..., s + 2]: the best path into state s so far, start[..., s + 2] its first frame; two -inf states in front
    score = np.full((batch, len(keywords), width + 2), -np.inf, dtype=np.float32)  # (B, W, S + 2)
    start = np.zeros((batch, len(keywords), width + 2), dtype=np.int64)
    best = np.full((batch, len(keywords)), -np.inf, dtype=np.float32)
    best_start = np.zeros((batch, len(keywords)), dtype=np.int64)
    rows, words = np.arange(batch)[:, None], np.arange(len(keywords))[None, :]
    for t in range(frames):
        here, here_start = score[..., 2:].copy(), start[..., 2:].copy()  # staying in s
        here_start[..., 0] = np.where(here[..., 0] >= 0, here_start[..., 0], t)  # a free start into the first state
        np.maximum(here[..., 0], 0.0, out=here[..., 0])
        for shift, extra in ((1, 0.0), (2, skip)):  # entering s from s - 1, from s - 2: taken only when better
            came = score[..., 2 - shift : width + 2 - shift] + extra
            better = came > here
            here = np.where(better, came, here)
            here_start = np.where(better, start[..., 2 - shift : width + 2 - shift], here_start)
        here += emit[:, t]
        if t >= lengths.min():  # padded frames change nothing
            live = (t < lengths)[:, None, None]
            here, here_start = np.where(live, here, score[..., 2:]), np.where(live, here_start, start[..., 2:])
        score[..., 2:], start[..., 2:] = here, here_start
        ended, ended_start = here[rows, words, last], here_start[rows, words, last]  # (B, W)
        better = ended > best
        best, best_start = np.where(better, ended, best), np.where(better, ended_start, best_start)
    device = log_probs.device
    scores = torch.from_numpy(best).to(device) / torch.tensor([len(k) for k in keywords], device=device)
    return scores, torch.from_numpy(best_start).to(device)


def spelled_before(ctc_head, log_probs, frame_lengths, first_frames, vocabulary):
    """(B, W) how many characters the head's greedy transcript spells before each first frame."""
    out = []
    for row, n, firsts in zip(log_probs.argmax(-1).cpu(), frame_lengths.tolist(), first_frames.cpu().tolist()):
        row = row[:n]
        emitted = torch.ones_like(row, dtype=torch.bool)
        emitted[1:] = row[1:] != row[:-1]
        emitted &= (row != ctc_head.blank_id) & (row < ctc_head.label_count)
        sizes = torch.tensor([label_size(ctc_head, int(label), vocabulary) for label in row.tolist()]) * emitted
        before = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])  # characters spelled before frame t
        out.append([int(before[f]) for f in firsts])
    return out


def label_size(ctc_head, label, vocabulary):
    """Characters a CTC label spells (one for a character head; a token's non-space characters)."""
    if ctc_head.vocab is not None:
        return 1
    return sum(not c.isspace() for c in vocabulary.texts[label]) if label < len(vocabulary.texts) else 0


def keyword_labels(ctc_head, word, tokenizer):
    """A word's labels for the head, or None when the head cannot spell it (a character outside its vocabulary)."""
    if ctc_head.vocab is not None:
        labels = ctc_head.char_ids(word)
        return labels if len(labels) == len(word) else None
    return [t for t in tokenizer(word, add_special_tokens=False)["input_ids"] if t != ctc_head.blank_id] or None


# --- per call: each row's words, where they may start ----------------------------------------------------------------
class RowHotwords:
    """One utterance's active words: their trie and where each may start (None: anywhere)."""

    def __init__(self, trie, windows, spelled):
        self.trie = trie
        self.windows = windows  # {word: (lowest, highest) spelled characters before it} or None
        self.spelled = spelled  # text -> how many of its characters count for the windows
        self.states = {(): (frozenset(), 0)}  # token prefix -> (nodes the output ends in, characters spelled)
        self.boosts = {}

    def allowed(self, count):
        if self.windows is None:
            return self.trie.words
        return tuple(w for w, (low, high) in self.windows.items() if low <= count <= high)

    def state(self, prefix, texts):
        """(nodes, count) after the token prefix (a tuple), extending the longest prefix already seen."""
        k = len(prefix)
        while prefix[:k] not in self.states:
            k -= 1
        nodes, count = self.states[prefix[:k]]
        for j in range(k, len(prefix)):
            token = prefix[j]
            nodes = frozenset([self.trie.edges[n][token][0] for n in nodes if token in self.trie.edges.get(n, {})]
                              + [self.trie.starts[w][token][0] for w in self.allowed(count)
                                 if token in self.trie.starts[w]])
            count += self.spelled(texts[token]) if token < len(texts) else 0
            self.states[prefix[: j + 1]] = (nodes, count)
        return nodes, count

    def shares(self, prefix, texts):
        """The tokens boosted after `prefix` (those continuing a started word, or starting one here) and their shares
        of the boost: (ids LongTensor (K,), shares FloatTensor (K,))."""
        nodes, count = self.state(tuple(prefix), texts)
        key = (nodes, self.allowed(count))
        if key not in self.boosts:
            found = {}
            for edges in [self.trie.edges.get(n, {}) for n in nodes] + [self.trie.starts[w] for w in key[1]]:
                for t, (_, share) in edges.items():
                    found[t] = max(share, found.get(t, 0.0))
            ids = sorted(found)
            self.boosts[key] = (torch.tensor(ids, dtype=torch.long), torch.tensor([found[t] for t in ids]))
        return self.boosts[key]


class Hotwords:
    """A generate call's hotwords: per row of the batch its RowHotwords (None: nothing to boost), the boost, and
    what the gate saw (`scores`: per row {word: keyword score}, None without the gate)."""

    def __init__(self, rows, boost, texts, scores=None):
        self.rows, self.boost, self.texts, self.scores = rows, boost, texts, scores

    def select(self, rows):
        return Hotwords([self.rows[b] for b in rows], self.boost, self.texts,
                        None if self.scores is None else [self.scores[b] for b in rows])

    @property
    def any(self):
        return any(r is not None for r in self.rows)

    def add_boost(self, logits, row, prefix):
        """Boost in place the logits (V,) of `row` after its generated tokens `prefix` (a list of ids)."""
        if self.rows[row] is not None:
            ids, shares = self.rows[row].shares(prefix, self.texts)
            if len(ids):
                logits[ids.to(logits.device)] += self.boost * shares.to(logits.device, logits.dtype)

    def processor(self):
        return HotwordLogitsProcessor(self)

    def active(self):
        """Per row {word: (lowest, highest) characters before it where it may start, or None: anywhere}."""
        return [{} if row is None else {w: None if row.windows is None else row.windows[w] for w in row.trie.words}
                for row in self.rows]


class HotwordLogitsProcessor(LogitsProcessor):
    """Adds the boost to the logits of each row's hotword tokens. input_ids (B x beams, n): the generated tokens;
    scores (B x beams, V)."""

    def __init__(self, hotwords):
        self.hotwords = hotwords

    def select(self, rows):
        """The processor of some utterances of the batch (rows: their indices)."""
        return HotwordLogitsProcessor(self.hotwords.select(rows))

    def __call__(self, input_ids, scores):
        per_row = input_ids.shape[0] // len(self.hotwords.rows)  # beams (or returned sequences) of one utterance
        scores = scores.clone()
        for i, prefix in enumerate(input_ids.tolist()):
            self.hotwords.add_boost(scores[i], i // per_row, prefix)
        return scores


# --- generate()'s options ----------------------------------------------------------------------------------------------
def check_word_lists(hotwords, batch):
    """`hotwords` (a list of words for every row, or one list per row) -> B lists of distinct words."""
    if hotwords is None:
        return [[] for _ in range(batch)]
    if not isinstance(hotwords, (list, tuple)):
        raise ValueError(f"hotwords must be a list of words or one list of words per utterance, got {type(hotwords).__name__}")
    per_row = len(hotwords) > 0 and all(isinstance(h, (list, tuple)) for h in hotwords)
    lists = [list(h) for h in hotwords] if per_row else [list(hotwords)] * batch
    if per_row and len(lists) != batch:
        raise ValueError(f"hotwords has {len(lists)} lists for {batch} utterances; give one list per utterance, or "
                         "one list of words for all")
    for words in lists:
        bad = [w for w in words if not isinstance(w, str) or not w.strip()]
        if bad:
            raise ValueError(f"hotwords must be non-empty strings, got {bad[:3]}")
    return [list(dict.fromkeys(w.strip() for w in words)) for words in lists]


def resolve_hotwords(model, hotwords, boost, threshold, batch, tokenizer):
    """generate()'s resolved `hotwords` (checked by generation_hubert_gpt.resolve_generation), `hotword_boost`,
    `hotword_threshold` -> (B word lists, boost, threshold or None for no gate), or None when no row has a word (then
    decoding is exactly plain decoding)."""
    words = check_word_lists(hotwords, batch)
    if not any(words):
        return None
    if tokenizer is None:
        raise ValueError("hotwords need the LLM's tokenizer to find their tokens: generate(..., hotwords=[...], "
                         "tokenizer=processor.tokenizer) (the pipeline passes its own)")
    if model.ctc_head is None:
        warnings.warn("this model has no CTC head, so hotwords are boosted everywhere (plain shallow fusion): they may "
                      "appear in transcripts where they were not said", UserWarning, stacklevel=3)
    return words, float(boost), threshold


def build_hotwords(model, words, boost, threshold, tokenizer, log_probs=None, frame_lengths=None):
    """Hotwords for a batch: B word lists; with a threshold, gated and placed by the CTC log-posteriors (B, T, C)."""
    vocabulary = token_texts(tokenizer)
    tries = {}

    def trie(active):
        key = tuple(sorted(active))
        if key not in tries:
            tries[key] = HotwordTrie(key, vocabulary)
        return tries[key]

    head = model.ctc_head
    if threshold is None:
        rows = [RowHotwords(trie(w), None, len) if w else None for w in words]
        return Hotwords(rows, boost, vocabulary.texts)
    everything = list(dict.fromkeys(w for row in words for w in row))
    labels = {w: keyword_labels(head, w, tokenizer) for w in everything}
    spellable = [w for w in everything if labels[w] is not None]
    scores = [{w: float("-inf") for w in row} for row in words]
    firsts = [{} for _ in words]
    if spellable:
        if log_probs is None:
            raise ValueError("gated hotwords read the CTC head's logits; a speech_prompt given to generate must come "
                             "from encode_speech(..., ctc_head=True)")
        found, first_frames = keyword_scores(log_probs, frame_lengths, [labels[w] for w in spellable], head.blank_id)
        before = spelled_before(head, log_probs, frame_lengths, first_frames, vocabulary)
        for b, row in enumerate(words):
            for w in row:
                if w in labels and labels[w] is not None:
                    k = spellable.index(w)
                    scores[b][w], firsts[b][w] = float(found[b, k]), before[b][k]

    def spelled(text):
        return sum(c in head_chars for c in text) if head.vocab is not None else sum(not c.isspace() for c in text)

    head_chars = set(head.vocab or [])
    rows = []
    for b, row in enumerate(words):
        active = [w for w in row if scores[b][w] >= threshold]
        windows = {w: (firsts[b][w] - int(START_SLACK + START_SLACK_RATIO * firsts[b][w]),
                       firsts[b][w] + int(START_SLACK + START_SLACK_RATIO * firsts[b][w])) for w in active}
        rows.append(RowHotwords(trie(active), windows, spelled) if active else None)
    return Hotwords(rows, boost, vocabulary.texts, scores)
