"""Installs the top-level folders as one `engine` import namespace (see DESIGN.md, Layout).

`engine/` is the root package; `models/`, `kernels/`, `loaders/` and `bench/` are mapped under it with
`package_dir`, so nothing generic such as `models` lands in site-packages.
"""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
SUBPACKAGES = [name for name in ("models", "kernels", "loaders", "bench") if (HERE / name / "__init__.py").exists()]

setup(
    name="engine",
    version="0.1.0",
    description="Fast, faithful fine-tuning of lightweight ImageNet backbones on small domain-specific datasets",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["engine"] + [f"engine.{name}" for name in SUBPACKAGES],
    package_dir={"engine": "engine", **{f"engine.{name}": name for name in SUBPACKAGES}},
    package_data={"engine": ["paper/*.csv"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy",
        "click>=8.0",
        "pillow",
        "tqdm",
        # triton (the fused DWT and TrivialAugmentWide on CUDA) comes with torch's CUDA wheels; without it both
        # run as torch ops
    ],
    extras_require={
        # pytest, and the references the tests compare against: pytorch_wavelets' DWT and the published WaveMix
        "dev": ["pytest", "pytorch_wavelets==1.3.0", "PyWavelets", "wavemix==0.2.4", "einops", "scipy", "h5py",
                "pydicom", "nvidia-dali-cuda130", "matplotlib", "submitit"],
        "slurm": ["submitit"],  # engine grid --launcher slurm
        "report": ["matplotlib"],  # engine report --plots
        # readers of some datasets' sources: .mat (Flowers-102, Stanford Dogs), HDF5 (Galaxy10), DICOM (RSNA)
        "datasets": ["scipy", "h5py", "pydicom"],
        "dali": ["nvidia-dali-cuda130"],
    },
    entry_points={"console_scripts": ["engine = engine.cli:main"]},
)
