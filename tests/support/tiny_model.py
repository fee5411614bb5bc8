"""A tiny Llama chat model trained on the spot, for tests that must check real answers.

`build_tiny_hf(out)` writes a Hugging Face folder: a SentencePiece BPE tokenizer trained
here (byte fallback, no dummy prefix, `<|im_start|>`/`<|im_end|>` single tokens), a ChatML
chat template, and a 2-layer Llama (hidden 256, so every row length suits k-quants) that
has memorised the conversations in `TRAINED_QA`. The builder checks that transformers'
greedy answers equal the expected ones and raises otherwise.

Anything changed here changes the cache key of the fixtures (a hash of this file).
"""

from __future__ import annotations

import io
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

IM_START, IM_END = "<|im_start|>", "<|im_end|>"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class QA(NamedTuple):
    messages: list[dict]   # the prompt: chat messages ending with a user turn
    answer: str            # what the trained model answers (greedy), without <|im_end|>


def _u(text: str) -> dict:
    return {"role": "user", "content": text}


def _s(text: str) -> dict:
    return {"role": "system", "content": text}


def _a(text: str) -> dict:
    return {"role": "assistant", "content": text}


TRAINED_QA: list[QA] = [
    QA([_u("What is the capital of France?")], "The capital of France is Paris."),
    QA([_u("What is the capital of Italy?")], "The capital of Italy is Rome."),
    QA([_u("What is the capital of Japan?")], "The capital of Japan is Tokyo."),
    QA([_u("What color is the sky?")], "The sky is blue."),
    QA([_u("What color is grass?")], "Grass is green."),
    QA([_u("Say hello.")], "Hello! How can I help you?"),
    QA([_u("What is two plus two?")], "Two plus two is four."),
    QA([_u("How many legs does a cat have?")], "A cat has four legs."),
    QA([_u("Name a fruit.")], "An apple is a fruit."),
    QA([_u("Count to five.")], "1, 2, 3, 4, 5."),
    QA([_u("Who wrote Hamlet?")], "William Shakespeare wrote Hamlet."),
    # a system prompt changes the answer to the same question
    QA([_s("You are a pirate."), _u("Say hello.")], "Ahoy, matey! Welcome aboard!"),
    QA([_s("You are a robot."), _u("Say hello.")], "Beep boop. Greetings, human."),
    QA([_s("Answer in French."), _u("What color is the sky?")], "Le ciel est bleu."),
    QA([_s("You are a pirate."), _u("What color is the sky?")], "Arr, the sky be blue, matey."),
    # two turns: the second answer depends on the first turn
    QA([_u("My name is Alice.")], "Nice to meet you, Alice!"),
    QA([_u("My name is Bob.")], "Nice to meet you, Bob!"),
    QA([_u("My name is Alice."), _a("Nice to meet you, Alice!"), _u("What is my name?")],
       "Your name is Alice."),
    QA([_u("My name is Bob."), _a("Nice to meet you, Bob!"), _u("What is my name?")],
       "Your name is Bob."),
    QA([_u("What is the capital of Italy?"), _a("The capital of Italy is Rome."),
        _u("And of Japan?")], "The capital of Japan is Tokyo."),
]

# Plain English so the tokenizer learns ordinary words, not only the chat lines.
_PROSE = """\
The quick brown fox jumps over the lazy dog.
A small model can run on a laptop without a network connection.
Quantization stores each weight with fewer bits, which makes the file smaller.
When the weather is warm, children play in the park until the evening.
She opened the window and listened to the birds singing in the garden.
Every morning he drinks a cup of coffee and reads the news.
The river flows from the mountains down to the sea.
Please write a short answer and stop when you are done.
Numbers such as 12, 345 and 6789 are split into single digits.
Computers follow instructions, one step after another, very quickly.
The library opens at nine o'clock and closes at six.
Music, books and films help people share their stories.
Tokenizers turn text into pieces; the model predicts the next piece.
In winter the days are short and the nights are long and cold.
Bread, cheese, milk and eggs are on the shopping list.
The teacher asked a question, and the students raised their hands.
Trains, buses and bicycles carry people through the busy city.
Water boils at one hundred degrees and freezes at zero.
The old house at the end of the street has a red door.
Good tests fail loudly when something is wrong.
"""

SEED = 1234
VOCAB_SIZE = 1000
TRAIN_STEPS = 300
LR = 3e-3


def _train_sentencepiece(folder: Path) -> None:
    import sentencepiece as spm

    lines = [line for line in _PROSE.splitlines() if line]
    for qa in TRAINED_QA:
        lines += [m["content"] for m in qa.messages] + [qa.answer]
    lines += ["system", "user", "assistant"]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 4), model_writer=buf,
        model_type="bpe", vocab_size=VOCAB_SIZE, hard_vocab_limit=False,
        character_coverage=1.0, byte_fallback=True, split_digits=True,
        add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        user_defined_symbols=[IM_START, IM_END],
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(buf.getvalue())


