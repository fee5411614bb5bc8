"""The agent workload of benchmarks/prompt_cache.py and its HTTP requests: a system
prompt of rules (about 3,500 tokens with its 8 tools, deterministic), short questions,
and one streamed Chat Completions request timed to its first content or tool-call delta."""

from __future__ import annotations

import json
import time

import _common as C


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
