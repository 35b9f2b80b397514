"""Import Hugging Face BERT, ELECTRA and ALBERT checkpoints as TF Hub-format models.

``checkpoint`` reads the folder, ``convert`` maps its config and weights onto our encoder and
reads its tokenizer settings, ``install`` writes DEST/encoder, DEST/preprocess and
DEST/import.json (``import_checkpoint``).
"""
