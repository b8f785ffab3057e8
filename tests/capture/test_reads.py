"""Which rows each process reads, and from where (capture/reads.py): one read per run of
its own shards, seeking by the store's plan, or the sequential read from the first
shard to do where the plan does not know a start."""

import numpy as np
import zarr

from actstore.capture.reads import plan_reads
from actstore.corpus import Checkpoint, CorpusSpec, plan_checkpoint, scan, stop_after, unknown_plan
from actstore.store.format import Layout

from ..corpus.test_plan import DOCS_BIG, boundaries


def test_reads_seek_per_run_of_own_shards_or_go_on_from_the_first_shard_to_do(tokenizer):
    spec = CorpusSpec.from_dataset(DOCS_BIG, seq_len=16)
    layout = Layout(n_rows=100, seq_len=16, rows_per_chunk=10, rows_per_shard=20)
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    group.create_array("plan", data=scan(spec, tokenizer, limit=100).plan(boundaries(100, 20)))
    reads = plan_reads(group, spec, layout, todo=[1, 2, 3, 4], mine=[1, 3, 4])
    assert [r.shards for r in reads] == [[1], [3, 4]] and [r.start.row for r in reads] == [20, 60]
    assert reads[1].stop == stop_after(plan_checkpoint(np.asarray(group["plan"][...]), 5))
    # e.g. a hub dataset: from the first shard to do
    group["plan"][...] = unknown_plan(boundaries(100, 20))
    group.create_array("doc", data=np.full((100, 16), 9, np.int64))
    group.create_array("doc_pos", data=np.full((100, 16), 4, np.int32))
    (read,) = plan_reads(group, spec, layout, todo=[1, 2, 3, 4], mine=[3])
    assert (
        read.shards == [1, 2, 3]
        and read.start == Checkpoint(row=20, doc=9, item=5)
        and read.stop is None
    )
