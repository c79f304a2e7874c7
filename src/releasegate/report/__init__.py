"""Evidence reports of releases, and where they are written."""
