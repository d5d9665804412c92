"""Moved to ``fusion_emotion.testmedia``; this name stays only until the core tests and the docs import from there.

An alias, not a copy: importing it gives the ``fusion_emotion.testmedia`` package itself.
"""

import sys

from fusion_emotion import testmedia

sys.modules[__name__] = testmedia
