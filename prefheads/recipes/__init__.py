"""Recipes: a YAML config (``recipes/*.yaml``) validated into a dataclass tree, run by one entry function.

* ``inhouse`` — the paper's in-house pipeline: vocab extension → SFT → joint cDPO + DPH;
* ``probes`` — frozen-backbone probes, log-prob vs DPH per benchmark (paper Table 6);
* ``task_heads`` — one head per task group on a frozen backbone, heads × benchmarks (Table 5).

    from prefheads.recipes import load_config, run
    cfg = load_config("recipes/inhouse-tiny.yaml", ["stages.sft.steps=10"])
    run(cfg)
"""

from prefheads.recipes.run import RECIPES, config_from_dict, load_config, run
from prefheads.recipes.schema import ConfigError, dump_yaml

__all__ = ["RECIPES", "ConfigError", "config_from_dict", "dump_yaml", "load_config", "run"]
