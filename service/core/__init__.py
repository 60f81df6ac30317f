"""The core training shares with serving: the model package format, the tokenizer and the numeric-sequence
normalization, and the errors every layer raises."""
