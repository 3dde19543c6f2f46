"""Corpora and their captions: dataset formats, the vocabulary, video ids and the embedded synthetic set."""
