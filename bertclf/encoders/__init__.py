"""The encoder stage: the encoder map, TF Hub-format BERT models, tiny, Hugging Face imports."""
