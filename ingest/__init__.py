"""drivestream ingest."""
