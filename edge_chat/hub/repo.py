"""What a hub repo offers and what to fetch from it: GGUF files by quant (split files
grouped), ONNX folders (edge_chat's layout or onnxruntime-genai's), or safetensors
weights to convert. Decided from the repo's file list alone."""

from __future__ import annotations

import posixpath
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from edge_chat.errors import PullError
from edge_chat.hub import DEFAULT_QUANT
from edge_chat.store.paths import SPLIT_RE, slug

_HUB_PREFIX = re.compile(r"^(?:https?://)?(?:www\.)?(?:hf\.co|huggingface\.co)/", re.IGNORECASE)
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+?)(?::(?P<tag>[^/:]+))?/?$")
#: a quant in a GGUF file name: Q4_K_M, q8_0, IQ4_XS, UD-Q4_K_XL, BF16, F16, MXFP4...
_QUANT = re.compile(r"(?<![a-z0-9])((?:ud[-_])?(?:i?q\d(?:_[a-z0-9]+)*|bf16|fp?16|fp?32"
                    r"|mxfp4(?:_moe)?))(?![a-z0-9])", re.IGNORECASE)
#: when the default quant is missing: the nearest in size and quality first
_FALLBACK = ("q4_k_m", "q4_k_s", "iq4_xs", "iq4_nl", "q4_0", "q5_k_m", "q5_k_s", "q5_0", "q6_k",
             "q8_0", "q3_k_l", "q3_k_m", "bf16", "f16")
#: what a safetensors repo needs for conversion (no remote code)
_HF_FILES = re.compile(r"^[^/]+\.(json|safetensors|model|txt|tiktoken|jinja)$")
_NOT_CPU = ("cuda", "dml", "directml", "gpu", "webgpu", "rocm", "tensorrt", "qnn", "npu")


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int | None = None
    sha256: str | None = None      # what the hub publishes for LFS files


@dataclass
class Repo:
    repo_id: str
    commit: str
    files: list[HubFile]


@dataclass
class Choice:
    """One model a repo offers: the files to fetch and its name in the store."""
    kind: str                       # gguf | onnx | safetensors
    label: str                      # the quant (GGUF) or the variant folder (ONNX)
    name: str                       # store name
    files: list[HubFile] = field(default_factory=list)
    layout: str = ""                # onnx: edge_chat | genai
    root: str = ""                  # onnx: the folder in the repo

    @property
    def size(self) -> int:
        return sum(f.size or 0 for f in self.files)


def parse_spec(spec: str) -> tuple[str, str | None] | None:
    """`org/name` or `org/name:TAG` (TAG a quant or a file; `hf.co/` prefix allowed) ->
    (repo id, tag); None when `spec` is not a hub id."""
    s = _HUB_PREFIX.sub("", spec.strip())
    if s.startswith((".", "/", "~")) or (s.lower().endswith(".gguf") and ":" not in s):
        return None
    m = _HUB_ID.match(s)
    return (m["repo"], m["tag"]) if m else None


def norm_quant(q: str) -> str:
    q = re.sub(r"[-\s]+", "_", q.strip().lower())
    return {"fp16": "f16", "fp32": "f32"}.get(q, q)


def quant_of(filename: str) -> str | None:
    """The quant named in a GGUF file name, normalised (`Q4_K_M` -> `q4_k_m`)."""
    stem = posixpath.basename(filename)
    m = SPLIT_RE.match(stem)
    stem = m["prefix"] if m else re.sub(r"\.gguf$", "", stem, flags=re.IGNORECASE)
    found = _QUANT.findall(stem)
    return norm_quant(found[-1]) if found else None


def _same_quant(have: str | None, want: str) -> bool:
    return have is not None and (have == want or have.removeprefix("ud_") == want)


