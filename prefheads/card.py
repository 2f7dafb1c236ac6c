"""The human-readable card (README.md) of a head folder, rendered from its ``heads.json``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def render_card(config: dict[str, Any], adapters: Mapping[str, str | None]) -> str:
    """A human-readable model card (README.md) for a head folder.

    Args:
        config: The folder's ``heads.json``.
        adapters: Head -> the adapter folder it reads (None: the base model).
    """
    base = config["base"]
    lines = [
        "---", "library_name: prefheads", f"base_model: {base.get('model_id')}",
        "tags: [prefheads, direct-preference-head, reward-model]", "---", "",
        f"# Direct Preference Heads for `{base.get('model_id')}`", "",
        "Reward heads read at the end-of-turn token "
        f"`{base.get('reward_token')}` ({base.get('chat_mode')} layout). They score candidate answers; "
        "they never change the language model's own outputs.", "",
        "| head | reads | pooler | layer | parameters | details |", "|---|---|---|---|---|---|",
    ]
    for name, e in config["heads"].items():
        c = e["config"]
        details = ", ".join(f"{k}={v}" for k, v in sorted(c.get("meta", {}).items()) if not isinstance(v, (dict, list)))
        layer = c.get("layers") or c["layer"]
        adapter = adapters.get(name)
        reads = (f"fine-tuned backbone `{base['fine_tuned']}/`" if base.get("fine_tuned")
                 else f"LoRA adapter `{adapter}/`" if adapter else "base model")
        lines.append(f"| {name} | {reads} | {c['pooler']} | {layer} | {e['num_parameters']:,} | {details} |")
    for name, e in config["heads"].items():
        ls = e["config"].get("meta", {}).get("layer_scores")
        if ls:
            lines += ["", f"Validation pair accuracy per layer of `{name}` (chosen: {e['config']['meta'].get('chosen_layer')}):",
                      "", "| layer | " + " | ".join(ls) + " |", "|---|" + "---|" * len(ls),
                      "| val acc | " + " | ".join(f"{v:.3f}" for v in ls.values()) + " |"]
    lines += ["", "```python", "from prefheads import PreferenceModel",
              f"pm = PreferenceModel.from_pretrained({base.get('model_id')!r}, heads='path/to/this/folder')",
              "pm.score('Your question', ['answer A', 'answer B'])", "```", "",
              f"prefheads {config.get('library_version')}, format {config.get('format_version')}.", ""]
    return "\n".join(lines)
