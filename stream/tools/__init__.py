"""Tools around the worker: simulator runner, replay, backtest, report, broker, workers."""
