import torch

from trainer.data.chunks import split_chunks


def test_full_and_partial_chunks():
    x = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 3, 10)
    chunks, clip, spans = split_chunks(x, 4, 3)
    assert chunks.shape == (2 * 3, 3, 4)  # starts 0, 3, 6; the last is 6..10, full
    assert clip.tolist() == [0, 0, 0, 1, 1, 1]
    assert spans.tolist() == [[0, 4], [3, 7], [6, 10]] * 2
    assert torch.equal(chunks[4], x[1, :, 3:7])
    chunks, clip, spans = split_chunks(x, 4, 4)  # starts 0, 4, 8; the last is partial
    assert spans.tolist()[:3] == [[0, 4], [4, 8], [8, 10]]
    assert torch.equal(chunks[2, :, :2], x[0, :, 8:]) and chunks[2, :, 2:].abs().sum() == 0


def test_short_clip_is_one_padded_chunk():
    x = torch.ones(1, 2, 3)
    chunks, clip, spans = split_chunks(x, 5, 5)
    assert chunks.shape == (1, 2, 5) and spans.tolist() == [[0, 3]] and clip.tolist() == [0]
    assert chunks[0, :, 3:].abs().sum() == 0
