"""Where a model's weights come from: the Hub or a folder, an adapter, 4-bit loading, the cache,
and the GGUF file that llama.cpp runs."""
