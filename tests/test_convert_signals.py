"""Issue 14, point 7: a convert ended by SIGKILL or SIGTERM, then run again, leaves no
hidden files; SIGTERM is handled like Ctrl-C; the converter child dies with its parent;
a full disk says so. Real `edge_chat convert` processes on the tiny HF model."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.server import PY, REPO, edge_env

CONVERT = ["convert", "--to", "gguf", "--quant", "q4_k_m", "--no-eval"]


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def start_and_wait_for_child(src: Path, out: Path, env: dict) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen([PY, "-m", "edge_chat", *CONVERT, str(src), "-o", str(out)],
                            cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for _ in range(1200):                       # up to 2 minutes on a busy machine
        kids = children(proc.pid)
        if kids and hidden(out):
            time.sleep(0.5)                     # let the converter write something
            return proc, kids
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the converter child never started")


def rerun_leaves_nothing_hidden(src: Path, out: Path, env: dict) -> None:
    r = subprocess.run([PY, "-m", "edge_chat", *CONVERT, str(src), "-o", str(out)], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert hidden(out) == [], hidden(out)
    assert len(list(out.glob("*.gguf"))) == 1


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_convert_then_rerun_leaves_no_hidden_files(tiny_hf, tmp_path, sig):
    out = tmp_path / "store"
    out.mkdir()
    env = edge_env(out)
    proc, kids = start_and_wait_for_child(tiny_hf, out, env)
    os.kill(proc.pid, sig)
    proc.wait(60)
    err = proc.stderr.read().decode()
    for _ in range(100):                         # the child follows within moments
        if not any(alive(k) for k in kids):
            break
        time.sleep(0.1)
    assert not any(alive(k) for k in kids), "the converter child outlived its parent"
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, err
        assert err.strip().splitlines()[-1].startswith("error: terminated"), err[-1000:]
        assert "Traceback" not in err
        assert hidden(out) == []                 # cleaned on the way out
    else:
        assert proc.returncode == -signal.SIGKILL
        left = hidden(out)
        assert left, "SIGKILL should have left the scratch files"
        r = subprocess.run([PY, "-m", "edge_chat", "models", "--all", "--json"], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=60, check=False)
        assert all(name in r.stdout for name in left), r.stdout
    rerun_leaves_nothing_hidden(tiny_hf, out, env)


def test_full_disk_says_so(tiny_hf, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    try:
        env = edge_env(mnt)
        for quant, needle in (("q4_k_m", "MB needed"), ("f32", "MB needed")):
            r = subprocess.run([PY, "-m", "edge_chat", "convert", str(tiny_hf), "--to", "gguf",
                                "--quant", quant, "--no-eval", "-o", str(mnt)], cwd=REPO,
                               env=env, capture_output=True, text=True, timeout=600,
                               check=False)
            last = r.stderr.strip().splitlines()[-1]
            assert r.returncode == 1 and last.startswith(f"error: no space left on tmpfs at {mnt}"), r.stderr[-1500:]
            assert needle in last and "Traceback" not in r.stderr
            assert hidden(mnt) == [] and not list(mnt.glob("*.gguf"))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
