"""gunicorn settings for the backend: ``gunicorn -c python:ml_backend.gunicorn_conf ml_backend.wsgi:app``.

One worker process (the model is loaded once per process) with more threads
than ``LABELER_MAX_CONCURRENT_PREDICTS``, so ``/health`` (Label Studio allows it
1 s) always finds a free thread while every prediction slot is busy.
"""

import os

bind = os.environ.get("LABELER_BIND", "0.0.0.0:9090")
workers = 1
worker_class = "gthread"
threads = int(os.environ.get("LABELER_THREADS", "16"))
timeout = 300            # a training job's model use can hold the worker's heartbeat
graceful_timeout = 30
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 16384
control_socket_disable = True  # several backends on one machine must not share ~/.gunicorn/gunicorn.ctl
