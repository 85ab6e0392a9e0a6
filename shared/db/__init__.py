"""Database models, engine/session factories and every SQL statement the services run."""
