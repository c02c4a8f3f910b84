"""The autoregressive loop against a whole official run (ref_long: a given chunk, then 2 generated
chunks, 4 DDIM steps, eta 1, guidance 7.5, seed 33)."""
import torch

from streamingt2v_core.t2v.extend import StreamConditioning, extend_video, generate_chunk


def test_streaming_reproduces_official_run(tiny_model, ref_long, monkeypatch):
    chunk0 = ref_long["chunk0/frames"]
    assert torch.equal(ref_long["in/input_video"], chunk0)
    cond = StreamConditioning.build(tiny_model, "a tiny oracle prompt", "", anchor=chunk0[0])
    assert (cond.context - ref_long["chunk1/encoder_hidden_states"]).abs().max() <= 1e-4
    final = []  # the final latents of each chunk, as generate_chunk hands them to the decoder
    decode = tiny_model.decode_latents

    def decode_and_keep(latents, *args, **kwargs):
        final.append(latents)
        return decode(latents, *args, **kwargs)

    monkeypatch.setattr(tiny_model, "decode_latents", decode_and_keep)
    g = torch.Generator().manual_seed(33)
    prev = chunk0
    for c in (1, 2):
        frames = generate_chunk(tiny_model, prev, cond, steps=4, guidance=7.5, eta=1.0, generator=g)
        latents = final.pop()
        ref_lat = ref_long[f"chunk{c}/final_latents"]
        rel = ((latents - ref_lat).norm() / ref_lat.norm()).item()
        assert rel <= 1e-3, f"chunk {c} latents rel {rel}"
        assert (frames - ref_long[f"chunk{c}/frames"]).abs().max() <= 1 / 255
        prev = frames


def test_extend_video_official_assembly(tiny_model, ref_long):
    """extend_video keeps frames 8..15 of each chunk; chunk 0 + the new frames is the official video."""
    chunk0 = ref_long["chunk0/frames"]
    steps_seen = []
    new = extend_video(tiny_model, chunk0, 2, "a tiny oracle prompt", steps=4, seed=33,
                       on_step=lambda s, n: steps_seen.append((s, n)))
    assert [f.shape[0] for f in new] == [8, 8]
    video = torch.cat([chunk0] + new)
    assert video.shape == (32, 3, 64, 64)
    # out/video went through the official uint8 truncation
    assert ((video * 255).to(torch.uint8).float() / 255 - ref_long["out/video"]).abs().max() <= 1 / 255 + 1e-6
    assert steps_seen == [(i, 8) for i in range(1, 9)]


def test_seed_changes_the_stream(tiny_model, ref_long):
    chunk0 = ref_long["chunk0/frames"]
    a = extend_video(tiny_model, chunk0, 1, "a tiny oracle prompt", steps=2, seed=1)[0]
    b = extend_video(tiny_model, chunk0, 1, "a tiny oracle prompt", steps=2, seed=1)[0]
    c = extend_video(tiny_model, chunk0, 1, "a tiny oracle prompt", steps=2, seed=2)[0]
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_cam_frame_encoder_runs_once_per_chunk(tiny_model, ref_long):
    """The conditioning frames are the same at every step and in both guidance rows: one encoder call per
    chunk (it ran 2 x steps times per chunk before), the frames unchanged."""
    calls = []
    hook = tiny_model.cam.controlnet_cond_embedding.register_forward_hook(lambda _m, a, _o: calls.append(a[0].shape[0]))
    try:
        new = extend_video(tiny_model, ref_long["chunk0/frames"], 2, "a tiny oracle prompt", steps=4, seed=33)
    finally:
        hook.remove()
    assert calls == [8, 8]  # one call of the 8 conditioning frames per chunk
    video = torch.cat([ref_long["chunk0/frames"]] + new)
    assert ((video * 255).to(torch.uint8).float() / 255 - ref_long["out/video"]).abs().max() <= 1 / 255 + 1e-6


def test_memory_is_flat_in_the_number_of_chunks(tiny_model, ref_long):
    """What a stream holds after each chunk is its new frames alone (8 frames, float32, on the host), and the
    working set of a chunk is the same for the 1st and the 6th: nothing of earlier chunks (latents, decoded
    16-frame chunks, CAM features) stays alive. Counted exactly with LiveTensorBytes."""
    from streamingt2v_core.common.memory import LiveTensorBytes

    chunk0 = ref_long["chunk0/frames"]
    frame_bytes = chunk0[0].numel() * 4
    lives, peaks = [], []

    def on_chunk(_c, fresh):
        assert fresh.device.type == "cpu" and fresh.dtype == torch.float32 and fresh.shape[0] == 8
        lives.append(tracker.live)
        peaks.append(tracker.peak)
        tracker.peak = tracker.live  # the next chunk's own high-water mark

    with LiveTensorBytes() as tracker:
        extend_video(tiny_model, chunk0, 6, "a tiny oracle prompt", steps=1, guidance=1.0, seed=3, on_chunk=on_chunk)
    kept = [b - a for a, b in zip(lives, lives[1:])]
    assert all(k == 8 * frame_bytes for k in kept), (kept, 8 * frame_bytes)  # + the 8 new frames, nothing else
    working = [p - live for p, live in zip(peaks[1:], lives[:-1])]  # each chunk's peak above what it started with
    assert max(working) == min(working), working
