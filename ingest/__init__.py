"""drivestream ingest: simulated and imported sensor logs, and the replayer into Kafka.

Python API (import the modules; nothing happens at package import):
``ingest.simulator.simulate(SimConfig) -> (log, truth)``,
``ingest.importer.import_log(path, mapping, options) -> (log, ImportReport)``,
``ingest.replayer.Replayer(log, ReplayConfig, settings=...).run() -> ReplaySummary``,
``ingest.evaluate.baseline_errors(log, truth, "cv"|"ctrv") -> BaselineErrors``,
``ingest.logs.read_log / write_table`` for canonical Parquet logs.
"""
