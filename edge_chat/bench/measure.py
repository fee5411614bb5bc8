"""`edge_chat bench`: load time, peak memory, time to first token, prefill and decode
speed, and second-turn time to first token (prefix reuse), measured through the
same ChatModel/Engine path every front-end uses.

Each model is measured in its own child process (`python -m edge_chat.bench.measure --child
SPEC`) so peak RSS figures do not mix; the child prints one JSON line.

Per prompt length N: a prompt of exactly N tokens (the chat template around filler
text), greedy decoding of `gen` tokens with end-of-generation tokens banned through
logit_bias, one warm-up run, then `reps` runs; before each run the KV cache is reset
(a one-token generate with a different first token), so every run evaluates all N
tokens. prefill tok/s = tokens evaluated / time to first token; decode tok/s =
(tokens - 1) / (time after the first token) — both as the chat loop reports them."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_chat.bench.prompts import chat_frame, eog_ids, exact_prompt, filler_tokens
from edge_chat.engines.kv import common_prefix
from edge_chat.errors import EdgeChatError

RESULT_MARK = "EDGE_CHAT_BENCH_RESULT "
SECOND_QUESTION = "Summarize the text above in one sentence."
@dataclass
class BenchConfig:
    prompt_lengths: list[int] = field(default_factory=lambda: [128, 1024])
    gen: int = 64
    reps: int = 3
    warmup: int = 1
    history: int = 1536                  # tokens of history before the second turn
    edits: int = 3                       # code edits of the speculative workload (0: skip)
    edit_tokens: int = 400               # most tokens of one edit's answer
    concurrency: list[int] = field(default_factory=list)  # clients at once (bench/concurrency.py)
    chat_template: str | None = None
    options: dict = field(default_factory=dict)   # EngineOptions fields


def parse_lengths(text: str, option: str = "--prompt-lengths", least: int = 2) -> list[int]:
    """A comma-separated list of numbers >= `least` (e.g. 128,1024)."""
    param = option.lstrip("-").replace("-", "_")
    try:
        out = [int(x) for x in str(text).replace(" ", "").split(",") if x]
    except ValueError:
        raise EdgeChatError(f"{option}: {text!r} is not a comma-separated list of "
                            "numbers (e.g. 128,1024)", param=param) from None
    if not out or any(n < least for n in out):
        raise EdgeChatError(f"{option}: give numbers of at least {least}", param=param)
    return out


def summary(values: list[float]) -> dict:
    vals = [float(v) for v in values]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "samples": vals}


# -- memory -------------------------------------------------------------------------

def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    return _status_kb("VmRSS") or 0


def peak_rss_bytes() -> int:
    peak = _status_kb("VmHWM")
    if peak is None:
        import resource
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = r if sys.platform == "darwin" else r * 1024
    return peak


# -- one model, in this process -----------------------------------------------------

class Runner:
    def __init__(self, model, cfg: BenchConfig):
        from edge_chat.params import make_params
        self.model, self.engine, self.cfg = model, model.engine, cfg
        self.params = make_params(temperature=0.0, max_tokens=cfg.gen,
                                  logit_bias={t: -100 for t in eog_ids(self.engine)})
        self.filler = filler_tokens(self.engine, max([*cfg.prompt_lengths, cfg.history]) + 8)

    def reset_cache(self, first: int) -> None:
        """Leave one token in the KV cache that differs from `first`, so the next
        prompt shares no prefix with it."""
        tok = next(t for t in self.filler if t != first)
        gen = self.engine.generate([tok], self.params)
        try:
            next(gen, None)
        finally:
            gen.close()

    def run(self, tokens: list[int], messages: list | None = None) -> dict:
        from edge_chat.chat.completion import Prompt
        stats, text = None, []
        for ev in self.model.stream(messages, self.params, prompt=Prompt(messages or [], "", tokens)):
            text.append(ev.delta)
            if ev.stats is not None:
                stats = ev.stats
        n_eval = self.engine.n_prompt_evaluated
        return {"ttft": stats.ttft, "n_eval": n_eval, "gen": stats.completion_tokens,
                "prefill_tps": n_eval / stats.ttft if stats.ttft > 0 else 0.0,
                "decode_tps": stats.decode_tps, "text": "".join(text)}

    def prompt_length(self, n: int) -> dict:
        if n + self.cfg.gen >= self.model.n_ctx:
            raise EdgeChatError(f"prompt length {n} + {self.cfg.gen} generated tokens do not fit "
                                f"the context window of {self.model.n_ctx}; pass --ctx-size",
                                param="prompt_lengths")
        tokens = exact_prompt(self.model, n, self.filler)
        runs = []
        for i in range(self.cfg.warmup + self.cfg.reps):
            self.reset_cache(tokens[0])
            r = self.run(tokens)
            if i >= self.cfg.warmup:
                runs.append(r)
        return {"prompt_tokens": n, "n_prompt_evaluated": runs[-1]["n_eval"],
                "gen_tokens": runs[-1]["gen"],
                **{k: summary([r[k] for r in runs]) for k in ("ttft", "prefill_tps", "decode_tps")}}

    def second_turn(self) -> dict | None:
        """Turn 1 with ~history tokens, then a short turn 2 over the same cache."""
        m, cfg = self.model, self.cfg
        room = m.n_ctx - 3 * cfg.gen - 64
        history = min(cfg.history, room)
        if history < 32:
            return None
        head, tail = chat_frame(m)
        body = max(history - cfg.gen - len(head) - len(tail), 1)
        user1 = self.engine.detokenize(self.filler[:body])
        turns = []
        for _ in range(cfg.reps):
            if m.template is not None:
                msgs1 = [{"role": "user", "content": user1}]
                p1 = m.prepare(msgs1, self.params).tokens
            else:
                p1 = m.prepare_text(user1, self.params).tokens
            self.reset_cache(p1[0])
            t1 = self.run(p1)
            if m.template is not None:
                msgs2 = msgs1 + [{"role": "assistant", "content": t1["text"]},
                                 {"role": "user", "content": SECOND_QUESTION}]
                p2 = m.prepare(msgs2, self.params).tokens
            else:
                p2 = m.prepare_text(f"{user1}{t1['text']}\n\nQuestion: {SECOND_QUESTION}\nAnswer:",
                                    self.params).tokens
            t2 = self.run(p2)
            new = len(p2) - common_prefix(p2, p1 + self.engine.tokenize(t1["text"]))
            turns.append((len(p1), t1, len(p2), t2, new))
        ttft1 = summary([t[1]["ttft"] for t in turns])
        ttft2 = summary([t[3]["ttft"] for t in turns])
        last = turns[-1]
        return {"history_tokens": last[0] + last[1]["gen"], "first_prompt_tokens": last[0],
                "first_n_prompt_evaluated": last[1]["n_eval"],
                "second_prompt_tokens": last[2], "second_new_tokens": last[4],
                "second_n_prompt_evaluated": last[3]["n_eval"],
                "first_ttft": ttft1, "second_ttft": ttft2,
                "ratio": ttft2["median"] / ttft1["median"] if ttft1["median"] > 0 else None}


def measure(path: str, cfg: BenchConfig, progress=None) -> dict:
    """Benchmark one model in this process (peak RSS is this process's)."""
    say = progress or (lambda _msg: None)
    from edge_chat.engines import EngineOptions
    from edge_chat.runtime import open_chat
    from edge_chat.store.paths import model_kind, resolve_model

    p = resolve_model(path)
    t = time.perf_counter()
    __import__("llama_cpp" if model_kind(p) == "gguf" else "onnxruntime")
    import_s = time.perf_counter() - t
    rss0 = rss_bytes()
    t = time.perf_counter()
    # prefill is what is measured: no prompt cache (each run evaluates all its tokens)
    options = EngineOptions(**{**cfg.options, "cache_ram": "0"})
    if cfg.concurrency:
        options.parallel = max(cfg.concurrency)
    model = open_chat(str(p), options, chat_template=cfg.chat_template, need_template=False)
    load_s = time.perf_counter() - t
    rss_loaded = rss_bytes()
    try:
        info = model.info
        out = {"model": info.name, "path": str(p), "format": info.format, "quant": info.quant,
               "size_bytes": info.size_bytes, "n_ctx": info.n_ctx,
               "threads": info.extra.get("threads"), "template": model.template is not None,
               "import_s": import_s, "load_s": load_s, "rss_before_load": rss0,
               "rss_after_load": rss_loaded, "config": asdict(cfg), "lengths": []}
        runner = Runner(model, cfg)
        if cfg.concurrency:     # only this workload: the engine is a batching one
            from edge_chat.bench.concurrency import concurrency
            out["slots"] = model.engine.capabilities.slots
            out["concurrency"] = concurrency(model, cfg, runner.filler, say)
            out["peak_rss"] = peak_rss_bytes()
            return out
        mode, model.engine.speculative = model.engine.speculative, "off"
        try:    # raw prefill/decode speed: speculation has its own workload
            for n in cfg.prompt_lengths:
                say(f"{info.name}: prompt {n} tokens, {cfg.warmup}+{cfg.reps} runs")
                out["lengths"].append(runner.prompt_length(n))
            if cfg.history:
                say(f"{info.name}: second turn after ~{cfg.history} tokens of history")
            out["second_turn"] = runner.second_turn()
        finally:
            model.engine.speculative = mode
        if cfg.edits:
            from edge_chat.bench.edit import code_edit
            out["code_edit"] = code_edit(model, cfg.edits, cfg.edit_tokens, say)
        out["peak_rss"] = peak_rss_bytes()
        return out
    finally:
        model.engine.close()


# -- several models, each in a child ------------------------------------------------

def _child_env() -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])     # the folder that holds edge_chat/
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env["EDGE_CHAT_PROBE"] = "0"     # a throw-away process already: load times stay pure
    return env


