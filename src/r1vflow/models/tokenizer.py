"""A small byte-level BPE tokenizer trained on the run's own text, with R1V's special tokens.

Tiny CPU presets cannot download a tokenizer, so `bootstrap` trains one with the `tokenizers`
library: digits are split one per token (as in Qwen), every byte is in the alphabet (no unknown
characters), and the chat markers, the image placeholder and the reasoning tags are single ids.
The result is a standard `PreTrainedTokenizerFast` with a Qwen-style chat template; it saves and
loads with `save_pretrained` / `from_pretrained` like any hub tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMAGE_TOKEN = "<image>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"

# Control tokens: removed by `decode(..., skip_special_tokens=True)`.
CONTROL_TOKENS: tuple[str, ...] = (PAD_TOKEN, IM_START, IM_END, IMAGE_TOKEN)
# Reasoning tags: single ids, but kept when decoding so answers can be extracted from the text.
TAG_TOKENS: tuple[str, ...] = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
SPECIAL_TOKENS: tuple[str, ...] = CONTROL_TOKENS + TAG_TOKENS

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer of `vocab_size` ids (special tokens included) on `texts`.

    Raises ValueError when `texts` is empty or `vocab_size` cannot hold the 256 byte symbols plus
    the special tokens.
    """
    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs >= {minimum}"
        )
    if not texts:
        raise ValueError("train_tokenizer got no texts to learn merges from")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TAG_TOKENS),
        special_tokens=list(CONTROL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        bos_token=None,
        unk_token=None,
        padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    check_special_tokens(tokenizer)
    return tokenizer


def check_special_tokens(
    tokenizer: PreTrainedTokenizerFast, tokens: tuple[str, ...] = SPECIAL_TOKENS
) -> None:
    """Raise ValueError unless each of `tokens` encodes to exactly one id and pad/eos are set."""
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("tokenizer needs a pad token and an eos token")
    for token in tokens:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"tokenizer splits special token {token!r} into {len(ids)} ids {ids}")


def special_token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    """The single id of `token`; ValueError if the tokenizer does not know it as one token."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"tokenizer has no single id for {token!r} (got {ids})")
    return ids[0]


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> Path:
    """Write tokenizer.json, tokenizer_config.json and the chat template to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    return out


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer from a local directory (never from a hub).

    Trained here or a hub tokenizer extended by `vlm.add_r1v_tokens`: `<image>` and the
    reasoning tags must be single ids; chat markers and pad may be the hub's own.
    """
    directory = Path(path)
    if not (directory / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {directory}")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory, local_files_only=True)
    check_special_tokens(tokenizer, (*_image_tokens(directory), *TAG_TOKENS))
    return tokenizer


def _image_tokens(directory: Path) -> tuple[str, ...]:
    """The image marker tokens of the model saved beside the tokenizer (its family's);
    `<image>` when there is no model config (a tokenizer alone, or an LLM's)."""
    from r1vflow.models.families import FAMILIES, read_config

    if not (directory / "config.json").is_file():
        return (IMAGE_TOKEN,)
    model_type = read_config(directory).get("model_type")
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family.special_tokens
    return (IMAGE_TOKEN,)
