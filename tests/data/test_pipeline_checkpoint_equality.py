"""Grain's own check over our mixed pipeline: restored at every state it saw, the
iterator gives exactly the elements the uninterrupted one gave (state, skip
totals and all), crossing an epoch boundary of a stream."""
import grain

from showo2_jax.data import pipeline, sources, tasks, testing

R, L = 32, 48


def test_mixed_pipeline_restores_equal_at_every_checkpoint(tmp_path, tok, special):
  testing.write_image_text_dataset(tmp_path, 5)
  records = sources.image_text_source(tmp_path / "data.jsonl")
  streams = [
      pipeline.Stream("t2i", records, tasks.ImageTextTask(tok, special, resolution=R, max_seq_len=L), 2),
      pipeline.Stream("mmu", records, tasks.ImageTextTask(tok, special, resolution=R, max_seq_len=L,
                                                          captioning=True), 1),
  ]
  loader = pipeline.make_loader(pipeline.mixed_batches(streams, seed=7, read_threads=1))
  # 4 steps: 8 t2i rows of 5 records, so the t2i stream reshuffles on the way.
  grain.experimental.assert_equal_output_after_checkpoint(
      grain.experimental.LimitIterDataset(loader, count=4))
