"""Training a WordPiece vocabulary on a hospital's own notes (see train_tokenizer.py)."""
