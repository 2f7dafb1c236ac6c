"""``prefheads rerank`` (best-of-N or given candidates) and ``prefheads serve`` (HTTP scoring)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from prefheads.commands._common import Base, HeadOpt, HeadsDir, Load4, Load8, Mismatch, load_heads


def rerank_command(
    heads: HeadsDir,
    prompt: Annotated[Optional[str], typer.Option(help="User prompt to sample completions for.")] = None,
    n: Annotated[int, typer.Option("-n", "--n", help="Number of samples.")] = 8,
    candidates: Annotated[Optional[Path], typer.Option(help='Rerank given candidates instead: JSONL of {"prompt", "candidates": [...]} lines.')] = None,
    out: Annotated[Optional[Path], typer.Option(help="With --candidates: output JSONL (default: stdout).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest sample, in tokens.")] = 128,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0: greedy, one candidate).")] = 0.8,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 0.95,
    top_k: Annotated[int, typer.Option(help="Top-k sampling (0: off).")] = 50,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    head: HeadOpt = None,
    base: Base = None,
    allow_base_mismatch: Mismatch = False,
    load_in_4bit: Load4 = None,
    load_in_8bit: Load8 = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Best-of-N: sample N completions, score them with a head and print them ranked (or rerank --candidates)."""
    if (prompt is None) == (candidates is None):
        raise typer.BadParameter("give exactly one of --prompt (sample and rerank) or --candidates FILE")
    from prefheads.infer.rerank import GenerationSettings, generate_candidates, rank

    try:
        settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                      top_k=top_k, seed=seed)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    pm = load_heads(heads, base, allow_base_mismatch, load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit)
    head = head or pm.active
    if head not in pm.heads:
        raise typer.BadParameter(f"no head named {head!r}; heads: {pm.head_names}")
    if candidates is not None:
        from prefheads.infer.rerank import rerank_file

        if out is None:
            rerank_file(pm, candidates, sys.stdout, head=head)
            return
        if out.resolve() == candidates.resolve():
            raise typer.BadParameter(f"--out {out} is the --candidates file: write the ranking to another file")
        from prefheads.headio import atomic_open

        with atomic_open(out) as f:  # a bad row leaves no half-written ranking behind
            count = rerank_file(pm, candidates, f, head=head)
        typer.echo(f"reranked {count} prompts with head {head!r}: {out}")
        return
    gens = generate_candidates(pm, prompt, n, settings)
    empty = sum(not g.text.strip() for g in gens)
    gens = [g for g in gens if g.text.strip()]  # an empty sample has no reply to score
    if not gens:
        raise ValueError(f"all {n} samples are empty (the model closed its turn at once)")
    if empty:
        typer.echo(f"{empty} empty sample(s) left out", err=True)
    rewards = pm.score(prompt, [g.text for g in gens], head=head).tolist()
    ranked = rank([g.text for g in gens], rewards)
    if as_json:
        typer.echo(json.dumps({"prompt": prompt, "head": head, "ranked": [
            {"rank": k + 1, "index": i, "candidate": c, "reward": r, "finished": gens[i].finished}
            for k, (i, c, r) in enumerate(ranked)]}, ensure_ascii=False))
        return
    typer.echo(f"{len(gens)} samples ranked by head {head!r} (max_new_tokens {max_new_tokens}, temperature "
               f"{temperature}, top_p {top_p}, top_k {top_k}, seed {seed}):")
    for k, (i, c, r) in enumerate(ranked, 1):
        cut = "" if gens[i].finished else "  [cut at max_new_tokens]"
        typer.echo(f"{k}. {r:+.4f}  {c!r}{cut}")


def serve_command(
    heads: Annotated[list[Path], typer.Option(help="Head folder (repeat to serve the heads of several folders on "
                                                   "one backbone: frozen heads, and LoRA heads each with its adapter).")],
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    max_candidates: Annotated[int, typer.Option(help="Most candidates (documents, samples) per request.")] = 64,
    max_chars: Annotated[int, typer.Option(help="Most characters of prompt + candidates per request.")] = 20000,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per sampled reply (best-of-N /rerank).")] = 512,
    batching: Annotated[bool, typer.Option(help="Pool concurrent requests into shared backbone passes (one worker "
                                                "owns the model); --no-batching: one request at a time under a lock.")] = True,
    max_batch_tokens: Annotated[Optional[int], typer.Option(help="Most tokens (prompt + candidate sequences of every "
                                                                 "pooled request) per pass (default: 8192 on CPU, 32768 on GPU).")] = None,
    max_wait_ms: Annotated[Optional[float], typer.Option(help="How long the worker waits for more requests once it "
                                                              "holds one (default: 10 on CPU, 2 on GPU).")] = None,
    max_queue: Annotated[int, typer.Option(help="Most requests waiting for the model; past it: 503 with Retry-After.")] = 256,
    forward_tokens: Annotated[Optional[int], typer.Option(help="Padded tokens per forward inside a pass (default: 1024 "
                                                               "on CPU, 8192 on GPU).")] = None,
    served_model_name: Annotated[Optional[list[str]], typer.Option(help="A name clients may give as \"model\" for "
                                                                         "the active head (repeat the option).")] = None,
    base: Base = None,
    allow_base_mismatch: Mismatch = False,
    load_in_4bit: Load4 = None,
    load_in_8bit: Load8 = None,
) -> None:
    """Serve the heads over HTTP: /score, /rerank (ours, Cohere/Jina/vLLM shapes), /heads, /health, /metrics."""
    from prefheads.infer.batching import BatchSettings
    from prefheads.infer.serve import SERVE_HINT, create_app

    try:
        import uvicorn
    except ImportError:
        raise typer.BadParameter(SERVE_HINT) from None
    try:
        settings = BatchSettings(max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms, max_queue=max_queue,
                                 forward_tokens=forward_tokens)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    pm = load_heads(heads, base, allow_base_mismatch, load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit)
    app = create_app(pm, max_candidates=max_candidates, max_chars=max_chars, max_new_tokens=max_new_tokens,
                     batching=batching, batch=settings, served_model_names=served_model_name or ())
    uvicorn.run(app, host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    """Add ``rerank`` and ``serve`` to the CLI."""
    app.command(name="rerank")(rerank_command)
    app.command(name="serve")(serve_command)
