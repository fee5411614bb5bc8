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
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _common as C
from agent_requests import ask, body, cache_of, cache_text, conversation, health
from batch_vs_peers import Srv, eog_bias, free_port

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