@contextmanager
def hub_errors(repo_id: str) -> Iterator[None]:
    """huggingface_hub's and requests' exceptions as one line each."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                        LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    from requests.exceptions import RequestException
    where = constants.ENDPOINT
    try:
        yield
    except OfflineModeIsEnabled:
        raise PullError(f"cannot pull '{repo_id}': the hub is switched off (HF_HUB_OFFLINE); "
                        "models already in the store work offline ('edge_chat models')") from None
    except GatedRepoError:
        raise PullError(f"'{repo_id}' is gated: accept its conditions on {where}/{repo_id} and "
                        "set HF_TOKEN to a token that has access") from None
    except RepositoryNotFoundError:
        raise PullError(f"no model '{repo_id}' on {where} (a private or gated repo needs "
                        "HF_TOKEN)") from None
    except (RevisionNotFoundError, EntryNotFoundError) as e:
        if isinstance(e, LocalEntryNotFoundError):
            raise _unreachable(repo_id, where) from None
        raise PullError(f"'{repo_id}': a file listed by the hub is missing: "
                        f"{_first_line(e)}") from None
    except HfHubHTTPError as e:
        code = e.response.status_code if e.response is not None else "?"
        raise PullError(f"the hub answered {code} for '{repo_id}': {_first_line(e)}") from None
    except (RequestException, ConnectionError, TimeoutError):
        raise _unreachable(repo_id, where) from None


def _unreachable(repo_id: str, where: str) -> PullError:
    return PullError(f"cannot reach the hub at {where} to pull '{repo_id}' (offline?); "
                     "models already in the store work offline ('edge_chat models')")


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:200] if lines else type(e).__name__


def list_repo(repo_id: str) -> Repo:
    """The repo's commit and files with sizes and LFS SHA-256 (one API call)."""
    from huggingface_hub import HfApi
    with hub_errors(repo_id):
        info = HfApi().model_info(repo_id, files_metadata=True)
    files = [HubFile(s.rfilename, s.size if s.lfs is None else s.lfs.size,
                     s.lfs.sha256 if s.lfs is not None else None) for s in info.siblings or []]
    return Repo(info.id or repo_id, info.sha, files)


# -- what a repo offers ------------------------------------------------------------

def gguf_choices(repo: Repo) -> list[Choice]:
    """The GGUF models of a repo, one per file or per complete set of split parts."""
    groups: dict[tuple[str, str], list[HubFile]] = {}
    for f in repo.files:
        base = posixpath.basename(f.path)
        if not base.lower().endswith(".gguf") or base.lower().startswith("mmproj"):
            continue
        m = SPLIT_RE.match(base)
        key = (posixpath.dirname(f.path), m["prefix"] if m else base[:-5])
        groups.setdefault(key, []).append(f)
    out = []
    for (_, stem), parts in sorted(groups.items()):
        parts.sort(key=lambda f: f.path)
        m = SPLIT_RE.match(posixpath.basename(parts[0].path))
        if m and (int(m["index"]) != 1 or len(parts) != int(m["count"])):
            continue                                    # an incomplete set of parts
        out.append(Choice("gguf", quant_of(parts[0].path) or "?", slug(stem), parts))
    return sorted(out, key=lambda c: c.size)


def onnx_choices(repo: Repo) -> list[Choice]:
    """Folders holding onnxruntime-genai's genai_config.json, or edge_chat's
    model.onnx + edge_chat.json."""
    by_dir: dict[str, list[HubFile]] = {}
    for f in repo.files:
        by_dir.setdefault(posixpath.dirname(f.path), []).append(f)
    repo_name = repo.repo_id.split("/")[-1]
    out = []
    for d, files in sorted(by_dir.items()):
        names = {posixpath.basename(f.path) for f in files}
        if "genai_config.json" in names:
            layout = "genai"
        elif {"model.onnx", "edge_chat.json"} <= names:
            layout = "edge_chat"
        else:
            continue
        label = d or repo_name
        base = posixpath.basename(d)          # edge_chat's folders are named as in a store
        name = slug(base if d and layout == "edge_chat" else
                    f"{repo_name}-{base}" if d else repo_name)
        out.append(Choice("onnx", label, name, sorted(files, key=lambda f: f.path),
                          layout=layout, root=d))
    return out


def safetensors_choice(repo: Repo) -> Choice | None:
    files = [f for f in repo.files if _HF_FILES.match(f.path)]
    names = {f.path for f in files}
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        return None
    return Choice("safetensors", "safetensors", slug(repo.repo_id.split("/")[-1]), files)


