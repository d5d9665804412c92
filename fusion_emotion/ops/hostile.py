"""Moved to ``fusion_emotion.testmedia.hostile``; this name stays only until the core tests import from there.

An alias, not a copy: importing it gives the ``fusion_emotion.testmedia.hostile`` module itself.
"""

import sys

from fusion_emotion.testmedia import hostile

sys.modules[__name__] = hostile
