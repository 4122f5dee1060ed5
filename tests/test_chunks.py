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


def test_a_remainder_shorter_than_half_a_chunk_is_dropped():
    x = torch.randn(2, 4, 1001)  # a 10 s mel64 clip: 1001 frames
    chunks, clip, spans = split_chunks(x, 200, 200)  # 2 s: five chunks, not a sixth of one real frame
    assert chunks.shape == (10, 4, 200) and spans.tolist()[:5] == [[s, s + 200] for s in range(0, 1000, 200)]
    assert torch.equal(chunks[4], x[0, :, 800:1000]) and torch.equal(chunks[9], x[1, :, 800:1000])
    chunks, _, spans = split_chunks(x, 1000, 1000)  # 10 s: the clip, without a 1-frame second chunk
    assert chunks.shape == (2, 4, 1000) and spans.tolist() == [[0, 1000]] * 2
    chunks, _, spans = split_chunks(x, 300, 300)  # 3 s: 0-3, 3-6, 6-9; 9-10 is 101 of 300 frames: dropped
    assert spans.tolist()[:3] == [[0, 300], [300, 600], [600, 900]] and chunks.shape[0] == 6
    chunks, _, spans = split_chunks(x, 400, 400)  # 4 s: 8-10 is 201 of 400 frames: kept, zero-padded
    assert spans.tolist()[:3] == [[0, 400], [400, 800], [800, 1001]]
    assert torch.equal(chunks[2, :, :201], x[0, :, 800:]) and chunks[2, :, 201:].abs().sum() == 0
    chunks, _, spans = split_chunks(x, 300, 150)  # overlapping: the last start whose chunk is ≥ half in the clip
    assert spans.tolist()[:6][-1] == [750, 1001] and chunks.shape[0] == 2 * 6
