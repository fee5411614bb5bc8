"""Shared fixtures. Each area keeps its fixtures in its own module."""

from tests.fixtures_tiny import *  # noqa: F401,F403  tiny_hf, tiny_gguf
from tests.fixtures_onnx import *  # noqa: F401,F403  tiny_onnx
from tests.fixtures_draft import *  # noqa: F401,F403  tiny_draft_gguf
from tests.fixtures_real import *  # noqa: F401,F403  real_models
from tests.fixtures_real_convert import *  # noqa: F401,F403  real_qwen_converted
