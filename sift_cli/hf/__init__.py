"""What sift knows of Hugging Face models: loading (hub, local, the offline default), block naming, fused QKV."""
