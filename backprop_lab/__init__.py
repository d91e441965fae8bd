"""backprop-lab: the chapter's MNIST network trained by hand-written backpropagation."""

__version__ = "0.1.0"