def _cpu_seconds() -> tuple[float, float]:
    """(busy CPU-seconds of the whole machine, CPU-seconds of our finished children)."""
    import resource
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        busy = 0.0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, ru.ru_utime + ru.ru_stime


def measure_in_child(path: str, cfg: BenchConfig, quiet: bool = False) -> dict:
    """`measure` in a fresh process; adds `others_cpu`: the share of the machine's CPUs
    other processes used meanwhile (above ~0.1 the numbers are noisy)."""
    spec = json.dumps({"path": path, "config": asdict(cfg), "quiet": quiet})
    (busy0, kids0), t0 = _cpu_seconds(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edge_chat.bench.measure", "--child", spec],
                          stdout=subprocess.PIPE, text=True, env=_child_env(), check=False)
    (busy1, kids1), wall = _cpu_seconds(), time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK):])
            others = max(0.0, (busy1 - busy0) - (kids1 - kids0)) / (wall * (os.cpu_count() or 1))
            result["others_cpu"] = round(others, 3) if busy1 else None
            return result
    return {"model": path, "error": f"benchmark process exited with code {proc.returncode}"}


def bench_models(paths: list[str], cfg: BenchConfig, quiet: bool = False) -> list[dict]:
    return [measure_in_child(p, cfg, quiet) for p in paths]


