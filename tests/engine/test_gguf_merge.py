"""The llama.cpp file of the offline default is merged from the GGUF itself, without transformers
(seconds instead of half a minute on a fresh Space): its tensors must be exactly those of the merge
through transformers and PEFT, and an adapter that is not plain LoRA must take that path instead."""

from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest

from cap_app.models.gguf import _lora_merged_tensors, _merged_tensors, _plain_lora
from cap_app.models.loading import DEFAULT_ADAPTER_DIR, default_gguf_path


@pytest.mark.slow
def test_the_direct_merge_equals_the_merge_through_transformers_bit_for_bit():
    reader = gguf.GGUFReader(default_gguf_path())
    direct = _lora_merged_tensors(reader, str(DEFAULT_ADAPTER_DIR))
    through_transformers = _merged_tensors(default_gguf_path(), str(DEFAULT_ADAPTER_DIR), reader)
    assert direct is not None and list(direct) == list(through_transformers)
    for name, array in direct.items():
        assert array.dtype == np.float32 and np.array_equal(array, through_transformers[name]), name
    base = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    assert not np.array_equal(direct["blk.18.attn_q.weight"], base["blk.18.attn_q.weight"])  # the adapter's layers
    assert np.array_equal(direct["blk.0.attn_q.weight"], base["blk.0.attn_q.weight"])  # the others as they were


def test_only_plain_lora_adapters_are_merged_directly(tmp_path):
    assert _plain_lora(str(DEFAULT_ADAPTER_DIR)) == 2.0  # lora_alpha 64 / r 32
    config = json.loads((DEFAULT_ADAPTER_DIR / "adapter_config.json").read_text())
    for change in ({"use_dora": True}, {"modules_to_save": ["lm_head"]}, {"rank_pattern": {"q_proj": 8}}):
        folder = tmp_path / next(iter(change))
        folder.mkdir()
        shutil.copy(DEFAULT_ADAPTER_DIR / "adapter_model.safetensors", folder)
        (folder / "adapter_config.json").write_text(json.dumps({**config, **change}))
        assert _plain_lora(str(folder)) is None, change
    assert _plain_lora(str(tmp_path / "missing")) is None
