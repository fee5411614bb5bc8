"""Stop strings matched across token boundaries, never printing part of one."""

from __future__ import annotations


class StopMatcher:
    """Feed text pieces; get back what is safe to show, and whether a stop
    string was hit. Text that might be the start of a stop string is held
    back until the next piece decides."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._held = ""
        self.hit: str | None = None

    def feed(self, piece: str) -> str:
        if self.hit is not None:
            return ""
        buf = self._held + piece
        if not self.stops:
            self._held = ""
            return buf
        first = None
        for s in self.stops:
            i = buf.find(s)
            if i != -1 and (first is None or i < first[0]):
                first = (i, s)
        if first is not None:
            self.hit = first[1]
            self._held = ""
            return buf[:first[0]]
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        self._held = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold] if hold else buf

    def flush(self) -> str:
        """At the end of generation: what was held back was not a stop."""
        out, self._held = ("" if self.hit is not None else self._held), ""
        return out
