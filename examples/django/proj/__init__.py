"""An example Django project that sends jsqueue jobs from views (see README.md here)."""
