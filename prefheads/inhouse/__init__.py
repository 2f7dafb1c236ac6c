"""The paper's in-house 551M decoder (PAPER.md section 4), registered with the transformers Auto classes.

Importing this package registers ``model_type="prefheads_inhouse"`` with ``AutoConfig``,
``AutoModel`` and ``AutoModelForCausalLM``, so a saved checkpoint loads with
``AutoModelForCausalLM.from_pretrained`` (no ``trust_remote_code``).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from prefheads.inhouse.configuration import InHouseConfig
from prefheads.inhouse.modeling import InHouseForCausalLM, InHouseLMHead, InHouseModel, InHousePreTrainedModel

# exist_ok: a re-import (importlib.reload, a second interpreter path) re-registers the same classes
AutoConfig.register(InHouseConfig.model_type, InHouseConfig, exist_ok=True)
AutoModel.register(InHouseConfig, InHouseModel, exist_ok=True)
AutoModelForCausalLM.register(InHouseConfig, InHouseForCausalLM, exist_ok=True)

__all__ = ["InHouseConfig", "InHouseForCausalLM", "InHouseLMHead", "InHouseModel", "InHousePreTrainedModel"]