# -- output -------------------------------------------------------------------------

def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.0f}"


def _ms(s: dict) -> str:
    return f"{s['median'] * 1000:.0f}±{(s['max'] - s['min']) / 2 * 1000:.0f}"


def _tps(s: dict) -> str:
    return f"{s['median']:.1f}±{(s['max'] - s['min']) / 2:.1f}"


def table(results: list[dict]):
    """Two rich tables: per model (load, memory, second turn), per prompt length (speed)."""
    from rich.console import Group
    from rich.table import Table
    models = Table(title="models (median±half range over the runs)")
    for col in ("model", "format", "size MB", "load s", "peak RSS MB", "history",
                "1st-turn TTFT ms", "2nd-turn TTFT ms", "2nd/1st"):
        models.add_column(col, justify="left" if col in ("model", "format") else "right")
    speed = Table(title="speed per prompt length (greedy, end-of-generation banned)")
    for col in ("model", "prompt tok", "gen tok", "TTFT ms", "prefill tok/s", "decode tok/s"):
        speed.add_column(col, justify="left" if col == "model" else "right")
    for r in results:
        if "error" in r:
            models.add_row(r["model"], "[red]error[/]", r["error"])
            continue
        st = r.get("second_turn")
        turn = [str(st["history_tokens"]), _ms(st["first_ttft"]), _ms(st["second_ttft"]),
                f"{st['ratio']:.2f}"] if st else ["-"] * 4
        models.add_row(r["model"], f"{r['format']} {r['quant']}", _mb(r["size_bytes"]),
                       f"{r['load_s']:.2f}", _mb(r.get("peak_rss")), *turn)
        for ln in r["lengths"]:
            speed.add_row(r["model"], str(ln["prompt_tokens"]), str(ln["gen_tokens"]),
                          _ms(ln["ttft"]), _tps(ln["prefill_tps"]), _tps(ln["decode_tps"]))
    busy = [f"{r['model']} {r['others_cpu']:.0%}" for r in results
            if (r.get("others_cpu") or 0) > 0.1]
    note = ("[yellow]other processes kept the CPUs busy during the run "
            f"({', '.join(busy)}): these numbers are noisy[/]") if busy else ""
    from edge_chat.bench.concurrency import concurrency_table
    from edge_chat.bench.edit import edit_table
    extra = [t for t in (edit_table(results), concurrency_table(results)) if t is not None]
    speeds = [speed] if any(r.get("lengths") for r in results) else []
    return Group(models, *speeds, *extra, note)


def _child(spec_json: str) -> int:
    spec = json.loads(spec_json)
    cfg = BenchConfig(**spec["config"])
    say = None if spec.get("quiet") else (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        result = measure(spec["path"], cfg, say)
    except EdgeChatError as e:
        result = {"model": spec["path"], "error": str(e)}
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(_child(sys.argv[2]))
    sys.exit("usage: edge_chat bench MODEL [MODEL...]  (this module's own entry is internal)")
