"""engine: fine-tunes lightweight ImageNet backbones on small domain-specific datasets, fast.

Subpackages: `engine.models` (backbone registry), `engine.loaders` (datasets and input pipelines),
`engine.kernels` (fused kernels), `engine.bench` (benchmarks). The command line lives in `engine.cli`.
"""
__version__ = "0.1.0"
