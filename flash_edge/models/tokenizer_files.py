"""CLIP-format tokenizer files for the built-in model, made offline with the ``tokenizers`` library.

The files follow OpenAI CLIP's tokenizer exactly in form (NFC + whitespace folding + lower-casing,
CLIP's split regex, byte-level BPE with the ``</w>`` end-of-word suffix, ``<|startoftext|>`` and
``<|endoftext|>``), so transformers' ``CLIPTokenizer`` and diffusers load them like a real SD3 folder.
The vocabulary was trained on a small built-in corpus (no borrowed vocab, no network). The trainer breaks
frequency ties in hash order, so two runs give different merges: the result of one run is shipped as package
data (``tiny_tokenizer/``), which the built-in model's text encoders are tied to. Regenerate with
``python -m flash_edge.models.tokenizer_files`` (and then retrain or rebuild the built-in model).
"""

from __future__ import annotations

import json
from pathlib import Path

SHIPPED = Path(__file__).with_name("tiny_tokenizer")

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

COLOURS = "red green blue yellow orange purple pink brown black white gray grey cyan magenta gold silver".split()
SHAPES = "circle square triangle rectangle star heart diamond hexagon cross ring oval line dot".split()
PLACES = ("left right top bottom center middle above below beside next to under over near far corner "
          "upper lower side behind in front of on at the").split()
WORDS = ("a an one two three four five many some of and with without small large big tiny huge bright dark "
         "light pale vivid plain simple background picture photo image painting drawing sketch render style "
         "cat dog bird tree house car flower sun moon sky sea mountain river city street road field forest "
         "person man woman child face portrait landscape night day morning evening winter summer snow rain "
         "cloud water fire stone wood glass metal paper sitting standing flying running beautiful detailed "
         "realistic abstract colorful minimal shapes objects scene view close up wide high quality art").split()


def corpus() -> list[str]:
    """Deterministic training text: every word alone and in the shape-scene grammar used by the SDK."""
    lines = [" ".join(WORDS), " ".join(PLACES)]
    for c in COLOURS:
        for s in SHAPES:
            lines.append(f"a {c} {s} on the left, a {c} {s} above a {s} of {c}")
    lines += [f"{n} {s}s" for n in ("two", "three", "four") for s in SHAPES]
    lines += [str(i) for i in range(10)] + [",.!?'-:;()\"&/"]
    return lines


def clip_bpe(vocab_size: int = 1024):
    """Train the byte-level BPE in CLIP's form; returns a ``tokenizers.Tokenizer``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=EOS, end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, special_tokens=[BOS, EOS], end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    return tok


def train_vocab_and_merges(vocab_size: int = 1024) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = json.loads(clip_bpe(vocab_size).to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def write_vocab_and_merges(directory: Path = SHIPPED) -> None:
    vocab, merges = train_vocab_and_merges()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")


def shipped_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = json.loads((SHIPPED / "vocab.json").read_text(encoding="utf-8"))
    lines = (SHIPPED / "merges.txt").read_text(encoding="utf-8").splitlines()
    return vocab, [tuple(line.split(" ")) for line in lines if line and not line.startswith("#")]


def save_clip_tokenizer(directory: str | Path, pad_token: str = EOS):
    """Write a CLIP tokenizer folder (vocab.json, merges.txt, tokenizer.json, configs) and return it loaded.

    ``pad_token``: SD3's first tokenizer pads with ``<|endoftext|>``, its second (CLIP-G) with ``!``.
    """
    from transformers import CLIPTokenizer

    vocab, merges = shipped_vocab_and_merges()
    # transformers 5.x: CLIPTokenizer(vocab_file=..., merges_file=...) silently ignores the files and yields
    # a broken tokenizer; vocab=/merges= work. model_max_length=77 or SD3's padding overflows.
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH, pad_token=pad_token,
                        bos_token=BOS, eos_token=EOS, unk_token=EOS)
    tok.save_pretrained(str(directory))
    # vocab.json + merges.txt too: what Swift/Kotlin CLIP tokenizers (and older transformers) read.
    for name in ("vocab.json", "merges.txt"):
        (Path(directory) / name).write_bytes((SHIPPED / name).read_bytes())
    return tok


if __name__ == "__main__":
    write_vocab_and_merges()
    print(f"wrote {SHIPPED}/vocab.json and merges.txt")
