"""bertlib: BERT pre-training and SQuAD fine-tuning on OneFlow 0.9."""
__version__ = "0.1.0"
