"""Scratch buffers: reused between calls on the CPU, bounded, per thread; and the attention statistics that use
them give the same numbers call after call (no buffer leaks into a result)."""

import threading

import numpy as np
import pytest
import torch

from mathlens.errors import MathlensError
from mathlens.probes import attention_stats as st
from mathlens.probes import scratch
from mathlens.probes.capture import attention_pattern


def test_buffer_is_reused_grown_and_bounded():
    scratch.clear()
    a = scratch.buffer("t", (4, 8), torch.float32, "cpu")
    b = scratch.buffer("t", (2, 3), torch.float32, "cpu")  # smaller: the same memory
    assert a.shape == (4, 8) and b.shape == (2, 3) and a.data_ptr() == b.data_ptr()
    c = scratch.buffer("t", (10, 10), torch.float32, "cpu")  # larger: grown once, then reused
    assert scratch.buffer("t", (10, 10), torch.float32, "cpu").data_ptr() == c.data_ptr()
    d = scratch.buffer("t", (4, 8), torch.float64, "cpu")  # another dtype: another buffer
    assert d.dtype == torch.float64 and d.data_ptr() != c.data_ptr()
    assert scratch.kept_bytes() == 100 * 4 + 32 * 8
    big = scratch.buffer("huge", (scratch.LIMIT // 4 + 1,), torch.float32, "cpu")  # over the limit: not kept
    assert big.numel() == scratch.LIMIT // 4 + 1 and scratch.kept_bytes() == 100 * 4 + 32 * 8
    assert scratch.buffer("m", (3,), torch.float32, "meta").device.type == "meta"  # other devices: fresh tensors
    scratch.clear()
    assert scratch.kept_bytes() == 0


def test_buffers_are_per_thread():
    scratch.clear()
    here = scratch.buffer("t", (16,), torch.float32, "cpu").data_ptr()
    there = []
    th = threading.Thread(target=lambda: there.append(scratch.buffer("t", (16,), torch.float32, "cpu").data_ptr()))
    th.start(), th.join()
    assert there and there[0] != here


def test_attention_pattern_into_out_equals_a_fresh_result():
    """``out=`` (one chunk: softmax writes into it; several chunks: zero-filled and written chunk by chunk) gives
    bitwise the fresh result, and a second call with other inputs does not change the first call's fresh result
    (the scores' scratch buffer is never returned)."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 9, 4, generator=g), torch.randn(2, 3, 9, 4, generator=g)
    for chunk in (256, 4):
        ref, H = attention_pattern(q, k, 0.5, chunk_rows=chunk, with_entropy=True)
        out = torch.full((2, 3, 9, 9), 7.0, dtype=torch.float64)
        P, H2 = attention_pattern(q, k, 0.5, chunk_rows=chunk, with_entropy=True, out=out)
        assert P.data_ptr() == out.data_ptr() and torch.equal(P, ref) and torch.equal(H, H2)
        kept = ref.clone()
        attention_pattern(-q, k, 0.5, chunk_rows=chunk)
        assert torch.equal(ref, kept)
    for bad in (torch.empty(2, 3, 9, 8, dtype=torch.float64), torch.empty(2, 3, 9, 9), torch.empty(2, 3, 9, 18, dtype=torch.float64)[..., ::2]):
        with pytest.raises(MathlensError, match="out must be"):
            attention_pattern(q, k, 0.5, out=bad)


def test_sort_rows_into_out_and_repeated_row_statistics():
    x = torch.rand(3, 5, 7, 7, generator=torch.Generator().manual_seed(1))
    out = torch.empty_like(x)
    assert st.sort_rows(x, out=out).data_ptr() == out.data_ptr()
    assert np.array_equal(out.numpy(), np.sort(x.numpy(), -1))
    assert torch.equal(st.sort_rows(x[:, :, 1:, 1:], out=torch.empty(3, 5, 6, 6)), torch.sort(x[:, :, 1:, 1:], -1).values)
    P = torch.softmax(torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)), -1)
    first = [t.clone() for t in st.sorted_row_statistics(P, 3, causal=False, tau=0.1)]
    st.sorted_row_statistics(P.flip(-1).contiguous() * 0.5, 3, causal=False, tau=0.1)  # same buffer, other data
    assert all(torch.equal(a, b) for a, b in zip(first, st.sorted_row_statistics(P, 3, causal=False, tau=0.1)))
