"""``PreferenceModel``: a causal LM plus named Direct Preference Heads.

:mod:`.core` holds the model (construction, heads, features, scoring); :mod:`.states` the peft
adapters its backbone carries and which head reads which; :mod:`.folders` its head folders.
"""

from prefheads.model.core import PreferenceModel

__all__ = ["PreferenceModel"]
