"""(being written; see issue 27 / 26)"""

STEPS: list = []
