"""R1V's projector transfer between LLMs of one family (stage 1, step 2: re-assembly).

The MLP trained between the vision encoder and a *substitute* LLM moves onto the reasoning LLM
unchanged. That is only meaningful when both LLMs read the same embedding space through the
same tokenizer: `check_same_tokenizer` compares the vocabularies, `swap_llm` (r1vflow.models.vlm)
the hidden and vocabulary sizes and the `<image>` id. Each raises ValueError naming the mismatch.

    substitute_vlm = swap_llm(base_vlm, substitute_llm, tokenizer)     # step 1 trains its MLP
    transferred = transfer_projector(substitute_vlm, base_vlm, tokenizer, substitute_tokenizer)
"""

from __future__ import annotations

from transformers import (
    AutoModelForCausalLM,
    LlavaForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from r1vflow.models.devices import model_device
from r1vflow.models.vlm import swap_llm


def check_same_tokenizer(
    expected: PreTrainedTokenizerBase, other: PreTrainedTokenizerBase, what: str
) -> None:
    """Raise ValueError unless `other` maps every token to the same id as `expected`.

    `what` names `other` in the message (e.g. "the substitute LLM's tokenizer").
    """
    want, got = expected.get_vocab(), other.get_vocab()
    if want == got:
        return
    missing = sorted(set(want) - set(got))
    if missing:
        raise ValueError(
            f"{what} lacks {len(missing)} token(s) of the VLM's tokenizer, e.g. "
            f"{missing[0]!r}; projector transfer needs one tokenizer family"
        )
    extra = sorted(set(got) - set(want))
    if extra:
        raise ValueError(
            f"{what} has {len(extra)} token(s) the VLM's tokenizer lacks, e.g. "
            f"{extra[0]!r}; projector transfer needs one tokenizer family"
        )
    token = next(t for t in sorted(want) if want[t] != got[t])
    raise ValueError(
        f"{what} maps {token!r} to id {got[token]} but the VLM's tokenizer to "
        f"{want[token]}; projector transfer needs identical token ids"
    )


def language_model_of(vlm: LlavaForConditionalGeneration) -> PreTrainedModel:
    """The VLM's LLM as a standalone causal LM (a copy: decoder weights and output head)."""
    llm = AutoModelForCausalLM.from_config(vlm.config.text_config)
    llm.base_model.load_state_dict(vlm.model.language_model.state_dict())
    llm.get_output_embeddings().load_state_dict(vlm.lm_head.state_dict())
    return llm.to(dtype=model_device(vlm)[1]).eval()


def transfer_projector(
    source: LlavaForConditionalGeneration,
    target: LlavaForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    source_tokenizer: PreTrainedTokenizerBase | None = None,
) -> LlavaForConditionalGeneration:
    """A new VLM: `source`'s vision tower and trained projector over `target`'s LLM.

    `tokenizer` is the target VLM's; `source_tokenizer` (if given) must equal it. Raises
    ValueError when hidden size, vocabulary or `<image>` id differ. Neither input changes.
    """
    if source_tokenizer is not None:
        check_same_tokenizer(tokenizer, source_tokenizer, "the substitute VLM's tokenizer")
    return swap_llm(source, language_model_of(target), tokenizer)
