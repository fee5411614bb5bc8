"""The first load of a model runs in a child process (the probe).

llama.cpp and onnxruntime end the whole process on some bad inputs (GGML_ASSERT →
SIGABRT, a bad read → SIGSEGV). A model file is loaded here the first time — and one
token evaluated — in a throw-away child; only when that child lived is the model loaded
in our own process. A crash costs one request (a one-line error naming the model), not
the server or the terminal. The verdict is kept per (path, size, mtime, load options)
in memory and in `$EDGE_CHAT_CACHE/probed.json` (default ~/.cache/edge_chat), so the probe
runs once per file: later loads cost nothing, and generation has no process boundary
at all. `EDGE_CHAT_PROBE=0` turns it off.

    python -m edge_chat.engines.probe PATH OPTIONS_JSON   (the child; exit 0: fine)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path

from edge_chat.errors import ModelLoadError, printable

#: exit code of a child whose load failed with an ordinary (clean) error
CLEAN_ERROR = 3
_OK = "ok"
_lock = threading.Lock()
_verdicts: dict[str, str] = {}


def cache_file() -> Path:
    from edge_chat.system import cache_dir
    return cache_dir() / "probed.json"


#: load options that do not change whether the model itself loads (a draft model
#: is probed on its own load)
_NOT_PROBED = ("threads", "speculative", "draft", "parallel", "cache_ram", "cache_disk",
               "cache_dir")


def _key(path: Path, options) -> str | None:
    try:
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
        stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    except OSError:
        return None
    opts = {k: v for k, v in asdict(options).items() if k not in _NOT_PROBED}
    return json.dumps([str(path.resolve()), stats, opts], sort_keys=True)


def _read_cache() -> dict:
    try:
        data = json.loads(cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _remember(key: str, verdict: str) -> None:
    from edge_chat.atomic import write_json_atomic
    _verdicts[key] = verdict
    data = _read_cache()
    data[key] = verdict
    if len(data) > 500:                       # keep the newest
        data = dict(list(data.items())[-500:])
    try:
        write_json_atomic(cache_file(), data)
    except OSError:
        pass                                  # a read-only home: the probe runs again next time


def ensure_loadable(path: Path, name: str, options) -> None:
    """Raise ModelLoadError when loading `path` with `options` crashes a process."""
    if os.environ.get("EDGE_CHAT_PROBE", "1") == "0":
        return
    key = _key(path, options)
    if key is None:
        return
    with _lock:
        verdict = _verdicts.get(key) or _read_cache().get(key)
    if verdict is None:
        verdict, final = _run_probe(path, options)
        if verdict is None:                   # a clean error: the caller's load reports it
            return
        if final:
            with _lock:
                _remember(key, verdict)
    if verdict != _OK:
        raise ModelLoadError(f"the model '{name}' cannot be loaded: {verdict}")


def _timeout(path: Path) -> float:
    try:
        size = path.stat().st_size if path.is_file() else \
            sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    except OSError:
        size = 0
    return 120 + 60 * size / 1e9


def _run_probe(path: Path, options) -> tuple[str | None, bool]:
    """(verdict, final): 'ok' or why not (final: kept for the file), or None for a
    clean error (exit CLEAN_ERROR) that the load in this process reports itself."""
    import edge_chat
    from edge_chat.system import die_with_parent
    opts = dict(asdict(options), threads=1, speculative="off", draft=None, parallel=1,
                cache_ram="0")
    cmd = [sys.executable, "-m", "edge_chat.engines.probe", str(path), json.dumps(opts)]
    here = str(Path(edge_chat.__file__).resolve().parent.parent)   # this very edge_chat
    env = dict(os.environ, GGML_NO_BACKTRACE="1", PYTHONPATH=os.pathsep.join(
        [here, *filter(None, [os.environ.get("PYTHONPATH")])]))
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=_timeout(path), env=env,
                              preexec_fn=die_with_parent if os.name == "posix" else None)
    except subprocess.TimeoutExpired:
        return f"loading it did not finish in {_timeout(path):.0f} s (a corrupt file?)", False
    rc = proc.returncode
    if rc == 0:
        return _OK, True
    if rc == CLEAN_ERROR:
        return None, True
    # a signal or an engine's own exception: the file's fault, remembered; SIGKILL (the
    # out-of-memory killer?) or another exit code (the probe could not run): only reported
    final = (rc < 0 and rc != -signal.SIGKILL) or rc == 4
    return crash_verdict(rc, proc.stderr.decode("utf-8", "replace")), final


#: ggml's abort line ("/build/.../binary-ops.cpp:135: MESSAGE"), or our child's "error: ..."
_ASSERT_RE = re.compile(r"^(?:\S*\.(?:c|cpp|h|cu):\d+: (.+)|error: (.+))$", re.M)


def crash_verdict(rc: int, stderr: str) -> str:
    """'the engine crashed (SIGABRT: GGML_ASSERT(...) failed) ...' without any path."""
    if rc < 0:
        try:
            what = signal.Signals(-rc).name
        except ValueError:
            what = f"signal {-rc}"
    else:
        what = f"exit code {rc}"
    found = [(m.group(1) or m.group(2)).strip() for m in _ASSERT_RE.finditer(stderr)]
    detail = f": {printable(found[0], 120)}" if found else ""
    return (f"the engine crashed while loading it ({what}{detail}); the file is corrupt or "
            f"not supported by this engine version")


def _child(path: str, opts: str) -> int:
    from edge_chat.params import make_params
    from edge_chat.engines import EngineOptions, load_engine
    from edge_chat.errors import EdgeChatError
    try:
        engine = load_engine(Path(path), EngineOptions(**json.loads(opts)), probe=False)
        tokens = engine.tokenize("Hi", add_bos=engine.info.add_bos) or [0]
        gen = engine.generate(tokens, make_params(temperature=0.0, max_tokens=1))
        next(gen, None)
        gen.close()
        engine.close()
    except EdgeChatError:
        return CLEAN_ERROR
    except Exception as e:  # noqa: BLE001  an engine's own error: one line for the parent
        lines = str(e).strip().splitlines()
        sys.stderr.write(f"\nerror: {type(e).__name__}: {lines[0] if lines else ''}"
                         .replace(path, "MODEL") + "\n")
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2]))
