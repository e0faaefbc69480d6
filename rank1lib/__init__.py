"""rank1lib: executable companion to 'Avoid Catastrophic Forgetting with Rank-1 Fisher from Diffusion Models'."""
__version__ = "0.1.0"

import warnings

# tqdm.auto warns once per kernel when ipywidgets is absent; the text bar it falls back to is fine.
warnings.filterwarnings("ignore", message="IProgress not found")
