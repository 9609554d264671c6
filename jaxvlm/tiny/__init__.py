"""The embedded default: a tiny SigLIP and a tiny LLaVA-OneVision trained by this repo on the synthetic
video world (`jaxvlm.data.synthetic`), shipped in assets/.

  tokenizer.py   the synthetic world's word-level tokenizer and the chat template
  models.py      model sizes, Hugging Face config dicts, processors, builders, initial parameters
  losses.py      training losses and steps (pure functions)
  batches.py     the training data (decoded once) and the batches of each step
  stages.py      the two training stages and their export as Hugging Face directories
  evaluation.py  the held-out evaluation (accuracy per question type, text-only, SigLIP retrieval)
"""
