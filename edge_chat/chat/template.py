"""Chat templates: the model's own Jinja template, rendered in a sandbox, with
built-in turn formats for model families whose files carry none."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edge_chat.chat.tools import template_messages
from edge_chat.errors import EdgeChatError

CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

GEMMA = (
    "{{- bos_token -}}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system = ns.system + message['content'] + '\\n\\n' -%}"
    "{%- else -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (ns.system if role == 'user' else '')"
    " + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- if role == 'user' -%}{%- set ns.system = '' -%}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

LLAMA3 = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
)

PHI3 = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)

MISTRAL = (
    "{{- bos_token -}}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system = ns.system + message['content'] + '\\n\\n' -%}"
    "{%- elif message['role'] == 'user' -%}{{ '[INST] ' + ns.system + message['content'] + ' [/INST]' }}"
    "{%- set ns.system = '' -%}"
    "{%- else -%}{{ message['content'] + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

BUILTIN = {"chatml": CHATML, "gemma": GEMMA, "llama3": LLAMA3, "phi3": PHI3, "mistral": MISTRAL}

#: model architecture (GGUF general.architecture / HF model_type) → built-in turn format
FAMILY = {
    "qwen2": "chatml", "qwen2moe": "chatml", "qwen3": "chatml", "qwen3moe": "chatml",
    "qwen": "chatml", "smollm": "chatml", "smollm3": "chatml",
    "gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma", "gemma3_text": "gemma",
    "llama": "llama3", "phi3": "phi3", "phi4": "phi3", "mistral": "mistral", "mistral3": "mistral",
}


def _raise(message: str):
    raise TemplateError(message)


def _tojson(value, indent=None, ensure_ascii=False, separators=None, sort_keys=False):
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii,
                      separators=separators, sort_keys=sort_keys)


def _env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class ChatTemplate:
    """A compiled chat template. `origin` says where it came from
    ("model", "builtin:gemma", "file:PATH")."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "",
                 origin: str = "model"):
        self.source = source
        self.origin = origin
        self.bos_token = bos_token
        self.eos_token = eos_token
        try:
            self._template = _env().from_string(source)
        except TemplateError as e:
            raise EdgeChatError(f"chat template ({origin}) does not compile: {e}") from None

    @property
    def handles_tools(self) -> bool:
        return "tool" in self.source

    def render(self, messages: list[dict], *, add_generation_prompt: bool = True,
               tools: list | None = None) -> str:
        if not self.handles_tools and any(m["role"] == "tool" for m in messages):
            raise EdgeChatError("this model's chat template has no 'tool' role", param="messages")
        ctx = {"messages": template_messages(messages),
               "add_generation_prompt": add_generation_prompt,
               "bos_token": self.bos_token, "eos_token": self.eos_token}
        if tools:
            ctx["tools"] = tools
        try:
            return self._template.render(**ctx)
        except TemplateError as e:
            raise EdgeChatError(f"chat template: {e}", param="messages") from None
        except Exception as e:  # a template may index into missing keys etc.
            raise EdgeChatError(f"chat template failed: {type(e).__name__}: {e}",
                                param="messages") from None


def resolve_template(model_template: str | None, arch: str, *, override: str | None = None,
                     bos_token: str = "", eos_token: str = "") -> tuple[ChatTemplate, str | None]:
    """The template to use and a note for the user (None when the model's own
    template is used). `override` is a file path or a built-in name."""
    kw = {"bos_token": bos_token, "eos_token": eos_token}
    if override:
        if override in BUILTIN:
            return ChatTemplate(BUILTIN[override], origin=f"builtin:{override}", **kw), None
        path = Path(override).expanduser()
        if not path.is_file():
            raise EdgeChatError(f"--chat-template: '{override}' is neither a file nor one of "
                                f"{', '.join(BUILTIN)}", param="chat_template")
        return ChatTemplate(path.read_text(), origin=f"file:{path}", **kw), None
    if model_template:
        return ChatTemplate(model_template, origin="model", **kw), None
    family = FAMILY.get(arch)
    if family is None:
        raise EdgeChatError(
            f"this model has no chat template and its architecture '{arch}' has no built-in one: "
            f"pass --chat-template FILE or one of {', '.join(BUILTIN)} (or use 'edge_chat complete')",
            param="chat_template")
    note = (f"the model has no chat template: using the built-in '{family}' turn format "
            f"for architecture '{arch}' (override with --chat-template)")
    return ChatTemplate(BUILTIN[family], origin=f"builtin:{family}", **kw), note
