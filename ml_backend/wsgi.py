"""gunicorn entry point: ``gunicorn 'ml_backend.wsgi:app'``."""

from . import create_app

app = create_app()
