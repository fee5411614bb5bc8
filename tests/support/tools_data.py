"""Tools for the tiny ChatML model, shared by the tool tests of the API, the chat core and
the front ends: a Hermes-style chat template and two function tools with their schemas."""

#: a Hermes-style template for the tiny ChatML model (tools in the system turn,
#: calls written as <tool_call>{...}</tool_call>, results as tool turns)
HERMES = """{%- if tools %}<|im_start|>system
You may call these functions:
{% for t in tools %}{{ t | tojson }}
{% endfor %}Write a call as <tool_call>{"name": NAME, "arguments": {...}}</tool_call><|im_end|>
{% endif %}
{%- for m in messages %}<|im_start|>{{ m.role }}
{{ m.content }}
{%- for c in m.tool_calls or [] %}<tool_call>
{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city", "unit"],
        "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {
        "a": {"type": "integer", "minimum": 0, "maximum": 999},
        "b": {"type": "integer", "minimum": -9, "maximum": 9}}, "required": ["a", "b"],
        "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
