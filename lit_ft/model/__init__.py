"""The model: spec, Auto-class build and load, vocabulary padding, LoRA, precision choice,
distributed strategies, compilation, and the tokenizer trainer of the bundled model."""
