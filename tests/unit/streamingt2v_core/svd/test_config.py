from streamingt2v_core.svd import config


def test_numbers_are_the_official_ones():
    assert (config.FRAMES, config.COND_FRAMES, config.NEW_FRAMES) == (25, 7, 18)
    assert config.COMFY_FPS - 1 == config.FPS_ID == 6
    assert (config.MOTION_BUCKET, config.COND_AUG, config.GUIDANCE_MIN, config.GUIDANCE_MAX) == (127, 0.02, 1.5, 3.0)
    assert (config.VAE_DECODE_FRAMES, config.LATENT_SCALE, config.CAM_CHANNELS) == (8, 0.18215, 320)
    assert len(config.AYS_SIGMAS) == 11 and config.AYS_SIGMAS[0] == 700.0 and config.AYS_SIGMAS[-1] == 0.002


def test_chunks_for_is_the_official_count():
    assert config.chunks_for(100) == 5 and config.frames_after(5) == 115  # cut to 100 afterwards
    assert config.chunks_for(25) == 0 and config.chunks_for(10) == 0
    assert config.chunks_for(26) == 1 and config.chunks_for(43) == 1 and config.chunks_for(44) == 2
    assert config.frames_after(2) == 61
