"""What counts as an invisible character, for names the controller accepts and
for everything the CLI prints (one definition, so the two never disagree)."""

from __future__ import annotations

# Control (Cc), format (Cf: zero-width and bidi overrides), surrogate, private
# use, line and paragraph separators: they rewrite terminals and logs, or make
# two different names print alike.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
