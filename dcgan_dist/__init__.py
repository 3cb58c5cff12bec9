"""dcgan-dist: distributed DCGAN training under Hugging Face accelerate."""
__version__ = "0.1.0"
