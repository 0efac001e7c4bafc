"""showo2-jax: Show-o2 (unified multimodal model) in JAX/Flax."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.4.35",
    "flax>=0.10",
    "optax",
    "orbax-checkpoint",
    "grain",
    "tensorflow-datasets",
    "array-record",
    "ml-collections",
    "einops",
    "transformers",
    "tokenizers",
    "clu",
    "safetensors",
    "numpy",
    "pillow",
    "imageio",
    "imageio-ffmpeg",  # MP4 read/write for video understanding and generation
    "tqdm",
    "matplotlib",     # loss.png of the tiny_shapes run
    # Paths are URIs (gs://, s3://): etils.epath, gcsfs behind it for GCS.
    "etils[epath]",
    "gcsfs",
]

EXTRAS = {
    # PyTorch on CPU: only for reading .bin/.pth checkpoints and for the parity
    # tests against HF transformers. Pin it: an unpinned torch pulls a CUDA build.
    "torch": ["torch==2.13.0"],
    # TensorBoard writers in clu.metric_writers import tensorflow.
    "tf": ["tensorflow-cpu", "tensorboard"],
    # libtpu: the TPU compiler. On a TPU VM it runs the TPU; on any CPU host it lets
    # `showo2-jax compile --topology tpu:v5p-128` compile for a pod it does not have.
    # The version jax[tpu] pins for our jax (0.10.x); jax itself is not re-pinned.
    "tpu": ["libtpu==0.0.42.*"],
    # tokamax: GPU flash attention kernels for model.attention_impl=flash (the omni
    # mask as per-query key ranges, through tokamax's op objects: pinned).
    "gpu": ["tokamax==0.0.12"],
    # diffusers: only for the AutoencoderKLWan parity test.
    # gcp-storage-emulator: a GCS API on 127.0.0.1 for the gs:// tests.
    # nbclient + ipykernel: the notebooks are executed as notebooks in the tests.
    "dev": ["pytest", "pytest-xdist", "diffusers", "gcp-storage-emulator", "nbclient", "nbformat",
            "ipykernel"],
    # `showo2-jax serve` (OpenAI-compatible HTTP); openai + httpx are the tests' clients.
    "serve": ["fastapi", "uvicorn", "python-multipart", "openai", "httpx"],
}
EXTRAS["test"] = (EXTRAS["torch"] + EXTRAS["tf"] + EXTRAS["tpu"] + EXTRAS["gpu"] + EXTRAS["dev"]
                  + EXTRAS["serve"])

setup(
    name="showo2-jax",
    version="0.1.0",
    description="Show-o2 in JAX/Flax: training on TPU pods, inference on GPUs, PyTorch checkpoint conversion.",
    # configs/ ships inside the package as showo2_jax/configs, so a wheel finds the
    # named configs (`--config tiny_train`) as a source checkout does (config_lib).
    packages=find_packages(include=["showo2_jax", "showo2_jax.*"]) + ["showo2_jax.configs"],
    package_dir={"showo2_jax.configs": "configs"},
    package_data={"showo2_jax.configs": ["data/*.yaml", "data/*.py", "data/*.json"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["showo2-jax=showo2_jax.cli.main:main"]},
)
