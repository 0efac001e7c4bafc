"""Fields every config has; each config file fills in the model and resolution."""
import ml_collections


def base_config():
  c = ml_collections.ConfigDict()
  c.seed = 10086
  c.model = ml_collections.ConfigDict()
  c.vae = ml_collections.ConfigDict()
  # Resolution and sequence layout (spec 1.7).
  c.resolution = 432                # image pixels per side
  c.max_seq_len = 1024
  # Mesh: sizes of the named axes inside one slice (ICI); -1 takes the remaining
  # devices. dcn_*: sizes across TPU slices (multislice, DCN); their product is the
  # number of slices (dcn_data=-1: slices split the batch, the usual choice).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1,
                                          dcn_data=-1, dcn_fsdp=1, dcn_tensor=1))
  # Inference defaults (spec 5.3-5.4).
  c.sample = ml_collections.ConfigDict(dict(
      num_steps=50, guidance_scale=7.5, time_shifting_factor=3.0, method="euler",
      max_new_tokens=300))
  return c


def num_image_tokens(resolution, patch_size=2, vae_stride=8):
  """Patches per image (N, without the time slot)."""
  side = resolution // vae_stride // patch_size
  return side * side
