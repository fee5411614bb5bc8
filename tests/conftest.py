"""Shared fixtures. Each area keeps its fixtures in its own module under tests/fixtures/
(helpers they build with are in tests/support/).

The run keeps edge_chat's cache (the prompt cache, the probe's verdicts) in a folder of
its own, removed at the end, so no test sees a user's cache or an earlier run's; the
servers and commands the tests start inherit it."""

import atexit
import os
import shutil
import tempfile

os.environ["EDGE_CHAT_CACHE"] = tempfile.mkdtemp(prefix="edge-chat-test-cache-")
atexit.register(shutil.rmtree, os.environ["EDGE_CHAT_CACHE"], ignore_errors=True)

pytest_plugins = [
    "tests.fixtures.tiny",          # tiny_hf, tiny_gguf, tiny_qa
    "tests.fixtures.onnx",          # tiny_onnx, tiny_onnx_optimum
    "tests.fixtures.draft",         # tiny_draft_gguf
    "tests.fixtures.real",          # real_models, real_qwen_gguf, real_gemma_gguf, real_qwen_hf
    "tests.fixtures.real_convert",  # real_qwen_converted
    "tests.fixtures.hub",           # hub, hub_env
]
