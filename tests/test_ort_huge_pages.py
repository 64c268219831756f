"""onnxruntime backend `huge_pages=True`: same numbers as without it, and the huge-page promotion
keeps memory contents (speed is measured by tools/bench/decode.py, not here)."""

from __future__ import annotations

import mmap
import sys

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import forced_decode_logits, left_pad, tiny_prompts  # noqa: E402

from ascend_adapt.om_convert.builder import build_llm_onnx  # noqa: E402
from ascend_adapt.backends import get_backend  # noqa: E402
from ascend_adapt.backends.onnxruntime.session import (  # noqa: E402
    _anonymous_regions, _filled_anonymous_regions, _subtract, promote_to_huge_pages)

B, S, M = 2, 12, 40


@pytest.fixture(scope="module")
def export(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ort-hp") / "onnx"
    build_llm_onnx(tiny_dir("llama", unit_head=True), out, batch=B, seq_len=S, max_len=M, progress=False)
    return out


def test_huge_pages_give_identical_logits(export):
    plain = get_backend("onnxruntime", export)
    hp = get_backend("onnxruntime", export, threads=2, huge_pages=True)
    assert hp.huge_pages and not plain.huge_pages
    ids, mask = left_pad(tiny_prompts(plain.spec), plain.spec.pad_token_id or 0)
    forced = np.random.default_rng(1).integers(10, 300, (B, M - S))
    ref = forced_decode_logits(plain, ids, mask, forced)
    got = forced_decode_logits(hp, ids, mask, forced)
    np.testing.assert_array_equal(got, ref)  # same kernels; only the pages behind the weights differ
    assert hp.huge_page_bytes >= 0


SMAPS = """\
00400000-00600000 r-xp 00000000 fe:00 1234                       /usr/bin/python3.11
Rss:                2048 kB
01000000-01800000 rw-p 00000000 00:00 0                          [heap]
Rss:                8192 kB
7f0000000000-7f0000800000 rw-p 00000000 00:00 0
Size:               8192 kB
Rss:                8000 kB
VmFlags: rd wr mr mw me ac
7f0000800000-7f0001000000 rw-p 00000000 00:00 0
Rss:                   4 kB
7f0001000000-7f0001100000 rw-p 00000000 00:00 0
Rss:                1024 kB
7f0002000000-7f0002800000 r--p 00000000 00:00 0
Rss:                8192 kB
7f0003000000-7f0003800000 rw-p 00000000 fe:00 99                 /tmp/weights.bin
Rss:                8192 kB
7ffd00000000-7ffd00800000 rw-p 00000000 00:00 0                  [stack]
Rss:                8192 kB
"""


def test_filled_regions_are_writable_anonymous_resident_and_large():
    got = _filled_anonymous_regions(smaps=SMAPS)
    # the heap and the filled 8 MiB mapping; not the sparse one (thread stack-like), the 1 MiB one,
    # the read-only one, the file mapping, the stack
    assert got == {(0x01000000, 0x01800000), (0x7F0000000000, 0x7F0000800000)}
    assert _filled_anonymous_regions(min_resident=0.99, smaps=SMAPS) == {(0x01000000, 0x01800000)}
    assert len(_anonymous_regions(SMAPS)) == 4  # every writable anonymous mapping, heap included
    if not sys.platform.startswith("linux"):
        assert _filled_anonymous_regions() == set() and _anonymous_regions() == []


def test_subtract_keeps_only_new_address_ranges():
    assert _subtract([(0, 100)], [(0, 40)]) == [(40, 100)]  # a heap that grew: only the growth
    assert _subtract([(0, 100)], [(10, 20), (50, 60)]) == [(0, 10), (20, 50), (60, 100)]
    assert _subtract([(0, 100)], [(0, 100)]) == [] and _subtract([(0, 10)], [(20, 30)]) == [(0, 10)]


def test_promotion_keeps_contents():
    before = _anonymous_regions()
    size = 8 << 21  # 16 MiB: holds several aligned 2 MiB spans wherever it lands
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        buf.madvise(mmap.MADV_HUGEPAGE)  # its own VMA flags: not merged with a sparse neighbour
    data = np.frombuffer(buf, np.uint32)
    data[:] = np.arange(data.size, dtype=np.uint32) * 2654435761
    expect = data.copy()
    done = promote_to_huge_pages(before)
    np.testing.assert_array_equal(data, expect)
    if done == 0:
        pytest.skip("no MADV_COLLAPSE here (not Linux ≥ 6.1, or THP disabled): promotion is a no-op")
    assert done >= 1 << 21
    assert promote_to_huge_pages(_anonymous_regions()) == 0  # nothing new since
