"""Chat core: messages, params, templates, context window, the chat loop.

Imports no engine: it drives any object that follows
`edge_chat.engines.base.Engine`."""
