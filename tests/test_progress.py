"""Progress output: a library's raw tqdm bar (GGUF conversion) never reaches a log, and stays a
rich bar on a terminal."""

from __future__ import annotations

import types

from prefheads.progress import tqdm_as_rich


def test_a_raw_tqdm_bar_is_silenced_off_a_terminal(capsys):
    from tqdm.auto import tqdm

    lib = types.SimpleNamespace(tqdm=tqdm)
    with tqdm_as_rich(lib, "converting"):
        assert [x for x in lib.tqdm(range(5), desc="Converting and de-quantizing GGUF tensors...")] == list(range(5))
        with lib.tqdm(total=3) as bar:  # other uses: a disabled tqdm
            bar.update(3)
    assert lib.tqdm is tqdm
    out = capsys.readouterr()
    assert out.out == out.err == ""


def test_gguf_conversion_draws_no_raw_bar(monkeypatch):
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from prefheads.loading import _gguf_progress

    real = gguf_utils.tqdm
    with _gguf_progress("converting x.gguf (one time)"):
        assert gguf_utils.tqdm is not real
    assert gguf_utils.tqdm is real
