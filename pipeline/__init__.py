"""drivestream pipeline."""
