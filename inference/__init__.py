"""drivestream inference."""
