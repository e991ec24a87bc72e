"""w2v: command-line tools for self-supervised speech recognition with the wav2vec family."""

__version__ = "0.1.0"
