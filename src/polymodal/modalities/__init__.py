"""One module per modality: loading, preprocessing and encoders."""
