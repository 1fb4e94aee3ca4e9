"""Reading a guest's serial console while it is still being written: whole lines only.

QEMU appends to the console file (or the agent's log) a few bytes at a time, so a read can end in the
middle of a line. A pattern anchored with `$` (or a marker found by substring) would then match a line
that is not complete yet, e.g. `STRATO-INTEGRITY-GENS 1:3 2:` - so the unfinished tail is held back
until its newline arrives (or the writer has exited and nothing more will come).
"""

from __future__ import annotations


def whole_lines(text: str, *, final: bool = False) -> str:
    """`text` up to and including its last newline; all of it when `final` (the writer has exited)."""
    if final:
        return text
    return text[: text.rfind("\n") + 1]
