"""llama.cpp through llama-cpp-python's low-level C API: engine.py (GGUFEngine),
sampling.py (llama.cpp's sampler chain), gpu_budget.py (`--gpu-layers auto`)."""
