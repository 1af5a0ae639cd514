"""Grounding a ```diff PATH block: hunks whose context and removed lines the file has, in order, landing once
(`line_blocks`). A bare ```diff (no path) is an ordinary markdown block, left free (`reply`)."""

from __future__ import annotations

from tools.grounding.line_blocks import MAX_BLANK_LINES, LineFollower


class UdiffFollower(LineFollower):
    """A ```diff PATH block of hunks without line numbers: before the first hunk only `---` / `+++` lines and blank
    lines (at most MAX_BLANK_LINES in a row); a hunk opens at a line starting with `@@`; in it, " " and "-" lines
    (and an empty line, which the parser reads as blank context) are, after the sign, a run of consecutive whole
    lines of the document, "+" lines are free. A hunk ends (at the next `@@` line, the closing fence or a stop
    token) only once its old lines occur exactly once. Any other line (a `\\ No newline` note too) is refused."""

    def __init__(self, source: str | None) -> None:
        super().__init__(source)
        self.in_hunk = False

    @property
    def can_stop(self) -> bool:
        return not self.partial and self._may_end()

    def _may_end(self) -> bool:
        return not self.in_hunk or self._placed() is not None

    def next_chars(self) -> frozenset[str] | None:
        typed = self.partial
        if not self.in_hunk:
            if not typed:
                return frozenset("-+@`\n" if self.blank < MAX_BLANK_LINES else "-+@`")
            return frozenset(typed[0]) if typed in ("-", "--", "+", "++", "@") else None
        if not typed:
            return frozenset(" -+\n@`" if self._may_end() else " -+\n")
        if typed[0] in " -":
            chars = self._old_line_chars(typed[1:])
            return None if chars is None else frozenset(chars)
        return frozenset("@") if typed == "@" else None  # a "+" line or a header: free to the end of the line

    def _backtick(self) -> bool | None:
        return self._may_end()  # a backtick is no hunk line: the closing fence, where the hunk may end

    def _partial_allowed(self, typed: str) -> bool:
        if not typed:
            return True
        if not self.in_hunk:
            return typed.startswith(("---", "+++", "@@")) or typed in ("-", "--", "+", "++", "@")
        if typed[0] in " -":
            return self._old_line_possible(typed[1:])
        if typed[0] == "@":
            return (typed == "@" or typed.startswith("@@")) and self._may_end()
        return typed[0] == "+"

    def _line(self, line: str) -> bool:
        if line.startswith("@@"):
            if not self._may_end():
                return False
            if self.in_hunk:
                self._apply()
            self.in_hunk = True
            self._begin_block()
            return True
        if not self.in_hunk:
            if not line:
                self.blank += 1
                return self.blank <= MAX_BLANK_LINES
            return line.startswith(("---", "+++"))
        sign, text = line[:1], line[1:]
        if sign == "+":
            self.new += (text,)
            return True
        if sign not in ("", " ", "-") or not self._old_line(text):
            return False
        if sign != "-":
            self.new += (text,)
        return True
