"""Issue 22's prompt cache through a real `edge_chat serve`, on the real Qwen2.5-Coder-0.5B:
the GGUF file and our int4 ONNX conversion, each with its own empty cache folder.

Workload: an agent's system prompt (rules and 8 tool definitions passed as OpenAI
`tools`, ~3,500 prompt tokens, the text built here, deterministic) and short user
messages, greedy. Each step reports the time to the first streamed content or tool-call
delta (TTFT), `usage.prompt_tokens_details.cached_tokens` and /health's prompt_cache:

  1. cold: the first request with that system prompt;
  2. sequential: a new conversation with the same system prompt after the first ended;
  3. overlapping: a new conversation while another one with that prompt streams;
  4. abandoned: a stream with that prompt is read for one chunk, then left open and
     unread; a new conversation (goal <= 1.0 s);
  5. switch: a request to the second model (Gemma 3 270M) unloads Qwen, then a new Qwen
     conversation (goal <= 1.5 s);
  6. restart: the server is killed and started again on the same cache folder; a new
     conversation (goal <= 1.5 s).

Beside it a second server with `--cache-ram 0` (no prompt cache) gives steps 1-4 without
the cache, the cold first request with the cache on vs off (goal within 5 %, paired over
--reps fresh system prompts) and decode tok/s on vs off (same prompt, goal >= 0.97x,
end-of-generation banned). Last: the bytes in the cache folder vs the disk budget.

Servers run serve's defaults, with --threads, --cache-dir (a temporary folder, so the
cache starts empty) and --max-loaded 1 (the default, 2, would keep Qwen loaded beside
Gemma and step 5 would not reload it); they bind 127.0.0.1 and are killed at the end.

    python benchmarks/prompt_cache.py [--gguf FILE] [--onnx FOLDER | --no-onnx]
                                      [--second FILE] [--threads 2] [--gen 32] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _common as C
from batch_vs_peers import Srv, eog_bias, free_port

# -- the workload -----------------------------------------------------------------------

AREAS = ["the HTTP server", "the model store", "the GGUF engine", "the ONNX engine",
         "the tokenizer", "the chat templates", "the converter", "the command line",
         "the test suite", "the packaging"]

RULES = [
    "Before you change {a}, read the files that define it and the tests that cover it; "
    "summarize what you found in two sentences before proposing an edit.",
    "Never change the public behaviour of {a} without a test that shows the old and the "
    "new behaviour; name the test in your answer.",
    "When a request about {a} is ambiguous, ask one precise question instead of guessing, "
    "and say which two readings you considered.",
    "Keep edits to {a} small: one concern per change, no drive-by reformatting, no renamed "
    "symbols unless the task asks for it.",
    "If a command you run for {a} fails, quote the last ten lines of its output, state the "
    "likely cause, and try at most one fix before reporting back.",
    "Do not add a dependency to {a}; if one seems necessary, explain what it replaces and "
    "what it costs in install size.",
]

SECTIONS = {
    "Role": [
        "You are a careful software engineering agent working in a Python repository.",
        "You act through the tools listed below and report to the user in plain English.",
        "You prefer reading code to guessing, and measuring to assuming.",
        "You never invent file names, function names, command output or test results.",
    ],
    "Workflow": [
        "Start every task by restating it in one sentence.",
        "List the files you expect to touch before you touch them.",
        "Run the relevant tests before and after every change and compare the results.",
        "Stop and report when the task is done; do not continue with unrelated work.",
        "When two approaches are possible, pick the simpler one and say why.",
    ],
    "Code style": [
        "Follow the style of the surrounding code: names, docstrings, line length 100.",
        "Type-annotate new functions; keep them short; comment why, not what.",
        "Handle errors where they can be handled, and let the rest propagate with context.",
        "Prefer the standard library; no global state; no print statements in library code.",
    ],
    "Safety": [
        "Never run commands that delete files outside the repository or the temporary folder.",
        "Never read or print credentials, tokens, keys or the contents of home directories.",
        "Never push, publish, tag or open network connections except through web_fetch.",
        "Stop any process you start, by its id, before you finish.",
    ],
    "Output format": [
        "Answer in short paragraphs; use a bullet list only for three or more items.",
        "Show code as unified diffs in fenced blocks, with the file path in the header.",
        "End each answer with one line starting 'Next:' naming the next step, or 'Done.'",
    ],
}


def system_prompt(project: str = "edge-demo") -> str:
    """The agent's rules; `project` is its first line, so another name makes a system
    prompt that shares nothing with the default one."""
    out = [f"Project: {project}. You are the coding agent of this project.", ""]
    for title, lines in SECTIONS.items():
        out.append(f"## {title}")
        out += [f"- {x}" for x in lines]
        out.append("")
    out.append("## Rules per area")
    n = 0
    for a in AREAS:
        for r in RULES:
            n += 1
            out.append(f"{n}. {r.format(a=a)}")
    out += ["", "## Tool use",
            "- Call a tool only when its result changes what you do next.",
            "- Call one tool at a time and read its result before the next call.",
            "- Never call a tool to answer a question about these rules: answer directly."]
    return "\n".join(out)


def _fn(name: str, desc: str, props: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": desc,
        "parameters": {"type": "object", "properties": props, "required": required}}}


def _s(desc: str, **kw) -> dict:
    return {"type": "string", "description": desc, **kw}


def _i(desc: str) -> dict:
    return {"type": "integer", "description": desc}


TOOLS = [
    _fn("read_file", "Read a text file of the repository. Returns at most `limit` lines "
        "starting at line `offset` (1-based), each prefixed with its number. Use it before "
        "editing a file, and to read tests.",
        {"path": _s("Path relative to the repository root."),
         "offset": _i("First line to return (1-based)."),
         "limit": _i("Number of lines to return (at most 400).")}, ["path"]),
    _fn("write_file", "Replace one exact, unique snippet of a file with new text. Fails if "
        "the snippet is missing or occurs more than once; read the file first.",
        {"path": _s("Path relative to the repository root."),
         "old_text": _s("The exact text to replace, including its indentation."),
         "new_text": _s("The text to put in its place.")}, ["path", "old_text", "new_text"]),
    _fn("list_dir", "List the files and folders under a folder of the repository, two "
        "levels deep, hidden files excluded.",
        {"path": _s("Folder relative to the repository root ('.' for the root)."),
         "pattern": _s("Optional glob the names must match, e.g. '*.py'.")}, ["path"]),
    _fn("search_code", "Search the repository for a regular expression. Returns matching "
        "lines with their file and line number, at most 50 matches.",
        {"regex": _s("A Python regular expression."),
         "path": _s("Folder to search in, default the whole repository."),
         "case_sensitive": {"type": "boolean", "description": "Default true."}}, ["regex"]),
    _fn("run_tests", "Run pytest on the given test files or node ids with a 10 minute "
        "timeout. Returns the summary line and the failures' tracebacks.",
        {"targets": {"type": "array", "items": {"type": "string"},
                     "description": "Test files or node ids; empty means every test."},
         "keyword": _s("Optional -k expression selecting tests by name.")}, ["targets"]),
    _fn("run_command", "Run a shell command in the repository root with a 2 minute "
        "timeout. Returns the exit code and the last 200 lines of output. Never use it to "
        "delete files outside the repository.",
        {"command": _s("The command line."),
         "timeout_s": _i("Seconds before the command is killed (at most 120).")},
        ["command"]),
    _fn("git_diff", "Show the uncommitted changes of the working tree as a unified diff, "
        "optionally for one path only.",
        {"path": _s("Optional file or folder."),
         "staged": {"type": "boolean", "description": "Only staged changes."}}, []),
    _fn("web_fetch", "Fetch a public web page (documentation, an issue) and return its "
        "text, at most 20,000 characters. Only http and https addresses.",
        {"url": _s("The address, starting with https://."),
         "max_chars": _i("Characters to return (default 20000).")}, ["url"]),
]

QUESTIONS = [
    "In one sentence: what must you do before changing the tokenizer?",
    "Briefly, how should you keep edits to the converter small?",
    "What do you do when a command for the test suite fails? One sentence.",
    "In one sentence, which rule covers adding a dependency to the packaging?",
    "Summarize the safety rules in one sentence.",
    "How should an answer end? Reply in one sentence.",
    "In one sentence: when may you ask a question instead of guessing?",
    "What is the first step of every task? One sentence.",
    "Briefly: how do you show code in an answer?",
    "In one sentence, what do you do with processes you start?",
    "Which style rules apply to new functions? One sentence.",
    "In one sentence: when should you call a tool?",
]


def conversation(i: int, project: str = "edge-demo") -> list[dict]:
    return [{"role": "system", "content": system_prompt(project)},
            {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]


# -- one request ------------------------------------------------------------------------

def body(model: str, messages: list[dict], max_tokens: int, bias: dict | None,
         tools: bool = True) -> dict:
    b = {"model": model, "messages": messages, "stream": True, "temperature": 0,
         "max_tokens": max_tokens, "stream_options": {"include_usage": True}}
    if tools:
        b["tools"] = TOOLS
    if bias:
        b["logit_bias"] = bias
    return b


def read_stream(lines, t0: float, timeout: float, on_first=None) -> dict:
    """Consume an SSE stream: TTFT to the first content or tool-call delta, the usage,
    the time of the last delta."""
    first = last = None
    kind, usage, text = None, None, []
    for line in lines:
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"request took more than {timeout:.0f} s")
        if not line.startswith("data: {"):
            continue
        d = json.loads(line[6:])
        if d.get("error"):
            raise RuntimeError(f"server error: {d['error']}")
        usage = d.get("usage") or usage
        for ch in d.get("choices") or []:
            delta = ch.get("delta") or {}
            if delta.get("content") or delta.get("tool_calls"):
                last = time.perf_counter()
                if first is None:
                    first = last
                    kind = "tool call" if delta.get("tool_calls") else "content"
                    if on_first is not None:
                        on_first()
                text.append(delta.get("content") or json.dumps(delta.get("tool_calls")))
    usage = usage or {}
    n = usage.get("completion_tokens") or 0
    return {"start": t0, "first": first, "last": last, "ttft": (first - t0) if first else None,
            "kind": kind, "prompt": usage.get("prompt_tokens"),
            "cached": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
            "completion": n, "text": "".join(text),
            "decode_tps": (n - 1) / (last - first) if first and last and last > first and n > 1
            else None}


def ask(url: str, b: dict, timeout: float, on_first=None) -> dict:
    import httpx
    t0 = time.perf_counter()
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=b,
                      timeout=httpx.Timeout(timeout, connect=10)) as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
        return read_stream(r.iter_lines(), t0, timeout, on_first)


def health(url: str) -> dict:
    import httpx
    return httpx.get(f"{url}/health", timeout=10).json()


def cache_of(h: dict, model: str) -> dict | None:
    return next((e.get("prompt_cache") for e in h.get("loaded", []) if e["id"] == model), None)


def cache_text(pc: dict | None) -> str:
    if not pc:
        return "off / not loaded"
    return (f"{pc['entries']} entries, {pc['ram_bytes'] / C.MB:.0f}/{pc['disk_bytes'] / C.MB:.0f}"
            f" MB RAM/disk, {pc['hits']} hits ({pc['hit_tokens']} tok), {pc['misses']} misses, "
            f"{pc['saved']} saved, {pc['disk_reads']} disk reads")


# -- the steps ----------------------------------------------------------------------------

class Bench:
    def __init__(self, model: str, a, bias: dict):
        self.model, self.a, self.bias = model, a, bias

    def one(self, url: str, messages: list[dict]) -> dict:
        return ask(url, body(self.model, messages, self.a.gen, None), self.a.timeout)

    def overlapping(self, url: str, i_bg: int, i_new: int) -> dict:
        """A new conversation once another one (EOG banned, 4 x gen tokens) streams."""
        started = threading.Event()
        bg: dict = {}

        def background() -> None:
            try:
                bg.update(ask(url, body(self.model, conversation(i_bg), 4 * self.a.gen,
                                        self.bias), self.a.timeout, on_first=started.set))
            except Exception as e:  # noqa: BLE001  reported in the row
                bg["error"] = str(e)
            finally:
                started.set()

        t = threading.Thread(target=background, daemon=True)
        t.start()
        started.wait(self.a.timeout)
        r = self.one(url, conversation(i_new))
        t.join(self.a.timeout)
        r["other_streaming"] = bool(bg.get("last") and r["first"] and bg["last"] > r["first"])
        r["note"] = ("the other stream was still running at the first token"
                     if r["other_streaming"] else "the other stream had ended: not overlapped")
        if "error" in bg:
            r["note"] = f"the other stream failed: {bg['error']}"
        return r

    def abandoned(self, url: str, i_open: int, i_new: int) -> dict:
        """A stream read for one chunk then left unread (connection open); a new one."""
        import httpx
        client = httpx.Client(timeout=httpx.Timeout(self.a.timeout, connect=10))
        try:
            req = client.build_request("POST", f"{url}/v1/chat/completions",
                                       json=body(self.model, conversation(i_open),
                                                 4 * self.a.gen, self.bias))
            resp = client.send(req, stream=True)
            try:
                lines = resp.iter_lines()
                for line in lines:
                    if line.startswith("data: {"):
                        break           # one chunk read; the rest stays unread
                r = self.one(url, conversation(i_new))
            finally:
                resp.close()
        finally:
            client.close()
        r["note"] = "one chunk of the other stream read, connection left open"
        return r

    def decode(self, url: str) -> dict:
        """Decode rate on the default system prompt, exactly gen tokens (EOG banned)."""
        return ask(url, body(self.model, conversation(11), self.a.gen, self.bias),
                   self.a.timeout)


class LoadWatch:
    """Polls /health during a request: when `model` is loaded and ready (seconds after
    the watch started), to split a TTFT into loading the model and the rest."""

    def __init__(self, url: str, model: str, timeout: float):
        self.url, self.model, self.end = url, model, time.monotonic() + timeout
        self.t0 = time.perf_counter()
        self.ready: float | None = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self.end:
            try:
                h = health(self.url)
                if any(e["id"] == self.model and e.get("ready") for e in h.get("loaded", [])):
                    self.ready = time.perf_counter() - self.t0
                    return
            except Exception:  # noqa: BLE001  the server is busy: try again
                pass
            time.sleep(0.1)

    def stop(self) -> str:
        self._stop.set()
        self._t.join(15)
        return f"model ready {self.ready:.2f} s after the request" if self.ready else \
            "model ready: not seen"


def folder_bytes(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*.kvc") if p.is_file()] if folder.exists() else []
    return sum(p.stat().st_size for p in files), len(files)


def settle(folder: Path, seconds: float = 30) -> None:
    """Wait until the background writer has stopped changing the cache folder."""
    end, last = time.monotonic() + seconds, None
    while time.monotonic() < end:
        now = (folder_bytes(folder), sorted(p.name for p in folder.rglob("*.tmp")))
        if now == last and not now[1]:
            return
        last = now
        time.sleep(1.0)


def start(cmd: list[str], log: Path, servers: list) -> Srv:
    port = free_port()
    srv = Srv(cmd + ["--port", str(port)], port, log)
    servers.append(srv)
    return srv


def kill(srv: Srv) -> None:
    """SIGKILL, as a crash or a hard restart would (not a clean shutdown)."""
    if srv.proc.poll() is None:
        srv.proc.kill()
    srv.proc.wait(30)
    srv.log.close()


def run_engine(label: str, path: Path, second: Path, a, bias: dict, logs: Path) -> dict:
    from edge_chat.system import free_bytes
    name = path.stem if path.is_file() else path.name
    gname = second.stem if second.is_file() else second.name
    tmp = Path(tempfile.mkdtemp(prefix=f"prompt-cache-{name}-"))
    folder = tmp / "prompts"
    budget = min(8 << 30, free_bytes(folder) // 4)      # what --cache-disk auto takes
    base = [sys.executable, "-m", "edge_chat", "serve", str(path), str(second),
            "--threads", str(a.threads), "--max-loaded", "1", "--cache-dir", str(folder)]
    b = Bench(name, a, bias)
    servers: list[Srv] = []
    steps: dict[str, dict] = {}
    off: dict[str, dict] = {}
    out = {"label": label, "steps": steps, "off": off, "budget": budget}
    warm = [{"role": "user", "content": "Say hi."}]

    def step(key: str, srv: Srv, r: dict) -> None:
        r["cache"] = cache_of(health(srv.url), name)
        steps[key] = r
        C.say(f"{label} {key}: TTFT {r['ttft']:.2f} s, cached {r['cached']} of {r['prompt']}"
              f"; {cache_text(r['cache'])}")

    try:
        C.say(f"{label}: starting serve (cache on) in {tmp}")
        on = start(base, logs / f"{name}-on.log", servers)
        ask(on.url, body(name, warm, 2, None, tools=False), a.timeout)      # loads the model
        C.wait_quiet(timeout=60)
        step("1 cold", on, b.one(on.url, conversation(0)))
        step("2 sequential", on, b.one(on.url, conversation(1)))
        C.wait_quiet(timeout=60)
        step("3 overlapping", on, b.overlapping(on.url, 2, 3))
        C.wait_quiet(timeout=60)
        step("4 abandoned", on, b.abandoned(on.url, 4, 5))

        C.say(f"{label}: starting serve --cache-ram 0")
        no = start(base + ["--cache-ram", "0"], logs / f"{name}-off.log", servers)
        ask(no.url, body(name, warm, 2, None, tools=False), a.timeout)
        C.wait_quiet(timeout=60)
        off["1 cold"] = b.one(no.url, conversation(0))
        off["2 sequential"] = b.one(no.url, conversation(1))
        C.wait_quiet(timeout=60)
        off["3 overlapping"] = b.overlapping(no.url, 2, 3)
        C.wait_quiet(timeout=60)
        off["4 abandoned"] = b.abandoned(no.url, 4, 5)
        colds = [(steps["1 cold"]["ttft"], off["1 cold"]["ttft"])]
        for r in range(a.reps):          # fresh system prompts: nothing cached on either
            C.wait_quiet(timeout=60)
            project = f"cold-{r + 1}"
            colds.append((b.one(on.url, conversation(0, project))["ttft"],
                          b.one(no.url, conversation(0, project))["ttft"]))
            C.say(f"{label} cold pair {r + 1}: {colds[-1][0]:.2f} / {colds[-1][1]:.2f} s")
        decodes = []
        for r in range(a.reps + 1):
            C.wait_quiet(timeout=60)
            x, y = b.decode(on.url), b.decode(no.url)
            if r:                         # the first round warms the slots' own caches
                decodes.append((x["decode_tps"], y["decode_tps"]))
                C.say(f"{label} decode pair {r}: {x['decode_tps']:.1f} / "
                      f"{y['decode_tps']:.1f} tok/s")
        kill(no)
        out["colds"], out["decodes"] = colds, decodes

        C.say(f"{label}: switch to {gname} and back")
        C.wait_quiet(timeout=60)
        g = ask(on.url, body(gname, warm, a.gen, None, tools=False), a.timeout)
        loaded = [e["id"] for e in health(on.url)["loaded"]]
        watch = LoadWatch(on.url, name, a.timeout)
        r = b.one(on.url, conversation(6))
        r["note"] = (f"{gname} TTFT {g['ttft']:.2f} s; loaded after it: {', '.join(loaded)}"
                     + ("" if name not in loaded else " (Qwen was NOT unloaded)")
                     + f"; {watch.stop()}")
        step("5 after a model switch", on, r)

        settle(folder)
        written, n_files = folder_bytes(folder)
        out["written"], out["files"] = written, n_files
        C.say(f"{label}: restart (SIGKILL, start again on {folder})")
        kill(on)
        again = start(base, logs / f"{name}-restart.log", servers)
        C.wait_quiet(timeout=60)
        watch = LoadWatch(again.url, name, a.timeout)
        r = b.one(again.url, conversation(7))
        r["note"] = f"first request of the new process; {watch.stop()}"
        step("6 after a restart", again, r)
        settle(folder)
        out["written_end"], out["files_end"] = folder_bytes(folder)
        kill(again)
        return out
    finally:
        for s in servers:
            try:
                kill(s)
            except Exception:  # noqa: BLE001  already stopped
                pass
        shutil.rmtree(tmp, ignore_errors=True)


GOALS = {"4 abandoned": 1.0, "5 after a model switch": 1.5, "6 after a restart": 1.5}


def report(out: dict, a) -> None:
    steps, off = out["steps"], out["off"]

    def ms(r: dict | None) -> str:
        return f"{r['ttft'] * 1000:.0f}" if r and r.get("ttft") is not None else "-"

    rows = []
    for key, r in steps.items():
        goal = GOALS.get(key)
        ok = None if goal is None or r.get("ttft") is None else r["ttft"] <= goal
        rows.append([key, ms(r), f"{r['cached']}/{r['prompt']}", ms(off.get(key)),
                     f"<= {goal * 1000:.0f}" if goal else "(info)", C.verdict(ok),
                     r.get("kind") or "-", cache_text(r.get("cache")),
                     r.get("note", "")])
    C.print_rows(f"{out['label']}: time to first token (ms) with the prompt cache "
                 "(serve defaults)",
                 ["step", "TTFT ms", "cached/prompt tok", "cache off: TTFT ms", "goal ms",
                  "verdict", "first delta", "/health prompt_cache after it", "note"], rows)
    checks = []
    colds = [on / no for on, no in out["colds"] if on and no]
    if colds:
        x = C.med(colds)
        checks.append(["cold first request, cache on / off (paired median)",
                       f"{x:.3f}x ({' '.join(f'{v:.2f}' for v in colds)})", "0.95-1.05x",
                       C.verdict(0.95 <= x <= 1.05)])
    dec = [on / no for on, no in out["decodes"] if on and no]
    if dec:
        x = C.med(dec)
        ons = [on for on, _ in out["decodes"]]
        offs = [no for _, no in out["decodes"]]
        checks.append([f"decode tok/s, cache on / off ({a.gen} tokens, paired median)",
                       f"{x:.3f}x ({C.med(ons):.1f} vs {C.med(offs):.1f} tok/s)", ">= 0.97x",
                       C.verdict(x >= 0.97)])
    w, n = out.get("written_end", 0), out.get("files_end", 0)
    if "written" in out:
        checks.append(["bytes in the cache folder (before the restart / at the end)",
                       f"{out['written'] / C.MB:.0f} MB in {out['files']} files / "
                       f"{w / C.MB:.0f} MB in {n} files",
                       f"<= {out['budget'] / C.MB:.0f} MB (--cache-disk auto)",
                       C.verdict(max(w, out['written']) <= out["budget"])])
    if checks:
        C.print_rows(f"{out['label']}: cache on vs --cache-ram 0, disk",
                     ["check", "measured", "goal", "verdict"], checks)


def default_onnx() -> Path | None:
    """Our int4 conversion in the bench cache, made once from the real HF folder."""
    out = C.cache_dir() / "qwen-int4"
    if (out / "model.onnx").exists():
        return out
    hf = C.real_model("qwen2.5-coder-0.5b-instruct-hf")
    if hf is None:
        C.say("no HF folder of the real Qwen: skipping ONNX (pass --onnx FOLDER)")
        return None
    C.say(f"converting {hf} to int4 ONNX in {out} (once)")
    subprocess.run([sys.executable, "-m", "edge_chat", "convert", str(hf), "--to", "onnx",
                    "--quant", "int4", "-o", str(out)], check=True, env=_env())
    return out


def _env() -> dict:
    import os
    return dict(os.environ, PYTHONPATH=str(C.REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", type=Path, default=None)
    ap.add_argument("--onnx", type=Path, default=None, help="our int4 ONNX folder "
                    "(default: converted once into the bench cache)")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--second", type=Path, default=None,
                    help="the model of the switch (default: the real Gemma 3 270M GGUF)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2,
                    help="extra cold pairs and decode pairs, cache on vs off")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per request")
    a = ap.parse_args()
    gguf = C.model_or_qwen(a.gguf)
    second = a.second or C.real_model("gemma-3-270m-q4_k_m.gguf")
    if second is None or not second.exists():
        sys.exit("no second model: pass --second FILE (the real Gemma 3 270M GGUF)")
    onnx = None if a.no_onnx else (a.onnx or default_onnx())
    bias = eog_bias(gguf)           # the ONNX conversion has the same vocabulary
    logs = C.cache_dir() / "prompt-cache-logs"
    logs.mkdir(exist_ok=True)
    print(f"# {C.machine()}\n# {gguf.name}{f' and {onnx}' if onnx else ''}; switch to "
          f"{second.name}; {a.threads} threads, max_tokens {a.gen}, reps {a.reps}; "
          f"server logs in {logs}", flush=True)
    results = []
    for path, label in ((gguf, "GGUF"), (onnx, "ONNX int4")):
        if path is not None:
            results.append(run_engine(label, path, second, a, bias, logs))
    print(f"# system prompt + 8 tools: {results[0]['steps']['1 cold']['prompt']} prompt "
          f"tokens (Qwen's template)")
    for out in results:
        report(out, a)
    print(f"\n# done {C.machine()}")


if __name__ == "__main__":
    main()
