"""Import Hugging Face BERT, ELECTRA and ALBERT checkpoints as TF Hub-format models.

``checkpoint`` reads the folder, ``convert`` maps its config and weights onto our encoder
(``WEIGHT_MAP``), ``tokenizer`` reads its tokenizer settings, ``reference`` is an independent
NumPy forward pass on the checkpoint's tensors that ``verify`` checks the converted encoder
against, and ``install`` writes DEST/encoder, DEST/preprocess and DEST/import.json
(``import_checkpoint``).
"""
