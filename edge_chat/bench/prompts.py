"""The benchmark's prompts: filler text, and chat prompts of an exact token count."""

from __future__ import annotations

from edge_chat.errors import EdgeChatError

_MARK = "\u2063BENCH\u2063"     # stands for the user's text when rendering the template
FILLER = (
    "Edge devices keep data close to where it is produced. A small language model that runs "
    "on a laptop answers questions about local files, drafts emails and explains code without "
    "sending anything over the network. Quantization stores each weight in four or eight bits "
    "instead of sixteen, so the model reads less memory for every token it writes; on a CPU "
    "the speed of decoding is bounded by memory bandwidth, while reading the prompt is bounded "
    "by arithmetic. Caching the keys and values of earlier turns lets the next turn start "
    "quickly: only the new message has to be evaluated. ")


def eog_ids(engine) -> list[int]:
    """Every end-of-generation token id of an engine (banned while benchmarking)."""
    ids = engine.info.extra.get("eog_ids")
    if ids is not None:
        return [int(i) for i in ids]
    return [t for t in range(engine.n_vocab) if engine.is_eog(t)]


def filler_tokens(engine, n: int) -> list[int]:
    text = FILLER
    ids = engine.tokenize(text)
    while len(ids) < n:
        text += FILLER
        ids = engine.tokenize(text)
    return ids[:n]


def chat_frame(model) -> tuple[list[int], list[int]]:
    """Prompt tokens before and after a user message's text."""
    if model.template is None:
        return model.engine.tokenize("", add_bos=model.info.add_bos), []
    head, _, tail = model.render([{"role": "user", "content": _MARK}]).partition(_MARK)
    return model.tokenize_prompt(head), model.engine.tokenize(tail)


def exact_prompt(model, n: int, filler: list[int]) -> list[int]:
    """A chat prompt of exactly `n` tokens: template head + filler + template tail."""
    head, tail = chat_frame(model)
    body = n - len(head) - len(tail)
    if body > len(filler):
        raise ValueError(f"filler of {len(filler)} tokens is too short for a {n}-token prompt")
    if body < 1:
        raise EdgeChatError(f"prompt length {n} is shorter than the chat template's own "
                            f"{len(head) + len(tail)} tokens", param="prompt_lengths")
    return head + filler[:body] + tail
