from setuptools import find_packages, setup

setup(
    name="ard_scale",
    version="0.1.0",
    description="AutoRegressive Distillation (ARD) of diffusion transformers at cluster scale, on DeepSpeed",
    packages=find_packages(include=["ard_scale", "ard_scale.*"]),
    package_data={"ard_scale.data": ["bundled/digits/*/*"]},  # the demo's bundled shards
    python_requires=">=3.10",
    # Pins live in constraints.txt (install with `-c constraints.txt`); here only what the package imports.
    install_requires=[
        "torch",
        "diffusers",
        "transformers",
        "numpy",
        "pyyaml",
    ],
    extras_require={
        "train": ["deepspeed", "mosaicml-streaming", "webdataset", "tqdm", "pillow", "tensorboard", "peft"],
        "eval": ["open-clip-torch", "torchmetrics", "torch-fidelity"],  # torch-fidelity: the FID Inception
        "dev": ["pytest", "pytest-xdist", "ruff", "scikit-learn"],
    },
)
