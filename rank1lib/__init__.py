"""rank1lib: executable companion to 'Avoid Catastrophic Forgetting with Rank-1 Fisher from Diffusion Models'."""
__version__ = "0.1.0"
