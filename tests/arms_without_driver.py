"""A robot module whose import fails, as one whose arm driver is not installed does
(``tests/test_collect.py``: ``robot_factory`` says so in one line)."""

raise RuntimeError("the arm driver is not installed")
