"""drivestream schemas."""
