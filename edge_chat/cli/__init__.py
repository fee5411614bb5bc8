"""The `edge_chat` command: parse, call the library, print. Nothing else.

app.py holds the typer app, one-line errors and the shared options; chat_commands.py
the chat commands (chat, complete, ui, serve, bench); store_commands.py the store's
(models, info, convert, pull, rm); repl.py the terminal chat."""

from edge_chat.cli import chat_commands, store_commands  # noqa: F401  (they register on the app)
from edge_chat.cli.app import app


def main() -> None:
    app()
