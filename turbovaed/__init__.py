"""turbovaed: distill video VAE decoders into tiny students and ship them to phones and edge devices."""

__version__ = "0.1.0"
