"""Fetch a repo's files with huggingface_hub into a staging folder: one rich progress
bar (size, speed, time left), resume of an interrupted download (huggingface_hub keeps
the partial file and asks for the rest with a Range request), and the SHA-256 of every
LFS file checked against what the hub publishes."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

from edge_chat.atomic import remove
from edge_chat.errors import PullError
from edge_chat.hub.repo import HubFile, Repo, hub_errors
from edge_chat.system import fmt_size
from edge_chat.tables import stderr_console

#: huggingface_hub writes what it received every this many bytes (its default, 10 MiB,
#: would lose up to 10 MiB on Ctrl-C and move the bar in big jumps)
CHUNK = 1 << 20


def staged_bytes(folder: Path) -> int:
    """Bytes already in a staging folder: whole files and huggingface_hub's partial ones."""
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*")
               if p.is_file() and p.suffix not in (".metadata", ".lock"))


def fetch(repo: Repo, files: list[HubFile], dest: Path, console: Console | None = None) -> None:
    """Download `files` of `repo` (at its commit) into `dest`, resuming what an earlier
    run left there, and check each LFS file's SHA-256. A corrupt file is removed and
    raises PullError."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from huggingface_hub.utils import disable_progress_bars
    from requests.exceptions import RequestException
    disable_progress_bars()
    constants.DOWNLOAD_CHUNK_SIZE = CHUNK
    console = console or stderr_console()
    total = sum(f.size or 0 for f in files)
    already = staged_bytes(dest)
    if already:
        console.print(f"resuming: {fmt_size(min(already, total))} of {fmt_size(total)} "
                      "already downloaded")
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=console,
                  transient=False) as bar:
        task = bar.add_task(repo.repo_id, total=total or None, completed=min(already, total))
        done = threading.Event()

        def poll() -> None:
            while not done.wait(0.2):
                bar.update(task, completed=min(staged_bytes(dest), total))
        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        try:
            for f in files:
                bar.update(task, description=f.path.rsplit("/", 1)[-1])
                with hub_errors(repo.repo_id):
                    try:
                        local = Path(hf_hub_download(repo.repo_id, f.path, revision=repo.commit,
                                                     local_dir=dest))
                    except (HfHubHTTPError, OfflineModeIsEnabled):   # OSErrors too: hub_errors
                        raise
                    except RequestException as e:  # the connection broke during the transfer
                        raise PullError(
                            f"the download of {f.path} broke off ({type(e).__name__}); "
                            f"pull again to resume ({fmt_size(staged_bytes(dest))} kept)") from None
                    except OSError as e:          # disk full, size mismatch after transfer
                        raise PullError(f"downloading {f.path} failed: "
                                        f"{str(e).splitlines()[0][:200]}") from None
                if f.sha256:
                    bar.update(task, description=f"checking {f.path.rsplit('/', 1)[-1]}")
                    check_sha256(local, f, dest)
        finally:
            done.set()
            watcher.join()
        bar.update(task, completed=total, description=repo.repo_id)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def check_sha256(local: Path, f: HubFile, dest: Path) -> None:
    got = sha256_of(local)
    if got != f.sha256:
        remove(local)
        for meta in (dest / ".cache").rglob(f"{local.name}.*"):
            remove(meta)
        raise PullError(f"{f.path} is corrupt: its SHA-256 is {got[:12]}..., the hub publishes "
                        f"{f.sha256[:12]}...; the file was removed, nothing was added to the "
                        "store; run the pull again")
