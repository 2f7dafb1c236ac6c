"""prefheads: Direct Preference Heads for any Hugging Face causal LM.

Score and rerank candidate answers with small reward heads read from the LM's last-token hidden
state, without changing the LM's own output distribution.
"""

from prefheads.heads import HeadConfig, RewardHead
from prefheads.model import PreferenceModel
from prefheads.poolers import POOLERS

__all__ = ["POOLERS", "HeadConfig", "PreferenceModel", "RewardHead", "__version__"]
__version__ = "0.1.0"