def onnx_files_elsewhere(repo: Repo) -> bool:
    return any(f.path.lower().endswith(".onnx") for f in repo.files)


# -- picking one -------------------------------------------------------------------

def pick(repo: Repo, tag: str | None, quant: str | None, to: str | None) -> Choice:
    """The one thing to pull: `tag` (from `org/name:TAG`) or `quant` selects a GGUF
    quant or file, or an ONNX variant; `to` ('gguf'/'onnx') the format."""
    if tag and quant and norm_quant(tag) != norm_quant(quant):
        raise PullError(f"'{repo.repo_id}:{tag}' and --quant {quant} ask for two things: give one")
    want = tag or quant
    ggufs, onnxs, st = gguf_choices(repo), onnx_choices(repo), safetensors_choice(repo)
    if want and want.lower().endswith(".gguf"):
        return _by_file(repo, ggufs, want)
    if ggufs and to in (None, "gguf"):
        return _gguf_by_quant(repo, ggufs, want)
    if onnxs and to in (None, "onnx"):
        return _onnx_variant(repo, onnxs, want)
    if st is not None:
        return st
    if ggufs or onnxs:
        have = "GGUF" if ggufs else "ONNX"
        raise PullError(f"'{repo.repo_id}' offers {have} files only (no safetensors to convert "
                        f"to {to}): drop --to")
    if onnx_files_elsewhere(repo):
        raise PullError(f"'{repo.repo_id}' has ONNX files in a layout edge_chat cannot run: it "
                        "needs a folder with onnxruntime-genai's genai_config.json, or "
                        "edge_chat's model.onnx + edge_chat.json")
    shown = ", ".join(f.path for f in repo.files[:6]) + (", ..." if len(repo.files) > 6 else "")
    raise PullError(f"'{repo.repo_id}' has no GGUF, ONNX or safetensors model files "
                    f"({shown or 'no files'})")


def _by_file(repo: Repo, ggufs: list[Choice], want: str) -> Choice:
    w = want.lower()
    for c in ggufs:
        if any(f.path.lower() == w or posixpath.basename(f.path).lower() == w for f in c.files):
            return c
    raise PullError(f"no file '{want}' in '{repo.repo_id}'; its GGUF files: "
                    f"{', '.join(c.files[0].path for c in ggufs) or 'none'}")


def _gguf_by_quant(repo: Repo, ggufs: list[Choice], want: str | None) -> Choice:
    q = norm_quant(want or DEFAULT_QUANT)
    same = [c for c in ggufs if _same_quant(c.label, q)]
    if same:
        return min(same, key=lambda c: (c.label != q, c.files[0].path))   # not UD- first
    if want is None:
        if len(ggufs) == 1:
            return ggufs[0]
        for alt in _FALLBACK:
            same = [c for c in ggufs if _same_quant(c.label, alt)]
            if same:
                return same[0]
    offer = ", ".join(dict.fromkeys(c.label for c in ggufs))
    raise PullError(f"no {q} GGUF in '{repo.repo_id}'; quants on offer: {offer} "
                    f"(--quant Q, or 'edge_chat pull {repo.repo_id} --list')")


def _onnx_variant(repo: Repo, onnxs: list[Choice], want: str | None) -> Choice:
    def tokens(c: Choice) -> set[str]:
        return set(re.split(r"[-_/.]+", c.label.lower()))
    if want:
        w = want.lower()
        hits = [c for c in onnxs if w == c.label.lower() or {w, norm_quant(w)} & tokens(c)]
        if not hits:
            raise PullError(f"no ONNX variant '{want}' in '{repo.repo_id}'; on offer: "
                            f"{', '.join(c.label for c in onnxs)}")
        onnxs = hits

    def rank(c: Choice) -> tuple:
        t = tokens(c)
        return (bool(t & set(_NOT_CPU)), "cpu" not in t and "cpu_and_mobile" not in t,
                "int4" not in t, c.size)
    return min(onnxs, key=rank)


def offers(repo: Repo) -> list[Choice]:
    """Everything a repo offers, for `pull --list`."""
    st = safetensors_choice(repo)
    return gguf_choices(repo) + onnx_choices(repo) + ([st] if st else [])
