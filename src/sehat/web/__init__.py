"""Pages for people with a browser: the landing page at ``/`` and self-hosted API docs at ``/docs``."""
