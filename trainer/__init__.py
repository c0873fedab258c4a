"""drivestream trainer."""