def _make_tokenizer(folder: Path):
    """LlamaTokenizerFast over the trained tokenizer.model, saved with ChatML metadata."""
    from transformers import AddedToken, LlamaTokenizerFast

    tok = LlamaTokenizerFast(
        vocab_file=str(folder / "tokenizer.model"), legacy=False, add_prefix_space=False,
        add_bos_token=False, add_eos_token=False, bos_token="<s>", eos_token=IM_END,
        unk_token="<unk>", pad_token=None, clean_up_tokenization_spaces=False,
    )
    tok.add_special_tokens({"additional_special_tokens": [
        AddedToken(t, special=True, normalized=False) for t in (IM_START, IM_END)]})
    tok.chat_template = CHATML_TEMPLATE
    tok.model_max_length = 1024
    tok.save_pretrained(str(folder))
    # make the keys llama.cpp's converter and our engines read explicit
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(add_prefix_space=False, add_bos_token=False, add_eos_token=False, legacy=False,
               eos_token=IM_END, bos_token="<s>", chat_template=CHATML_TEMPLATE)
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    return tok


def _encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tok, messages: list[dict]) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return _encode(tok, text)


def training_examples(tok, im_end: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per conversation: prompt then answer then <|im_end|>, loss on
    the answer tokens only. Built by concatenation, exactly as generation sees them."""
    out = []
    for qa in TRAINED_QA:
        p = prompt_ids(tok, qa.messages)
        a = _encode(tok, qa.answer) + [im_end]
        out.append((p + a, [-100] * len(p) + a))
    return out


def train(model, examples, pad_id: int) -> list[float]:
    import torch

    n = max(len(ids) for ids, _ in examples)
    ids = torch.tensor([x + [pad_id] * (n - len(x)) for x, _ in examples])
    labels = torch.tensor([y + [-100] * (n - len(y)) for _, y in examples])
    mask = torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x, _ in examples])
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=TRAIN_STEPS,
                                                pct_start=0.1)
    model.train()
    losses = []
    for _ in range(TRAIN_STEPS):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


def hf_greedy(model, tok, messages: list[dict], max_new_tokens: int = 40) -> tuple[list[int], str]:
    """transformers' greedy continuation of the ChatML prompt: (new ids, text without specials)."""
    import torch

    ids = torch.tensor([prompt_ids(tok, messages)])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens,
                             eos_token_id=tok.convert_tokens_to_ids(IM_END),
                             pad_token_id=tok.convert_tokens_to_ids(IM_END))
    new = out[0, ids.shape[1]:].tolist()
    return new, tok.decode(new, skip_special_tokens=True)


def build_tiny_hf(out: Path) -> Path:
    """Build the tiny trained chat model into the (new or empty) folder `out`; return `out`.

    Runs torch on one thread: for a model this small, a second thread only adds
    synchronisation, and on a busy 2-core machine it made training 7x slower (0.87 s
    against 0.13 s a step). One thread also makes the result independent of the core count."""
    with torch_threads(1):
        return _build(Path(out))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch on `n` threads inside the block (for this model, 1 is the fastest)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _build(out: Path) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    t0 = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    _train_sentencepiece(out)
    tok = _make_tokenizer(out)
    im_start, im_end = (tok.convert_tokens_to_ids(t) for t in (IM_START, IM_END))
    for t, i in ((IM_START, im_start), (IM_END, im_end)):
        if _encode(tok, t) != [i]:
            raise RuntimeError(f"{t} is not a single token: {_encode(tok, t)}")

    torch.manual_seed(SEED)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=im_end, pad_token_id=None,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(cfg)
    losses = train(model, training_examples(tok, im_end), pad_id=im_end)

    wrong = []
    for qa in TRAINED_QA:
        new, text = hf_greedy(model, tok, qa.messages)
        if text != qa.answer or not new or new[-1] != im_end:
            wrong.append(f"{qa.messages[-1]['content']!r}: {text!r} != {qa.answer!r}")
    if wrong:
        raise RuntimeError(f"tiny model did not learn {len(wrong)}/{len(TRAINED_QA)} answers "
                           f"(final loss {losses[-1]:.4f}): " + "; ".join(wrong))

    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id,
                                               eos_token_id=im_end, pad_token_id=im_end)
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "build_info.json").write_text(json.dumps({
        "seconds": round(time.monotonic() - t0, 1), "final_loss": losses[-1],
        "steps": TRAIN_STEPS, "vocab_size": len(tok), "n_params": model.num_parameters(),
    }, indent=2) + "\n")
    return out


if __name__ == "__main__":  # python -m tests.support.tiny_model OUT
    import sys
    print(build_tiny_hf(Path(sys.argv[1])))
