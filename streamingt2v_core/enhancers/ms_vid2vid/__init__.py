"""MS-Vid2Vid-XL (ModelScope damo/Video-to-Video), StreamingT2V's refiner: official `Vid2VidSDUNet`
(v-prediction) on diffusers' UNet3DConditionModel blocks, the OpenCLIP ViT-H-14 text tower and the SD 2.1
autoencoder, sampled by DPM-Solver++(2M) SDE on the logsnr_cosine_interp schedule."""
